"""Training-step time of dynamic_resnet18 (each stem mode) ÷ plain resnet18, same input and stem preset, for
each channel subset asked for (the plain model sees the subset zero-filled, at full width).

Goal: prefix and slice ≤ 1.05× on every subset. All models are timed in one process, interleaved round by
round so that machine noise hits every model alike; the ratio uses the median step time. On CUDA the table also
counts the step's host synchronisations (``torch.cuda.set_sync_debug_mode``): a Python list used as an index is
copied to the device and waits for the GPU (0 expected now: the slice stem on R+B made two per step, the input's
gather and the weight's, and the zero-filled input of a plain model one).

    .venv/bin/python bench/stem_overhead.py [--batch 32] [--size 64] [--steps 20] [--preset torchvision]
        [--subsets RGB,RG,RB,R] [--precision fp32|bf16] [--channels-last] [--device cuda]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from dynconv.channel_select import forward_subset
from dynconv.channels import parse_subsets, subset_name
from dynconv.layers import STEM_MODES
from dynconv.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--preset", default="torchvision")
    ap.add_argument("--subsets", default="RGB", help="channel subsets of RGB to time, e.g. RGB,RG,RB,R")
    ap.add_argument("--modes", default=",".join(STEM_MODES), help="stem modes to time (default: all)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--channels-last", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    subsets = parse_subsets(a.subsets, "RGB")
    models = {"resnet18 (plain)": create_model("resnet18", num_classes=10, stem=a.preset)}
    models.update({f"dynamic_resnet18 {m}": create_model("dynamic_resnet18", num_classes=10, stem=a.preset, stem_mode=m)
                   for m in a.modes.split(",")})
    opts = {}
    for name, m in models.items():
        m.to(dev, memory_format=fmt).train()
        opts[name] = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    def autocast():
        return torch.autocast(dev.type, torch.bfloat16) if a.precision == "bf16" else contextlib.nullcontext()

    def step(name: str, subset) -> float:
        m, opt = models[name], opts[name]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast():
            logits = forward_subset(m, x, subset)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    print(f"device {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}, batch {a.batch}, "
          f"{a.size}x{a.size}, {a.precision}, {'channels_last' if a.channels_last else 'NCHW'}, preset {a.preset}, "
          f"{a.steps} steps, torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    def syncs(name: str, subset) -> str:
        """Host synchronisations in one step (CUDA only)."""
        if dev.type != "cuda":
            return "-"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step(name, subset)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return str(sum("synchroniz" in str(w.message) for w in caught))

    print(f"{'model':34s} {'subset':>6s} {'median step (ms)':>17s} {'ratio':>7s} {'syncs':>5s}  goal", flush=True)
    for subset in subsets:
        for name in models:  # warm-up (cuDNN picks its kernels for this input)
            for _ in range(3):
                step(name, subset)
        times: dict[str, list[float]] = {n: [] for n in models}
        for _ in range(a.steps):
            for name in models:
                times[name].append(step(name, subset))
        base = statistics.median(times["resnet18 (plain)"])
        for name, ts in times.items():
            med = statistics.median(ts)
            goal = "≤ 1.05" if name.endswith(("prefix", "slice")) else ""
            flag = "" if not goal else ("ok" if med / base <= 1.05 else "MISSED")
            print(f"{name:34s} {subset_name(subset, 'RGB'):>6s} {1000 * med:17.2f} {med / base:7.3f} "
                  f"{syncs(name, subset):>5s}  {goal} {flag}", flush=True)


if __name__ == "__main__":
    main()
