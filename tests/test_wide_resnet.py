"""WideResNet (the LiRA/RMIA CIFAR-10 model) and LiRA's recipe: shape, size, forms, masking,
training, and a vmapped ensemble equal to its models trained one by one."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpet import layers, models, splits, training

NUM_CLASSES = 3
NORMALIZE = training.Normalize(mean=(0.5,) * 3, std=(0.25,) * 3)

# WRN-28-2 on 32x32x3, 10 classes, counted by hand (bias-free convs; BN has scale + bias):
#   stem 3x3x3x16                                                              432
#   group 1 (32 ch): block 1  BN16 32 + 3x3x16x32 4,608 + BN32 64 + 3x3x32x32 9,216
#                             + 1x1 projection 16x32 512                   = 14,432
#                    blocks 2-4  3 x (64 + 9,216 + 64 + 9,216)             = 55,680
#   group 2 (64 ch): block 1  64 + 18,432 + 128 + 36,864 + 2,048           = 57,536
#                    blocks 2-4  3 x (128 + 36,864 + 128 + 36,864)         = 221,952
#   group 3 (128 ch): block 1 128 + 73,728 + 256 + 147,456 + 8,192         = 229,760
#                    blocks 2-4  3 x (256 + 147,456 + 256 + 147,456)       = 886,272
#   final BN 256, dense 128x10 + 10 = 1,290
#   total 1,467,610 (LiRA's paper: "about 1.5M").
WRN_28_2_PARAMS = 1_467_610


def _channel_images(n, seed=0, size=8):
    """uint8 [n, size, size, 3] images whose class is their brightest channel: a label that
    survives flips, shifts and global average pooling."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
    images = rng.integers(0, 140, (n, size, size, 3))
    images[np.arange(n), :, :, labels] += 110
    return images.astype(np.uint8), labels


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_wrn_28_2_parameter_count():
    model = models.wide_resnet()
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    assert _count(shapes["params"]) == WRN_28_2_PARAMS
    assert abs(_count(shapes["params"]) - 1.47e6) / 1.47e6 < 0.02
    # 25 convolutions + 3 projections; 25 BatchNorms (2 per block + the final one).
    kernels = [p for p in jax.tree_util.tree_leaves_with_path(shapes["params"])
               if "kernel" in jax.tree_util.keystr(p[0])]
    assert len(kernels) == 25 + 3 + 1
    assert len(shapes["batch_stats"]) == 25


@pytest.mark.parametrize("precision,dtype", [("float32", jnp.float32),
                                             ("bfloat16", jnp.bfloat16)])
def test_output_shape_and_dtype(precision, dtype):
    model = models.wide_resnet(num_classes=NUM_CLASSES, precision=precision, tiny=True)
    x = jnp.zeros((4, 8, 8, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))  # params fp32
    for train in (False, True):
        logits, _ = jax.eval_shape(
            lambda v: model.apply(v, x, train=train, mutable=["batch_stats"]), variables)  # noqa: B023 - traced now
        assert logits.shape == (4, NUM_CLASSES) and logits.dtype == dtype


@pytest.mark.parametrize("kwargs", [dict(depth=27), dict(depth=4), dict(depth=28.0),
                                    dict(width=0)])
def test_bad_depth_or_width_raises(kwargs):
    with pytest.raises(ValueError, match="depth must be 6n\\+4|width must be"):
        models.wide_resnet(**kwargs)


def test_depth_27_module_raises():
    x = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="6n\\+4"):
        models.WideResNet(depth=27).init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 8), (3, 2, 8), (3, 2, 7), (1, 2, 8)])
