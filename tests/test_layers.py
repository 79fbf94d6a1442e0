"""The layer forms: each equals the library layer it stands in for, with its gradients, and
"auto" picks the measured one per backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import layers, models


def test_patch_conv_equals_flax_conv_on_the_same_parameters():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 7, 5))
    conv = models.nn.Conv(6, (3, 3), padding="SAME")
    variables = conv.init(jax.random.PRNGKey(1), x)
    patch = layers.PatchConv(6, (3, 3), padding="SAME")
    np.testing.assert_allclose(patch.apply(variables, x), conv.apply(variables, x), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_reshape_pooling_equals_window_pooling_and_its_gradient(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)  # continuous: no ties in a window
    window = layers.max_pool_2x2(x, "window")
    np.testing.assert_array_equal(layers.max_pool_2x2(x, "reshape"), window)
    weights = jax.random.normal(jax.random.PRNGKey(1), window.shape)
    grad = lambda impl: jax.grad(lambda v: jnp.sum(layers.max_pool_2x2(v, impl) * weights))(x)
    np.testing.assert_array_equal(grad("reshape"), grad("window"))
    with pytest.raises(ValueError, match="pool_impl"):
        layers.max_pool_2x2(x, "average")


@pytest.mark.parametrize("kernel_size, padding",
                         [((3, 3), "SAME"), ((3, 3), "VALID"), ((5, 3), "SAME")])
def test_slices_conv_equals_flax_conv_and_its_gradients(kernel_size, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 4))
    conv = models.nn.Conv(5, kernel_size, padding=padding)
    variables = conv.init(jax.random.PRNGKey(1), x)
    weights = jax.random.normal(jax.random.PRNGKey(2), conv.apply(variables, x).shape)
    for patches in ("slices", "patches"):
        form = layers.PatchConv(5, kernel_size, padding=padding, patches=patches)
        loss = lambda module: lambda v, x: jnp.sum(module.apply(v, x) * weights)
        np.testing.assert_allclose(form.apply(variables, x), conv.apply(variables, x), atol=1e-5)
        grads, expected = (jax.grad(loss(m), argnums=(0, 1))(variables, x) for m in (form, conv))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5),
                     grads, expected)
    with pytest.raises(ValueError, match="padding"):
        layers.PatchConv(5, padding="CIRCULAR").init(jax.random.PRNGKey(1), x)


def _batch_norm_loss(module, mask, variables):
    """A loss of the BatchNorm's output and of its updated running statistics."""
    def loss(params, x):
        y, state = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                use_running_average=False, mask=layers._row_mask(mask, x),
                                mutable=["batch_stats"])
        weights = jnp.sin(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))
        stats = state["batch_stats"]
        value = jnp.sum(y * weights) + jnp.sum(stats["mean"] * jnp.arange(stats["mean"].size))
        return value + jnp.sum(jnp.cos(stats["var"])), (y, state)
    return loss


@pytest.mark.parametrize("masked", [False, True])
def test_fused_batchnorm_equals_flax_batchnorm_with_its_gradients(masked):
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 5, 4, 3)) * 2 + 1
    mask = jnp.array([1, 1, 0, 1, 1, 0], bool) if masked else None
    flax_bn = models.nn.BatchNorm(momentum=layers.BATCHNORM_MOMENTUM)
    variables = flax_bn.init(jax.random.PRNGKey(1), x, use_running_average=False)
    fused = layers.FusedBatchNorm()
    assert jax.tree.structure(fused.init(jax.random.PRNGKey(1), x, use_running_average=False)) == \
        jax.tree.structure(variables)
    params = {"scale": jnp.arange(3.0) + 1, "bias": jnp.arange(3.0)}
    results = [jax.value_and_grad(_batch_norm_loss(m, mask, variables), argnums=(0, 1),
                                  has_aux=True)(params, x)
               for m in (fused, flax_bn)]
    (_, (y, state)), grads = results[0]
    (_, (y_ref, state_ref)), grads_ref = results[1]
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), state, state_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5),
                 grads, grads_ref)
    # Inference uses the running statistics, as nn.BatchNorm.
    np.testing.assert_allclose(fused.apply(variables, x, use_running_average=True),
                               flax_bn.apply(variables, x, use_running_average=True), atol=1e-6)


def test_auto_forms_resolve_per_backend(monkeypatch):
    assert (layers.resolve_conv_impl("auto"), layers.resolve_pool_impl("auto"),
            layers.resolve_batchnorm_impl("auto")) == (
                "slices", "reshape", "fused")  # tests run on CPU
    monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
    assert (layers.resolve_conv_impl("auto"), layers.resolve_pool_impl("auto"),
            layers.resolve_batchnorm_impl("auto")) == ("conv", "window", "flax")
    with pytest.raises(ValueError, match="batchnorm_impl"):
        models.seed_cnn("mnist", batchnorm_impl="cudnn")
