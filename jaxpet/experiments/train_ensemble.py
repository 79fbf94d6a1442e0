"""K seed CNNs trained at once on real data: each model's accuracy, and the speed.

Each model gets its own random member set from the train split, its own
initialisation, data order and dropout stream; all K train in one program
(checkpointed while training, reused on rerun). Test accuracy is on the test split.
"""

from __future__ import annotations

import dataclasses
import time

from absl import logging
import jax
import numpy as np

from jaxpet import (
    config as config_lib,
    data,
    distributed,
    files,
    models,
    page,
    report,
    runs,
    splits,
    stages,
    training,
)
from jaxpet.config import setting
from jaxpet.experiments import settings


@dataclasses.dataclass(frozen=True)
class Config:
    """One ensemble: which CNN, how many, trained how."""

    preset: str = setting("full", "The preset this config came from (recorded).", flag=False)
    dataset: str = setting("mnist", "Dataset to train on.", choices=("mnist", "cifar10"))
    data_dir: str | None = settings.data_dir()
    workdir: str | None = setting(None, "Output folder (default: "
                                  "runs/train_ensemble_<dataset>[_<preset>]).")
    num_models: int = setting(4, "K, the number of models trained at once.", low=1)
    role: str = setting("target", "Seed CNN width: target, or the half-width shadow.",
                        choices=("target", "shadow"))
    train_size: int = setting(15_000, "Members per model, drawn at random from the train split.",
                              low=1)
    epochs: int = config_lib.same_as(training.TrainConfig, "epochs", default=1)
    batch_size: int = config_lib.same_as(training.TrainConfig, "batch_size")
    learning_rate: float = config_lib.same_as(training.TrainConfig, "learning_rate",
                                              help="Adam learning rate (decayed x0.96 per epoch).")
    dropout: float = setting(0.0, "Dropout rate in the CNN.", low=0, high=1, high_open=True)
    precision: str = settings.precision()
    seed: int = setting(0, "Seed for member sets and model keys.", low=0)
    strategy: str = settings.strategy()
    checkpoint_every: int = settings.checkpoint_every()

    def __post_init__(self):
        config_lib.check(self)
        if self.batch_size > self.train_size:
            raise config_lib.ConfigError(f"--batch_size={self.batch_size} is larger than "
                                         f"--train_size={self.train_size} — lower it.")

    @property
    def output_dir(self) -> str:
        return self.workdir or config_lib.default_workdir(f"train_ensemble_{self.dataset}",
                                                          self.preset, PRESETS)


PRESETS = {
    "full": {},
    "quick": dict(num_models=2, train_size=2000),
}
PRESET_HELP = ("full: 4 models x 15,000 members x 1 epoch; quick: a few minutes on a CPU "
               "(2 models x 2,000 members).")
# Settings that cannot change what the ensemble stage computes (paths, how the models run).
NOT_IN_STAGE = ("preset", "data_dir", "workdir", "strategy", "checkpoint_every")

# The files a run writes besides config.json and results.json.
OUTPUTS = ("summary.md",)


def summary_path(config: Config) -> str:
    return f"{config.output_dir}/summary.md"


def run(config: Config, dataset: data.Dataset | None = None) -> dict:
    """Trains the ensemble (or reuses it), evaluates every model, writes results and summary."""
    with runs.Run(config.output_dir, config, outputs=OUTPUTS,
                  on_finish=page.write_page) as run_:
        if dataset is None:
            dataset = data.load_dataset(config.dataset, config.data_dir)
        train, test = dataset.train, dataset.test
        if config.train_size > len(train):
            raise config_lib.ConfigError(f"--train_size={config.train_size} is larger than the "
                                         f"train split ({len(train)}) — lower it.")
        key = stages.stage_key(config, ignore=NOT_IN_STAGE, data=dataset.digest)
        model = models.seed_cnn(config.dataset, config.role, dropout_rate=config.dropout,
                                precision=config.precision)
        stages.check_memory(model, config_lib.pick(config, training.TrainConfig), train.images[:1],
                            config.num_models, queried=0, num_classes=len(dataset.class_names),
                            pool_size=len(train), flag="--num_models")

        def train_and_evaluate():
            members = splits.random_member_sets(np.arange(len(train)), config.num_models,
                                                config.train_size, seed=config.seed)
            preprocess = data.normalizer(config.dataset)
            logging.info("Training %d %s-width %s CNNs on %d examples each", config.num_models,
                         config.role, config.dataset, config.train_size)
            tick = time.perf_counter()
            result = training.train_ensemble(
                model, train.images, train.labels, members,
                config_lib.pick(config, training.TrainConfig),
                seed=config.seed, preprocess=preprocess, strategy=config.strategy,
                checkpoint_dir=str(run_.stages.checkpoint_dir("ensemble", key)),
                checkpoint_every=config.checkpoint_every)
            seconds = time.perf_counter() - tick
            variables = result.variables()

            def evaluate(models: slice, test=test) -> dict[str, np.ndarray]:
                some = jax.tree.map(lambda a: a[models], variables)
                own = splits.MemberSets(members.indices[models], members.counts[models])
                test_sets = splits.MemberSets.replicate(np.arange(len(test)), own.num_models)
                return {"train_acc": training.evaluate(model, some, train.images, train.labels,
                                                       own, preprocess=preprocess)["accuracy"],
                        "test_acc": training.evaluate(model, some, test.images, test.labels,
                                                      test_sets, preprocess=preprocess)["accuracy"]}

            # Across processes each evaluates its own models, like it trained them.
            return (distributed.split_models(evaluate, config.num_models),
                    {"seconds_incl_compile": seconds})

        run_.expect("training", config.epochs * config.num_models * config.train_size,
                    stage="ensemble")
        arrays, info, _ = run_.stages.run("ensemble", key, train_and_evaluate)
        seconds = info["seconds_incl_compile"]
        results = run_.finish({
            "models": {"train_acc": arrays["train_acc"].tolist(),
                       "test_acc": arrays["test_acc"].tolist()},
            "seconds_incl_compile": seconds,
            "images_per_second": config.num_models * config.train_size * config.epochs / seconds,
        })
        rows = [[k, f"{a:.4f}", f"{b:.4f}"]
                for k, (a, b) in enumerate(zip(arrays["train_acc"], arrays["test_acc"],
                                                strict=True))]
        files.write_text(summary_path(config), (
            f"# {config.num_models} {config.role}-width {config.dataset} CNNs, trained at once\n\n"
            + report.markdown_table(["model", "train acc", "test acc"], rows)
            + f"\n{seconds:.1f} s with compilation, "
              f"{results['images_per_second']:.1f} images/s in all "
              f"({results['provenance']['backend']}).\n"))
        return results