def test_conv_forms_agree(kernel, stride, size):
    """conv, patches and slices: one parameter tree, one function, strided and 1x1 included."""
    x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 3))
    conv = lambda impl: layers.WideConv(5, kernel, stride, conv_impl=impl)
    variables = conv("conv").init(jax.random.PRNGKey(0), x)
    want = conv("conv").apply(variables, x)
    assert want.shape == (2, -(-size // stride), -(-size // stride), 5)
    for impl in ("patches", "slices"):
        chex.assert_trees_all_equal_shapes(conv(impl).init(jax.random.PRNGKey(0), x), variables)
        np.testing.assert_allclose(conv(impl).apply(variables, x), want, atol=1e-5, rtol=1e-5)
        # and the gradient (the patch forms' hand-written one)
        grad = lambda impl: jax.grad(lambda v: jnp.sum(conv(impl).apply(v, x) ** 2))(variables)
        chex.assert_trees_all_close(grad(impl), grad("conv"), atol=1e-4, rtol=1e-4)


def test_padded_rows_do_not_touch_batch_statistics():
    x = jnp.asarray(_channel_images(6)[0], jnp.float32) / 255
    padded = jnp.concatenate([x, 50.0 * jnp.ones((2,) + x.shape[1:])])  # garbage rows
    mask = jnp.arange(8) < 6
    # One variable tree; nn.Conv, as it compiles fastest (masking is BatchNorm's business).
    forms = [models.wide_resnet(num_classes=NUM_CLASSES, tiny=True, batchnorm_impl=impl,
                                conv_impl="conv") for impl in ("flax", "fused")]

    @jax.jit
    def run(x, padded, mask):  # one program: init, and both forms with and without padding
        variables = forms[0].init(jax.random.PRNGKey(0), x)
        apply = lambda model, x, mask: model.apply(variables, x, train=True, mask=mask,
                                                   mutable=["batch_stats"])
        return [(apply(model, x, None), apply(model, padded, mask)) for model in forms]

    for (real_logits, real_stats), (logits, stats) in run(x, padded, mask):
        chex.assert_trees_all_close(logits[:6], real_logits, atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(stats, real_stats, atol=1e-5, rtol=1e-5)
        assert not np.allclose(logits[6:], real_logits[:2])  # the garbage rows did run


def test_lira_recipe():
    config = models.lira_recipe()
    assert (config.epochs, config.batch_size, config.learning_rate) == (100, 256, 0.1)
    assert (config.optimizer, config.momentum, config.weight_decay) == ("sgd", 0.9, 5e-4)
    assert (config.schedule, config.augment, config.decayed, config.ema) == (
        "lira_cosine", "flip_crop", "kernels", 0.999)
    assert "cosine" in training.SCHEDULES and "flip_crop" in training.AUGMENTATIONS
    assert models.lira_recipe(3, batch_size=16).batch_size == 16
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        models.lira_recipe(batchsize=16)


class Pair:
    """Two tiny WRNs (WRN-10-1) on member sets of different sizes (64 and 40 of 96 images,
    batch 16: model 1 has a partial batch and an all-padding step), trained 4 epochs with
    LiRA's recipe as one vmapped ensemble, then each alone with its own key."""

    def __init__(self):
        self.images, self.labels = _channel_images(96, seed=1)
        self.model = models.wide_resnet(num_classes=NUM_CLASSES, tiny=True)
        self.config = models.lira_recipe(epochs=4, batch_size=16)
        self.sets = [np.arange(0, 64), np.arange(50, 90)]
        self.keys = training.model_keys(3, 2)
        self.ensemble = self.train(splits.MemberSets.from_lists(self.sets), self.keys)

    def train(self, members, keys):
        return training.train_ensemble(self.model, self.images, self.labels, members,
                                       self.config, keys=keys, preprocess=NORMALIZE,
                                       strategy="vmap")


@pytest.fixture(scope="module")
def pair():
    return Pair()


def test_trains_with_lira_recipe(pair):
    losses = np.stack([h["loss"] for h in pair.ensemble.history])  # [epochs, K]
    assert np.all(np.isfinite(losses))
    assert np.all(losses[-1] < 0.6 * losses[0]), losses
    assert np.all(pair.ensemble.history[-1]["train_acc"] > 0.8)


def test_vmapped_ensemble_equals_models_trained_one_by_one(pair):
    # Compared on the host: slicing and subtracting device arrays leaf by leaf would compile a
    # program per leaf shape.
    ensemble = jax.device_get(pair.ensemble.state)
    for k in range(2):
        alone = jax.device_get(
            pair.train(splits.MemberSets.from_lists([pair.sets[k]]), pair.keys[k:k + 1]).state)
        for part in ("params", "batch_stats"):
            chex.assert_trees_all_close(
                training.take_model(getattr(ensemble, part), k),
                training.take_model(getattr(alone, part), 0), atol=1e-5, rtol=1e-5)
    # The two models really differ (own keys, own data).
    a, b = (training.take_model(ensemble.params, k) for k in range(2))
    assert max(float(np.max(np.abs(x - y)))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)) > 1e-3
