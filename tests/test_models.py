"""Model shapes, widths and exposed representations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import models


def _num_params(variables):
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("dataset, shape", [("cifar10", (2, 32, 32, 3)), ("mnist", (2, 28, 28, 1))])
def test_seed_cnn_widths_and_output(dataset, shape):
    x = jnp.zeros(shape)
    target, shadow = models.seed_cnn(dataset, "target"), models.seed_cnn(dataset, "shadow")
    assert (target.conv1, target.conv2, target.fc) == models.SEED_CNN_WIDTHS[(dataset, "target")]
    assert (shadow.conv1, shadow.conv2, shadow.fc) == tuple(w // 2 for w in (target.conv1, target.conv2, target.fc))
    vt = target.init(jax.random.PRNGKey(0), x)
    vs = shadow.init(jax.random.PRNGKey(0), x)
    assert target.apply(vt, x).shape == (2, 10)
    assert "batch_stats" in vt
    assert _num_params(vs) < _num_params(vt) / 2


def test_seed_cnn_dropout_only_in_training():
    model = models.seed_cnn("mnist", "shadow", dropout_rate=0.5)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))
    a, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)}, mutable=["batch_stats"])
    b, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)}, mutable=["batch_stats"])
    assert not np.allclose(a, b)


def test_face_and_attack_mlps():
    face = models.face_mlp()
    x = jnp.zeros((3, 112, 92, 1))
    variables = face.init(jax.random.PRNGKey(0), x)
    assert face.apply(variables, x).shape == (3, 40)
    assert variables["params"]["Dense_0"]["kernel"].shape == (112 * 92, 3000)
    attack = models.attack_mlp()
    va = attack.init(jax.random.PRNGKey(0), jnp.zeros((5, 3)))
    assert attack.apply(va, jnp.zeros((5, 3))).shape == (5, 2)
    assert va["params"]["Dense_0"]["kernel"].shape == (3, 128)


def test_lenet_exposes_representations():
    model = models.LeNet(num_classes=2)
    x = jnp.ones((2, 50, 50, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    assert model.apply(variables, x).shape == (2, 2)
    assert models.representation(model, variables, x, "fc2").shape == (2, 64)
    assert models.representation(model, variables, x, "fc1").shape == (2, 128)
    assert models.representation(model, variables, x, "conv3").shape == (2, 6 * 6 * 64)
    with pytest.raises(ValueError, match="fc9"):
        models.representation(model, variables, x, "fc9")


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="precision"):
        models.seed_cnn("cifar10", precision="float8")
    with pytest.raises(ValueError, match="svhn"):
        models.seed_cnn("svhn")


def test_bfloat16_compute_with_float32_params():
    model = models.seed_cnn("mnist", "shadow", precision="bfloat16")
    x = jnp.zeros((2, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert model.apply(variables, x).dtype == jnp.bfloat16


def test_patch_conv_equals_flax_conv_on_the_same_parameters():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 7, 5))
    conv = models.nn.Conv(6, (3, 3), padding="SAME")
    variables = conv.init(jax.random.PRNGKey(1), x)
    patch = models.PatchConv(6, (3, 3), padding="SAME")
    np.testing.assert_allclose(patch.apply(variables, x), conv.apply(variables, x), atol=1e-5)


@pytest.mark.parametrize("dataset, shape", [("cifar10", (4, 32, 32, 3)), ("mnist", (4, 28, 28, 1))])
def test_seed_cnn_conv_forms_agree_under_vmap(dataset, shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    conv = models.seed_cnn(dataset, "shadow", conv_impl="conv", width_scale=0.25)
    patches = models.seed_cnn(dataset, "shadow", conv_impl="patches", width_scale=0.25)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    variables = jax.vmap(lambda k: conv.init(k, x))(keys)
    assert jax.tree.structure(variables) == jax.tree.structure(jax.vmap(lambda k: patches.init(k, x))(keys))
    out_conv = jax.vmap(lambda v: conv.apply(v, x))(variables)
    out_patches = jax.vmap(lambda v: patches.apply(v, x))(variables)
    np.testing.assert_allclose(out_patches, out_conv, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="conv_impl"):
        models.seed_cnn(dataset, conv_impl="winograd")


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_reshape_pooling_equals_window_pooling_and_its_gradient(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)  # continuous: no ties in a window
    window = models.max_pool_2x2(x, "window")
    np.testing.assert_array_equal(models.max_pool_2x2(x, "reshape"), window)
    weights = jax.random.normal(jax.random.PRNGKey(1), window.shape)
    grad = lambda impl: jax.grad(lambda v: jnp.sum(models.max_pool_2x2(v, impl) * weights))(x)
    np.testing.assert_array_equal(grad("reshape"), grad("window"))
    with pytest.raises(ValueError, match="pool_impl"):
        models.max_pool_2x2(x, "average")


def test_seed_cnn_with_reshape_pooling_gives_the_same_logits():
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 32, 32, 3))
    window = models.SeedCNN(8, 16, 16)
    reshaped = models.SeedCNN(8, 16, 16, pool_impl="reshape")
    variables = window.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(reshaped.apply(variables, x), window.apply(variables, x), rtol=1e-6)


@pytest.mark.parametrize("kernel_size, padding", [((3, 3), "SAME"), ((3, 3), "VALID"), ((5, 3), "SAME")])
def test_slices_conv_equals_flax_conv_and_its_gradients(kernel_size, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 4))
    conv = models.nn.Conv(5, kernel_size, padding=padding)
    variables = conv.init(jax.random.PRNGKey(1), x)
    weights = jax.random.normal(jax.random.PRNGKey(2), conv.apply(variables, x).shape)
    for patches in ("slices", "patches"):
        form = models.PatchConv(5, kernel_size, padding=padding, patches=patches)
        loss = lambda module: lambda v, x: jnp.sum(module.apply(v, x) * weights)
        np.testing.assert_allclose(form.apply(variables, x), conv.apply(variables, x), atol=1e-5)
        grads, expected = (jax.grad(loss(m), argnums=(0, 1))(variables, x) for m in (form, conv))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5), grads, expected)
    with pytest.raises(ValueError, match="padding"):
        models.PatchConv(5, padding="CIRCULAR").init(jax.random.PRNGKey(1), x)


def _batch_norm_loss(module, mask, variables):
    """A loss of the BatchNorm's output and of its updated running statistics."""
    def loss(params, x):
        y, state = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                use_running_average=False, mask=models._row_mask(mask, x),
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
    flax_bn = models.nn.BatchNorm(momentum=models.BATCHNORM_MOMENTUM)
    variables = flax_bn.init(jax.random.PRNGKey(1), x, use_running_average=False)
    fused = models.FusedBatchNorm()
    assert jax.tree.structure(fused.init(jax.random.PRNGKey(1), x, use_running_average=False)) == \
        jax.tree.structure(variables)
    params = {"scale": jnp.arange(3.0) + 1, "bias": jnp.arange(3.0)}
    results = [jax.value_and_grad(_batch_norm_loss(m, mask, variables), argnums=(0, 1), has_aux=True)(params, x)
               for m in (fused, flax_bn)]
    (_, (y, state)), grads = results[0]
    (_, (y_ref, state_ref)), grads_ref = results[1]
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), state, state_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5), grads, grads_ref)
    # Inference uses the running statistics, as nn.BatchNorm.
    np.testing.assert_allclose(fused.apply(variables, x, use_running_average=True),
                               flax_bn.apply(variables, x, use_running_average=True), atol=1e-6)


