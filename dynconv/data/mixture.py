"""Training on several datasets at once, each with its own channels: one model over the union of their channel
names (its *vocabulary*), batches from one dataset at a time.

A dataset's channels are a subset of the vocabulary, so a batch of dataset ``k`` is shown to the model as
that subset (``positions``: where each of its channels sits in the vocabulary), and channel dropout draws
within its own channels. A channel with the same name in two datasets is the same input channel of the
model (the slice of the stem's weight, or its per-channel parameters), which is how the datasets share it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..channels import Subset, channel_names, join_names
from ..dropout import ChannelDropout
from ..errors import DynconvError
from .loaders import DataSource

_INTERLEAVE = 0x6D6978  # keeps the interleaving's random stream apart from the sources' own ("mix")


def vocabulary(channel_sets: Sequence[str]) -> str:
    """The union of the datasets' channel names, in order of first appearance: ``["RGB", "R-G-DNA"]`` ->
    ``"R-G-B-DNA"``."""
    return join_names(list(dict.fromkeys(n for channels in channel_sets for n in channel_names(channels))))


def positions_in(channels: str, vocab: str) -> tuple[int, ...]:
    """Where each channel of ``channels`` sits in the model's vocabulary ``vocab``."""
    names, known = channel_names(channels), channel_names(vocab)
    missing = [n for n in names if n not in known]
    if missing:
        raise DynconvError(f"channel(s) {', '.join(missing)} of {channels!r} are not in the model's channels "
                           f"{vocab!r}: add them to data.channels or leave data.channels unset (the union)")
    return tuple(known.index(n) for n in names)


@dataclass
class MixturePart:
    """One dataset of a mixture as the trainer and the evaluation need it."""

    name: str
    channels: str                     # the dataset's own channel names
    positions: tuple[int, ...]        # their places in the model's vocabulary
    width: int                        # size of the vocabulary
    transform: Callable               # (uint8 batch, epoch, micro-step) -> normalised float batch (training)
    eval_transform: Callable          # uint8 batch -> normalised float batch
    dropout: ChannelDropout | None = None  # over the dataset's own channels
    val_subsets: tuple[Subset, ...] = ()   # also scored every epoch (its own indices)

    def to_model(self, subset: Subset) -> Subset:
        """A subset of the dataset's channels (its indices) as the model's (vocabulary indices, sorted)."""
        return tuple(sorted(self.positions[i] for i in subset))

    def place(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of the dataset's channels as a batch over the vocabulary (absent channels are 0, the mean
        after normalisation; a channel-adaptive model is then shown only the present ones)."""
        if self.positions == tuple(range(self.width)):
            return x
        out = x.new_zeros((x.shape[0], self.width, *x.shape[2:]))
        out[:, list(self.positions)] = x
        return out

    def model_transform(self, images: torch.Tensor) -> torch.Tensor:
        """Evaluation: uint8 batch -> normalised batch over the vocabulary."""
        return self.place(self.eval_transform(images))


def interleave(lengths: Sequence[int], seed: int, epoch: int) -> np.ndarray:
    """Which dataset each batch of an epoch comes from: every batch of every dataset once, in an order drawn
    from (seed, epoch) only — the same on every process and in a resumed run — so each dataset is seen in
    proportion to its size throughout the epoch."""
    order = np.repeat(np.arange(len(lengths)), lengths)
    np.random.default_rng([seed, epoch, _INTERLEAVE]).shuffle(order)
    return order


class MixtureSource(DataSource):
    """Batches ``(images, labels, dataset index)`` from several sources, interleaved (training) or one source
    after the other (``interleaved=False``, evaluation). All sources must share one set of classes."""

    backend = "mixture"

    def __init__(self, sources: Sequence[DataSource], names: Sequence[str], seed: int = 0, interleaved: bool = True):
        classes = [s.classes for s in sources]
        for name, c in zip(names[1:], classes[1:]):
            if classes[0] is not None and c is not None and list(c) != list(classes[0]):
                raise DynconvError(f"dataset {name!r} has classes {list(c)[:3]}... but {names[0]!r} has "
                                   f"{list(classes[0])[:3]}...: the datasets of data.train share one classifier, "
                                   "so they need the same class folders")
        super().__init__(None, classes[0], sum(s.num_samples for s in sources), backend="mixture",
                         skipped=sum(s.skipped for s in sources))
        self.sources, self.names, self.seed, self.interleaved = list(sources), list(names), seed, interleaved

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def epoch(self, epoch: int, augment: bool = True, copy: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        if not self.interleaved:
            for k, source in enumerate(self.sources):
                for x, y in source.epoch(epoch, augment, copy):
                    yield x, y, k
            return
        iterators = [iter(s.epoch(epoch, augment, copy)) for s in self.sources]
        try:
            for k in interleave([len(s) for s in self.sources], self.seed, epoch):
                x, y = next(iterators[k])
                yield x, y, int(k)
            for it in iterators:  # let every loader finish its epoch (a source may yield fewer than its len)
                for _ in it:
                    pass
        except StopIteration:
            raise DynconvError("a dataset of data.train yielded fewer batches than it announced: check its files "
                               "(data.strict=true names the bad ones)") from None
        finally:
            for it in iterators:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
