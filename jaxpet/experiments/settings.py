"""Settings that several experiments share, each written once (see :mod:`jaxpet.config`).

Each function returns a fresh dataclass field, so an experiment's config says
``precision: str = settings.precision()`` instead of restating the default,
the help text and the checks.
"""

from __future__ import annotations

from jaxpet import metrics, models, training
from jaxpet.attacks import lira
from jaxpet.config import setting

_DP = ("dpsgd",)


def data_dir():
    return setting(None, "Folder with the datasets in their release layouts, as "
                   "../shared/data (default: $JAXPET_DATA_DIR; else a TFDS download where one "
                   "exists).")


def precision():
    return setting("float32", "Compute precision; parameters stay float32.",
                   choices=tuple(models.PRECISIONS))


def width_scale():
    return setting(1.0, "Multiplies the seed CNN widths (1.0 = the seed's; 0.25 for quick CPU "
                   "runs).", low=0, low_open=True, high=16)


def strategy():
    return setting("auto", "How the ensemble's models run: auto (the fastest measured on this "
                   "backend), vmap, map (lax.map), loop (one model at a time). Results do not "
                   "depend on it.", choices=training.STRATEGIES)


def checkpoint_every():
    return setting(5, "Epochs between checkpoints of a training stage; a rerun resumes an "
                   "interrupted stage from its last checkpoint.", low=1)


def dp_noise_multiplier():
    return setting(1.0, "DP-SGD noise std / clip norm.", low=0, low_open=True,
                   when=("defense", _DP))


def dp_clip_norm():
    return setting(1.0, "DP-SGD per-example gradient clip norm.", low=0, low_open=True,
                   when=("defense", _DP))


def dp_delta():
    return setting(1e-5, "delta at which DP-SGD's epsilon is reported.", low=0, high=1,
                   low_open=True, high_open=True, when=("defense", _DP))


def lira_convention():
    return setting(
        "paper", "How LiRA fits its Gaussians: paper (means, unbiased variances, the fixed "
        "variance pooled within examples, one-sided offline test: Carlini et al. 2022 as "
        "written) or code (medians, population variances, one global std of all IN scores, "
        "two-sided offline: the authors' released plotting code).",
        choices=tuple(lira.CONVENTIONS))


def fpr_rule():
    return setting("le", "TPR at FPR counts thresholds with FPR <= the level (le) or < it (lt, "
                   "LiRA's plotting code).", choices=metrics.FPR_RULES)


def rmia_signal():
    return setting("softmax", "RMIA's Pr(x|theta): softmax (the true class's probability) or "
                   "taylor_soft_margin (RMIA's released CIFAR-10 setting: temperature 2, margin "
                   "0.6, 4 Taylor terms).", choices=lira.RMIA_SIGNALS)


def label_only_shift():
    return setting(1, "Label-only attacks (Choquette-Choo et al. 2021): each example is queried "
                   "for its predicted label only, shifted by up to this many pixels (|dx| + |dy|) "
                   "and flipped where flips keep the class.", low=0, high=4)
