"""`dynconv env`: the report for a bug report — every section, versions from the installed packages, FFCV's
native libraries as real paths, a broken package as one line (exit 0), the same keys as JSON, Slurm's variables."""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from helpers import run_cli

from dynconv.launch import env_report
from dynconv.launch.env_report import SECTIONS


def parse_text(text: str) -> dict[str, dict[str, str]]:
    """The text report back as sections of ``name -> value`` (what the JSON holds)."""
    report: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if re.fullmatch(r"\[.+\]", line):
            section = report.setdefault(line[1:-1], {})
        elif line.strip() and line.strip() != "none":
            name, value = re.fullmatch(r"  (.+?):\s+(.*)", line).groups()
            section[name] = value
    return report


@pytest.fixture(scope="module")
def outputs():
    """`dynconv env` and `dynconv env --json`, in this process (the first imports every extra: seconds)."""
    capture = {}
    for argv in (("env",), ("env", "--json")):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_cli(*argv)
        capture[argv] = (code, out.getvalue(), err.getvalue())
    return capture[("env",)], capture[("env", "--json")]


def test_the_report_has_every_section_and_the_installed_versions(outputs):
    (code, text, err), _ = outputs
    assert code == 0 and "Traceback" not in text + err
    report = parse_text(text)
    assert list(report) == list(SECTIONS)
    versions = report["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["dynconv"].startswith(__import__("dynconv").__version__)
    assert versions["torch.cuda.is_available()"] == str(torch.cuda.is_available())
    for name in ("python", "platform", "glibc", "torchvision", "numba", "deepspeed", "ray", "mlflow", "submitit",
                 "pydantic", "omegaconf", "numpy", "numba threading layer"):
        assert versions[name], name
    assert set(report["extras"]) == {"ffcv", "deepspeed", "slurm", "sweep", "track"}
    cpu = {"os.cpu_count()", "usable (sched_getaffinity)", "OMP_NUM_THREADS", "torch.get_num_threads()"}
    assert cpu <= set(report["cpu"])
    assert report["cpu"]["torch.get_num_threads()"] == str(torch.get_num_threads())
    if torch.cuda.is_available():
        assert len(report["gpus"]) == torch.cuda.device_count()
    else:
        assert "[gpus]\n  none\n" in text


def test_json_has_the_same_sections_and_keys(outputs):
    (_, text, _), (code, out, _) = outputs
    assert code == 0
    as_json = json.loads(out)
    assert {s: set(entries) for s, entries in as_json.items()} == {s: set(e) for s, e in parse_text(text).items()}
    assert as_json["versions"]["torch"] == torch.__version__


def test_ffcv_s_native_libraries_are_real_paths(outputs):
    if env_report.version("ffcv") == "not installed":
        pytest.skip("needs the ffcv extra")
    (_, text, _), _ = outputs
    libs = parse_text(text)["ffcv native libraries"]
    assert Path(libs["extension"]).is_file() and "_libffcv" in libs["extension"]
    turbojpeg = [value for name, value in libs.items() if name.startswith("libturbojpeg")]
    assert turbojpeg, libs
    path, where = re.fullmatch(r"(\S+) \((.+)\)", turbojpeg[0]).groups()
    assert Path(path).exists() and (where == "system" or where.startswith(("bundled in", "environment")))
    for name in ("libopencv_core", "libopencv_imgproc"):
        assert any(n.startswith(name) for n in libs), (name, libs)


def test_a_broken_package_is_one_line_and_the_exit_status_is_0(outputs, monkeypatch, capsys):
    """(After `outputs`: every extra is imported whole before torch is made to fail.)"""
    real_version = importlib.metadata.version

    def version(dist):
        if dist == "ray":
            raise ValueError("METADATA of ray is garbled\nsecond line")
        if dist == "mlflow":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real_version(dist)

    monkeypatch.setattr(env_report.metadata, "version", version)
    for module in ("ray", "ray.tune", "torch"):  # `import ray.tune` / `import torch` fail
        monkeypatch.setitem(sys.modules, module, None)
    assert run_cli("env") == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    report = parse_text(out.out)
    assert report["versions"]["ray"] == "ValueError: METADATA of ray is garbled"
    assert report["versions"]["mlflow"] == "not installed"
    assert report["extras"]["sweep"].startswith("ModuleNotFoundError: import of ray")
    assert report["versions"]["torch import"].startswith("ModuleNotFoundError: import of torch")
    assert report["gpus"] == {} and "torch.get_num_threads()" not in report["cpu"]
    assert "\n" not in report["extras"]["sweep"]


def test_slurm_s_variables_appear(outputs, monkeypatch, capsys):
    variables = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "8",
                 "SLURM_CPUS_PER_TASK": "6", "SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert run_cli("env", "--json") == 0
    slurm = json.loads(capsys.readouterr().out)["slurm"]
    assert {name: slurm[name] for name in variables} == variables
    names = [n for n in slurm if n.startswith("SLURM")]
    assert names == sorted(names)
    assert re.search(r"^  SLURM_JOB_NODELIST:\s+gpu\[01-02\]$", env_report.format_text({"slurm": slurm}), re.M)


def test_the_libraries_outside_ldd_are_named_from_the_loaded_process(monkeypatch):
    """No ldd (a minimal container): the extension is loaded and /proc/self/maps says where its libraries are."""
    from dynconv.launch import native_libs

    if not isinstance(native_libs.ffcv_extension(), Path):
        pytest.skip("needs the ffcv extra")
    monkeypatch.setattr(native_libs.shutil, "which", lambda name: None)
    libs = native_libs.ffcv_libraries()
    turbojpeg = next(value for name, value in libs.items() if name.startswith("libturbojpeg"))
    assert Path(turbojpeg.split(" (")[0]).exists()
    assert "other libraries" not in libs
