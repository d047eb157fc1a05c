"""The dependency rules of docs/design.md, checked on the source: level2 never imports sky or imsim
(it measures pixels, never the truth); sky, imsim and level2 never import parallel; only __main__
imports cli; level2 takes its settings from twinkles_hpc.options, never from the run config; options
imports nothing of the package but errors."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "twinkles_hpc"


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


@pytest.mark.parametrize("package, forbidden", [
    ("level2", ("twinkles_hpc.sky", "twinkles_hpc.imsim", "twinkles_hpc.parallel", "twinkles_hpc.cli",
                "twinkles_hpc.config")),
    ("sky", ("twinkles_hpc.parallel", "twinkles_hpc.cli", "twinkles_hpc.level2")),
    ("imsim", ("twinkles_hpc.parallel", "twinkles_hpc.cli", "twinkles_hpc.level2")),
    ("store", ("twinkles_hpc.parallel", "twinkles_hpc.cli", "twinkles_hpc.sky", "twinkles_hpc.imsim")),
    ("parallel", ("twinkles_hpc.cli",)),
])
def test_package_imports_respect_the_layers(package, forbidden):
    bad = [(p.name, m) for p in sorted((PKG / package).glob("*.py")) for m in imports(p)
           if m.startswith(forbidden)]
    assert not bad, f"{package} imports what it must not: {bad}"


def test_options_depends_on_errors_only():
    mods = {m for m in imports(PKG / "options.py") if m.startswith("twinkles_hpc")}
    assert mods <= {"twinkles_hpc.errors", "twinkles_hpc.errors.InputError"}, mods
