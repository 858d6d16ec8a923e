"""The simulated adversary: seeded, stable, checkpointable choice; forging; client configs."""

from __future__ import annotations

import pytest
import torch

from resam_flower.attacks import Adversary, build

NODES = list(range(1000, 1020))


def test_choice_is_reproducible_with_a_seed_and_independent_of_order():
    a = Adversary("alie", 4, seed=7).choose(NODES)
    b = Adversary("alie", 4, seed=7).choose(list(reversed(NODES)))
    assert a == b and len(a) == 4 and len(set(a)) == 4 and set(a) <= set(NODES)


def test_choice_differs_across_seeds():
    choices = {tuple(Adversary("sf", 4, seed=s).choose(NODES)) for s in range(10)}
    assert len(choices) >= 8  # C(20, 4) = 4845 possible sets


def test_choice_is_recorded_stable_and_restricted_to_the_given_ids():
    adv = Adversary("sf", 3, seed=1)
    assert adv.chosen is None and not adv.is_byzantine(NODES[0])
    chosen = adv.choose(NODES)
    assert adv.choose(NODES) == chosen and adv.chosen == chosen
    sample = [n for n in NODES if n != chosen[0]]
    assert adv.choose(sample) == chosen[1:]  # a round that sampled only some nodes
    assert adv.is_byzantine(chosen[0]) and not adv.is_byzantine(max(set(NODES) - set(chosen)))


def test_checkpoint_resumes_the_same_choice_and_the_same_noise():
    adv = Adversary("gaussian", 2, seed=3, sigma=0.5)
    chosen = adv.choose(NODES)
    honest = torch.randn((5, 8), generator=torch.Generator().manual_seed(0))
    adv.forge(honest)
    state = adv.state_dict()
    nxt = adv.forge(honest)

    resumed = Adversary("gaussian", 2, seed=3, sigma=0.5)
    resumed.load_state_dict(state)
    assert resumed.chosen == chosen
    assert resumed.choose(list(reversed(NODES))) == chosen
    torch.testing.assert_close(resumed.forge(honest), nxt)
    assert not torch.equal(nxt, adv.forge(honest))  # and the noise does move on


def test_checkpoint_with_another_configuration_is_refused():
    state = Adversary("sf", 2, seed=3).state_dict()
    with pytest.raises(ValueError, match="seed=3 .* seed=4"):
        Adversary("sf", 2, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="num_byzantine"):
        Adversary("sf", 1, seed=3).load_state_dict(state)


def test_forge_counts_dtype_device():
    adv = Adversary("alie", 3, seed=0)
    honest = torch.randn((10, 6), dtype=torch.float64)
    assert adv.forge(honest).shape == (3, 6) and adv.forge(honest).dtype == torch.float64
    assert adv.forge(honest, count=1).shape == (1, 6)
    with pytest.raises(ValueError, match="count must be <= 3, got 4"):
        adv.forge(honest, count=4)


def test_adversary_seeds_a_random_attack_unless_told_otherwise():
    assert Adversary("gaussian", 1, seed=9).attack.seed == 9
    assert Adversary(build("gaussian", 1, seed=2), 1, seed=9).attack.seed == 2
    assert Adversary("gaussian", 1, seed=9, sigma=2.0).attack.sigma == 2.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: Adversary("nope", 1), "unknown attack 'nope'"),
        (lambda: Adversary("sf", -1), "num_byzantine must be >= 0, got -1"),
        (lambda: Adversary("sf", 1, seed=-2), "seed must be >= 0, got -2"),
        (lambda: Adversary(build("sf", 2), 3), "has f=2 but num_byzantine=3"),
        (lambda: Adversary(build("sf", 2), 2, eps=1.0), "already built"),
        (lambda: Adversary("sf", 5).choose([1, 2, 3]), "num_byzantine=5 Byzantine nodes among 3"),
        (lambda: Adversary("sf", 1).choose([1, "2"]), "node ids must be integers"),
        (lambda: Adversary("alie", 1).client_config(), "alie is omniscient"),
    ],
)
def test_bad_configuration(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_client_config_for_client_side_attacks():
    assert Adversary("lf", 2).client_config() == {"attack": "lf"}
    assert Adversary("lf", 2).data_attack and not Adversary("sf", 2).data_attack


def test_node_role_of_each_label_flipping_variant():
    # what a simulated Byzantine node is told: run the data attack itself, or send anything (forged)
    assert Adversary("lf", 2).client_role == "lf" and not Adversary("lf", 2).needs_honest_data
    lab = Adversary("lf-lab", 2)
    assert lab.client_role == "lf-lab" and lab.needs_honest_data and lab.data_attack
    assert Adversary("alie", 2).client_role == "omniscient" and Adversary("sf", 2).client_role == "omniscient"
    with pytest.raises(ValueError, match="lf-lab is omniscient"):
        lab.client_config()  # needs the honest nodes' data: no device can run it alone
    assert Adversary("gaussian", 1, seed=4, sigma=0.5).client_config() == {
        "attack": "gaussian", "sigma": 0.5, "seed": 4}
    assert "alie" in Adversary("alie", 2, seed=1).describe()


def test_zero_byzantine_is_a_valid_no_attack_run():
    adv = Adversary("alie", 0)
    assert adv.choose(NODES) == [] and adv.forge(torch.ones((3, 2))).shape == (0, 2)
