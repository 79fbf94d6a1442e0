"""Trains "your own" target outside jaxpet (plain Flax + optax) and saves what an audit needs.

  python examples/train_my_target.py --data_dir=../shared/data --out=runs/my_target
  PYTHONPATH=examples python experiments/audit.py --model=my_model:make_classifier \
      --data=mnist --data_dir=../shared/data --target=checkpoint --preprocess=unit \
      --target_checkpoint=runs/my_target/target.msgpack \
      --target_members=runs/my_target/members.npy --num_references=8 --epochs=30 \
      --batch_size=64 --noflip_queries --workdir=runs/audit_my_target

Writes target.msgpack (flax.serialization.to_bytes of the variables) and members.npy (the
indices of the 1,000 MNIST training images it saw).
"""

import argparse
import pathlib

from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpet import data

import my_model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out", default="runs/my_target")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    mnist = data.load_dataset("mnist", args.data_dir)
    members = np.sort(np.random.default_rng(1).choice(len(mnist.train), args.members,
                                                       replace=False))
    x = jnp.asarray(mnist.train.images[members], jnp.float32) / 255.0
    y = jnp.asarray(mnist.train.labels[members])
    model = my_model.make_classifier(10)
    params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb, key):
        def loss(p):
            logits = model.apply({"params": p}, xb, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    key = jax.random.PRNGKey(1)
    for epoch in range(args.epochs):
        order = np.random.default_rng(epoch).permutation(len(members))
        for start in range(0, len(order), 64):
            key, sub = jax.random.split(key)
            batch = order[start:start + 64]
            params, opt_state = step(params, opt_state, x[batch], y[batch], sub)
    accuracy = float((model.apply({"params": params}, x).argmax(-1) == y).mean())
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "target.msgpack").write_bytes(serialization.to_bytes({"params": params}))
    np.save(out / "members.npy", members)
    print(f"train accuracy {accuracy:.4f}; wrote {out}/target.msgpack and members.npy")


if __name__ == "__main__":
    main()
