"""Module import rules (docs/ARCHITECTURE.md, "Module rules").

* the core packages (workload, engine, model, analysis) never import ray, omegaconf or pyarrow,
  directly or through other modules;
* only distgen/distributed imports ray; only distgen/config/load.py imports omegaconf; only
  distgen/io imports pyarrow; only distgen/backend.py imports cupy; only distgen/report imports
  matplotlib.

Checked twice: statically (every import statement of every file, including imports inside
functions) and dynamically (importing every core module in a fresh interpreter and looking at
``sys.modules``).

* distgen's own packages import one way (:data:`LAYERS`): core is a leaf, the domain
  packages do not know generation, outputs or orchestration, nothing imports the CLI, and no
  package cycle exists beyond the known one (:data:`KNOWN_CYCLES`).
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "distgen"
CORE = ("workload", "engine", "model", "analysis")
HEAVY = ("ray", "omegaconf", "pyarrow", "cupy", "matplotlib")


def _modules() -> list[Path]:
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 20
    return files


def _imported_top_names(path: Path) -> set[str]:
    """Top-level package names of every import in the file (absolute imports; relative imports
    stay inside distgen)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" \
                and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value).split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def _rel(path: Path) -> str:
    return path.relative_to(PKG.parent).as_posix()


ALLOWED = {
    "ray": lambda rel: rel.startswith("distgen/distributed/"),
    "omegaconf": lambda rel: rel == "distgen/config/load.py",
    "pyarrow": lambda rel: rel.startswith("distgen/io/"),
    "cupy": lambda rel: rel == "distgen/backend.py",
    "matplotlib": lambda rel: rel.startswith("distgen/report/"),
}


@pytest.mark.parametrize("lib", HEAVY)
def test_heavy_imports_only_where_allowed(lib):
    offenders = [_rel(p) for p in _modules()
                 if lib in _imported_top_names(p) and not ALLOWED[lib](_rel(p))]
    assert offenders == [], f"{lib} imported outside its home: {offenders}"


def test_core_packages_import_no_heavy_library_statically():
    for p in _modules():
        rel = _rel(p)
        if rel.split("/")[1] in CORE:
            assert not _imported_top_names(p) & set(HEAVY), rel


def test_import_checker_sees_function_level_imports(tmp_path):
    """The static check is not vacuous: it finds lazy and aliased imports."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import pyarrow.parquet as pq\n    from ray import remote\n"
                 "    __import__('cupy')\n")
    assert _imported_top_names(f) == {"pyarrow", "ray", "cupy"}


def test_core_packages_import_no_heavy_library_at_runtime():
    """Import every module of the core packages in a fresh interpreter; none of the heavy
    libraries may end up in sys.modules (also not through another distgen module)."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import distgen\n"
        f"core = {list(CORE)!r}\n"
        "done = []\n"
        "for name in core:\n"
        "    pkg = importlib.import_module('distgen.' + name)\n"
        "    done.append(pkg.__name__)\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "        done.append(info.name)\n"
        f"heavy = {list(HEAVY)!r}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(json.dumps({'imported': done, 'heavy': loaded}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PKG.parent, timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], report["heavy"]
    imported = set(report["imported"])
    for must in ("distgen.engine.kernel", "distgen.workload.serving", "distgen.model.fit",
                 "distgen.analysis.validation"):
        assert must in imported


