"""An NNX model of "your own" for the audit: any ``nnx.Module`` called as ``module(x)``.

  PYTHONPATH=examples python experiments/audit.py --model=my_nnx_model:NNXMLP \
      --data=mnist --data_dir=../shared/data --pool_size=2000 --num_references=8 --epochs=30

jaxpet builds ``NNXMLP(num_classes, rngs=nnx.Rngs(...))`` once per reference model (each with
its own keys), splits it into graph and state, and trains the states at once; ``module.train()``
and ``module.eval()`` set the dropout's mode, as in your own NNX loop.
"""

from flax import nnx


class NNXMLP(nnx.Module):
    """Two hidden layers with dropout, as examples/my_model.py's Linen SmallMLP."""

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs, hidden: int = 256,
                 inputs: int = 784):
        self.layers = nnx.List([nnx.Linear(inputs, hidden, rngs=rngs),
                                nnx.Linear(hidden, hidden, rngs=rngs)])
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for layer in self.layers:
            x = self.dropout(nnx.relu(layer(x)))
        return self.out(x)
