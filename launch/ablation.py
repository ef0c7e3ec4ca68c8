"""`dynconv ablate`: plain vs every channel-adaptive stem mode × stem preset, over several seeds.

The study's dynamic ResNet18 changed two things at once (a channel-adaptive first conv *and* a stride-1
stem), so its gain over the plain model mixes two effects. This trains the matrix — the plain model (RGB
only: the reference) and every stem mode × norm mode, per stem preset — with identical data, epochs and
seeds, and reports per-subset accuracy (mean ± std over seeds) against MACs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dynconv.fileio import atomic_write_text

from .config import load_config
from .matrix import Cell, log_to_parent, markdown, plot, run_matrix


@dataclass(frozen=True)
class Variant:
    model: str
    stem_mode: str | None  # None: the plain model, trained on RGB only — the RGB-only reference
    stem: str
    norm: str = "shared"

    @property
    def label(self) -> str:
        return f"{self.stem_mode or 'plain'}/{self.stem}/{self.norm}"


def variants(model: str, modes: list[str], presets: list[str], norms: list[str] = ("shared",)) -> list[Variant]:
    plain = model.removeprefix("dynamic_")
    return [v for preset in presets
            for v in [Variant(plain, None, preset)]
            + [Variant(f"dynamic_{plain}", m, preset, n) for m in modes for n in norms]]


def run_ablation(config: str, overrides: list[str], out: Path, modes: list[str], presets: list[str],
                 seeds: int, quick: bool, norms: list[str] = ("shared",), log=print) -> dict:
    base = load_config(config, overrides)
    quick_overrides = [f"train.epochs={min(base.train.epochs, 3)}", "data.image_size=32"] if quick else []
    cells = [Cell(v.label, (f"model.name={v.model}", f"model.stem={v.stem}", f"model.norm={v.norm}",
                            f"model.stem_mode={v.stem_mode or 'null'}",
                            f"dropout.kind={base.dropout.kind if v.stem_mode else 'none'}"),
                  group=v.stem, reference=v.stem_mode is None)
             for v in variants(base.model.name, modes, presets, norms)]
    rows, parent = run_matrix(config, overrides + quick_overrides, out, cells, seeds, "ablation",
                              params={"modes": ",".join(modes), "presets": ",".join(presets), "norms": ",".join(norms),
                                      "quick": quick, "model": base.model.name}, log=log)
    files = [atomic_write_text(out / "ablation.json", json.dumps(rows, indent=2) + "\n"),
             atomic_write_text(out / "ablation.md", "Accuracy (%) per channel subset, mean ± std over seeds.\n\n"
                               + markdown(rows)),
             plot(rows, out / "ablation.png")]
    log_to_parent(parent, files, rows)
    return {"rows": rows, "files": [str(f) for f in files], "run_id": parent.run_id if parent else None}


def parse_choices(spec: str, valid, what: str) -> list[str]:
    from dynconv.errors import DynconvError

    items = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in items if s not in valid]
    if bad or not items:
        raise DynconvError(f"unknown {what} {', '.join(bad) or repr(spec)}: choose from {', '.join(valid)}")
    return items

