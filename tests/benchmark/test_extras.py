"""pyproject's install extras agree with the code: one torch pin, one JAX version range."""

import pathlib
import re
import tomllib

from jaxpet.benchmark import torch_reference

PYPROJECT = pathlib.Path(__file__).parents[2] / "pyproject.toml"
PROJECT = tomllib.loads(PYPROJECT.read_text())["project"]


def _jax_range(requirement: str) -> str:
    match = re.fullmatch(r"jax(\[[a-z0-9_-]+\])?\s*(.*)", requirement)
    assert match, requirement
    return match.group(2)


def test_the_torch_extra_is_the_reference_pin():
    assert PROJECT["optional-dependencies"]["torch"] == [torch_reference.TORCH_PIN]


def test_the_accelerator_extras_match_the_jax_dependency():
    (jax_dependency,) = [d for d in PROJECT["dependencies"] if re.match(r"jax\b(?!-)", d)]
    extras = PROJECT["optional-dependencies"]
    for name in ("cuda12", "cuda13", "tpu"):
        (requirement,) = extras[name]
        assert requirement.startswith(f"jax[{name}]")
        assert _jax_range(requirement) == _jax_range(jax_dependency)


def test_python_version_floor():
    # jax, flax, chex and orbax-checkpoint need Python 3.11.
    assert PROJECT["requires-python"] == ">=3.11"
