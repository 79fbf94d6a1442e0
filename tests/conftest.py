"""Suite-wide set-up: compiling, not running, is most of this suite's time on a CPU.

A tiny CNN's training epoch takes seconds to compile and milliseconds to run, so:

* One XLA compilation cache for the session. Many tests build programs that are the same
  XLA computation under different Python arguments (e.g. a TrainConfig differing only in
  its number of epochs, which ``init_ensemble`` takes as a static argument), so jit's own
  in-memory cache misses them. JAX's persistent compilation cache, keyed by the computation
  itself, serves those: pointed at a fresh folder per session (removed at the end), it
  compiles each distinct program once. Nothing is shared between sessions.
* XLA's CPU backend at LLVM optimisation level 1 instead of its default: the same HLO
  (same fusions, same arithmetic, so the same results: every test's assertions are
  unchanged), machine code optimised less, compiled in about half the time. Set
  ``XLA_FLAGS=--xla_backend_optimization_level=N`` yourself to test at another level
  (``JAXPET_TEST_XLA_OPT_LEVEL=default`` keeps XLA's own default).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Before JAX creates its CPU backend, which reads XLA_FLAGS once.
_OPT_FLAG = "--xla_backend_optimization_level"
_OPT_LEVEL = os.environ.get("JAXPET_TEST_XLA_OPT_LEVEL", "1")
if _OPT_LEVEL != "default" and _OPT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_OPT_FLAG}={_OPT_LEVEL}".strip()

import jax  # noqa: E402  (after XLA_FLAGS)

_CACHE_DIR: str | None = None


def pytest_configure(config):
    global _CACHE_DIR
    _CACHE_DIR = tempfile.mkdtemp(prefix="jaxpet-tests-xla-cache-")
    jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
    # Only programs worth caching: the many tiny eager-op compiles would cost more to write.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if _CACHE_DIR is not None:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


def _main_error(name: str, argv: list[str]) -> str:
    """Runs experiment ``name`` as its main would, in process, on flags ``argv``, expecting a
    user error; returns the error line it exits with."""
    import importlib

    from absl import flags

    from jaxpet import cli, config

    module = importlib.import_module(f"jaxpet.experiments.{name}")
    values = flags.FlagValues()
    presets = getattr(module, "PRESETS", None) or None
    config.define_flags(module.Config, presets=presets, flag_values=values, module_name="t")
    values(["prog", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli.guarded(lambda: module.run(config.from_flags(module.Config, presets=presets,
                                                         flag_values=values)))
    return str(exit_.value.code)


@pytest.fixture
def main_error():
    """:func:`_main_error`: an experiment's one-line error for a command line."""
    return _main_error

