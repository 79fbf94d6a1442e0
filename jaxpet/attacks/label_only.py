"""Label-only membership inference: the data-augmentation attack of Choquette-Choo et al.
(ICML 2021).

The target is queried only for its predicted label, on augmented copies of each
candidate; a member tends to stay correctly classified under small changes, and
the signal is the vector of correct / incorrect over the queries.

**Queries** (:class:`Queries`). The authors' code (cchoquette/membership-inference,
``utils.create_translates`` and ``utils.apply_augment``) queries, for a shift ``d``,
the image itself and its 4d translations on the ring |dx| + |dy| = d: 4d + 1
queries, whole-pixel shifts with the edge repeated (``scipy.ndimage.shift``,
``mode='nearest'``). That is jaxpet's default, ``shifts="ring"``. ``"diamond"``
(jaxpet's earlier table) queries every shift with |dx| + |dy| <= d: 2d(d + 1) + 1
queries, the rings of every radius up to d, so it also sees the small shifts a
large-d ring skips, at more cost. It is the one to use for a learned attack at
d >= 2 when queries are cheap and for comparison with earlier runs; on the CIFAR-10
quick preset it did not beat the ring of the same d (pooled-MLP AUC 0.707 both
at d = 2, 13 against 9 queries; both above d = 1's 0.688). The two coincide for
d <= 1. In the authors' code flips are neither
combined with translations nor an attack of their own: the augmentation attacks
are translations (``d``) and rotations (``r``), run separately, and no query
flips. jaxpet's ``flips=True`` adds a second copy of the table on the horizontally
mirrored image (each shift applied after the flip), doubling the queries; use it
only where a flip keeps the class (objects, not digits). ``Queries()`` leaves it
off, as the authors; the membership experiment turns it on for CIFAR-10, where it
measured better (pooled-MLP AUC 0.689 -> 0.734, see below). Query 0 is always the
unaugmented image.

:func:`query_correct` runs every model on every augmentation of every example in
one jitted program (vmapped over models and over augmentations).

**Attacks**, fitted on shadow models as the paper does:

* ``label_only``: a learned model on the correct/incorrect vector, two forms.
  ``attack_model="per_class"`` is the authors' (``attacks.py``: ``AttackModel``,
  ``train_model``, ``train_best_attack_model``): one small net per true class (two
  hidden layers of 10 leaky-ReLU units, Glorot-normal init, Adam, batch 1, one
  epoch), its learning rate picked from {1e-3, 5e-3, 1e-2, 5e-2} on the shadow.
  Their code picks it by accuracy on the same shadow data the nets were trained
  on; jaxpet picks it on a held-out fifth of the shadow's examples (stratified
  by class and membership), then refits on all of them (``holdout=0`` gives the
  authors' rule). All classes and all rates train as one vmapped program.
  ``attack_model="pooled_mlp"`` (the default) is jaxpet's earlier form, kept
  because it measured better: one MLP of 64 ReLU units for all classes (Adam
  1e-3, batch 64, ``pooled_epochs``), which sees ten times the examples of a
  class net. On the CIFAR-10 quick preset (5,000 shadow examples, as the
  authors' 2,500 + 2,500) its target AUC was 0.689 against 0.673 with the 5 ring
  queries, 0.734 against 0.665 with 10 (ring + flips), 0.738 against 0.640 with
  26 (diamond d = 2 + flips), means of three attack seeds on one target. (The
  authors' code has a 64-unit net too, but as the model of its confidence-vector
  attack, not of the augmentation attacks.)
* ``label_only_threshold``: the fraction of queries classified correctly, with the
  most accurate threshold on the shadow (the authors' ``get_threshold``).

In the reference family, ``label_only_ref`` fits that threshold on the reference
models instead.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpet import metrics, progress, training
from jaxpet.attacks import registry
from jaxpet.attacks.registry import AttackOutput, LabeledPosteriors
from jaxpet.attacks.shadow import fit_attack_mlp
from jaxpet.data import IDENTITY

SHIFTS = ("ring", "diamond")
ATTACK_MODELS = ("per_class", "pooled_mlp")


@dataclasses.dataclass(frozen=True)
class Queries:
    """The augmentations queried: translations by up to ``max_shift`` pixels (``shifts``: the
    ring |dx| + |dy| = max_shift plus the image itself, as the authors' code; or the diamond
    |dx| + |dy| <= max_shift), optionally each also on the horizontally flipped image
    (``flips``, not in the authors' code)."""

    max_shift: int = 1
    flips: bool = False
    shifts: str = "ring"

    def __post_init__(self):
        if not isinstance(self.max_shift, (int, np.integer)) or not 0 <= self.max_shift <= 8:
            raise ValueError(f"max_shift must be an integer in [0, 8], got {self.max_shift!r}.")
        if self.shifts not in SHIFTS:
            raise ValueError(f"shifts must be one of {SHIFTS}, got {self.shifts!r}.")

    def offsets(self) -> list[tuple[int, int]]:
        """The (dx, dy) translations, (0, 0) first, then by radius |dx| + |dy| and (dx, dy)."""
        r = int(self.max_shift)
        radii = {0, r} if self.shifts == "ring" else set(range(r + 1))
        shifts = [(dx, dy) for dx in range(-r, r + 1) for dy in range(-r, r + 1)
                  if abs(dx) + abs(dy) in radii]
        return sorted(shifts, key=lambda s: (abs(s[0]) + abs(s[1]), s))

    def table(self) -> np.ndarray:
        """int32 [Q, 3]: (flip, dx, dy) of each query; query 0 is the image itself. dx moves
        the content right, dy down; the flipped rows (flip = 1) follow the unflipped ones."""
        rows = [(f, dx, dy) for f in ((0, 1) if self.flips else (0,))
                for dx, dy in self.offsets()]
        return np.asarray(rows, np.int32)

    @property
    def count(self) -> int:
        return len(self.table())

    def key(self) -> dict:
        """What the answers depend on, for stage keys. Before ``shifts`` existed every table
        was the diamond, so ``shifts`` is named only where the table differs from it (a ring
        of max_shift >= 2; the two coincide below): stages saved then stay valid."""
        key = dataclasses.asdict(self)
        if self.shifts == "diamond" or self.max_shift <= 1:
            del key["shifts"]
        return key


def augment(images, flip, dx, dy, max_shift: int):
    """[B, H, W, C] images flipped (if ``flip``) and shifted by (dx, dy) pixels, the edge rows
    and columns repeated: ``scipy.ndimage.shift(images, (0, dy, dx, 0), mode='nearest')`` for
    whole pixels, as the authors' ``apply_augment``. Jittable and vmappable over (flip, dx,
    dy); ``max_shift`` (static) bounds |dx| and |dy|."""
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
    """``attack_model="pooled_mlp"``: one MLP (64 ReLU units, Adam 1e-3, batch 64) for every
    class on the correct/incorrect vector, trained on the shadow's members and non-members.
    jaxpet's earlier label-only model, not the authors' (see :func:`per_class_attack`)."""
    config = training.TrainConfig(epochs=epochs, batch_size=min(64, len(shadow_correct)),
                                  learning_rate=1e-3, weight_decay=0.0, lr_decay=1.0,
                                  eval_batch_size=4096)
    output, info = fit_attack_mlp(shadow_correct, shadow_membership, target_correct,
                                  target_membership, hidden_sizes=(64,), train_config=config,
                                  seed=seed, log_prefix="attack label-only ")
    output.info.update(info)
    return output


@dataclasses.dataclass(frozen=True)
class LabelOnlyAttackConfig:
    """How ``label_only`` fits its model on the shadow's correct/incorrect vectors: one pooled
    MLP (``pooled_mlp``, the default: see the module docstring) or one net per class.

    The per-class settings are the authors' (``attacks.py``): ``AttackModel('d')`` has two
    hidden layers of 10 leaky-ReLU units (slope 0.01) and a 2-way softmax, Glorot-normal
    kernels; ``train_model`` trains one per true class with Adam, batch 1, one epoch;
    ``train_best_attack_model`` tries the learning rates 1e-3, 1e-2, 5e-3, 5e-2 and keeps the
    most accurate on the shadow. ``holdout`` is jaxpet's: the share of each (class,
    membership) group of the shadow held out to pick the rate, after which the nets are
    refitted on all of it; 0 picks by accuracy on the training data itself, as their code.
    Ties in held-out accuracy go to the lower held-out cross-entropy, then the smaller rate.
    """

    attack_model: str = "pooled_mlp"
    hidden_sizes: tuple[int, ...] = (10, 10)
    learning_rates: tuple[float, ...] = (1e-3, 5e-3, 1e-2, 5e-2)
    epochs: int = 1
    batch_size: int = 1
    holdout: float = 0.2
    pooled_epochs: int = 30  # attack_model="pooled_mlp" only

    def __post_init__(self):
        if self.attack_model not in ATTACK_MODELS:
            raise ValueError(f"attack_model must be one of {ATTACK_MODELS}, got "
                             f"{self.attack_model!r}.")
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ValueError(f"learning_rates must be positive, got {self.learning_rates}.")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}.")
        for name in ("epochs", "batch_size", "pooled_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")


