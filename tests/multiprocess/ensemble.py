"""The ensemble the multi-process equality test trains, in one process (imported by
tests/test_distributed.py) and across several (run as each process's script):

    python -m jaxpet.launch --num_processes=2 --local_devices=2 -- \\
        tests/multiprocess/ensemble.py OUT.npz

where the writer saves every model's final variables and each epoch's metrics to OUT.npz.
"""

import sys

import jax
import numpy as np

from jaxpet import distributed, files, models, splits, training

NUM_MODELS = 6  # over 2 processes x 2 devices: padded to 8, the padding dropped


def train() -> training.TrainResult:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 192)
    images = (rng.normal(size=(192, 8, 8, 1)) + labels[:, None, None, None] / 5).astype(
        np.float32)
    members = splits.random_member_sets(np.arange(192), NUM_MODELS, 64, seed=0)
    validation = splits.random_member_sets(np.arange(192), NUM_MODELS, 32, seed=1)
    model = models.seed_cnn("mnist", "shadow", dropout_rate=0.1)
    config = training.TrainConfig(epochs=3, batch_size=16)
    return training.train_ensemble(model, images, labels, members, config, seed=3,
                                   validation=validation)


def arrays(result: training.TrainResult) -> dict[str, np.ndarray]:
    """Every model's final variables and each epoch's metrics, as named arrays."""
    history = {f"history/{e}/{k}": np.asarray(v) for e, row in enumerate(result.history)
               for k, v in row.items() if k != "seconds"}
    return {**files.tree_to_arrays("variables", result.variables()), **history,
            "devices": np.asarray(jax.device_count())}


if __name__ == "__main__":
    distributed.initialize()  # from the launcher's environment
    trained = arrays(train())
    files.write_npz(sys.argv[1], **trained)  # the writer's alone (files skips the others)
