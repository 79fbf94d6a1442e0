"""A model of "your own" for the audit example: any Flax module called as module(x, train).

  PYTHONPATH=examples python experiments/audit.py --model=my_model:make_classifier \
      --data=mnist --data_dir=../shared/data --pool_size=2000 --num_references=8 --epochs=30

jaxpet imports ``make_classifier``, calls it with the number of classes and trains the
target and the reference models from the module it returns.
"""

import flax.linen as nn


class SmallMLP(nn.Module):
    """Two hidden layers with dropout: no BatchNorm, no jaxpet-specific arguments."""

    num_classes: int
    hidden: int = 256

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        for _ in range(2):
            x = nn.relu(nn.Dense(self.hidden)(x))
            x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def make_classifier(num_classes: int) -> nn.Module:
    return SmallMLP(num_classes)
