"""Settings that several experiments share, each written once (see :mod:`jaxpet.config`).

Each function returns a fresh dataclass field, so an experiment's config says
``precision: str = settings.precision()`` instead of restating the default,
the help text and the checks.
"""

from __future__ import annotations

from jaxpet import dpsgd, models, training
from jaxpet.attacks import label_only, lira, reference
from jaxpet.config import same_as, setting

_DP = ("dpsgd",)


def data_dir():
    return setting(None, "Folder with the datasets in their release layouts, as "
                   "../shared/data (default: $JAXPET_DATA_DIR; else a TFDS download where one "
                   "exists).")


def precision():
    return setting("float32", "Compute precision; parameters stay float32.",
                   choices=tuple(models.PRECISIONS))


def width_scale(help: str = "Multiplies the seed CNN widths (1.0 = the seed's; 0.25 for quick "
                "CPU runs).", when=None):
    return setting(1.0, help, low=0, low_open=True, high=16, when=when)


def strategy():
    return setting("auto", "How the ensemble's models run: auto (the fastest measured on this "
                   "backend), vmap, map (lax.map), loop (one model at a time). Results do not "
                   "depend on it.", choices=training.STRATEGIES)


def checkpoint_every():
    return setting(5, "Epochs between checkpoints of a training stage; a rerun resumes an "
                   "interrupted stage from its last checkpoint.", low=1)


def dp_noise_multiplier():
    return same_as(training.TrainConfig, "dp_noise_multiplier", when=("defense", _DP))


def dp_clip_norm():
    return same_as(training.TrainConfig, "dp_clip_norm", when=("defense", _DP))


def dp_delta():
    return same_as(dpsgd.DPConfig, "delta", when=("defense", _DP))


def lira_convention():
    return same_as(reference.AttackConfig, "lira_convention")


def fpr_rule():
    return same_as(reference.AttackConfig, "fpr_rule")


def rmia_signal():
    return setting("softmax", "RMIA's Pr(x|theta): softmax (the true class's probability) or "
                   "taylor_soft_margin (RMIA's released CIFAR-10 setting: temperature 2, margin "
                   "0.6, 4 Taylor terms).", choices=lira.RMIA_SIGNALS)


def label_only_shift():
    return setting(1, "Label-only attacks (Choquette-Choo et al. 2021): each example is queried "
                   "for its predicted label only, shifted by d = this many pixels (|dx| + |dy|; "
                   "see --label_only_translations).", low=0, high=4)


def lira_query_mode():
    return setting(
        "eval", "How the trained models are queried for their logits: eval (jaxpet's default, "
        "and the mode of every figure in the docs: inference mode, BatchNorm running "
        "statistics, the weights the models predict with, i.e. the 0.999 moving average under "
        "--recipe=lira) or train_batch_stats (LiRA's released inference.py: the raw weights, "
        "not their moving average, called in training mode, so BatchNorm normalises each batch "
        f"of up to {training.QUERY_BATCH_SIZES['train_batch_stats']:,} consecutive queries, and "
        "each flipped batch, with its own statistics; dropout stays off). The saved logits are "
        "kept per mode.", choices=training.QUERY_MODES)


def rmia_convention():
    return same_as(reference.AttackConfig, "rmia_convention")


def label_only_translations():
    return setting("ring", "Label-only translations (Choquette-Choo et al., ICML 2021, "
                   "'Label-Only Membership Inference Attacks'): ring (the image and its shifts "
                   "with |dx| + |dy| = --label_only_shift: 4d + 1 queries, as the authors' "
                   "code) or diamond (every shift with |dx| + |dy| <= the shift, jaxpet's "
                   "earlier table: more queries, more cost). The two are the same up to a "
                   "1-pixel shift.", choices=label_only.SHIFTS)


def label_only_flips(when=None):
    return setting(None, "Label-only attacks: also query each translation of the "
                   "horizontally flipped image, doubling the queries (default: on where a flip "
                   "keeps the class, e.g. CIFAR-10's objects; off for digits). Not in "
                   "Choquette-Choo et al.'s code, whose augmentation attacks are translations "
                   "and rotations without flips; on the CIFAR-10 quick preset flips raised the "
                   "label_only AUC from 0.69 to 0.73.", when=when)


def label_only_attack_model():
    return setting("pooled_mlp", "The label_only attack's model on the correct/incorrect "
                   "vector: pooled_mlp (one 64-unit ReLU MLP for all classes, "
                   "--attack_epochs; jaxpet's form, kept as it measured better: AUC 0.73 "
                   "against 0.67 on the CIFAR-10 quick preset with 10 queries) or per_class "
                   "(Choquette-Choo et al.'s code, ICML 2021: one net of two 10-unit leaky-ReLU "
                   "layers per true class, Adam, batch 1, one epoch, its learning rate picked "
                   "from 1e-3, 5e-3, 1e-2, 5e-2 on a held-out fifth of the shadow's data).",
                   choices=label_only.ATTACK_MODELS)