class _ClassNet(nn.Module):
    """One class's attack net: leaky-ReLU hidden layers, two logits (non-member, member)."""

    hidden_sizes: tuple[int, ...] = (10, 10)

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.glorot_normal()
        for size in self.hidden_sizes:
            x = nn.leaky_relu(nn.Dense(size, kernel_init=init)(x), negative_slope=0.01)
        return nn.Dense(2, kernel_init=init)(x)


@functools.partial(jax.jit, static_argnames=("hidden_sizes", "epochs", "batch_size"))
def _fit_nets(features, membership, indices, counts, learning_rates, keys, *, hidden_sizes,
              epochs, batch_size):
    """M nets trained at once (vmapped): net m with Adam at ``learning_rates[m]`` on the rows
    ``indices[m, :counts[m]]``, reshuffled each epoch; padded rows and empty batches leave it
    unchanged. Returns the M nets' parameters ([M]-leading)."""
    net = _ClassNet(hidden_sizes)
    adam = optax.scale_by_adam(eps=1e-7)  # Keras's epsilon
    size = indices.shape[1]
    steps = -(-size // batch_size)
    positions = jnp.arange(size)
    valid_at = jnp.arange(steps * batch_size)

    def fit_one(rows, count, learning_rate, key):
        params = net.init(jax.random.fold_in(key, 0), features[:1])["params"]

        def epoch(carry, e):
            draws = jax.random.uniform(jax.random.fold_in(key, e + 1), (size,))
            order = jnp.argsort(jnp.where(positions < count, draws, 2.0))  # real rows first
            perm = jnp.pad(rows[order], (0, steps * batch_size - size))
            valid = valid_at < count

            def step(carry, s):
                params, opt = carry
                idx = jax.lax.dynamic_slice(perm, (s * batch_size,), (batch_size,))
                mask = jax.lax.dynamic_slice(valid, (s * batch_size,), (batch_size,))

                def loss(p):
                    logits = net.apply({"params": p}, features[idx])
                    ce = optax.softmax_cross_entropy_with_integer_labels(logits, membership[idx])
                    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1)

                direction, new_opt = adam.update(jax.grad(loss)(params), opt)
                new_params = jax.tree.map(lambda p, d: p - learning_rate * d, params, direction)
                keep = jnp.any(mask)
                select = lambda new, old: jax.tree.map(lambda n, o: jnp.where(keep, n, o), new,
                                                       old)
                return (select(new_params, params), select(new_opt, opt)), None

            return jax.lax.scan(step, carry, jnp.arange(steps))[0], None

        (params, _), _ = jax.lax.scan(epoch, (params, adam.init(params)), jnp.arange(epochs))
        return params

    return jax.vmap(fit_one)(indices, counts, learning_rates, keys)


