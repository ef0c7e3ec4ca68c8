"""The package's shape: everything installs under ``dynconv`` (nothing generic at top level), and imports
point one way between the folders — core library (``dynconv/``) <- {``dynconv.slurm``, ``dynconv.sweeps``}
<- application (``dynconv.launch``) <- command line (``dynconv.launch.cli``) — with no import cycle anywhere
and no exemption. Imports inside functions count; another folder is imported by its installed name, a module
of the same folder relatively (docs/architecture.md)."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FOLDERS = PYPROJECT["tool"]["setuptools"]["package-dir"]  # dynconv.launch -> launch, ...
LIBRARY_FORBIDDEN = ("mlflow", "ray", "submitit", "optuna")  # the library imports torch/torchvision/ffcv/deepspeed


def _modules() -> dict[str, Path]:
    """Every module of the package, by its installed name."""
    out = {}
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if any(name.startswith(other + ".") or name == other for other in FOLDERS if other != package
                   and other.startswith(package + ".")):
                continue  # a folder mapped to a sub-package of its own (none today)
            out[name] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement of module ``name`` (absolute or relative)."""
    path = MODULES[name]
    found = []
    base = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base.split(".")
                parent = parent[: len(parent) - node.level + 1]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in MODULES else target, node.lineno))
    return found


def _internal_edges() -> list[tuple[str, str, int]]:
    edges = []
    for name in MODULES:
        for target, line in _imports(name):
            while target not in MODULES and "." in target:  # dynconv.x.y.func -> dynconv.x.y
                target = target.rpartition(".")[0]
            if target in MODULES and target != name:
                edges.append((name, target, line))
    return edges


def folder(name: str) -> str:
    """The top-level folder a module lives in (``dynconv.launch.cli.train`` -> ``launch``)."""
    return next((f for p, f in FOLDERS.items() if p != "dynconv" and (name == p or name.startswith(p + "."))),
                "dynconv")


def layer(name: str) -> str:
    if name in ("dynconv.launch.cli", "dynconv.launch.__main__") or name.startswith("dynconv.launch.cli."):
        return "cli"
    top = folder(name)
    return {"dynconv": "core", "launch": "application"}.get(top, top)


RANK = {"core": 0, "slurm": 1, "sweeps": 1, "application": 2, "cli": 3}


def test_every_folder_maps_into_the_dynconv_namespace():
    assert set(FOLDERS) == {"dynconv", "dynconv.launch", "dynconv.slurm", "dynconv.sweeps"}
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {n for n in MODULES if _is_package(n)}
    assert found == packages, f"folders with __init__.py vs pyproject packages: {found ^ packages}"


def test_imports_point_one_way():
    wrong = [f"{a} ({layer(a)}) imports {b} ({layer(b)}) at line {line}" for a, b, line in _internal_edges()
             if RANK[layer(a)] < RANK[layer(b)] or {layer(a), layer(b)} == {"slurm", "sweeps"}]
    assert not wrong, "\n".join(wrong)


def test_folders_are_imported_by_installed_name_and_modules_of_a_folder_relatively():
    """One import style: ``from dynconv.slurm.executor import ...`` into another folder, ``from .executor import
    ...`` within one (a relative import cannot leave its folder, an absolute one names where it goes)."""
    wrong = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                resolved = [t for t, line in _imports(name) if line == node.lineno]
                if any(folder(t) != folder(name) for t in resolved):
                    wrong.append(f"{name} line {node.lineno}: a relative import into another folder ({resolved[0]})")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                if any(t in MODULES or any(m.startswith(t + ".") for m in MODULES) for t in targets) and \
                        any(t.startswith("dynconv") and folder(t) == folder(name) for t in targets):
                    wrong.append(f"{name} line {node.lineno}: an absolute import of its own folder ({targets[0]})")
    assert not wrong, "\n".join(wrong)


def test_library_imports_no_tracker_scheduler_or_tuner():
    wrong = [f"{name} imports {target} at line {line}" for name in MODULES if layer(name) == "core"
             for target, line in _imports(name) if target.split(".")[0] in LIBRARY_FORBIDDEN]
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_folders_as_top_level_packages():
    wrong = [f"{name} imports {target} at line {line}" for name in MODULES for target, line in _imports(name)
             if target.split(".")[0] in ("launch", "slurm", "sweeps")]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    """Tarjan's strongly connected components over module imports: every component is one module."""
    graph: dict[str, set[str]] = {n: set() for n in MODULES}
    for a, b, _ in _internal_edges():
        graph[a].add(b)
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def _choice_sets() -> dict[str, frozenset]:
    """The sets of allowed values ``dynconv/choices.py`` defines (tuples of strings), by name."""
    tree = ast.parse((ROOT / "dynconv" / "choices.py").read_text())
    sets = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple) and \
                all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.value.elts):
            sets[node.targets[0].id] = frozenset(e.value for e in node.value.elts)
    return sets


def test_every_choice_set_is_written_once_in_choices_py():
    """A set of allowed values (stem modes, per-subset norms, clusters, schedulers, ...) is spelled out once, in
    ``dynconv/choices.py``; the library's checks, the config schema's ``Literal`` types and the command line's
    ``choices=`` use that constant. Any other literal collection of the same strings is a second definition."""
    sets = _choice_sets()
    assert len(sets) >= 20 and {"STEM_MODES", "NORM_MODES", "SUBSET_NORMS", "CLUSTERS"} <= set(sets)
    twice = [f"{a} and {b}" for a in sets for b in sets if a < b and sets[a] == sets[b]]
    assert not twice, f"choices.py defines one set twice: {twice}"
    by_values = {values: name for name, values in sets.items()}
    wrong = []
    for name, path in MODULES.items():
        if path == ROOT / "dynconv" / "choices.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) > 1 and \
                    all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                values = frozenset(e.value for e in node.elts)
                if values in by_values:
                    wrong.append(f"{name} line {node.lineno} spells out {by_values[values]}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
def test_the_wheel_installs_only_under_dynconv(tmp_path):
    """``pip install .`` puts nothing generic at top level: the wheel holds dynconv/ (every module and its
    data files) and its metadata, nothing else."""
    import shutil

    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", *FOLDERS.values()):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("dynconv-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"dynconv"}, tops
    expected = {("/".join(n.split(".")) + ("/__init__.py" if _is_package(n) else ".py")) for n in MODULES}
    assert expected <= set(names), expected - set(names)
    for data in ("dynconv/py.typed", "dynconv/launch/configs/demo.yaml", "dynconv/sweeps/spaces/dropout.yaml"):
        assert data in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:")]
    torch_req = next(ln for ln in requires if ln.startswith("Requires-Dist: torch") and "vision" not in ln)
    assert "==" not in torch_req, torch_req  # a range: a cluster keeps its own CUDA build
    for extra in ("ffcv", "deepspeed", "slurm", "sweep", "track", "all"):
        assert f"Provides-Extra: {extra}" in metadata
