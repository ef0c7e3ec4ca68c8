"""FFCV as a self-contained wheel: built from its sdist against libturbojpeg and OpenCV core + imgproc only (a
temporary ``opencv4.pc``: FFCV's setup.py would otherwise link every OpenCV module, and auditwheel graft their
whole dependency tree), then repaired by ``auditwheel repair`` (patchelf) with a policy that leaves only glibc's
and the C++ runtime's libraries to the target, and checked by a ``.beton`` round trip."""
from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from dynconv.errors import DynconvError

# `auditwheel repair` with a stricter library policy: the manylinux policies let a wheel assume libz, libX11,
# libGL, glib ... on the target; a compute node's minimal image can lack them (libopencv_core links libz and,
# through libGLX, libX11), so those are grafted too, and only glibc's and the C++ runtime's libraries are not
GLIBC_AND_CXX_RUNTIME = ("libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1",
                         "libresolv.so.2", "libnsl.so.1", "libstdc++.so.6", "libgcc_s.so.1")
STRICT_AUDITWHEEL = f"""
import json, sys, tempfile, pathlib
import auditwheel.policy as policy
from auditwheel.libc import Libc
from auditwheel.main import main
keep = {GLIBC_AND_CXX_RUNTIME!r}
policies = json.loads(policy._POLICY_JSON_MAP[Libc.GLIBC].read_text())
for p in policies:
    p["lib_whitelist"] = [lib for lib in p["lib_whitelist"] if lib in keep]
strict = pathlib.Path(tempfile.mkdtemp()) / "manylinux-policy.json"
strict.write_text(json.dumps(policies))
policy._POLICY_JSON_MAP[Libc.GLIBC] = strict
sys.argv[0] = "auditwheel"
sys.exit(main())
"""


@dataclass
class Repaired:
    wheel: str
    plat: str
    libs: list[str]
    before: str = ""  # ldd of the extension as built (system libraries)
    after: str = ""   # ldd of the extension unpacked from the repaired wheel


def _ldd(path: Path) -> str:
    done = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
    return "\n".join(ln.strip() for ln in done.stdout.splitlines() if ln.strip())


def _needed(path: Path) -> list[str]:
    done = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", done.stdout)


def _opencv_trimmed_pc(folder: Path) -> str:
    """A ``opencv4.pc`` that links OpenCV core + imgproc only (what FFCV uses), with the system's Cflags."""
    def pc(*args) -> str:
        done = subprocess.run(["pkg-config", *args, "opencv4"], capture_output=True, text=True)
        if done.returncode != 0:
            raise DynconvError("pkg-config finds no opencv4: install the build machine's OpenCV headers "
                               "(Debian/Ubuntu: apt-get install pkg-config libopencv-dev libturbojpeg0-dev; "
                               "`make install` does)")
        return done.stdout.strip()

    libdir, cflags, version = pc("--variable=libdir"), pc("--cflags"), pc("--modversion")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "opencv4.pc").write_text(
        "Name: opencv4\nDescription: OpenCV core + imgproc only (for a self-contained ffcv wheel)\n"
        f"Version: {version}\nLibs: -L{libdir} -lopencv_imgproc -lopencv_core\nCflags: {cflags}\n")
    return version


def _extension_of(wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        z.extractall(into)
    found = sorted(into.glob("ffcv/_libffcv*.so"))
    if not found:
        raise DynconvError(f"{wheel.name} holds no ffcv/_libffcv*.so extension")
    return found[0]


BETON_CHECK = r"""
import sys, tempfile, numpy as np, os
import ffcv
assert ffcv.__file__.startswith(sys.argv[1]), ffcv.__file__
from ffcv.writer import DatasetWriter
from ffcv.fields import RGBImageField, IntField
from ffcv.fields.decoders import SimpleRGBImageDecoder, IntDecoder
from ffcv.loader import Loader, OrderOption
class D:
    def __len__(self): return 8
    def __getitem__(self, i):
        return (np.random.RandomState(i).randint(0, 255, (24, 24, 3), dtype=np.uint8), i % 2)
path = os.path.join(tempfile.mkdtemp(), "check.beton")
DatasetWriter(path, {"image": RGBImageField(write_mode="jpg"), "label": IntField()}, num_workers=1).from_indexed_dataset(D())
n = 0
for x, y in Loader(path, batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL,
                   pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]}):
    assert x.shape == (4, 24, 24, 3), x.shape
    n += len(x)
assert n == 8, n
print("beton round trip ok: 8 JPEG images written and read back")
"""


def build_ffcv_wheel(version: str, *, pip: list, python: str, run, probe, say, scratch: Path, into: Path, env: dict,
                     patchelf: str, check: bool) -> Repaired:
    """Build ffcv ``version`` with ``pip``, repair it into ``into`` and (``check``) read a ``.beton`` with it;
    ``run(what, cmd, env=, cwd=)`` runs a command (one line on failure), ``probe(python, code)`` asks ``python``."""
    opencv = _opencv_trimmed_pc(scratch / "pkgconfig")
    say(f"building ffcv {version} (C extension) against libturbojpeg and OpenCV {opencv} core + "
        "imgproc only …")
    built = scratch / "ffcv-built"
    run("building ffcv", [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-cache-dir",
                          "--no-binary", "ffcv", "-w", built, f"ffcv=={version}"],
        env={**env, "PKG_CONFIG_PATH": str(scratch / "pkgconfig")})
    wheel = sorted(built.glob("ffcv-*.whl"))[-1]
    ext = _extension_of(wheel, scratch / "before")
    before, needed = _ldd(ext), _needed(ext)
    (scratch / "ldd-before.txt").write_text(before + "\n")
    say(f"ffcv's extension needs {', '.join(needed)}")
    say(f"repairing {wheel.name} with auditwheel (lowest manylinux tag that fits) …")
    run("auditwheel repair", [sys.executable, "-c", STRICT_AUDITWHEEL, "repair", "-w", into, wheel],
        env={**env, "PATH": f"{Path(patchelf).parent}:{env.get('PATH', '')}"})
    fixed = sorted(into.glob("ffcv-*.whl"))[-1]
    with zipfile.ZipFile(fixed) as z:
        libs = sorted(Path(n).name for n in z.namelist() if n.startswith("ffcv.libs/") and not n.endswith("/"))
    after_ext = _extension_of(fixed, scratch / "after")
    after = _ldd(after_ext)
    plat = fixed.name.rsplit("-", 1)[-1].removesuffix(".whl")
    result = Repaired(fixed.name, plat, libs, before, after)
    say(f"repaired {fixed.name}: carries {', '.join(libs)}")
    if check:
        say("checking the repaired wheel: a .beton round trip …")
        if probe(python, "import importlib.util as u; print(bool(u.find_spec('torch')))") != "True":
            say("skipped the check: this interpreter has no torch (FFCV's loader needs it)")
        else:
            said = run("the .beton round trip", [python, "-c", BETON_CHECK, str(scratch / "after")],
                       env={**env, "PYTHONPATH": str(scratch / "after"), "NUMBA_CACHE_DIR": str(scratch / "nb")},
                       cwd=scratch)
            say(said.strip().splitlines()[-1])
    return result