@functools.partial(jax.jit, static_argnames=("hidden_sizes",))
def _member_probability(params, features, labels, *, hidden_sizes):
    """float [G, N]: P(member) of each example under its class's net, for G sets of C class
    nets (``params`` [G, C]-leading); labels outside [0, C) read class 0 (callers mask them)."""
    net = _ClassNet(hidden_sizes)
    per_net = lambda p: jax.nn.softmax(net.apply({"params": p}, features))[:, 1]
    probs = jax.vmap(jax.vmap(per_net))(params)  # [G, C, N]
    num_classes = probs.shape[1]
    cls = jnp.where((labels >= 0) & (labels < num_classes), labels, 0)
    return jnp.take_along_axis(probs, cls[None, None, :], axis=1)[:, 0]


def _cross_entropy(membership, probs) -> np.ndarray:
    """Mean binary cross-entropy of each row of ``probs`` [G, N]."""
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    m = np.asarray(membership, bool)
    return -np.where(m, np.log(p), np.log1p(-p)).mean(-1)


@dataclasses.dataclass(frozen=True)
class PerClassModel:
    """The fitted per-class attack: one net per true class seen in the shadow's data."""

    params: Any  # [C]-leading parameters of the C class nets
    hidden_sizes: tuple[int, ...]
    learning_rate: float
    selection: dict[float, dict[str, float]]  # learning rate -> its selection accuracy, loss
    seen: np.ndarray  # bool [C]: the shadow held examples of the class
    base_rate: float  # the shadow's share of members: the score of an unseen class

    def scores(self, correct, labels) -> np.ndarray:
        """P(member) of each example from its true class's net (the base rate for a class
        the shadow never showed)."""
        labels = np.asarray(labels, np.int64)
        probs = np.asarray(_member_probability(
            jax.tree.map(lambda x: x[None], self.params), jnp.asarray(correct, jnp.float32),
            jnp.asarray(labels, jnp.int32), hidden_sizes=self.hidden_sizes))[0]
        known = (labels >= 0) & (labels < len(self.seen))
        known[known] = self.seen[labels[known]]
        return np.where(known, probs, self.base_rate).astype(np.float64)


