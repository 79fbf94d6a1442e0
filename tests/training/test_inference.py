"""Inference: predict batches and pads without changing the posteriors; evaluate agrees with it."""

import jax
import numpy as np
import pytest

from jaxpet import splits, training


@pytest.fixture(scope="module")
def trained(fitted):
    """The shared K=2 ensemble of tiny CNNs (see conftest.Fitted), with its data."""
    return fitted.model, fitted.normalize, fitted.images, fitted.labels, fitted.result.variables()


def test_predict_matches_direct_apply_and_batches(trained):
    model, normalize, images, _, variables = trained
    batched = training.predict(model, variables, images, preprocess=normalize, batch_size=7)
    apply = jax.jit(lambda v, x: model.apply(v, normalize(x), train=False))
    logits = apply(training.take_model(variables, 1), images)
    np.testing.assert_allclose(batched[1], jax.nn.softmax(logits), atol=1e-5)
    raw = training.predict(model, variables, images, preprocess=normalize, logits=True)
    np.testing.assert_allclose(raw[1], logits, atol=1e-4)
    with pytest.raises(ValueError, match="batch_size"):
        training.predict(model, variables, images, batch_size=0)
    with pytest.raises(ValueError, match="no images"):
        training.predict(model, variables, images[:0])


def test_evaluate_agrees_with_predict(trained):
    model, normalize, images, labels, variables = trained
    sets = splits.MemberSets.from_lists([np.arange(0, 30), np.arange(10, 50)])
    out = training.evaluate(model, variables, images, labels, sets, preprocess=normalize,
                            batch_size=8)
    post = training.predict(model, variables, images, preprocess=normalize)
    for k in range(2):
        idx = sets.member(k)
        np.testing.assert_allclose(out["accuracy"][k],
                                   np.mean(post[k, idx].argmax(-1) == labels[idx]))
        loss = -np.mean(np.log(post[k, idx, labels[idx]]))
        np.testing.assert_allclose(out["loss"][k], loss, rtol=1e-4)
    with pytest.raises(ValueError, match=f"only {len(images)}"):
        training.evaluate(model, variables, images, labels,
                          splits.MemberSets.from_lists([np.arange(len(images) + 10)] * 2))


def test_take_and_stack_models_are_inverse(trained):
    variables = trained[-1]
    restacked = training.stack_models([training.take_model(variables, k) for k in range(2)])
    jax.tree.map(np.testing.assert_array_equal, restacked, variables)
