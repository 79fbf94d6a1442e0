"""mi_face's speed: all classes in one vmapped call against a Python loop over classes."""

from __future__ import annotations

import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jaxpet import models
from jaxpet.attacks import mi_face


def time_vmap_vs_loop(apply_fn, params, attack: mi_face.MIFaceConfig, image_shape,
                      vmapped_run=None, init=None) -> dict:
    """Seconds for all classes x ``attack.max_iterations``: one vmapped call against a Python
    loop calling the same jitted single-class function per class (compile times excluded).

    ``vmapped_run``: (targets, inits, seconds, images) of a vmapped run with this same config,
    to time only the loop.
    """
    if vmapped_run is None:
        targets, inits = mi_face.prepare_inputs(apply_fn, params, image_shape=image_shape,
                                                init=init, config=attack)
        _, vmap_s, _, vmapped = mi_face.timed(mi_face.invert_classes, apply_fn, attack, params,
                                              targets, inits)
        vmapped_images = np.asarray(vmapped.image)
    else:
        targets, inits, vmap_s, vmapped_images = vmapped_run
    compile_s, first_s, compiled, first = mi_face.timed(mi_face.invert_class, apply_fn, attack,
                                                        params, targets[0], inits[0])
    tick = time.perf_counter()
    outs = [first] + [compiled(params, targets[i], inits[i]) for i in range(1, len(targets))]
    outs = jax.block_until_ready(outs)
    loop_s = first_s + time.perf_counter() - tick
    looped = np.stack([np.asarray(o.image) for o in outs])
    diff = float(np.max(np.abs(looped - vmapped_images)))
    logging.info("speed: vmapped %.2fs, loop %.2fs (%.1fx); max |difference| %.2g", vmap_s, loop_s,
                 loop_s / vmap_s, diff)
    return {"classes": int(len(targets)), "iterations": attack.max_iterations,
            "backend": jax.default_backend(), "vmap_seconds": vmap_s, "loop_seconds": loop_s,
            "ratio": loop_s / vmap_s, "loop_compile_seconds": compile_s,
            "max_abs_image_difference": diff}


def measure_inversion(num_classes: int = 40, iterations: int = 100, hidden: int = 3000,
                      image_shape=(112, 92, 1), seed: int = 0) -> dict[str, Any]:
    """mi_face over ``num_classes`` classes x ``iterations`` steps: vmapped vs a loop per class.

    The face MLP of the seed's Task 2 with random weights: a fixed-budget run
    costs the same whatever the weights, and the data is not needed.
    """
    model = models.face_mlp(num_classes, hidden)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + tuple(image_shape)))
    attack = mi_face.MIFaceConfig(max_iterations=iterations, loss="cross_entropy")
    return time_vmap_vs_loop(mi_face.flax_apply(model), params, attack, image_shape)
