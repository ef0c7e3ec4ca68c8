"""Start a ResNet from pretrained weights in torchvision's format (torchvision's ImageNet weights, or a state-dict
file), with the RGB first convolution mapped into every stem mode and onto the dataset's channels by name.

The backbone (``bn1``, ``layer1..4``) loads as it is; ``fc`` loads when the class count matches (else it keeps
its fresh initialisation); the first convolution ``conv1.weight`` (``out × 3 × k × k``, channels R, G, B) is
first laid out over the dataset's channels — R, G and B where the dataset has them, every other channel the
mean of the three filters (CHAMMI's "pretrained, pad with the average") — giving ``W`` (``out × C × k × k``),
then put into the stem:

* ``prefix``, ``slice``, plain: the weight is ``W``;
* ``target``: every subset's weight is ``W[:, S]``;
* ``template_mixing``: the templates and coefficients are ``W``'s factorisation (SVD), so every channel's
  mixed filter is its column of ``W`` (exactly, up to float rounding, when ``num_templates >= C``);
* ``hypernet``: the output layer is solved (least squares) so the generated filters are ``W``'s columns (the
  embeddings and hidden layer keep their initialisation);
* ``depthwise``: channel ``i``'s bank is ``W[:, i]`` (``kernels_per_channel`` must equal the stem's width),
  the channel weights equal and the 1×1 projection the identity scaled so that the full input sums to
  ``conv(x, W)``: the stem computes ``InstanceNorm(conv(x, W))``, its own instance norm after the pretrained
  convolution (a subset of ``k`` channels: its filters' sum scaled by ``C/k`` under ``combine=softmax|mean``).

So a pretrained model given every channel of RGB data computes the pretrained network's logits (the depthwise
stem: with its instance norm in between).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..channels import channel_names
from ..errors import DynconvError
from ..layers.generated_conv import DepthwiseStemConv2d, HyperNetConv2d, TemplateMixingConv2d
from ..layers.target_conv import TargetConv2d

RGB = ("R", "G", "B")


def start_from(model: nn.Module, source: str, channels: str) -> list[str]:
    """``model.pretrained``: load ``source`` (``torchvision`` or a file) into a dynconv ResNet; returns what kept
    its initialisation (:func:`load_pretrained`)."""
    arch = getattr(model, "arch", None)
    if arch not in ("resnet18", "resnet34"):
        raise DynconvError(f"model.pretrained starts a ResNet (resnet18/34, dynamic_resnet18/34) from torchvision's "
                           f"weights; {type(model).__name__} has none: unset model.pretrained")
    return load_pretrained(model, pretrained_state_dict(source, arch), channels)


def pretrained_state_dict(source: str, arch: str) -> dict[str, torch.Tensor]:
    """``torchvision``: torchvision's default ImageNet weights for ``arch`` (downloaded once into
    ``$TORCH_HOME``, or read from that cache on a machine without network); else a state-dict file (a plain
    state dict, ``{"state_dict": ...}`` or ``{"model": ...}`` as checkpoints hold it)."""
    if source == "torchvision":
        from torchvision.models import get_model_weights

        try:
            return get_model_weights(arch).DEFAULT.get_state_dict(progress=False)
        except Exception as e:  # noqa: BLE001 - no network and no cached copy: say so in one line
            raise DynconvError(f"model.pretrained=torchvision: could not load torchvision's {arch} weights "
                               f"({str(e).splitlines()[0][:120]}); on a machine without network put the file in "
                               "$TORCH_HOME/hub/checkpoints, or pass model.pretrained=PATH to a state dict") from None
    path = Path(source)
    if not path.is_file():
        raise DynconvError(f"model.pretrained={source}: no such file; give 'torchvision' or a state-dict file "
                           "(torchvision's format: conv1.weight, bn1.*, layer1..4.*, fc.*)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise DynconvError(f"model.pretrained={source} is not a ResNet state dict in torchvision's format "
                           "(it has no conv1.weight)")
    return state


def by_channel_name(weight: torch.Tensor, channels: str) -> torch.Tensor:
    """An RGB first-conv weight (``out × 3 × k × k``) over the dataset's channels: R, G, B by name, any other
    channel the mean of the three filters."""
    names = channel_names(channels)
    mean = weight.mean(1)
    return torch.stack([weight[:, RGB.index(n)] if n in RGB else mean for n in names], 1)


@torch.no_grad()
def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor], channels: str) -> list[str]:
    """Load a torchvision-format ResNet ``state`` into ``model`` (a dynconv ResNet of any stem mode and norm);
    returns the parameter groups left at their initialisation (``fc`` when the classes differ)."""
    stem = model.conv1
    w = state["conv1.weight"]
    if w.shape[1] != 3:
        raise DynconvError(f"the pretrained first convolution has {w.shape[1]} input channels; dynconv maps an "
                           "RGB (3-channel) one onto the dataset's channels")
    target = by_channel_name(w.float(), channels)
    out, k = stem.out_channels, _kernel(stem)
    if (out, k) != (w.shape[0], w.shape[-1]):
        raise DynconvError(f"the pretrained weights are for a {w.shape[0]}-channel {w.shape[-1]}x{w.shape[-1]} "
                           f"stem, this model's is {out}-channel {k}x{k}: use model.width=64 (and the same stem size)")
    kept = []
    rest = {k: v for k, v in state.items()  # per-subset statistics of other data: calibrated on this data instead
            if not k.startswith("conv1.") and not k.rsplit(".", 1)[-1].startswith("subset_")}
    if tuple(rest.get("fc.weight", torch.empty(0)).shape) != tuple(model.fc.weight.shape):
        rest = {k: v for k, v in rest.items() if not k.startswith("fc.")}
        kept.append("fc")
    mine = model.state_dict()
    wrong = [k for k, v in rest.items() if k in mine and mine[k].shape != v.shape]
    if wrong:
        raise DynconvError(f"the pretrained weights do not fit this model ({wrong[0]}: {tuple(rest[wrong[0]].shape)} "
                           f"vs {tuple(mine[wrong[0]].shape)}): use the same architecture with model.width=64")
    missing = [k for k in mine if not k.startswith(("conv1.", "fc.")) and k not in rest
               and not k.rsplit(".", 1)[-1].startswith("subset_")]  # per-subset norms: calibrated later
    if missing:
        raise DynconvError(f"the pretrained weights lack {len(missing)} of this model's tensors (e.g. {missing[0]}): "
                           "give weights of the same architecture")
    model.load_state_dict(rest, strict=False)
    _into_stem(stem, target.to(next(stem.parameters()).dtype))
    return kept


def _kernel(stem: nn.Module) -> int:
    if isinstance(stem, DepthwiseStemConv2d):
        return stem.bank.shape[-1]
    k = stem.kernel_size
    return k[0] if isinstance(k, tuple) else k


def _into_stem(stem: nn.Module, w: torch.Tensor) -> None:
    c = w.shape[1]
    if isinstance(stem, TargetConv2d):
        for s, p in zip(stem.subsets, stem.weights):
            p.copy_(w[:, list(s)])
    elif isinstance(stem, TemplateMixingConv2d):
        flat = w.transpose(0, 1).reshape(c, -1)  # C × (out·k·k)
        u, s, vh = torch.linalg.svd(flat.double(), full_matrices=False)
        t = min(stem.num_templates, s.numel())
        stem.templates.zero_()
        stem.templates[:t].copy_((s[:t, None] * vh[:t]).view(t, *stem.templates.shape[1:]))
        stem.mix.zero_()
        stem.mix[:, :t].copy_(u[:, :t])
    elif isinstance(stem, HyperNetConv2d):
        h = stem.hidden(stem.embedding).double()  # C × hidden
        flat = w.transpose(0, 1).reshape(c, -1).double()
        stem.out.weight.copy_(torch.linalg.lstsq(h, flat).solution.T)
        stem.out.bias.zero_()
    elif isinstance(stem, DepthwiseStemConv2d):
        if stem.kernels != w.shape[0]:
            raise DynconvError(f"a pretrained depthwise stem needs model.stem_args.kernels_per_channel={w.shape[0]} "
                               f"(one bank filter per pretrained filter), not {stem.kernels}")
        stem.bank.copy_(w.transpose(0, 1).unsqueeze(2))
        if hasattr(stem, "channel_weight"):
            stem.channel_weight.fill_(1.0)
        full = stem.channel_weights(list(range(c)))[0].item()  # equal weights: softmax and mean 1/C, else 1
        stem.project.weight.copy_((torch.eye(w.shape[0]) / full).view_as(stem.project.weight))
        if stem.project.bias is not None:
            stem.project.bias.zero_()
    else:  # nn.Conv2d, DynamicConv2D
        stem.weight.copy_(w)
