"""The membership-attack registry: built-ins in results order, a toy attack end to end, clear
errors."""

import numpy as np
import pytest

from jaxpet import attacks
from jaxpet.attacks import reference, registry


def test_built_in_attacks_in_results_order():
    assert attacks.attack_names("shadow") == ("shadow_mlp", "loss", "confidence", "entropy",
                                              "modified_entropy", "label_only",
                                              "label_only_threshold")
    assert attacks.attack_names("reference") == (
        "lira_online", "lira_online_fixed_variance", "lira_offline", "lira_offline_fixed_variance",
        "rmia_online", "rmia_offline", "rmia_offline_fitted_a", "global_loss", "label_only_ref")
    assert set(attacks.attack_names()) == set(attacks.attack_names("shadow")
                                              + attacks.attack_names("reference"))
    assert [a.name for a in attacks.list_attacks() if a.needs] == [
        "label_only", "label_only_threshold", "label_only_ref"]
    for attack in attacks.list_attacks():
        assert attack.description and callable(attack.fn), attack
    no_references = [a.name for a in attacks.list_attacks("reference") if not a.uses_references]
    assert no_references == ["global_loss"]


@pytest.fixture
def toy_attack():
    """A reference attack scoring each example by the target's first query of phi, registered for
    the test and removed after it."""
    @attacks.register("toy_phi", family="reference", description="the target's phi, first query")
    def toy_phi(signals, target, references, ref_keep, use, config):
        del references, ref_keep, use, config
        return signals.phi[target, :, 0]

    try:
        yield toy_phi
    finally:
        attacks.unregister("toy_phi")


def test_a_registered_toy_attack_is_listed_and_scored(toy_attack, make_signals):
    assert attacks.attack_names("reference")[-1] == "toy_phi"
    assert attacks.get_attack("toy_phi").family == "reference"
    signals, keep = make_signals(effect=1.5, num_models=4, n=100, z=20)
    scores = reference.attack_scores(signals, keep, 0, [1, 2, 3])
    assert list(scores)[-1] == "toy_phi"
    np.testing.assert_array_equal(scores["toy_phi"], signals.phi[0, :, 0])
    only = reference.attack_scores(signals, keep, 2, [0, 1], attacks=["toy_phi"])
    assert list(only) == ["toy_phi"]
    np.testing.assert_array_equal(only["toy_phi"], signals.phi[2, :, 0])
    res = reference.leave_one_out(signals, keep, targets=[0])
    assert res["summary"]["toy_phi"]["auc"]["mean"] > 0.6  # phi carries the planted effect
    assert "toy_phi" in reference.reference_sweep(signals, keep, [1], targets=[0])[0]["attacks"]


def test_unregistering_removes_it():
    @attacks.register("toy_shadow", family="shadow", description="always 'member'")
    def toy_shadow(shadow, target, *, config, seed):
        scores = np.ones(len(target.labels))
        return attacks.AttackOutput(scores, scores >= 0.5, {})

    assert attacks.attack_names("shadow")[-1] == "toy_shadow"
    assert attacks.unregister("toy_shadow").fn is toy_shadow
    assert "toy_shadow" not in attacks.attack_names()


def test_unknown_names_and_bad_registrations_are_clear_value_errors(make_signals):
    signals, keep = make_signals(effect=1.0, num_models=4, n=40, z=10)
    with pytest.raises(ValueError, match="Unknown reference attack 'nope'; known: lira_online, "
                                         "lira_online_fixed_variance, .*global_loss"):
        reference.attack_scores(signals, keep, 0, [1, 2], attacks=["lira_online", "nope"])
    with pytest.raises(ValueError, match="Unknown reference attack 'loss'"):  # a shadow attack
        reference.leave_one_out(signals, keep, attacks=["loss"])
    with pytest.raises(ValueError, match="Unknown membership attack 'nope'; known: shadow_mlp"):
        attacks.get_attack("nope")
    with pytest.raises(ValueError, match="Unknown membership attack"):
        attacks.unregister("nope")
    with pytest.raises(ValueError, match="already registered"):
        attacks.register("loss", family="shadow", description="again")(lambda *a, **k: None)
    with pytest.raises(ValueError, match="Unknown attack family 'oracle'"):
        attacks.register("x", family="oracle", description="?")
    with pytest.raises(ValueError, match="Unknown attack family"):
        attacks.list_attacks("oracle")
    with pytest.raises(TypeError, match="callable"):
        attacks.register("x", family="shadow", description="?")(3)
    assert attacks.get_attack("loss") is registry.get_attack("loss", "shadow")
