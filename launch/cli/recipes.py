"""``dynconv recipes``: train a recipes file's recipes on its synthetic data sets over seeds; publish the table."""
from __future__ import annotations

from pathlib import Path

NAME = "recipes"


def add_parser(sub) -> None:
    r = sub.add_parser(NAME, help="train recipes x data sets x seeds (the robustness study); write the results page")
    r.add_argument("--config", required=True, help="the base training config, e.g. launch/configs/robustness.yaml")
    r.add_argument("--recipes", required=True, help="the recipes file, e.g. launch/recipes/robustness.yaml")
    r.add_argument("--seeds", type=int, default=2)
    r.add_argument("--out", default="recipes-out", help="data sets, runs, recipes.json (finished runs are reused)")
    r.add_argument("--publish", default=None, metavar="PAGE.md",
                   help="write the results page here (and its figures beside it); default OUT/results.md")
    r.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    r.set_defaults(func=run)


def run(a) -> int:
    from dynconv.errors import DynconvError

    from ..recipes import run_recipes

    if a.seeds < 1:
        raise DynconvError("--seeds must be at least 1 (2 or more to see the spread)")
    result = run_recipes(a.config, a.recipes, Path(a.out), a.seeds, a.overrides, a.publish)
    print(Path(result["page"]).read_text())
    print("wrote " + ", ".join(result["files"]))
    return 0
