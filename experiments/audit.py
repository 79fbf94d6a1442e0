"""Audit your own model: membership-inference risk of any Flax classifier on your data.

  python experiments/audit.py --preset=quick   # MNIST, the built-in MLP: ~1 min on 2 CPU cores
  python experiments/audit.py --model=mypkg.models:make_classifier --data=my_data.npz
  python experiments/audit.py --model=mlp --data=features.npz --target=checkpoint \
      --target_checkpoint=target.msgpack --target_members=members.npy

Trains N reference models at once (and the target, unless you give yours), scores the target
with LiRA, RMIA and the loss baseline; writes results.json, summary.md, roc.png, scores.npz
and, for images, exposed.png.
"""

from jaxpet import cli
from jaxpet.experiments import audit

if __name__ == "__main__":
    cli.main(audit)
