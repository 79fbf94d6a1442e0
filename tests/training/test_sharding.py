"""The model axis sharded over a `models` mesh: same result as unsharded, K/devices models per
device.

Runs in a subprocess because the 4 host devices must be requested before JAX starts.
"""

import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import os
    # 4 host devices; of the caller's flags only the optimisation level (see tests/conftest.py).
    os.environ["XLA_FLAGS"] = " ".join(["--xla_force_host_platform_device_count=4"] + [
        f for f in os.environ.get("XLA_FLAGS", "").split()
        if f.startswith("--xla_backend_optimization_level=")])
    import chex, jax, numpy as np
    from jaxpet import models, splits, training
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 8, 8, 1)).astype(np.uint8)
    labels = rng.integers(0, 2, 200).astype(np.int32)
    model = models.SeedCNN(conv1=4, conv2=4, fc=8, num_classes=2)
    config = training.TrainConfig(epochs=2, batch_size=32)
    prep = training.Normalize((0.5,), (0.25,))
    mesh = training.model_mesh()
    # Experiments shard whenever the strategy can (auto or vmap); map/loop stay on one device.
    assert training.default_mesh("auto").shape["models"] == 4
    assert training.default_mesh("map") is None and training.default_mesh("loop") is None
    # The unsharded reference: K=8 models. Model k depends only on its key (fold_in(seed, k))
    # and its member set, and the first 6 of 8 sets drawn from one seed are the 6 drawn from it,
    # so its first 6 models are the unsharded K=6 ensemble too (one program, not two).
    full = training.train_ensemble(model, images, labels,
                                   splits.random_member_sets(np.arange(200), 8, 108, seed=8),
                                   config, seed=3, preprocess=prep)
    for k in (8, 6):  # 6 is padded to 8 models
        # The same member-set size for both: K=6, padded to 8, is the K=8 sharded program.
        sets = splits.random_member_sets(np.arange(200), k, 108, seed=8)
        plain = jax.tree.map(lambda x: x[:k], (full.state.params, full.history[-1]["loss"]))
        sharded = training.train_ensemble(model, images, labels, sets, config, seed=3,
                                          preprocess=prep,
                                          mesh=mesh)
        chex.assert_trees_all_close(plain[0], sharded.state.params, atol=1e-5)
        chex.assert_trees_all_close(plain[1], sharded.history[-1]["loss"], atol=1e-5)
        assert sharded.state.rng.shape[0] == k
        if k == 8:
            leaf = jax.tree.leaves(sharded.state.params)[0]
            shards = leaf.addressable_shards
            assert len(shards) == 4 and all(s.data.shape[0] == 2 for s in shards), [
                s.data.shape for s in shards]
            assert len({s.device for s in shards}) == 4
    print("SHARDING-OK")
""")


def test_sharded_ensemble_matches_unsharded_and_splits_models():
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHARDING-OK" in out.stdout
