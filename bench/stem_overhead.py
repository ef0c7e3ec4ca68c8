"""Training-step time of dynamic_resnet18 (each stem mode) ÷ plain resnet18, same input and stem preset.

Goal: prefix and slice ≤ 1.05×. All models are timed in one process, interleaved round by round so that
machine noise hits every model alike; the ratio uses the median step time.

    .venv/bin/python bench/stem_overhead.py [--batch 32] [--size 64] [--steps 20] [--preset torchvision]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dynconv.channel_select import forward_subset
from dynconv.layers import STEM_MODES
from dynconv.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--preset", default="torchvision")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--channels-last", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    models = {"resnet18 (plain)": create_model("resnet18", num_classes=10, stem=a.preset)}
    models.update({f"dynamic_resnet18 {m}": create_model("dynamic_resnet18", num_classes=10, stem=a.preset, stem_mode=m)
                   for m in STEM_MODES})
    opts = {}
    for name, m in models.items():
        m.to(dev, memory_format=fmt).train()
        opts[name] = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    def step(name: str) -> float:
        m, opt = models[name], opts[name]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = F.cross_entropy(forward_subset(m, x, (0, 1, 2)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for name in models:  # warm-up
        for _ in range(3):
            step(name)
    times: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(a.steps):
        for name in models:
            times[name].append(step(name))
    base = statistics.median(times["resnet18 (plain)"])
    print(f"device {dev}, batch {a.batch}, {a.size}x{a.size}, preset {a.preset}, {a.steps} steps, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'model':34s} {'median step (ms)':>17s} {'ratio':>7s}  goal")
    for name, ts in times.items():
        med = statistics.median(ts)
        goal = "≤ 1.05" if name.endswith(("prefix", "slice")) else ""
        flag = "" if not goal else ("ok" if med / base <= 1.05 else "MISSED")
        print(f"{name:34s} {1000 * med:17.1f} {med / base:7.3f}  {goal} {flag}")


if __name__ == "__main__":
    main()
