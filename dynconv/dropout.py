"""Channel-dropout schedules: pure functions of (seed, epoch, step) -> kept channel indices.

Because the choice depends only on those numbers, a resumed run reproduces it exactly, and every DDP rank
draws the same subset for the same step (so gradient buckets match).

Base distributions over the non-empty subsets (``kind``):

* ``none`` — always every channel;
* ``constant`` — each channel is dropped independently with probability ``p``; an empty draw is redrawn;
* ``uniform_subsets`` — uniform over the ``2**C - 1`` subsets (the original study);
* ``hierarchical`` — hierarchical channel sampling (ChannelViT's HCS, Bao et al., ICLR 2024): the subset
  size ``k`` uniform in ``1..C``, then a ``k``-subset uniformly, so every size is drawn equally often
  (``uniform_subsets`` draws the many mid-sized subsets more often than the full input);
* ``weighted_subsets`` — ``weights[name]`` per subset name (e.g. ``{"RGB": 2, "R": 1}``; unnamed: 0);
* ``sandwich`` — the sandwich rule of slimmable networks (Yu & Huang, ICCV 2019): every step sees
  ``n_subsets`` passes of the same batch — the full input, one single channel (drawn) and ``n_subsets - 2``
  distinct subsets drawn between those sizes (any other subsets when there are too few) — and one update
  from their gradients. The step's loss is the weighted mean of its passes (the full input weighs
  ``full_weight``, every other pass 1), so ``train.lr`` means what it means with one pass.

Curricula (``curriculum``) start from full input and move to the base distribution over ``ramp_epochs``:
``P_e = (1 - a(e)) · δ_full + a(e) · P_base`` with ``a`` rising linearly, along a half cosine, or in
``steps`` equal steps, from 0 at epoch 1 to 1 at epoch ``ramp_epochs`` (and 1 afterwards).
"""
from __future__ import annotations

import math

import numpy as np

from .channels import Subset, all_subsets, subset_name
from .choices import CURRICULA, DROPOUT_KINDS, check_choice
from .errors import DynconvError


class ChannelDropout:
    def __init__(self, kind: str, num_channels: int, seed: int = 0, p: float = 0.5,
                 weights: dict[str, float] | None = None, curriculum: str = "none", ramp_epochs: int = 1,
                 steps: int = 4, channels: str | None = None, n_subsets: int = 4, full_weight: float = 1.0):
        check_choice(kind, DROPOUT_KINDS, "channel-dropout schedule")
        check_choice(curriculum, CURRICULA, "dropout curriculum")
        if not 0 <= p < 1:
            raise DynconvError(f"dropout.p must be in [0, 1), got {p}")
        if kind == "sandwich" and (n_subsets < 2 or full_weight <= 0 or curriculum != "none"):
            raise DynconvError("dropout.kind=sandwich needs dropout.n_subsets >= 2, dropout.full_weight > 0 and no "
                               f"dropout.curriculum (got {n_subsets}, {full_weight}, {curriculum})")
        self.n_passes = n_subsets if kind == "sandwich" else 1
        self.full_weight = float(full_weight)
        self.kind, self.seed, self.p = kind, seed, p
        self.curriculum, self.ramp_epochs, self.steps = curriculum, max(1, ramp_epochs), max(1, steps)
        self.subsets = all_subsets(num_channels)
        self.full: Subset = self.subsets[0]
        names = channels or "".join(chr(ord("A") + i) for i in range(num_channels))
        self.base = self._base_probs(names, weights or {})

    def _base_probs(self, names: str, weights: dict[str, float]) -> np.ndarray:
        n = len(self.subsets)
        if self.kind in ("none", "sandwich"):  # sandwich: passes() draws; one pass alone is the full input
            probs = np.eye(n)[0]
        elif self.kind == "uniform_subsets":
            probs = np.full(n, 1.0 / n)
        elif self.kind == "hierarchical":
            c = len(self.full)
            probs = np.array([1.0 / (c * math.comb(c, len(s))) for s in self.subsets])
        elif self.kind == "constant":  # independent keep probability 1-p per channel, conditioned on non-empty
            keep = 1 - self.p
            probs = np.array([keep ** len(s) * self.p ** (len(names) - len(s)) for s in self.subsets])
        else:
            known = {subset_name(s, names) for s in self.subsets}
            bad = sorted(set(weights) - known)
            if bad or not weights:
                raise DynconvError(f"dropout.weights needs subset names of {names!r} (e.g. {{RGB: 2, R: 1}}); "
                                   f"unknown: {', '.join(bad) or 'none given'}")
            probs = np.array([float(weights.get(subset_name(s, names), 0.0)) for s in self.subsets])
            if (probs < 0).any() or probs.sum() <= 0:
                raise DynconvError("dropout.weights must be non-negative with a positive sum")
        return probs / probs.sum()

    def ramp(self, epoch: int) -> float:
        """Curriculum progress a(epoch) in [0, 1] (epochs count from 1)."""
        if self.curriculum == "none":
            return 1.0
        t = min(1.0, max(0.0, (epoch - 1) / max(1, self.ramp_epochs - 1))) if self.ramp_epochs > 1 else 1.0
        if self.curriculum == "linear":
            return t
        if self.curriculum == "cosine":
            return (1 - math.cos(math.pi * t)) / 2
        return math.floor(t * self.steps + 1e-9) / self.steps

    def probabilities(self, epoch: int) -> np.ndarray:
        """Probability of each subset (in :func:`all_subsets` order) at ``epoch``."""
        a = self.ramp(epoch)
        full = np.eye(len(self.subsets))[0]
        return (1 - a) * full + a * self.base

    def __call__(self, epoch: int, step: int) -> Subset:
        """The subset of a one-pass step (``sandwich``: its first pass, the full input)."""
        if self.kind in ("none", "sandwich"):
            return self.full
        rng = np.random.default_rng([self.seed, epoch, step])
        return self.subsets[int(rng.choice(len(self.subsets), p=self.probabilities(epoch)))]

    def passes(self, epoch: int, step: int) -> list[tuple[Subset, float]]:
        """The step's passes over its batch as (subset, loss weight), the weights summing to 1: one pass, or the
        sandwich's ``n_passes`` (the full input first: in-place distillation teaches the others from it)."""
        if self.kind != "sandwich":
            return [(self(epoch, step), 1.0)]
        rng = np.random.default_rng([self.seed, epoch, step])
        smallest = min(len(s) for s in self.subsets)
        singles = [s for s in self.subsets if len(s) == smallest and s != self.full]
        chosen = [self.full] + ([singles[int(rng.integers(len(singles)))]] if singles else [])
        middle = [s for s in self.subsets if s not in chosen and smallest < len(s) < len(self.full)]
        want = self.n_passes - len(chosen)
        chosen += [middle[i] for i in rng.choice(len(middle), size=min(want, len(middle)), replace=False)]
        rest = [s for s in self.subsets if s != self.full] or [self.full]  # too few subsets: draws repeat
        chosen += [rest[int(i)] for i in rng.integers(len(rest), size=self.n_passes - len(chosen))]
        total = self.full_weight + self.n_passes - 1
        return [(s, (self.full_weight if i == 0 else 1.0) / total) for i, s in enumerate(chosen)]
