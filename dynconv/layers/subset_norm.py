"""Subset-aware normalisation: BatchNorm with one set of statistics per input-channel subset.

BatchNorm running statistics averaged over channel subsets whose activations differ are the main cost of
channel robustness: a G-only image is normalised with statistics dominated by RGB images. These layers
keep a set per subset (indexed like :func:`dynconv.channels.all_subsets`) and pick the set of the active
subset, which the model sets before each forward pass.

* ``recalibrate``: trained as a plain BatchNorm (shared statistics); afterwards :func:`calibrate`
  re-estimates per-subset statistics from training images. Evaluation uses the subset's set.
* ``switchable`` (Yu et al., ICLR 2019): during training each batch's subset updates its own running
  statistics (and, with ``per_subset_affine``, uses its own γ/β) — "switchable batch normalisation".

A subset without statistics of its own (never seen in training or calibration) falls back to the nearest
calibrated subset by channel overlap, with a warning.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..channels import Subset, all_subsets
from ..choices import SUBSET_NORMS


def nearest_subset(target: Subset, candidates: list[Subset]) -> Subset:
    """The candidate sharing most channels with ``target`` (ties: fewest extra channels, then order)."""
    return max(candidates, key=lambda c: (len(set(c) & set(target)), -len(set(c) ^ set(target))))


class SubsetBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features: int, in_chans: int, mode: str, per_subset_affine: bool = False,
                 eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        if mode not in SUBSET_NORMS:
            raise ValueError(f"SubsetBatchNorm2d mode must be one of {', '.join(SUBSET_NORMS)}, not {mode!r}")
        self.mode, self.subsets = mode, all_subsets(in_chans)
        n = len(self.subsets)
        self.register_buffer("subset_mean", torch.zeros(n, num_features))
        self.register_buffer("subset_var", torch.ones(n, num_features))
        self.register_buffer("subset_seen", torch.zeros(n, dtype=torch.bool))
        self.per_subset_affine = per_subset_affine and mode == "switchable"
        if self.per_subset_affine:
            self.subset_weight = nn.Parameter(torch.ones(n, num_features))
            self.subset_bias = nn.Parameter(torch.zeros(n, num_features))
        self.active: int | None = None       # index of the current subset, set by the model
        self.calibrating = False
        self.calib_index: int | None = None  # while calibrating: the subset the batches' statistics add to
        self._calib: dict[int, list] = {}   # subset index -> [sum, sum of squares, count] while calibrating
        self._warned: set[int] = set()

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d, in_chans: int, mode: str, per_subset_affine: bool = False):
        new = cls(bn.num_features, in_chans, mode, per_subset_affine, bn.eps, bn.momentum or 0.1)
        new.load_state_dict(bn.state_dict(), strict=False)
        return new.to(bn.weight.device)

    def _affine(self, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.per_subset_affine and k is not None:
            return self.subset_weight[k], self.subset_bias[k]
        return self.weight, self.bias

    def _stats_index(self, k: int) -> int | None:
        """Index of the statistics to use for subset ``k`` at evaluation (None: the shared ones)."""
        if bool(self.subset_seen[k]):
            return k
        seen = [self.subsets[i] for i in range(len(self.subsets)) if bool(self.subset_seen[i])]
        if not seen:
            return None
        fallback = self.subsets.index(nearest_subset(self.subsets[k], seen))
        if k not in self._warned:
            self._warned.add(k)
            warnings.warn(f"no normalisation statistics for channel subset {self.subsets[k]}: using those of "
                          f"{self.subsets[fallback]} (nearest by channel overlap)", stacklevel=3)
        return fallback

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.active
        weight, bias = self._affine(k)
        if self.calibrating:
            return self._calibration_forward(x, weight, bias)
        if self.training:
            if self.mode == "switchable" and k is not None:
                self.subset_seen[k] = True
                return F.batch_norm(x, self.subset_mean[k], self.subset_var[k], weight, bias, True,
                                    self.momentum, self.eps)
            return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, True, self.momentum, self.eps)
        i = None if k is None else self._stats_index(k)
        mean, var = (self.running_mean, self.running_var) if i is None else (self.subset_mean[i], self.subset_var[i])
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)

    # ---- calibration: exact statistics over many batches, synchronised across processes ----------------
    def _calibration_forward(self, x: torch.Tensor, weight, bias) -> torch.Tensor:
        """Normalise with the batch's statistics (summed over all processes, as SyncBatchNorm does) and add
        them to the sums of subset ``calib_index``."""
        c = x.shape[1]
        count = x.numel() // c
        acc = torch.float32 if x.device.type == "mps" else torch.float64  # the sums over many batches
        world = _world_size()
        if world > 1 or count < 2:
            dims = (0, 2, 3)
            stats = torch.cat([x.sum(dims), x.square().sum(dims), x.new_tensor([count])])
            if world > 1:
                dist.all_reduce(stats)
            s1, s2, n = stats[:c], stats[c:2 * c], stats[2 * c]
            mean = s1 / n
            var = (s2 / n - mean.square()).clamp_min(0)
            self._accumulate(s1.to(acc), s2.to(acc), n.to(acc))
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
        # one process: BatchNorm's own fused kernel normalises with the batch's mean and biased variance and,
        # with momentum 1, writes exactly the batch's mean and unbiased variance into the "running" pair
        dtype = torch.promote_types(x.dtype, torch.float32)  # as BatchNorm keeps them under reduced precision
        mean, var = x.new_zeros(c, dtype=dtype), x.new_ones(c, dtype=dtype)
        out = F.batch_norm(x, mean, var, weight, bias, True, 1.0, self.eps)
        mean = mean.to(acc)
        self._accumulate(mean * count, var.to(acc) * (count - 1) + mean.square() * count, count)
        return out

    def _accumulate(self, s1: torch.Tensor, s2: torch.Tensor, n) -> None:
        if self.calib_index is None:
            raise RuntimeError("calibrating without a subset: set calib_index (dynconv.layers.calibrate does)")
        sums = self._calib.get(self.calib_index)
        self._calib[self.calib_index] = [s1, s2, n] if sums is None else [sums[0] + s1, sums[1] + s2, sums[2] + n]

    def finish_calibration(self, k: int) -> None:
        """Store subset ``k``'s statistics from its sums (a subset without any keeps what it had)."""
        sums = self._calib.pop(k, None)
        if sums is None:
            return
        s1, s2, n = sums
        mean = s1 / n
        var = (s2 / n - mean.square()).clamp_min(0) * (n / (n - 1))  # unbiased, as BatchNorm stores it
        self.subset_mean[k].copy_(mean)
        self.subset_var[k].copy_(var)
        self.subset_seen[k] = True


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def convert_norm(model: nn.Module, mode: str, in_chans: int, module_prefixes: list[str] | None = None,
                 per_subset_affine: bool = False) -> nn.Module:
    """Replace ``nn.BatchNorm2d`` layers (those under ``module_prefixes``, or all) for norm ``mode``."""
    if mode == "shared":
        return model
    for name, bn in list(model.named_modules()):
        if not isinstance(bn, nn.BatchNorm2d) or isinstance(bn, SubsetBatchNorm2d):
            continue
        if module_prefixes is not None and not any(name == p or name.startswith(p + ".") for p in module_prefixes):
            continue
        if mode == "group":
            new = nn.GroupNorm(min(32, bn.num_features), bn.num_features)
        else:
            new = SubsetBatchNorm2d.from_bn(bn, in_chans, mode, per_subset_affine)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return model


