"""Channel-dropout schedules: configured frequencies, curricula, reproducibility, errors."""
import numpy as np
import pytest

from dynconv.channels import all_subsets, subset_name
from dynconv.dropout import ChannelDropout
from dynconv.errors import DynconvError

SUBSETS = all_subsets(3)
CHI2_DF6_P001 = 22.46  # chi-square critical value, 6 degrees of freedom, p = 0.001


def _chi2(d: ChannelDropout, epoch: int, n: int = 4000) -> float:
    counts = np.zeros(len(SUBSETS))
    for step in range(n):
        counts[SUBSETS.index(d(epoch, step))] += 1
    expected = d.probabilities(epoch) * n
    assert (counts[expected == 0] == 0).all(), "a subset with probability 0 was drawn"
    mask = expected > 0
    return float(((counts[mask] - expected[mask]) ** 2 / expected[mask]).sum())


@pytest.mark.parametrize("kind,kw", [("uniform_subsets", {}), ("constant", {"p": 0.3}),
                                     ("weighted_subsets", {"weights": {"RGB": 3, "RG": 1, "B": 2}})])
def test_frequencies_match_the_schedule(kind, kw):
    d = ChannelDropout(kind, 3, seed=11, channels="RGB", **kw)
    assert _chi2(d, epoch=1) < CHI2_DF6_P001


def test_constant_probabilities_are_independent_drops_conditioned_on_non_empty():
    d = ChannelDropout("constant", 3, p=0.3, channels="RGB")
    probs = dict(zip((subset_name(s) for s in SUBSETS), d.probabilities(1)))
    z = 1 - 0.3 ** 3
    assert probs["RGB"] == pytest.approx(0.7 ** 3 / z) and probs["G"] == pytest.approx(0.7 * 0.3 ** 2 / z)


def test_weighted_subsets_never_draws_unweighted_ones():
    d = ChannelDropout("weighted_subsets", 3, weights={"RG": 1, "B": 1}, channels="RGB")
    draws = {d(1, s) for s in range(300)}
    assert draws == {(0, 1), (2,)}


@pytest.mark.parametrize("curriculum", ["linear", "cosine", "step"])
def test_curricula_move_from_full_input_to_the_base_distribution(curriculum):
    d = ChannelDropout("uniform_subsets", 3, curriculum=curriculum, ramp_epochs=5, steps=2, channels="RGB")
    ramps = [d.ramp(e) for e in range(1, 8)]
    assert ramps[0] == 0 and ramps[4:] == [1, 1, 1] and ramps == sorted(ramps)
    assert all(d(1, s) == (0, 1, 2) for s in range(50))  # epoch 1: full input only
    assert d.probabilities(5) == pytest.approx(np.full(7, 1 / 7))
    mid = d.probabilities(3)[0]  # P(RGB) halfway
    assert 1 / 7 < mid < 1
    assert _chi2(d, epoch=3) < CHI2_DF6_P001
    if curriculum == "step":
        assert sorted(set(ramps)) == [0, 0.5, 1]


def test_reproducible_from_seed_epoch_step():
    a = ChannelDropout("uniform_subsets", 3, seed=4, curriculum="linear", ramp_epochs=3)
    b = ChannelDropout("uniform_subsets", 3, seed=4, curriculum="linear", ramp_epochs=3)
    assert [a(e, s) for e in (1, 2, 3) for s in range(200)] == [b(e, s) for e in (1, 2, 3) for s in range(200)]
    assert a(3, 17) == b(3, 17)  # any single (epoch, step) alone, in any order: what resume relies on
    c = ChannelDropout("uniform_subsets", 3, seed=5)
    assert [a(3, s) for s in range(100)] != [c(3, s) for s in range(100)]


def test_bad_schedules():
    with pytest.raises(DynconvError, match="unknown: X"):
        ChannelDropout("weighted_subsets", 3, weights={"X": 1}, channels="RGB")
    with pytest.raises(DynconvError, match="choose one of"):
        ChannelDropout("sometimes", 3)
    with pytest.raises(DynconvError, match="curriculum"):
        ChannelDropout("uniform_subsets", 3, curriculum="zigzag")


def test_hierarchical_sampling_draws_every_subset_size_equally_often():
    """ChannelViT's HCS: size k uniform in 1..C, then a k-subset uniformly."""
    d = ChannelDropout("hierarchical", 3)
    probs = dict(zip(d.subsets, d.probabilities(1)))
    assert probs[(0, 1, 2)] == pytest.approx(1 / 3)
    assert all(probs[s] == pytest.approx(1 / 9) for s in d.subsets if len(s) in (1, 2))
    draws = [d(1, step) for step in range(6000)]
    sizes = np.bincount([len(s) for s in draws], minlength=4)[1:] / len(draws)
    assert np.allclose(sizes, 1 / 3, atol=0.03)
    five = ChannelDropout("hierarchical", 5)
    by_size = {k: sum(p for s, p in zip(five.subsets, five.probabilities(1)) if len(s) == k) for k in range(1, 6)}
    assert all(v == pytest.approx(0.2) for v in by_size.values())


def test_sandwich_passes_are_the_full_input_a_single_channel_and_distinct_draws():
    d = ChannelDropout("sandwich", 3, seed=2, n_subsets=4, full_weight=2.0)
    seen = set()
    for step in range(200):
        passes = d.passes(1, step)
        subsets = [s for s, _ in passes]
        assert subsets[0] == (0, 1, 2) and len(subsets[1]) == 1 and len(set(subsets)) == 4
        assert [w for _, w in passes] == pytest.approx([0.4, 0.2, 0.2, 0.2])
        assert passes == d.passes(1, step)  # a function of (seed, epoch, step)
        seen.update(subsets)
    assert seen == set(SUBSETS)  # every subset is drawn
    assert d(1, 0) == (0, 1, 2) and d.n_passes == 4
    assert [s for s, _ in ChannelDropout("sandwich", 1, n_subsets=3).passes(1, 0)] == [(0,)] * 3  # too few: repeats
    assert ChannelDropout("uniform_subsets", 3).n_passes == 1
    with pytest.raises(DynconvError, match="sandwich needs"):
        ChannelDropout("sandwich", 3, curriculum="linear")