def _holdout_mask(labels, membership, share: float, rng: np.random.Generator) -> np.ndarray:
    """bool [N]: ``share`` of each (class, membership) group, at random (at least one row of
    a group of two or more, never its last)."""
    held = np.zeros(len(labels), bool)
    if share == 0:
        return held
    for cls in np.unique(labels):
        for m in (0, 1):
            rows = np.flatnonzero((labels == cls) & (membership == m))
            if len(rows) >= 2:
                take = min(max(1, int(round(share * len(rows)))), len(rows) - 1)
                held[rng.choice(rows, take, replace=False)] = True
    return held


def fit_per_class(correct, labels, membership,
                  config: LabelOnlyAttackConfig = LabelOnlyAttackConfig(), *,
                  seed: int = 0) -> PerClassModel:
    """The authors' attack model, fitted on a shadow's queries alone: ``correct`` (bool
    [N, Q]), true ``labels`` [N] and ``membership`` [N] (1: member).

    For each learning rate of ``config.learning_rates`` one net per class is trained on the
    shadow's rows of that class outside the held-out part; the rate whose nets are most
    accurate on the held-out part wins, and the nets are refitted on all rows at that rate.
    Every (rate, class) net of both fits trains in one vmapped program.
    """
    x = np.asarray(correct, np.float32)
    labels = np.asarray(labels, np.int64)
    membership = np.asarray(membership, np.int32)
    if x.ndim != 2 or len(x) != len(labels) or len(labels) != len(membership):
        raise ValueError(f"correct must be [N, Q] with N labels and memberships, got "
                         f"{x.shape}, {labels.shape}, {membership.shape}.")
    if len(x) == 0 or labels.min() < 0:
        raise ValueError("the per-class attack needs shadow examples with labels >= 0.")
    num_classes = int(labels.max()) + 1
    rng = np.random.default_rng([seed, 17])
    held = _holdout_mask(labels, membership, config.holdout, rng)
    rates = tuple(float(r) for r in config.learning_rates)
    stages = [~held] + ([np.ones(len(x), bool)] if held.any() else [])
    sets = [np.flatnonzero(use & (labels == c)) for use in stages for _ in rates
            for c in range(num_classes)]
    width = max(1, max(len(s) for s in sets))
    indices = np.zeros((len(sets), width), np.int32)
    for m, rows in enumerate(sets):
        indices[m, :len(rows)] = rows
    grid = len(rates) * num_classes
    keys = training.model_keys(seed, grid)
    params = _fit_nets(jnp.asarray(x), jnp.asarray(membership), jnp.asarray(indices),
                       jnp.asarray([len(s) for s in sets], jnp.int32),
                       jnp.asarray(np.tile(np.repeat(rates, num_classes), len(stages)),
                                   jnp.float32),
                       jnp.concatenate([keys] * len(stages)),
                       hidden_sizes=tuple(config.hidden_sizes), epochs=config.epochs,
                       batch_size=config.batch_size)
    by_rate = lambda stage: jax.tree.map(
        lambda p: p[stage * grid:(stage + 1) * grid].reshape(
            (len(rates), num_classes) + p.shape[1:]), params)
    # Selection on the held-out rows (on every row when nothing is held out: their rule).
    pick = held if held.any() else np.ones(len(x), bool)
    probs = np.asarray(_member_probability(by_rate(0), jnp.asarray(x[pick]),
                                           jnp.asarray(labels[pick], jnp.int32),
                                           hidden_sizes=tuple(config.hidden_sizes)))
    accuracy = ((probs >= 0.5) == membership[pick].astype(bool)).mean(-1)
    loss = _cross_entropy(membership[pick], probs)
    best = int(np.lexsort((np.arange(len(rates)), loss, -accuracy))[0])
    selection = {r: {"accuracy": float(a), "cross_entropy": float(c)}
                 for r, a, c in zip(rates, accuracy, loss, strict=True)}
    logging.info("label-only per-class attack: %s accuracy by learning rate %s; picked %g",
                 "held-out" if held.any() else "shadow",
                 {r: round(float(a), 4) for r, a in zip(rates, accuracy, strict=True)}, rates[best])
    final = jax.tree.map(lambda p: p[best], by_rate(len(stages) - 1))
    return PerClassModel(params=jax.device_get(final), hidden_sizes=tuple(config.hidden_sizes),
                         learning_rate=rates[best], selection=selection,
                         seen=np.bincount(labels, minlength=num_classes) > 0,
                         base_rate=float(membership.mean()))


