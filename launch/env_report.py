"""``dynconv env``: what a bug report needs to know of the machine — versions (with dynconv's git commit when
it runs from a checkout), GPUs, CPUs and threads, the Slurm job, which extras import, and where FFCV's native
libraries load from. Every probe is guarded: a missing or broken package is one line ("not installed", or its
error), never a traceback. The report is sections of ``name -> value`` strings, printed aligned or as JSON."""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as metadata
import io
import os
import platform
import re
import sys
import warnings
from pathlib import Path

from .native_libs import ffcv_libraries, one_line

SECTIONS = ("versions", "gpus", "cpu", "slurm", "extras", "ffcv native libraries")
# the distributions whose versions follow torch's, in this order
PACKAGES = ("torchvision", "ffcv", "numba", "deepspeed", "ray", "mlflow", "submitit", "pydantic", "omegaconf", "numpy",
            "opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python")
OPTIONAL = ("opencv-",)  # named only where installed
NUMBA_LAYERS = {"tbb": "numba.np.ufunc.tbbpool", "omp": "numba.np.ufunc.omppool",
                "workqueue": "numba.np.ufunc.workqueue"}


def version(dist: str) -> str:
    try:
        return metadata.version(dist) or "unknown (no version in its metadata)"
    except metadata.PackageNotFoundError:
        return "not installed"
    except Exception as e:  # broken metadata
        return one_line(e)


@contextlib.contextmanager
def quiet():
    """Imports print banners and warnings (DeepSpeed, numba): none of it reaches the report, text or JSON."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    except OSError:
        pass  # no such descriptor: nothing to silence there
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def guarded(fn, *args):
    """``fn(*args)``, or the one-line error it raised (a broken binary package raises anything)."""
    try:
        with quiet():
            return fn(*args)
    except (Exception, SystemExit) as e:
        return one_line(e)


def imported(name: str):
    """``(module, None)``, or ``(None, the one-line error)``."""
    module = guarded(importlib.import_module, name)
    return (None, module) if isinstance(module, str) else (module, None)


def gather() -> dict[str, dict[str, str]]:
    """Every section of the report; a section that fails is ``{"error": ...}``."""
    probes = (versions, gpus, cpu, slurm, extras, ffcv_libraries)
    report = {}
    for name, probe in zip(SECTIONS, probes):
        try:
            report[name] = probe()
        except Exception as e:
            report[name] = {"error": one_line(e)}
    return report


def format_text(report: dict[str, dict[str, str]]) -> str:
    lines = []
    for section, entries in report.items():
        lines.append(f"[{section}]")
        width = max((len(name) for name in entries), default=0) + 1
        lines += [f"  {name + ':':<{width}} {str(value).replace(chr(10), ' ')}" for name, value in entries.items()]
        lines += ["  none"] if not entries else []
        lines.append("")
    return "\n".join(lines)


# ---- the sections --------------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    import dynconv

    from .provenance import package_checkout

    out = {"dynconv": dynconv.__version__}
    checkout = guarded(package_checkout)
    if isinstance(checkout, dict):
        out["dynconv"] += f" (git checkout {checkout['commit']}{', dirty' if checkout['dirty'] == 'true' else ''})"
    elif isinstance(checkout, str):
        out["dynconv"] += f" (its git state: {checkout})"
    out["dynconv location"] = str(Path(dynconv.__file__).resolve().parent)
    out["python"] = f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})"
    out["platform"] = platform.platform()
    libc, libc_version = platform.libc_ver()
    out["glibc"] = libc_version if libc == "glibc" else f"not glibc ({libc or 'unknown'} {libc_version})".strip()
    out["torch"] = version("torch")
    if out["torch"] != "not installed":
        out.update(torch_build())
    for dist in PACKAGES:
        v = version(dist)
        if v != "not installed" or not dist.startswith(OPTIONAL):
            out[dist] = v
        if dist == "numba" and v != "not installed":
            out.update(numba_threading())
    return out


def torch_build() -> dict[str, str]:
    torch, error = imported("torch")
    if torch is None:
        return {"torch import": error}
    # the imported version has the build's label (2.5.1+cu124) that the installed metadata may lack; another
    # torch than the installed one (a stray folder on sys.path) shows as a mismatch
    installed, imported_version = version("torch"), str(getattr(torch, "__version__", "unknown"))
    same = imported_version.split("+")[0] == installed.split("+")[0]
    out = {"torch": imported_version if same else f"{imported_version} imported, {installed} installed"}
    out["torch CUDA build"] = str(getattr(torch.version, "cuda", None) or "none (a CPU build)")
    if getattr(torch.version, "hip", None):
        out["torch ROCm build"] = str(torch.version.hip)
    cudnn = guarded(lambda: torch.backends.cudnn.version())
    out["cuDNN"] = cudnn_version(cudnn) if isinstance(cudnn, int) else str(cudnn or "none")
    available = guarded(torch.cuda.is_available)
    out["torch.cuda.is_available()"] = str(available)
    if available is True:
        nccl = guarded(lambda: torch.cuda.nccl.version())
        out["NCCL"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    return out


def cudnn_version(v: int) -> str:
    """torch's number, and what it means: 90100 is 9.1.0 (cuDNN 9 on), 8902 is 8.9.2."""
    major, rest = divmod(v, 10000) if v >= 90000 else divmod(v, 1000)
    return f"{major}.{rest // 100}.{rest % 100} ({v})"


