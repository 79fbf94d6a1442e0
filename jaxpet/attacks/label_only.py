"""Label-only membership inference: the data-augmentation attack of Choquette-Choo et al. (ICML 2021).

The target is queried only for its predicted label, on augmented copies of each
candidate: the image itself, its horizontal flip, and shifts by up to ``max_shift``
pixels (every (dx, dy) with |dx| + |dy| <= max_shift, edges repeated). A member
tends to stay correctly classified under small changes; the signal is the vector
of correct / incorrect over the augmentations.

:func:`query_correct` runs every model on every augmentation of every example in
one jitted program (vmapped over models and over augmentations). Two attacks
read the vector, fitted on shadow models as the paper does:
``label_only`` (a small MLP on the vector) and ``label_only_threshold`` (the
fraction of augmentations classified correctly, with the most accurate
threshold on the shadow). In the reference family, ``label_only_ref`` fits that
threshold on the reference models instead.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import metrics, progress, training
from jaxpet.attacks import registry
from jaxpet.attacks.registry import AttackOutput, LabeledPosteriors
from jaxpet.attacks.shadow import fit_attack_mlp
from jaxpet.data import IDENTITY


@dataclasses.dataclass(frozen=True)
class Queries:
    """The augmentations queried: shifts by up to ``max_shift`` pixels, with and without a
    horizontal flip (``flips``)."""

    max_shift: int = 1
    flips: bool = True

    def __post_init__(self):
        if not isinstance(self.max_shift, (int, np.integer)) or not 0 <= self.max_shift <= 8:
            raise ValueError(f"max_shift must be an integer in [0, 8], got {self.max_shift!r}.")

    def table(self) -> np.ndarray:
        """int32 [Q, 3]: (flip, dx, dy) of each query; query 0 is the image itself."""
        r = int(self.max_shift)
        shifts = [(dx, dy) for dx in range(-r, r + 1) for dy in range(-r, r + 1)
                  if abs(dx) + abs(dy) <= r]
        shifts.sort(key=lambda s: (abs(s[0]) + abs(s[1]), s))
        rows = [(f, dx, dy) for f in ((0, 1) if self.flips else (0,)) for dx, dy in shifts]
        return np.asarray(rows, np.int32)

    @property
    def count(self) -> int:
        return len(self.table())


def augment(images, flip, dx, dy, max_shift: int):
    """[B, H, W, C] images flipped (if ``flip``) and shifted by (dx, dy) pixels, the edge rows
    and columns repeated; jittable and vmappable over (flip, dx, dy)."""
    x = jnp.where(flip > 0, images[:, :, ::-1, :], images)
    if max_shift == 0:
        return x
    r = max_shift
    padded = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    h, w = images.shape[1], images.shape[2]
    return jax.lax.dynamic_slice(padded, (0, r - dy, r - dx, 0),
                                 (images.shape[0], h, w, images.shape[3]))


@functools.partial(jax.jit, static_argnames=("model", "preprocess", "max_shift"))
def _correct_batch(model, preprocess, variables, images, labels, table, max_shift):
    """bool [K, B, Q]: model k's predicted label is right on query q of example b."""
    def one_query(row):
        x = preprocess(augment(images, row[0], row[1], row[2], max_shift))
        logits = jax.vmap(lambda v: model.apply(v, x, train=False))(variables)
        return jnp.argmax(logits, -1) == labels

    return jnp.moveaxis(jax.vmap(one_query)(table), 0, -1)


def query_correct(model, variables, images, labels, queries: Queries = Queries(), *,
                  preprocess: Callable = IDENTITY, batch_size: int = 256) -> np.ndarray:
    """bool [K, N, Q]: whether each of the K models labels each augmented example correctly.

    Only the predicted label of each query is used: what a label-only attacker sees.
    """
    images, labels = np.asarray(images), np.asarray(labels, np.int32)
    if images.ndim != 4:
        raise ValueError(f"label-only queries augment images [N, H, W, C], got shape "
                         f"{images.shape}.")
    if 2 * queries.max_shift >= min(images.shape[1:3]):
        raise ValueError(f"max_shift={queries.max_shift} is too large for {images.shape[1]}x"
                         f"{images.shape[2]} images.")
    table = jnp.asarray(queries.table())
    num_models = jax.tree.leaves(variables)[0].shape[0]
    n = len(images)
    batch_size = min(batch_size, n)
    out = []
    with progress.phase("label-only queries", num_models * n * len(table) * progress.FORWARD,
                        images_per_unit=1 / progress.FORWARD) as report:
        for start in range(0, n, batch_size):
            x, y = images[start:start + batch_size], labels[start:start + batch_size]
            real = len(x)
            if real < batch_size:  # one compiled program for every batch
                x = np.concatenate([x, np.repeat(x[-1:], batch_size - real, 0)])
                y = np.concatenate([y, np.repeat(y[-1:], batch_size - real, 0)])
            out.append(np.asarray(_correct_batch(model, preprocess, variables, jnp.asarray(x),
                                                 jnp.asarray(y), table, queries.max_shift))
                       [:, :real])
            report.advance(num_models * real * len(table) * progress.FORWARD)
    return np.concatenate(out, axis=1)


