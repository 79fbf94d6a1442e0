"""The ensemble trainer: K models of one architecture trained at once as one jitted program.

Design (pure-functional JAX), one module per concept:

* :mod:`~jaxpet.training.state`: :class:`ModelState` holds ONE model's parameters,
  BatchNorm statistics, optimiser state, random key, step count and early-stopping
  bookkeeping; an ensemble is the same pytree with a leading model axis of size K.
  :func:`train_step` updates one model on one batch (DP-SGD's gradient comes from
  :mod:`jaxpet.dpsgd`).
* :mod:`~jaxpet.training.trainer`: :func:`train_epoch` runs a whole epoch inside
  ``lax.scan``; ``jax.vmap`` (or ``lax.map``, or a host loop) maps it over the model
  axis and ``jax.jit`` compiles it once; the host only loops over epochs. Member
  sets of different sizes are padded to one length: padded rows are masked out of
  the loss, the accuracy and the BatchNorm statistics, so model k trains the same
  alone or inside a larger ensemble. K=1 is simply the plain single-model trainer.
* :mod:`~jaxpet.training.recipe`: a user's own optax optimiser and augmentation from Python
  (:class:`Recipe`, in ``TrainConfig.user_recipe``), checked against the model before training
  and identified by the programs it lowers to.
* :mod:`~jaxpet.training.sharding`: the model axis over a device mesh.
* :mod:`~jaxpet.training.checkpoints`: resumable, fingerprinted orbax checkpoints.
* :mod:`~jaxpet.training.inference`: posteriors and accuracy of a trained ensemble, queried
  in inference mode or, as LiRA's released code does, with BatchNorm on each query batch's
  own statistics (``QUERY_MODES``).
"""

from jaxpet.data import IDENTITY, Normalize
from jaxpet.training.checkpoints import Checkpoints, run_fingerprint
from jaxpet.training.inference import (
    QUERY_BATCH_SIZES,
    QUERY_MODES,
    QUERY_WEIGHTS,
    evaluate,
    evaluate_model,
    predict,
    query_batches,
    query_logits,
    query_variables,
    stack_models,
    take_model,
)
from jaxpet.training.recipe import Recipe, check_recipe, identity as recipe_identity
from jaxpet.training.sharding import default_mesh, model_mesh
from jaxpet.training.state import (
    AUGMENTATIONS,
    OPTIMIZERS,
    SCHEDULES,
    ModelState,
    TrainConfig,
    accepts_mask,
    augment_batch,
    init_ensemble,
    init_model_state,
    make_optimizer,
    model_keys,
    train_step,
)
from jaxpet.training.trainer import (
    AUTO_STRATEGY,
    STRATEGIES,
    TrainResult,
    check_run_flags,
    resolve_strategy,
    train_ensemble,
    train_ensemble_epoch,
    train_ensemble_epoch_mapped,
    train_epoch,
)

__all__ = [
    "AUGMENTATIONS", "AUTO_STRATEGY", "Checkpoints", "IDENTITY", "ModelState", "Normalize",
    "OPTIMIZERS", "QUERY_BATCH_SIZES", "QUERY_MODES", "QUERY_WEIGHTS", "Recipe", "SCHEDULES",
    "accepts_mask", "STRATEGIES", "TrainConfig", "TrainResult", "augment_batch", "check_recipe",
    "check_run_flags",
    "default_mesh", "evaluate", "evaluate_model", "init_ensemble", "init_model_state",
    "make_optimizer", "model_keys", "model_mesh", "predict", "query_batches", "query_logits",
    "query_variables", "recipe_identity", "resolve_strategy",
    "run_fingerprint", "stack_models", "take_model", "train_ensemble", "train_ensemble_epoch",
    "train_ensemble_epoch_mapped", "train_epoch", "train_step",
]
