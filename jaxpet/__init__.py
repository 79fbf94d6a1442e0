"""jaxpet: privacy attacks on ML models, with many shadow models trained at once in JAX."""

__version__ = "0.1.0"