# --------------------------------------------------------------------------- attacks


def fraction_correct(correct) -> np.ndarray:
    """The threshold variant's score: the share of augmentations labelled correctly."""
    return np.asarray(correct, np.float64).mean(-1)


def threshold_attack(shadow_correct, shadow_membership, target_correct,
                     target_membership) -> AttackOutput:
    """The fraction correct, thresholded where it is most accurate on the shadow's data."""
    threshold = metrics.best_threshold(shadow_membership, fraction_correct(shadow_correct))
    scores = fraction_correct(target_correct)
    report = metrics.attack_report(target_membership, scores, threshold=threshold)
    report["threshold"] = threshold
    return AttackOutput(scores=scores, predictions=scores >= threshold, report=report)


def mlp_attack(shadow_correct, shadow_membership, target_correct, target_membership, *,
               epochs: int = 30, seed: int = 0) -> AttackOutput:
    """A small MLP (64 ReLU units) on the correct/incorrect vector, trained on the shadow's
    members and non-members (the paper's attack model on augmentation labels)."""
    config = training.TrainConfig(epochs=epochs, batch_size=min(64, len(shadow_correct)),
                                  learning_rate=1e-3, weight_decay=0.0, lr_decay=1.0,
                                  eval_batch_size=4096)
    output, _ = fit_attack_mlp(shadow_correct, shadow_membership, target_correct,
                               target_membership, hidden_sizes=(64,), train_config=config,
                               seed=seed, log_prefix="attack label-only ")
    return output


def _needs_queries(observed: LabeledPosteriors, who: str) -> np.ndarray:
    if observed.correct is None:
        raise ValueError(f"label-only attacks need the {who}'s label-only queries "
                         "(LabeledPosteriors.correct, from label_only.query_correct).")
    return observed.correct


@registry.register("label_only", family="shadow", needs=("correct",),
                   description="Choquette-Choo et al.: an MLP on which augmented copies (flips, "
                               "shifts) the model labels correctly, fitted on the shadow")
def label_only(shadow: LabeledPosteriors, target: LabeledPosteriors, *, config=None,
               seed: int = 0) -> AttackOutput:
    return mlp_attack(_needs_queries(shadow, "shadow"), shadow.membership,
                      _needs_queries(target, "target"), target.membership,
                      epochs=getattr(config, "epochs", 30), seed=seed)


@registry.register("label_only_threshold", family="shadow", needs=("correct",),
                   description="Choquette-Choo et al.: the fraction of augmented copies labelled "
                               "correctly, thresholded on the shadow")
def label_only_threshold(shadow: LabeledPosteriors, target: LabeledPosteriors, *, config=None,
                         seed: int = 0) -> AttackOutput:
    del config, seed
    return threshold_attack(_needs_queries(shadow, "shadow"), shadow.membership,
                            _needs_queries(target, "target"), target.membership)


@registry.register("label_only_ref", family="reference", uses_references=True,
                   needs=("correct",),
                   description="label-only: the fraction of augmented copies labelled correctly, "
                               "thresholded where most accurate on the reference models")
def label_only_reference(signals, target, references, ref_keep, use, config) -> np.ndarray:
    """The threshold fitted on the references' own (fraction correct, membership) pairs; the
    score is the target's fraction correct minus that threshold (>= 0: member)."""
    del config
    if signals.correct is None:
        raise ValueError("label_only_ref needs label-only queries (Signals.correct).")
    use = np.ones_like(ref_keep, bool) if use is None else np.asarray(use, bool)
    ref = fraction_correct(signals.correct[references])[use]
    threshold = metrics.best_threshold(np.asarray(ref_keep, bool)[use], ref)
    return fraction_correct(signals.correct[target]) - threshold

