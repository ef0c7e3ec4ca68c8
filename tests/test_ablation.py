import json

import pytest
from PIL import Image
from helpers import CONFIG, run_cli


@pytest.mark.slow
def test_ablate_quick_writes_table_plot_and_mlflow(tiny_data, tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["ablate", "--config", CONFIG, "--out", out, "--quick", "--modes", "slice", "--presets", "torchvision",
            "--seeds", "2", f"data.train={tiny_data / 'train.beton'}", f"data.val={tiny_data / 'val.beton'}",
            "model.num_classes=4", "data.num_workers=1"]
    assert run_cli(*args) == 0
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in rows] == ["plain/torchvision/shared", "slice/torchvision/shared"]
    assert all(r["seeds"] == 2 and list(r["accuracy_mean"]) == ["RGB", "RG", "RB", "GB", "R", "G", "B"] for r in rows)
    plain, slice_ = rows
    assert plain["macs"]["RGB"] == plain["macs"]["R"]          # a plain stem always sees 3 channels
    assert slice_["macs"]["RGB"] - slice_["macs"]["R"] == 2 * 64 * 49 * 16 * 16
    md = (out / "ablation.md").read_text()
    assert "| slice/torchvision/shared | 2 |" in md and "±" in md
    with Image.open(out / "ablation.png") as im:
        assert im.size[0] > 400 and len(set(im.convert("L").getdata())) > 10
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'runs' / 'mlruns.db'}")
    parent = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 4
    assert {a.path for a in client.list_artifacts(parent)} >= {"ablation.json", "ablation.md", "ablation.png"}
    # a second invocation reuses finished cells instead of retraining
    capsys.readouterr()
    assert run_cli(*args) == 0
    assert capsys.readouterr().out.count("already done") == 4


def test_ablate_rejects_unknown_mode(tmp_path, capsys):
    assert run_cli("ablate", "--config", CONFIG, "--out", tmp_path, "--modes", "prefix,magic") == 2
    assert "unknown stem mode(s) magic" in capsys.readouterr().err
