"""Membership attacks scored from your models' logits, computed anywhere (PyTorch, ...).

  python experiments/score.py --logits=logits.npz --workdir=runs/score_mine

The .npz holds every model's logits on the examples, their labels, each model's membership of
them (keep) and which model is the target (docs/score_logits.md: how to write it from
PyTorch). Nothing is trained: LiRA, RMIA (with population logits) and the loss baseline score
the target with the other models as its references; writes results.json, summary.md, roc.png,
scores.npz and report.html.
"""

from jaxpet import cli
from jaxpet.experiments import score

if __name__ == "__main__":
    cli.main(score)
