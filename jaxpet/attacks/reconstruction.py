"""Model inversion, scored: MI-FACE over every class, timed, and its reconstructions judged.

:func:`score` judges reconstructions against each class's mean training image
(MSE, SSIM), by classifiers (does the target, or an independently trained
evaluator, take the reconstruction for its class?) and by the nearest class mean
(pixel correlation, no model involved). :func:`invert_and_score` runs
:func:`jaxpet.attacks.mi_face.invert_classes` once over the classes, timed with
its compilation apart, and scores what it returns. The AT&T faces experiment
around them is :mod:`jaxpet.experiments.inversion`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jaxpet.attacks import mi_face
from jaxpet.metrics import correlation, mse, ssim

# A classifier that judges reconstructions: (apply_fn(params, pixels) -> logits, params).
Classifier = tuple[Callable, Any]


def score(images, targets, class_means, classifiers: Mapping[str, Classifier]) -> dict:
    """Per-class and mean MSE/SSIM against the class's mean training image, and identification.

    ``images`` [N, H, W, C] (pixels in [0, 1]) are reconstructions of classes ``targets``
    [N]; ``class_means`` [classes, H, W, C]. ``classifiers`` maps a name (target, evaluator)
    to (apply_fn, params); a reconstruction is identified when the classifier's top class
    is its class (``<name>_identified``: the share; ``<name>_predicted``, ``<name>_p_true``:
    per image). ``nearest_mean`` identifies it by the highest pixel correlation with the
    class means (no model involved).
    """
    images = np.asarray(images, np.float32)
    targets = np.asarray(targets)
    own = class_means[targets]
    out: dict[str, Any] = {"mse": mse(images, own), "ssim": ssim(images, own)}
    out["mse_mean"], out["ssim_mean"] = float(out["mse"].mean()), float(out["ssim"].mean())
    for name, (fn, params) in classifiers.items():
        probs = np.asarray(jax.nn.softmax(fn(params, jnp.asarray(images)).astype(jnp.float32)))
        predicted = probs.argmax(-1)
        out[f"{name}_predicted"] = predicted
        out[f"{name}_p_true"] = probs[np.arange(len(targets)), targets]
        out[f"{name}_identified"] = float(np.mean(predicted == targets))
    nearest = correlation(images, class_means).argmax(1)
    out["nearest_mean_predicted"] = nearest
    out["nearest_mean_identified"] = float(np.mean(nearest == targets))
    return out


def inversion_report(result: mi_face.Inversion, attack: mi_face.MIFaceConfig,
                     compile_seconds: float, run_seconds: float) -> dict:
    """An MI-FACE run's settings, seconds, costs, steps and why each class stopped."""
    reasons = result.stop_reasons
    return {
        "max_iterations": attack.max_iterations, "patience": attack.patience,
        "stopping": attack.stopping,
        "cost_threshold": attack.cost_threshold, "step_size": attack.step_size,
        "loss": attack.loss, "process": attack.process,
        "seconds": run_seconds, "compile_seconds": compile_seconds,
        "cost": np.asarray(result.cost), "cost_mean": float(np.mean(result.cost)),
        "iterations": np.asarray(result.iterations),
        "best_iteration": np.asarray(result.best_iteration),
        "stop_reason": reasons,
        "stop_reasons": {r: reasons.count(r) for r in sorted(set(reasons))},
    }


@dataclasses.dataclass(frozen=True)
class ScoredInversion:
    """One vmapped MI-FACE run over classes and its judgement."""

    result: mi_face.Inversion
    report: dict  # :func:`inversion_report` and :func:`score` in one
    targets: jax.Array  # [N] the classes inverted
    inits: jax.Array  # [N, H, W, C] their start images
    seconds: float  # the run, compilation excluded

    @property
    def images(self) -> np.ndarray:
        return np.asarray(self.result.image)

    @property
    def timing(self) -> tuple:
        """``vmapped_run`` of :func:`jaxpet.benchmark.inversion.time_vmap_vs_loop`: times a
        loop over the classes against this run without running it again."""
        return self.targets, self.inits, self.seconds, self.images


def invert_and_score(apply_fn: Callable, params, attack: mi_face.MIFaceConfig, *,
                     image_shape, init, class_means, classifiers: Mapping[str, Classifier],
                     targets=None, what: str = "mi_face") -> ScoredInversion:
    """Inverts classes ``targets`` (default: all) of ``apply_fn`` from start image ``init``
    with :func:`mi_face.invert_classes` in one call, timed (compilation apart), and scores
    the reconstructions (:func:`score`). ``what`` names the run in the log."""
    targets, inits = mi_face.prepare_inputs(apply_fn, params, targets, image_shape=image_shape,
                                            init=init, config=attack)
    compile_s, run_s, _, result = mi_face.timed(
        mi_face.invert_classes, apply_fn, attack, params, targets, inits)
    report = {**inversion_report(result, attack, compile_s, run_s),
              **score(result.image, np.asarray(targets), class_means, classifiers)}
    identified = ", ".join(f"{name} {100 * report[f'{name}_identified']:.0f}%"
                           for name in classifiers)
    logging.info("%s: %.1fs (+%.1fs compile), cost %.3f, MSE %.4f, SSIM %.3f, identified: %s; "
                 "stops %s", what, run_s, compile_s, report["cost_mean"], report["mse_mean"],
                 report["ssim_mean"], identified, report["stop_reasons"])
    return ScoredInversion(result, report, targets, inits, run_s)
