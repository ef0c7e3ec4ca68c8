"""The package surface: ``dynconv --version``, the lazy top-level API, and a missing extra as one line
naming the extra to install (simulated by hiding the module)."""
from __future__ import annotations

import sys

import pytest

import dynconv
from helpers import CONFIG, run_cli


def test_version_and_the_top_level_api(capsys):
    with pytest.raises(SystemExit) as done:
        run_cli("--version")
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"dynconv {dynconv.__version__}"
    assert "dynamic_resnet18" in dynconv.list_models()
    import torch

    model = dynconv.create_model("dynamic_resnet18", num_classes=5, stem_mode="slice")
    assert model(torch.zeros(2, 2, 32, 32), channels=(0, 2)).shape == (2, 5)
    assert dynconv.all_subsets("RGB")[0] == (0, 1, 2)
    with pytest.raises(AttributeError):
        dynconv.no_such_name  # noqa: B018


def _hide(monkeypatch, *modules):
    """Make ``import X`` fail for each module (and forget dynconv modules that imported it)."""
    for name in list(sys.modules):
        if name in modules or any(name.startswith(m + ".") for m in modules) or name == "dynconv.data.ffcv_io":
            monkeypatch.delitem(sys.modules, name)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


@pytest.mark.parametrize("argv, hidden, extra", [
    (["convert", "IMAGES", "OUT.beton"], "ffcv", "ffcv"),
    (["train", "--config", CONFIG, "data.train=TRAIN.beton", "data.val=VAL"], "ffcv", "ffcv"),
    (["compare", "--tracking-uri", "sqlite:///x.db"], "mlflow", "track"),
    (["sweep", "--config", CONFIG, "--space", "s.yaml"], "ray", "sweep"),
    (["submit", "--config", CONFIG, "--dry-run"], "submitit", "slurm"),
])
def test_a_missing_extra_is_one_line_naming_it(tiny_data, tmp_path, monkeypatch, capsys, argv, hidden, extra):
    argv = [str(tiny_data / "train") if a == "IMAGES" else str(tmp_path / "o.beton") if a == "OUT.beton"
            else f"data.train={tiny_data / 'train.beton'}" if a == "data.train=TRAIN.beton"
            else f"data.val={tiny_data / 'val'}" if a == "data.val=VAL" else a for a in argv]
    _hide(monkeypatch, hidden)
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"the '{extra}' extra" in err and f"pip install 'dynconv[{extra}]'" in err, err


def test_deepspeed_strategy_without_deepspeed(tiny_data, tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "deepspeed")
    assert run_cli("train", "--config", CONFIG, f"data.train={tiny_data / 'train'}", f"data.val={tiny_data / 'val'}",
                   "model.num_classes=4", f"run.dir={tmp_path / 'r'}", "train.strategy=deepspeed") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'dynconv[deepspeed]'" in err, err


def test_the_readme_python_example_runs(tiny_data, capsys):
    from helpers import ROOT

    text = (ROOT / "README.md").read_text()
    block = text.split("## From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block.replace("demo-out/data/val", str(tiny_data / "val")), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("{'RGB': ") and "'G': " in printed