def test_seed_cnn_cpu_forms_train_like_the_reference_forms_under_vmap():
    """conv/window/flax against slices/reshape/fused: the same logits and gradients per model."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
    y = jnp.arange(4) % 10
    mask = jnp.array([True, True, True, False])
    reference = models.SeedCNN(6, 8, 8, conv_impl="conv", pool_impl="window", batchnorm_impl="flax")
    fast = models.SeedCNN(6, 8, 8, conv_impl="slices", pool_impl="reshape", batchnorm_impl="fused")
    variables = jax.vmap(lambda k: reference.init(k, x))(jax.random.split(jax.random.PRNGKey(1), 2))

    def loss(model):
        def f(params, stats):
            logits, state = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                        mask=mask, mutable=["batch_stats"])
            return jnp.sum(jnp.where(mask, -jax.nn.log_softmax(logits)[jnp.arange(4), y], 0)), state
        return jax.vmap(jax.value_and_grad(f, has_aux=True))(variables["params"], variables["batch_stats"])

    (value, state), grads = loss(fast)
    (value_ref, state_ref), grads_ref = loss(reference)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), state, state_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3), grads, grads_ref)


def test_auto_forms_resolve_per_backend(monkeypatch):
    assert (models.resolve_conv_impl("auto"), models.resolve_pool_impl("auto"),
            models.resolve_batchnorm_impl("auto")) == ("slices", "reshape", "fused")  # tests run on CPU
    monkeypatch.setattr(models.jax, "default_backend", lambda: "gpu")
    assert (models.resolve_conv_impl("auto"), models.resolve_pool_impl("auto"),
            models.resolve_batchnorm_impl("auto")) == ("conv", "window", "flax")
    with pytest.raises(ValueError, match="batchnorm_impl"):
        models.seed_cnn("mnist", batchnorm_impl="cudnn")
