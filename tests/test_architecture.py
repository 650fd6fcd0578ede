"""Module import rules (docs/ARCHITECTURE.md, "Module rules").

* the core packages (workload, engine, model, analysis) never import ray, omegaconf or pyarrow,
  directly or through other modules;
* only distgen/distributed imports ray; only distgen/config/load.py imports omegaconf; only
  distgen/io imports pyarrow; only distgen/backend.py imports cupy; only distgen/report imports
  matplotlib.

Checked twice: statically (every import statement of every file, including imports inside
functions) and dynamically (importing every core module in a fresh interpreter and looking at
``sys.modules``).
"""

from __future__ import annotations

import ast
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
