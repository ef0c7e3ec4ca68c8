"""``dynconv ablate``: plain vs every stem mode x stem preset (x norm) over seeds; table + plot."""
from __future__ import annotations

from pathlib import Path

NAME = "ablate"


def add_parser(sub) -> None:
    from dynconv.choices import NORM_MODES, STEM_MODES, STEM_PRESETS

    ab = sub.add_parser(NAME, help="train plain vs each stem mode x stem preset over seeds; table + plot")
    ab.add_argument("--config", required=True)
    ab.add_argument("--out", required=True, help="folder for runs, ablation.{json,md,png}")
    ab.add_argument("--modes", default=",".join(STEM_MODES))
    ab.add_argument("--presets", default=",".join(STEM_PRESETS))
    ab.add_argument("--norms", default="shared", help=f"comma-separated: {','.join(NORM_MODES)}")
    ab.add_argument("--seeds", type=int, default=2)
    ab.add_argument("--quick", action="store_true", help="CPU size: at most 3 epochs at 32 px")
    ab.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    ab.set_defaults(func=run)


def run(a) -> int:
    from dynconv.errors import DynconvError
    from dynconv.choices import NORM_MODES, STEM_MODES, STEM_PRESETS

    from ..ablation import parse_choices, run_ablation

    modes = parse_choices(a.modes, STEM_MODES, "stem mode(s)")
    norms = parse_choices(a.norms, NORM_MODES, "norm mode(s)")
    presets = parse_choices(a.presets, STEM_PRESETS, "stem preset(s)")
    if a.seeds < 1:
        raise DynconvError("--seeds must be at least 1 (2 or more to see the spread)")
    result = run_ablation(a.config, a.overrides, Path(a.out), modes, presets, a.seeds, a.quick, norms)
    print(Path(result["files"][1]).read_text())
    print("wrote " + ", ".join(result["files"]))
    if result["run_id"]:
        print(f"MLflow parent run id: {result['run_id']}")
    return 0
