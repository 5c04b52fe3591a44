"""The package's layers, as docs/architecture.md draws them, hold in the imports: every module's
imports (read from its source, not run) reach only its own layer and the layers below.

    kernels                 Triton only (and cramfast.constants)
    cramfast (top level)    settings, models, metrics, sources, ... : no subpackage
    ops                     the fused ops over kernels
    engine                  the optimization, over ops
    cli, sweep, report, study   the programs, over the engine (sweep, report and study may use
                            cli's shared flags and each other as declared below)
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("ops", "engine", "cli", "sweep", "report", "study")
# what each layer must not import (a cramfast.X prefix)
FORBIDDEN = {
    "top": tuple(f"cramfast.{p}" for p in SUBPACKAGES),
    "ops": ("cramfast.engine", "cramfast.cli", "cramfast.sweep", "cramfast.report",
            "cramfast.study"),
    "engine": ("cramfast.cli", "cramfast.sweep", "cramfast.report", "cramfast.study"),
    "cli": ("cramfast.sweep", "cramfast.report", "cramfast.study"),
    "report": ("cramfast.study",),
}
# the top-level modules that are entry points, not layers: they may reach everything
ENTRY_POINTS = {"__init__.py", "__main__.py"}


def imported(path: Path) -> set[str]:
    """The absolute module names a file imports (relative imports resolved in its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def layer_of(path: Path) -> str | None:
    parts = path.relative_to(ROOT / "cramfast").parts
    if len(parts) == 1:
        return None if parts[0] in ENTRY_POINTS else "top"
    return parts[0]


def cramfast_files():
    return sorted((ROOT / "cramfast").rglob("*.py"))


@pytest.mark.parametrize("path", cramfast_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_its_layer_and_below(path):
    layer = layer_of(path)
    forbidden = FORBIDDEN.get(layer, ())
    bad = sorted(n for n in imported(path)
                 if any(n == f or n.startswith(f + ".") for f in forbidden))
    assert not bad, f"{path.relative_to(ROOT)} ({layer}) imports {bad}"


@pytest.mark.parametrize("path", sorted((ROOT / "kernels").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_kernels_stand_alone(path):
    """kernels/ is installed as cramfast.kernels, but below everything: it knows nothing of
    cramfast but its constants."""
    bad = sorted(n for n in imported(path) if n.split(".")[0] == "cramfast"
                 and not n.startswith("cramfast.constants"))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_layers_cover_every_subpackage():
    found = {p.name for p in (ROOT / "cramfast").iterdir()
             if p.is_dir() and (p / "__init__.py").is_file()}
    assert found == set(SUBPACKAGES), found