def test_config_schema_does_not_need_omegaconf():
    """Loading the config schema/package must not import omegaconf (only load_config does)."""
    code = ("import sys, distgen.config, distgen.config.schema\n"
            "print('omegaconf' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PKG.parent, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


# ------------------------------------------------------------------ layers inside distgen
#
# Which of distgen's own packages each package may import (statically, including imports
# inside functions). Data flows one way (docs/ARCHITECTURE.md): core is the leaf; the domain
# packages (ingest, workload, model) know nothing of generation, outputs or orchestration; the
# engine computes from them; io writes and reads files without knowing how they were made;
# pipeline/assembly/driver orchestrate; distributed runs jobs; nothing imports the CLI.
# ``distgen`` itself (the root __init__, only __version__) may be imported by anyone, and
# ``core`` and ``errors`` are open to every package above them.

LEAVES = {"core", "errors"}
LAYERS: dict[str, set[str]] = {
    "errors": set(),
    "core": {"errors"},
    "topology": set(),
    "progress": set(),
    "results": LEAVES,
    "backend": LEAVES,
    "config": LEAVES,
    "ingest": LEAVES,
    "workload": LEAVES | {"config"},
    "model": LEAVES | {"config", "ingest", "workload"},
    "engine": LEAVES | {"config", "model", "workload"},
    "io": LEAVES,
    "analysis": LEAVES | {"engine", "ingest", "model", "workload"},
    # content hashes of a run's inputs (config, trace file, model artifacts)
    "inputs": LEAVES | {"config", "io"},
    "pipeline": LEAVES | {"backend", "config", "engine", "inputs", "io", "model", "results",
                          "topology", "workload"},
    "assembly": LEAVES | {"config", "engine", "io", "pipeline", "results", "topology"},
    # the cost of a run, estimated before it starts from the config and the kernel's sizes
    "footprint": LEAVES | {"config", "engine", "pipeline", "workload"},
    "driver": LEAVES | {"assembly", "backend", "config", "distributed", "footprint", "inputs",
                        "io", "model", "pipeline", "results", "topology"},
    # the jobs (distributed/jobs.py) call back into driver.generate, the pipeline and the
    # sweep's metrics: see KNOWN_CYCLES
    "distributed": LEAVES | {"config", "driver", "io", "model", "pipeline", "results", "sweep",
                             "topology"},
    "sweep": LEAVES | {"config", "distributed", "io", "model", "pipeline", "results"},
    "planning": LEAVES | {"analysis", "io", "model", "results"},
    "report": LEAVES | {"analysis", "io", "planning", "results"},
    "library": set(),
    "cli": None,   # the entry point: may import anything; nothing imports it
}
#: Package cycles that exist today (reported; not to grow): the shard and sweep-point jobs in
#: distributed/jobs.py import driver, pipeline and sweep inside the job functions, while driver
#: and sweep hand those jobs to an executor from distributed.
KNOWN_CYCLES = [{"distributed", "driver", "sweep"}]


def _unit(rel: str) -> str:
    """``distgen/engine/kernel.py`` -> ``engine``; ``distgen/driver.py`` -> ``driver``."""
    parts = rel.split("/")
    return parts[1] if len(parts) > 2 else parts[1].removesuffix(".py")


def _distgen_imports(path: Path, rel: str) -> set[str]:
    """distgen packages / top-level modules imported by a file (absolute and relative imports,
    at any depth in the file); ``""`` stands for the root package ``distgen`` itself."""
    units = {p.name.removesuffix(".py") for p in PKG.iterdir()
             if p.suffix == ".py" or (p / "__init__.py").exists()} - {"__init__"}
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()

    def add(module: str, names=()):
        parts = module.split(".")
        if parts[0] != "distgen":
            return
        if len(parts) > 1:
            found.add(parts[1])
        else:  # from distgen import X: a package / module, or a name of the root package
            found.update(n if n in units else "" for n in names or [""])

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = rel.removesuffix(".py").split("/")[:-node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            add(module, [a.name for a in node.names])
    return found - {_unit(rel)}


@functools.cache
def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for p in _modules():
        rel = _rel(p)
        if rel == "distgen/__init__.py":
            continue
        graph.setdefault(_unit(rel), set()).update(_distgen_imports(p, rel))
    return graph


def test_every_package_has_a_place_in_the_layers():
    graph = _package_graph()
    new = {u: sorted(d - {""}) for u, d in graph.items() if u not in LAYERS}
    assert new == {}, (f"new packages/modules: add them to LAYERS in tests/test_architecture.py "
                       f"with the distgen packages they may import (today they import: {new})")
    assert sorted(set(LAYERS) - set(graph)) == [], "LAYERS names packages that no longer exist"


def test_packages_import_only_the_layers_below():
    offenders = {}
    for unit, imported in _package_graph().items():
        if unit not in LAYERS:
            continue   # test_every_package_has_a_place_in_the_layers names it
        allowed = LAYERS[unit]
        extra = set() if allowed is None else imported - {""} - allowed
        if extra:
            offenders[unit] = sorted(extra)
    assert offenders == {}, f"imports across layers: {offenders}"


def test_nothing_imports_the_cli():
    assert [u for u, imported in _package_graph().items() if "cli" in imported] == []


def test_root_package_is_free_to_import():
    """``import distgen`` (for __version__) pulls in nothing else of distgen."""
    assert _distgen_imports(PKG / "__init__.py", "distgen/__init__.py") == set()


def test_core_is_a_leaf_of_stdlib_numpy_numba_scipy():
    for p in sorted((PKG / "core").rglob("*.py")):
        third_party = _imported_top_names(p) - set(sys.stdlib_module_names) - {"__future__"}
        assert third_party <= {"numpy", "numba", "scipy", "distgen"}, (_rel(p), third_party)
        assert _distgen_imports(p, _rel(p)) <= {"errors", ""}, _rel(p)


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_package_cycles_but_the_known_one():
    cycles = _cycles({u: d - {""} for u, d in _package_graph().items()})
    assert sorted(map(sorted, cycles)) == sorted(map(sorted, KNOWN_CYCLES))


def test_cycle_finder_hand_case():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": set()}
    assert _cycles(graph) == [{"a", "b", "c"}]


def test_layer_checker_sees_function_level_and_relative_imports(tmp_path):
    """The layer check is not vacuous: lazy, relative, aliased and from-distgen imports."""
    f = tmp_path / "m.py"
    f.write_text("import distgen.io.series as s\n"
                 "def f():\n    from distgen.engine import kernel\n"
                 "    from ..pipeline import run_shard\n"
                 "    from distgen import sweep, __version__\n")
    assert _distgen_imports(f, "distgen/model/m.py") == {"io", "engine", "pipeline", "sweep", ""}
    # a package's imports of itself are not dependencies
    assert _distgen_imports(f, "distgen/engine/m.py") == {"io", "pipeline", "sweep", ""}
