import pytest

from dynconv.channels import all_subsets, parse_subset, parse_subsets, subset_name
from dynconv.dropout import ChannelDropout
from dynconv.errors import DynconvError


def test_study_subset_order():
    assert [subset_name(s) for s in all_subsets("RGB")] == ["RGB", "RG", "RB", "GB", "R", "G", "B"]
    assert len(all_subsets("RGBUV")) == 31


def test_parse_subsets():
    assert parse_subsets("RGB,gr".upper()) == [(0, 1, 2), (0, 1)]
    assert parse_subsets(None) == all_subsets("RGB")
    assert parse_subset("BR") == (0, 2)


@pytest.mark.parametrize("bad", ["RX", "", "RR"])
def test_bad_subset_letters(bad):
    with pytest.raises(DynconvError):
        parse_subset(bad)


def test_uniform_dropout_is_deterministic_and_covers_all_subsets():
    d = ChannelDropout("uniform_subsets", 3, seed=1)
    draws = [d(epoch, step) for epoch in range(3) for step in range(400)]
    assert draws == [ChannelDropout("uniform_subsets", 3, seed=1)(e, s) for e in range(3) for s in range(400)]
    counts = {s: draws.count(s) for s in all_subsets(3)}
    assert set(counts) == set(all_subsets(3)) and sum(counts.values()) == len(draws)
    # uniform over 7 subsets: each ~171 of 1200; 5 sigma ≈ 60
    assert all(abs(c - len(draws) / 7) < 60 for c in counts.values()), counts
    assert ChannelDropout("none", 3)(0, 0) == (0, 1, 2)
