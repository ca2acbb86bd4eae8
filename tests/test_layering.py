"""Imports go one way: utils <- core <- ops <- datasets/models <- apis <- tools/benchmarks.

Each layer is imported in a fresh interpreter and the mmdet3d packages it pulled in are read
from ``sys.modules``; a static pass over every import statement (lazy ones inside functions
included) checks the same direction module by module. Nothing in ``mmdet3d`` may import the
tools, tests or benchmarks.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["utils", "core", "ops", "datasets", "models", "apis"]
# the mmdet3d packages each layer may import; datasets and models sit side by side
ALLOWED = {
    "utils": set(),
    "core": {"utils"},
    "ops": {"utils", "core"},
    "datasets": {"utils", "core", "ops"},
    "models": {"utils", "core", "ops"},
    "apis": {"utils", "core", "ops", "datasets", "models"},
}
OUTSIDE = ("tools", "tests", "benchmarks")


def _loaded_by(module: str) -> dict:
    """Import ``module`` in a fresh interpreter -> the mmdet3d layers and the repo folders it loaded."""
    probe = (
        "import importlib, json, os, sys\n"
        f"importlib.import_module({module!r})\n"
        "layers = sorted({m.split('.')[1] for m in sys.modules if m.startswith('mmdet3d.')})\n"
        "files = [os.path.abspath(getattr(m, '__file__', None) or '') for m in list(sys.modules.values())]\n"
        f"root = {str(ROOT)!r}\n"
        f"outside = sorted({{os.path.relpath(f, root).split(os.sep)[0] for f in files if f.startswith(root + os.sep)}} & {set(OUTSIDE)!r})\n"
        "print(json.dumps({'layers': layers, 'outside': outside}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layer", LAYERS)
def test_importing_a_layer_loads_only_the_layers_below(layer):
    loaded = _loaded_by(f"mmdet3d.{layer}")
    assert set(loaded["layers"]) - {layer} <= ALLOWED[layer], f"mmdet3d.{layer} loaded {loaded['layers']}"
    assert loaded["outside"] == [], f"mmdet3d.{layer} loaded code from {loaded['outside']}"


def _imports(path: Path) -> list[str]:
    """Every module named by an import statement of ``path`` (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module or "")
    return names


def _static_violations() -> list[str]:
    bad = []
    for path in sorted((ROOT / "mmdet3d").rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if len(parts) < 3:
            continue
        layer = parts[1]
        for name in _imports(path):
            top = name.split(".")
            if top[0] in OUTSIDE or top[0] in ("tool_runner", "keyframe_paths", "model_inputs", "toy_components"):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
            elif top[0] == "mmdet3d" and len(top) > 1 and top[1] != layer and top[1] not in ALLOWED.get(layer, set()):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_every_import_statement_points_down():
    assert _static_violations() == []


def test_the_static_check_sees_a_violation(tmp_path, monkeypatch):
    # an ops module importing the models registry lazily, inside a function, is caught too
    fake = tmp_path / "mmdet3d" / "ops" / "lazy.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from ..models.builder import VOXELIZERS\n    import tests.tool_runner\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _static_violations() == ["mmdet3d/ops/lazy.py imports mmdet3d.models.builder", "mmdet3d/ops/lazy.py imports tests.tool_runner"]