def per_class_attack(shadow_correct, shadow_labels, shadow_membership, target_correct,
                     target_labels, target_membership,
                     config: LabelOnlyAttackConfig = LabelOnlyAttackConfig(), *,
                     seed: int = 0) -> AttackOutput:
    """``attack_model="per_class"``: :func:`fit_per_class` on the shadow, then each target
    example scored by its true class's net ("member" at P >= 0.5). The target's membership
    is used only for the report."""
    model = fit_per_class(shadow_correct, shadow_labels, shadow_membership, config, seed=seed)
    scores = model.scores(target_correct, target_labels)
    predictions = scores >= 0.5
    report = metrics.attack_report(target_membership, scores, predictions)
    report["learning_rate"] = model.learning_rate
    train = model.scores(shadow_correct, shadow_labels)
    info = {"model": model, "learning_rate": model.learning_rate, "selection": model.selection,
            "train_acc": float(np.mean((train >= 0.5) == np.asarray(shadow_membership, bool)))}
    return AttackOutput(scores=scores, predictions=predictions, report=report, info=info)


def _needs_queries(observed: LabeledPosteriors, who: str) -> np.ndarray:
    if observed.correct is None:
        raise ValueError(f"label-only attacks need the {who}'s label-only queries "
                         "(LabeledPosteriors.correct, from label_only.query_correct).")
    return observed.correct


def _options(config) -> LabelOnlyAttackConfig:
    """``config`` as given by an experiment: a LabelOnlyAttackConfig, or any other attack config
    (e.g. ShadowAttackConfig): the default model, its ``epochs`` the pooled MLP's."""
    if isinstance(config, LabelOnlyAttackConfig):
        return config
    return LabelOnlyAttackConfig(pooled_epochs=getattr(config, "epochs", 30))


@registry.register("label_only", family="shadow", needs=("correct",),
                   description="Choquette-Choo et al.: a model on which augmented copies "
                               "(translations, optionally flips) the model labels correctly: one "
                               "pooled MLP (default) or one small net per class (theirs), fitted "
                               "on the shadow")
def label_only(shadow: LabeledPosteriors, target: LabeledPosteriors, *, config=None,
               seed: int = 0) -> AttackOutput:
    options = _options(config)
    shadow_correct, target_correct = (_needs_queries(shadow, "shadow"),
                                      _needs_queries(target, "target"))
    if options.attack_model == "pooled_mlp":
        return mlp_attack(shadow_correct, shadow.membership, target_correct, target.membership,
                          epochs=options.pooled_epochs, seed=seed)
    return per_class_attack(shadow_correct, shadow.labels, shadow.membership, target_correct,
                            target.labels, target.membership, options, seed=seed)


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

