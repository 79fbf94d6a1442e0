"""The stages experiments share, each written once: an ensemble trained on member sets and
queried for its logits, its models' accuracy, and the key that names a stage in the run store.

LiRA (every model the target in turn), the audit (a target and its references) and
any other experiment whose models are member sets over one array of examples go
through :func:`ensemble_logits`; what they do with the logits (attacks, metrics,
reports) reads the saved arrays only, so a rerun that reuses the stage scores
exactly what the first run scored.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import config as config_lib, distributed, splits, training
from jaxpet.attacks import label_only


def stage_key(config, *, ignore: Collection[str] = (), **resolved) -> dict[str, Any]:
    """The key of a stage: every field of ``config`` but those in ``ignore`` (the fields
    declared unable to change the stage's output: scoring knobs, paths, memory-only sizes),
    plus ``resolved`` (the data's digest, sizes resolved against the data, ...).

    A field added to a config is in every key by default, so a rerun can never reuse a stage
    computed under another value of it; only a field someone declares harmless is left out.
    """
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(ignore) - names)
    if unknown:  # a renamed field would otherwise slip into the key unnoticed
        raise ValueError(f"stage_key: {type(config).__name__} has no fields {unknown}.")
    return {**{n: getattr(config, n) for n in sorted(names - set(ignore))}, **resolved}


@dataclasses.dataclass(frozen=True)
class Execution:
    """How an ensemble runs, which never changes what it computes (so never in a key)."""

    strategy: str = "auto"
    checkpoint_dir: str | None = None
    checkpoint_every: int = 5
    log_prefix: str = ""


def ensemble_logits(model, x: np.ndarray, y: np.ndarray, member_sets: splits.MemberSets,
                    train_config: training.TrainConfig, *, queries: Mapping[str, np.ndarray],
                    seed: int, preprocess: Callable, execution: Execution = Execution(),
                    flips: bool = True, query_mode: str = "eval", eval_batch_size: int = 256,
                    prepend: Any = None,
                    label_only_probe: tuple[label_only.Queries, np.ndarray, np.ndarray] | None
                    = None, validation: splits.MemberSets | None = None,
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Trains one model per row of ``member_sets`` (over ``x``, ``y``) at once, then saves
    every model's logits [models, examples, queries, classes] on each of ``queries`` (name ->
    inputs), with horizontal flips as a second query when ``flips``.

    ``prepend``: variables of models trained elsewhere (a user's target, with a leading model
    axis), queried first, so their rows come before the trained ones. ``label_only_probe``
    (queries, images, labels): also save ``correct`` [models, examples, queries], whether each
    model labels each augmentation of those images right (:func:`label_only.query_correct`).
    The arrays are returned with ``final_loss`` [trained models]; the info with the seconds
    spent training and predicting, the epochs run and, under early stopping, each model's
    best epoch.
    """
    result = training.train_ensemble(
        model, x, y, member_sets, train_config, seed=seed, preprocess=preprocess,
        validation=validation, log_prefix=execution.log_prefix,
        mesh=training.default_mesh(execution.strategy), strategy=execution.strategy,
        checkpoint_dir=execution.checkpoint_dir, checkpoint_every=execution.checkpoint_every)
    tick = time.perf_counter()
    # eval: the weights the models predict with; train_batch_stats: the raw weights in
    # training mode, at LiRA's query batch, one model per call (a 5,000-image batch's memory).
    variables = training.query_variables(result.state, query_mode)
    if prepend is not None:
        variables = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), prepend, variables)
    eval_mode = query_mode == "eval"

    def query(models: slice) -> dict[str, np.ndarray]:
        """The logits (and label-only answers) of the models in ``models``."""
        some = jax.tree.map(lambda a: a[models], variables)
        arrays = {name: training.query_logits(
            model, some, inputs, preprocess=preprocess, flips=flips, mode=query_mode,
            batch_size=eval_batch_size if eval_mode else None,
            models_per_call=None if eval_mode else 1) for name, inputs in queries.items()}
        if label_only_probe is not None:
            probe, images, labels = label_only_probe
            arrays["correct"] = label_only.query_correct(model, some, images, labels, probe,
                                                         preprocess=preprocess,
                                                         batch_size=eval_batch_size)
        return arrays

    # Across processes each queries its own share of the models; all get every model's rows.
    arrays = distributed.split_models(query, jax.tree.leaves(variables)[0].shape[0])
    arrays["final_loss"] = np.asarray(result.history[-1]["loss"], np.float32)
    return arrays, {"train_seconds": result.seconds,
                    "predict_seconds": time.perf_counter() - tick,
                    "epochs_run": len(result.history),
                    "best_epoch": (np.asarray(result.state.best_epoch).tolist()
                                   if train_config.early_stopping else None)}


def check_memory(model, train_config: training.TrainConfig, sample, num_models: int, *,
                 queried: int, num_classes: int, queries: int = 1, pool_size: int = 0,
                 flag: str, besides: int = 0) -> None:
    """Refuses, before anything is allocated, an ensemble whose smallest possible footprint
    does not fit: the ``num_models`` models' state (parameters, optimiser state, BatchNorm
    statistics, and as much again for the gradients) on the device, and their logits
    (``queried`` examples x ``queries`` x ``num_classes`` each) and member masks over
    ``pool_size`` examples in host memory. A lower bound (activations come on top), so a
    refusal is certain; ``flag`` names the setting to lower, which counts all the models but
    ``besides`` (e.g. the audit's target)."""
    from jaxpet.benchmark import memory  # local: the memory model compiles nothing here

    one = memory.state_bytes(model, train_config, sample)
    state = num_models * (2 * one["parameter_bytes"] + one["optimizer_state_bytes"]
                          + one["batch_stats_bytes"])
    host = num_models * (queried * queries * num_classes * 4 + pool_size * 8 * 3)
    device, source = memory.device_memory_bytes()
    for need, have, what, where in (
            (state, device, "the models' parameters, gradients and optimiser state", source),
            (host, memory.physical_memory_bytes(), "their logits and member masks",
             "host memory")):
        if need > have:
            per_model = need / num_models
            raise config_lib.ConfigError(
                f"{flag}={num_models - besides} needs at least {memory.human_bytes(need)} for "
                f"{what} alone, more than the {memory.human_bytes(have)} of {where} — lower it "
                f"to at most {max(1, int(have // per_model) - besides)} (fewer fit in practice: "
                "activations come on top).")


def accuracy(logits: np.ndarray, labels: np.ndarray, keep: np.ndarray,
             population_logits: np.ndarray, population_labels: np.ndarray) -> dict[str, list]:
    """Each model's accuracy (first query) on its members, on the candidates it did not train
    on, and on the population: lists over models."""
    hits = logits[:, :, 0].argmax(-1) == labels[None]
    test = population_logits[:, :, 0].argmax(-1) == population_labels[None]
    keep = keep.astype(bool)
    return {"train_acc": [float(h[k].mean()) for h, k in zip(hits, keep, strict=True)],
            "pool_non_member_acc": [float(h[~k].mean()) for h, k in zip(hits, keep, strict=True)],
            "test_acc": [float(t) for t in test.mean(1)]}
