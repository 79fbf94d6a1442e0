"""The seed's on-device preprocessing: uint8 images -> normalised float32, per dataset."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxpet.data.containers import DataError


@dataclasses.dataclass(frozen=True)
class Normalize:
    """uint8 images -> float32 ``(x / 255 - mean) / std`` per channel, done on the device."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 255.0

    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32) / self.scale
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)


IDENTITY = Normalize(mean=(0.0,), std=(1.0,), scale=1.0)

# The seed's per-dataset normalisation (mean and std of pixels scaled to [0, 1]).
NORMALIZATION = {
    "mnist": Normalize(mean=(0.1307,), std=(0.3081,)),
    "cifar10": Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "att_faces": Normalize(mean=(0.0,), std=(1.0,)),  # pixels in [0, 1], as mi_face expects
    "utkface": Normalize(mean=(152.13768243 / 255, 116.5061518 / 255, 99.7395918 / 255),
                         std=(65.71289385 / 255, 58.56545956 / 255, 57.4306078 / 255)),
}


def normalizer(name: str) -> Normalize:
    """The seed's on-device preprocessing for dataset ``name`` (uint8 -> normalised float32)."""
    if name not in NORMALIZATION:
        raise DataError(f"Unknown dataset {name!r}; known: {', '.join(NORMALIZATION)}.")
    return NORMALIZATION[name]
