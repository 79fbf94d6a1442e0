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
    assert (shadow.conv1, shadow.conv2, shadow.fc) == tuple(
        w // 2 for w in (target.conv1, target.conv2, target.fc))
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
    a, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)},
                       mutable=["batch_stats"])
    b, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)},
                       mutable=["batch_stats"])
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


@pytest.mark.parametrize("dataset, shape", [("cifar10", (4, 32, 32, 3)), ("mnist", (4, 28, 28, 1))])
def test_seed_cnn_conv_forms_agree_under_vmap(dataset, shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    conv = models.seed_cnn(dataset, "shadow", conv_impl="conv", width_scale=0.25)
    patches = models.seed_cnn(dataset, "shadow", conv_impl="patches", width_scale=0.25)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    variables = jax.vmap(lambda k: conv.init(k, x))(keys)
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.vmap(lambda k: patches.init(k, x))(keys))
    out_conv = jax.vmap(lambda v: conv.apply(v, x))(variables)
    out_patches = jax.vmap(lambda v: patches.apply(v, x))(variables)
    np.testing.assert_allclose(out_patches, out_conv, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="conv_impl"):
        models.seed_cnn(dataset, conv_impl="winograd")


def test_seed_cnn_with_reshape_pooling_gives_the_same_logits():
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 32, 32, 3))
    window = models.SeedCNN(8, 16, 16)
    reshaped = models.SeedCNN(8, 16, 16, pool_impl="reshape")
    variables = window.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(reshaped.apply(variables, x), window.apply(variables, x), rtol=1e-6)


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
        return jax.vmap(jax.value_and_grad(f, has_aux=True))(variables["params"],
                                                             variables["batch_stats"])

    (value, state), grads = loss(fast)
    (value_ref, state_ref), grads_ref = loss(reference)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                 state, state_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3),
                 grads, grads_ref)

