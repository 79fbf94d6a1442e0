"""DP-SGD as a membership-inference defence: attack strength against epsilon and accuracy.

One membership run without a defence with the seed's BatchNorm CNN, one with
the GroupNorm CNN the DP runs use (so the curve separates DP-SGD from the
normalisation), and one DP-SGD run per noise multiplier, each in
``<workdir>/<name>/``. A rerun reuses every trained stage. Writes
``results.json``, ``privacy_curve.png`` and ``privacy_curve.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxpet import config as config_lib, files, page, report, runs
from jaxpet.config import inherit, setting
from jaxpet.experiments import membership


@dataclasses.dataclass(frozen=True)
class Config:
    """The runs of the curve: a membership preset, its overrides and the noise multipliers."""

    dataset: str = inherit(membership.Config, "dataset", default="cifar10")
    data_dir: str | None = inherit(membership.Config, "data_dir")
    workdir: str | None = setting(None, "Output folder (default: "
                                  "runs/dp_curve_<dataset>_<preset>).")
    preset: str = setting("seed", "The preset this config came from (recorded); every run of "
                          "the curve starts from membership.py's preset of that name.",
                          choices=tuple(membership.PRESETS), flag=False)
    noise_multipliers: tuple[float, ...] = setting((0.5, 1.0, 2.0), "DP-SGD noise multipliers, "
                                                   "one run each.", low=0, low_open=True)
    dp_clip_norm: float = inherit(membership.Config, "dp_clip_norm", default=1.0)
    dp_delta: float = inherit(membership.Config, "dp_delta", default=1e-5)
    epochs: int | None = inherit(membership.Config, "epochs")
    train_size: int | None = inherit(membership.Config, "train_size")
    width_scale: float | None = inherit(membership.Config, "width_scale")
    val_size: int | None = inherit(membership.Config, "val_size")
    attack_epochs: int | None = inherit(membership.Config, "attack_epochs")
    batch_size: int | None = inherit(membership.Config, "batch_size")
    seed: int = inherit(membership.Config, "seed", default=0)

    def __post_init__(self):
        config_lib.check(self)
        if not self.noise_multipliers:
            raise config_lib.ConfigError("--noise_multipliers needs at least one value.")

    @property
    def output_dir(self) -> str:
        return self.workdir or f"runs/dp_curve_{self.dataset}_{self.preset}"

    def run_configs(self) -> list[tuple[str, membership.Config]]:
        """(name, membership config) of every point of the curve."""
        overrides = {k: getattr(self, k) for k in ("epochs", "train_size", "width_scale",
                                                   "val_size", "attack_epochs", "batch_size")
                     if getattr(self, k) is not None}
        base = dict(dataset=self.dataset, data_dir=self.data_dir, seed=self.seed, **overrides)
        make = lambda name, **kw: (name, membership.get_config(
            self.preset, workdir=f"{self.output_dir}/{name}", **base, **kw))
        dp = dict(defense="dpsgd", dp_clip_norm=self.dp_clip_norm, dp_delta=self.dp_delta)
        return ([make("none", defense="none"), make("none_groupnorm", defense="none", norm="group")]
                + [make(f"dpsgd_sigma{s:g}", dp_noise_multiplier=float(s), **dp)
                   for s in self.noise_multipliers])


# Named configurations (each membership run takes membership.py's preset of the same name);
# explicit flags override them. "quick" fits a 2-core CPU in minutes.
PRESETS = {"seed": {}, "quick": dict(noise_multipliers=(1.0,), epochs=10)}
PRESET_HELP = ("seed: every run at the write-up's full membership configuration; quick: "
               "membership's quick preset (quarter-width CNNs, 2,500 members) at 10 epochs, "
               "with one DP-SGD run (noise multiplier 1).")

# The files a run writes besides config.json and results.json.
OUTPUTS = ("privacy_curve.png", "privacy_curve.md")


def summary_path(config: Config) -> str:
    return f"{config.output_dir}/privacy_curve.md"


def run(config: Config, dataset=None) -> dict[str, Any]:
    """Every point of the curve (finished stages reused), then the figure and the table."""
    points_configs = config.run_configs()  # every run's flags are checked before any training
    with runs.Run(config.output_dir, config, outputs=OUTPUTS,
                  on_finish=page.write_page) as run_:
        points = []
        for name, point_config in points_configs:
            results = membership.run(point_config, dataset)
            privacy = results.get("privacy") or {}
            points.append({
                "name": name, "defense": point_config.defense,
                "noise_multiplier": privacy.get("noise_multiplier"),
                "epsilon": privacy.get("epsilon"),  # None: no DP
                "target_test_acc": results["target"]["test_acc"],
                "target_train_acc": results["target"]["train_acc"],
                "attacks": {a: {"auc": r["auc"], "tpr_at_0.1%fpr": r["tpr_at_fpr"]["0.001"],
                                "accuracy": r["accuracy"]} for a, r in results["attacks"].items()},
            })
        files.save_figure(report.privacy_curve_figure(
            points, title=f"{config.dataset}: DP-SGD against membership inference"),
            run_.path / "privacy_curve.png", dpi=110)
        files.write_text(summary_path(config), privacy_curve_markdown(points, config.dp_delta))
        return run_.finish({"delta": config.dp_delta, "points": points})


def privacy_curve_markdown(points: list[dict], delta: float) -> str:
    rows = []
    for p in points:
        eps = "no DP" if p["epsilon"] is None else f"{p['epsilon']:.2f}"
        a = p["attacks"]
        rows.append([p["name"], eps, report.pct(p["target_train_acc"]),
                     report.pct(p["target_test_acc"]), f"{a['shadow_mlp']['auc']:.3f}",
                     f"{a['loss']['auc']:.3f}",
                     report.pct(max(r["tpr_at_0.1%fpr"] for r in a.values()))])
    return (f"epsilon at delta = {delta:g}\n\n" + report.markdown_table(
        ["run", "epsilon", "target train (%)", "target test (%)", "shadow-MLP AUC", "loss AUC",
         "best TPR@0.1%FPR (%)"], rows))
