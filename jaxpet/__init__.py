"""jaxpet: privacy attacks on ML models, with many shadow models trained at once in JAX.

From Python: ``jaxpet.audit(model, (x, y), ...)`` audits a model (Linen or NNX) on arrays, and
``jaxpet.score_logits(logits, labels, keep, ...)`` scores logits computed anywhere; both return
a :class:`jaxpet.api.AuditResult` (see :mod:`jaxpet.api`).
"""

__version__ = "0.1.0"

_API = ("audit", "score_logits", "AuditResult")


def __getattr__(name: str):
    """The Python API, imported on first use (``import jaxpet`` stays light)."""
    if name in _API:
        from jaxpet import api

        return getattr(api, name)
    raise AttributeError(f"module 'jaxpet' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
