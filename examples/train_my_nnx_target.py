"""Trains "your own" NNX target outside jaxpet (plain NNX + optax) and saves it with orbax.

  PYTHONPATH=examples python examples/train_my_nnx_target.py --data_dir=../shared/data \
      --out=runs/my_nnx_target
  PYTHONPATH=examples python experiments/audit.py --model=my_nnx_model:NNXMLP \
      --data=mnist --data_dir=../shared/data --target=checkpoint --preprocess=unit \
      --target_checkpoint=runs/my_nnx_target/state \
      --target_members=runs/my_nnx_target/members.npy --num_references=8 --epochs=30 \
      --batch_size=64 --noflip_queries --workdir=runs/audit_my_nnx_target

Writes state/ (the model's ``nnx.state``, saved with orbax's StandardCheckpointer) and
members.npy (the indices of the 1,000 MNIST training images it saw).
"""

import argparse
import pathlib

from flax import nnx
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxpet import data

import my_nnx_model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out", default="runs/my_nnx_target")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    mnist = data.load_dataset("mnist", args.data_dir)
    members = np.sort(np.random.default_rng(1).choice(len(mnist.train), args.members,
                                                       replace=False))
    x = mnist.train.images[members].astype(np.float32) / 255.0
    y = mnist.train.labels[members]
    model = my_nnx_model.NNXMLP(10, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb):
        def loss(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()
        optimizer.update(model, nnx.grad(loss)(model))

    model.train()
    for epoch in range(args.epochs):
        order = np.random.default_rng(epoch).permutation(len(members))
        for start in range(0, len(order), 64):
            batch = order[start:start + 64]
            step(model, optimizer, x[batch], y[batch])
    model.eval()
    accuracy = float((model(x).argmax(-1) == y).mean())
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(out / "state", nnx.state(model), force=True)
    np.save(out / "members.npy", members)
    print(f"train accuracy {accuracy:.4f}; wrote {out}/state and members.npy")


if __name__ == "__main__":
    main()