def numba_threading() -> dict[str, str]:
    numba, error = imported("numba")
    if numba is None:
        return {"numba import": error}
    config = numba.config
    priority = ",".join(getattr(config, "THREADING_LAYER_PRIORITY", ()))
    return {"numba threading layer": f"{config.THREADING_LAYER} (config; priority {priority})",
            "numba layer in use": str(guarded(numba_layer_in_use, config))}


def numba_layer_in_use(config) -> str:
    """The layer started, else the one the config would pick (loading a layer's library starts no threads)."""
    from numba.np.ufunc import parallel

    if getattr(parallel, "_threading_layer", None):
        return f"{parallel._threading_layer} (started)"

    def loads(layer):
        try:
            if layer == "tbb":  # numba refuses a TBB older than 2021.6
                getattr(parallel, "_check_tbb_version_compatible", lambda: None)()
            importlib.import_module(NUMBA_LAYERS[layer])
            return True
        except (Exception, SystemExit):
            return False

    loadable = [layer for layer in NUMBA_LAYERS if loads(layer)]
    wanted = str(config.THREADING_LAYER).lower()
    candidates = {"default": list(config.THREADING_LAYER_PRIORITY), "safe": ["tbb"], "threadsafe": ["tbb", "omp"],
                  "forksafe": ["tbb", "workqueue"]}.get(wanted, [wanted])
    pick = next((layer for layer in candidates if layer in loadable), None)
    return f"{pick or 'none would load'} (not started yet; loadable: {', '.join(loadable) or 'none'})"


def gpus() -> dict[str, str]:
    torch = sys.modules.get("torch")
    if torch is None or guarded(torch.cuda.is_available) is not True:
        return {}

    def describe(i):
        p = torch.cuda.get_device_properties(i)
        return f"{p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}"

    count = guarded(torch.cuda.device_count)
    if isinstance(count, str):
        return {"error": count}
    return {f"cuda:{i}": str(guarded(describe, i)) for i in range(count)}


def cpu() -> dict[str, str]:
    out = {"model": _cpu_model(), "os.cpu_count()": str(os.cpu_count())}
    out["usable (sched_getaffinity)"] = (str(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity")
                                         else "unknown on this platform")
    out["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "unset")
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch.get_num_threads()"] = str(guarded(torch.get_num_threads))
    numba = sys.modules.get("numba")
    if numba is not None:
        out["numba threads"] = str(guarded(lambda: numba.config.NUMBA_NUM_THREADS))
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def slurm() -> dict[str, str]:
    """Every SLURM* variable (SLURMD_NODENAME too), then the devices the job may use."""
    names = sorted(n for n in os.environ if n.startswith("SLURM"))
    names += [n for n in ("CUDA_VISIBLE_DEVICES",) if n in os.environ]
    return {n: os.environ[n] for n in names}


def extras() -> dict[str, str]:
    """Each extra: ok, the one-line error of importing it, or which of its distributions are missing."""
    from dynconv.extras import EXTRAS

    wanted: dict[str, list[str]] = {}
    requirements = guarded(metadata.requires, "dynconv")  # None: no metadata; a string: its error
    for requirement in requirements if isinstance(requirements, list) else []:
        m = re.match(r"\s*([A-Za-z0-9._-]+).*;.*extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
        if m:
            wanted.setdefault(m.group(2), []).append(m.group(1))
    torch = sys.modules.get("torch")
    threads = guarded(torch.get_num_threads) if torch else None
    out = {}
    for extra, (module, _) in EXTRAS.items():
        _, error = imported(module)
        missing = [dist for dist in wanted.get(extra, ()) if version(dist) == "not installed"]
        out[extra] = error or (f"imports, but {', '.join(missing)} not installed" if missing else "ok")
    if isinstance(threads, int) and guarded(torch.get_num_threads) != threads:
        guarded(torch.set_num_threads, threads)  # importing ffcv sets them to 1 (dynconv.data.ffcv_io undoes it)
    return out
