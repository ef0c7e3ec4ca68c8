import re

import pytest

from dynconv.channels import (all_subsets, channel_names, num_channels, parse_subset, parse_subsets, subset_name,
                              validate_channels)
from dynconv.dropout import ChannelDropout
from dynconv.errors import DynconvError
from launch.config import load_config


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


CELL = "DNA-ER-RNA-AGP-Mito"


def test_channels_by_name_list_or_joined_and_letters_stay_a_shorthand():
    assert validate_channels(["DNA", "ER", "RNA", "AGP", "Mito"]) == validate_channels(CELL) == CELL
    assert validate_channels(["R", "G", "B"]) == validate_channels("R-G-B") == "RGB"  # single letters: joined
    assert channel_names(CELL) == ("DNA", "ER", "RNA", "AGP", "Mito") and num_channels(CELL) == 5
    names = [subset_name(s, CELL) for s in all_subsets(CELL)]
    assert len(names) == 31 and names[0] == CELL and names[5] == "ER-RNA-AGP-Mito" and names[-1] == "Mito"
    assert parse_subset("Mito-DNA", CELL) == (0, 4) and parse_subset(" ER ", CELL) == (1,)
    assert parse_subsets("DNA,ER-RNA,DNA", CELL) == [(0,), (1, 2)]
    assert all(parse_subset(subset_name(s, CELL), CELL) == s for s in all_subsets(CELL))
    # a letter set mixed with a longer name is a named set: R-G-NIR
    assert [subset_name(s, ["R", "G", "NIR"]) for s in all_subsets(["R", "G", "NIR"])][:3] == ["R-G-NIR", "R-G", "R-NIR"]


@pytest.mark.parametrize("bad, message", [
    (["DNA", "DNA"], "repeated names"), (["1x"], "bad name(s) '1x'"), ("R G", "bad name(s) ' '"), ([], "none given")])
def test_bad_channel_names_are_one_line(bad, message):
    with pytest.raises(DynconvError, match=re.escape(message)) as e:
        validate_channels(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad, message", [
    ("DN", "unknown channel(s) 'DN' in subset 'DN': use names joined by '-'"),
    ("DNA-X-Y", "unknown channel(s) 'X, Y'"), ("", "empty channel subset: use"), ("ER-ER", "repeats a channel")])
def test_bad_named_subsets(bad, message):
    with pytest.raises(DynconvError, match=re.escape(message)):
        parse_subset(bad, CELL)


def test_config_and_dropout_take_channel_names():
    cfg = load_config(None, ["data.channels=[DNA,ER,RNA,AGP,Mito]", "data.mean=[0.1,0.2,0.3,0.4,0.5]",
                             "eval.subsets=DNA-ER,Mito", "dropout.kind=weighted_subsets", "dropout.weights={DNA-ER: 1, Mito: 3}"])
    assert cfg.data.channels == CELL and cfg.eval.subsets == "DNA-ER,Mito"
    with pytest.raises(DynconvError, match="one value per channel"):
        load_config(None, ["data.channels=[DNA,ER,RNA]", "data.mean=[0.1,0.2]"])
    with pytest.raises(DynconvError, match="unknown channel"):
        load_config(None, ["data.channels=[DNA,ER,RNA]", "eval.subsets=DNA-AGP"])
    d = ChannelDropout("weighted_subsets", 5, weights={"DNA-ER": 1, "Mito": 3}, channels=CELL)
    assert d.base[all_subsets(5).index((0, 1))] == pytest.approx(0.25) and d.base[all_subsets(5).index((4,))] == 0.75
    with pytest.raises(DynconvError, match="subset names of 'DNA-ER-RNA-AGP-Mito'"):
        ChannelDropout("weighted_subsets", 5, weights={"DE": 1}, channels=CELL)
