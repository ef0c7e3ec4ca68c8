"""Where FFCV's compiled extension (``ffcv/_libffcv*.so``) gets its shared libraries — libturbojpeg and
OpenCV above all: from a wheel's bundled folder (``ffcv.libs/`` of a repaired wheel), the Python environment
(a conda prefix) or the system. ``ldd`` resolves them without loading anything; without ``ldd`` the extension
is loaded (ctypes, not ``import ffcv``) and ``/proc/self/maps`` says where its libraries came from."""
from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

EXTENSION = re.compile(r"(^|/)_libffcv[^/]*\.(so|pyd)$")
FFCV_LIBS = ("libturbojpeg", "libopencv_core", "libopencv_imgproc")  # always named, found or not
NOT_FOUND = "NOT FOUND (the dynamic loader cannot find it)"


def one_line(e: BaseException) -> str:
    """An error as one line of a report: its class and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}"[:200] if text else type(e).__name__


def ffcv_libraries() -> dict[str, str]:
    extension = ffcv_extension()
    if not isinstance(extension, Path):
        return {"extension": extension}
    out = {"extension": str(extension)}
    libs, complete = (ldd(extension), True) if shutil.which("ldd") else (loaded_with(extension), False)
    if isinstance(libs, str):
        return {**out, "error": libs}
    for prefix in FFCV_LIBS:
        names = [name for name in libs if name.startswith(prefix + ".") or name.startswith(prefix + "-")]
        if not names:
            out[prefix] = "not linked" if complete else "not loaded"
        for name in names:
            out[name] = f"{libs[name]} ({origin(libs[name])})" if libs[name] else NOT_FOUND
    rest = {name: path for name, path in libs.items() if name not in out}
    shown = {name: path for name, path in rest.items() if complete and (not path or origin(path) != "system")}
    out.update({name: f"{path} ({origin(path)})" if path else NOT_FOUND for name, path in shown.items()})
    if complete:
        out["other libraries"] = f"{len(rest) - len(shown)}, all from the system"
    return out


def ffcv_extension() -> Path | str:
    """The extension's file, or why there is none — found without importing ffcv."""
    try:
        dist = metadata.distribution("ffcv")
    except metadata.PackageNotFoundError:
        return "ffcv not installed"
    except Exception as e:
        return one_line(e)
    for file in dist.files or ():
        if EXTENSION.search(str(file)):
            return Path(dist.locate_file(file)).resolve()
    try:  # an editable install: the extension sits in the source tree
        spec = importlib.util.find_spec("ffcv")
    except (ImportError, ValueError) as e:
        return one_line(e)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(Path(folder).glob("_libffcv*")):
            if EXTENSION.search(path.name):
                return path.resolve()
    return "ffcv is installed, but without its compiled _libffcv extension"


def ldd(extension: Path) -> dict[str, str | None] | str:
    """``{soname: path, or None where it is not found}``, or ldd's error."""
    try:
        done = subprocess.run(["ldd", str(extension)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ldd: {one_line(e)}"
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        return f"ldd: {said[0] if said else f'exit status {done.returncode}'}"
    libs = {}
    for line in done.stdout.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(not found|\S+)", line)
        if m:
            libs[m.group(1)] = None if m.group(2) == "not found" else m.group(2)
    return libs


def loaded_with(extension: Path) -> dict[str, str] | str:
    """Without ldd: load the extension, then read which libraries this process has mapped (all of them, so only
    FFCV's own ones are named)."""
    import ctypes

    try:
        ctypes.CDLL(str(extension))
    except OSError as e:  # names the library the loader could not find
        return f"loading {extension.name}: {one_line(e)}"
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError as e:
        return f"no ldd, and /proc/self/maps: {one_line(e)}"
    libs = {}
    for line in maps:
        fields = line.split(None, 5)
        if len(fields) == 6 and ".so" in fields[5]:
            libs.setdefault(Path(fields[5]).name, fields[5])
    return libs


def origin(path: str) -> str:
    """``bundled in site-packages/<folder>``, ``environment (sys.prefix)`` or ``system``."""
    resolved = Path(path).resolve()
    sites = {Path(p).resolve() for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))}
    for site in sites:
        if resolved.is_relative_to(site):
            return f"bundled in {site.name}/{resolved.relative_to(site).parts[0]}"
    if resolved.is_relative_to(Path(sys.prefix).resolve()):
        return f"environment: {sys.prefix}"
    return "system"