def subset_norms(model: nn.Module) -> list[SubsetBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, SubsetBatchNorm2d)]


@contextmanager
def _calibrating(model: nn.Module):
    norms = subset_norms(model)
    if not norms:
        raise ValueError("model has no subset-aware normalisation layers (model.norm=recalibrate or switchable)")
    was_training = model.training
    model.eval()
    for m in norms:
        m.calibrating, m._calib = True, {}
    try:
        yield norms
    finally:
        for m in norms:
            m.calibrating, m._calib, m.calib_index = False, {}, None
        model.train(was_training)


def _calibrate_into(norms: list[SubsetBatchNorm2d], subset: Subset) -> int:
    k = norms[0].subsets.index(tuple(subset))
    for m in norms:
        m.calib_index = k
    return k


@torch.no_grad()
def calibrate(model: nn.Module, batches_for_subset, subsets: list[Subset], forward) -> None:
    """Re-estimate per-subset statistics, one subset after the other. ``batches_for_subset(subset)`` yields
    normalised input batches; ``forward(model, x, subset)`` runs the model on them (e.g.
    :func:`dynconv.channel_select.forward_subset`). :func:`calibrate_in_one_pass` gives the same statistics
    reading each batch once."""
    with _calibrating(model) as norms:
        for subset in subsets:
            k = _calibrate_into(norms, subset)
            for x in batches_for_subset(subset):
                forward(model, x, subset)
            for m in norms:
                m.finish_calibration(k)


@torch.no_grad()
def calibrate_in_one_pass(model: nn.Module, batches: Iterable[tuple[torch.Tensor, Sequence[Subset]]], forward) -> None:
    """Re-estimate per-subset statistics in one pass over the data: ``batches`` yields (normalised input
    batch, the subsets it calibrates); each batch is run once per subset while it is in memory (so each is
    read and transformed once), every subset's sums grow batch by batch, and each subset that got a batch
    has its statistics stored at the end — the statistics :func:`calibrate` gives for the same batches."""
    with _calibrating(model) as norms:
        for x, subsets in batches:
            for subset in subsets:
                _calibrate_into(norms, subset)
                forward(model, x, subset)
        for m in norms:
            for k in list(m._calib):
                m.finish_calibration(k)
