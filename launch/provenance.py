"""Where a run comes from: the git state of the directory it was launched from (the researcher's experiment
repository, where the configs live), dynconv's version and — when it is installed from a git checkout — that
checkout's commit. Recorded as MLflow tags at the run's start and in ``run.dir/source.json``, read back by
``dynconv reproduce``.

The launch directory is the working directory of the command that started the run; commands that start
others (``submit``, ``sweep``, ``--nproc``) pass it on in ``$DYNCONV_LAUNCH_DIR``, so a Slurm job or a Ray
trial records the checkout it was submitted from, not the folder it happens to run in."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

LAUNCH_DIR_ENV = "DYNCONV_LAUNCH_DIR"

# MLflow's standard names for the source's git state (the UI shows the commit on the run page)
GIT_COMMIT, GIT_BRANCH, GIT_REPO_URL = "mlflow.source.git.commit", "mlflow.source.git.branch", "mlflow.source.git.repoURL"
GIT_DIRTY, GIT_ROOT, LAUNCH_DIR = "dynconv.git.dirty", "dynconv.git.root", "dynconv.launch_dir"
VERSION, PACKAGE_COMMIT, PACKAGE_DIRTY = "dynconv.version", "dynconv.package.git.commit", "dynconv.package.git.dirty"
COMMAND = "dynconv.command"
CODE_TAGS = (GIT_COMMIT, GIT_BRANCH, GIT_REPO_URL, GIT_DIRTY, GIT_ROOT, VERSION, PACKAGE_COMMIT, PACKAGE_DIRTY)  # the code's


def _git(where: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(where: str | Path) -> dict[str, str] | None:
    """``{"commit", "dirty", "root", "branch"?, "repo_url"?}`` of the git checkout holding ``where``, or None
    (not in a checkout, or no git). ``dirty``: tracked files differ from the commit (untracked files don't
    count: outputs such as run folders are usually untracked or ignored)."""
    where = Path(where)
    commit = _git(where, "rev-parse", "HEAD")
    if not commit:
        return None
    state = {"commit": commit, "root": _git(where, "rev-parse", "--show-toplevel") or str(where),
             "dirty": str(bool(_git(where, "status", "--porcelain", "--untracked-files=no"))).lower()}
    branch = _git(where, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        state["branch"] = branch
    url = _git(where, "config", "--get", "remote.origin.url")
    if url:
        state["repo_url"] = url
    return state


def launch_dir() -> Path:
    return Path(os.environ.get(LAUNCH_DIR_ENV) or os.getcwd())


@contextlib.contextmanager
def launch_dir_remembered():
    """Around a command: the processes it starts (torchrun workers, Slurm jobs, Ray trials) inherit where it
    was launched from (a command started by another keeps its parent's)."""
    if LAUNCH_DIR_ENV in os.environ:
        yield
        return
    os.environ[LAUNCH_DIR_ENV] = os.getcwd()
    try:
        yield
    finally:
        os.environ.pop(LAUNCH_DIR_ENV, None)


def package_checkout() -> dict[str, str] | None:
    """The git state of the checkout dynconv is imported from (an editable install), or None (a wheel: its
    version says what it is). A wheel inside some other checkout (a venv in a repository) does not count:
    dynconv's own files must be tracked there."""
    import dynconv

    package = Path(dynconv.__file__).resolve().parent
    if _git(package, "ls-files", "--error-unmatch", "__init__.py") is None:
        return None
    return git_state(package)


def recorded_source(run_dir: str | Path | None) -> dict[str, str] | None:
    """What ``run_dir/source.json`` recorded when the run began, or None (no such file, or unreadable)."""
    import json

    from dynconv.run_files import SOURCE

    try:
        source = json.loads((Path(run_dir) / SOURCE).read_text()) if run_dir else None
    except (OSError, ValueError):
        return None
    return source if isinstance(source, dict) else None


def run_source(run_dir: str | Path | None) -> dict[str, str]:
    """The source of the run in ``run_dir``: as recorded when it began, else as of now."""
    return recorded_source(run_dir) or provenance()


def provenance() -> dict[str, str]:
    """The run's source as flat MLflow tags."""
    from dynconv import __version__

    where = launch_dir()
    tags = {LAUNCH_DIR: str(where), VERSION: __version__,
            COMMAND: " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:5000]}
    experiment = git_state(where)
    if experiment:
        tags.update({GIT_COMMIT: experiment["commit"], GIT_DIRTY: experiment["dirty"], GIT_ROOT: experiment["root"]})
        if "branch" in experiment:
            tags[GIT_BRANCH] = experiment["branch"]
        if "repo_url" in experiment:
            tags[GIT_REPO_URL] = experiment["repo_url"]
    package = package_checkout()
    if package:
        tags.update({PACKAGE_COMMIT: package["commit"], PACKAGE_DIRTY: package["dirty"]})
    return tags
