"""The dependency rules of docs/design.md, checked on the source: level2 never imports sky or imsim
(it measures pixels, never the truth); sky, imsim and level2 never import parallel; only __main__
imports cli; bench never imports the scheduler, reads other modules through public names only, and only
cli imports it."""
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
    ("level2", ("twinkles_hpc.sky", "twinkles_hpc.imsim", "twinkles_hpc.parallel", "twinkles_hpc.cli")),
    ("sky", ("twinkles_hpc.parallel", "twinkles_hpc.cli", "twinkles_hpc.level2")),
    ("imsim", ("twinkles_hpc.parallel", "twinkles_hpc.cli", "twinkles_hpc.level2")),
    ("store", ("twinkles_hpc.parallel", "twinkles_hpc.cli", "twinkles_hpc.sky", "twinkles_hpc.imsim")),
    ("parallel", ("twinkles_hpc.cli",)),
    ("bench", ("twinkles_hpc.parallel.engine", "twinkles_hpc.parallel.journal", "twinkles_hpc.cli")),
])
def test_package_imports_respect_the_layers(package, forbidden):
    bad = [(p.name, m) for p in sorted((PKG / package).glob("*.py")) for m in imports(p)
           if m.startswith(forbidden)]
    assert not bad, f"{package} imports what it must not: {bad}"


def test_bench_uses_public_names_only_and_only_cli_imports_it():
    bad = []
    for p in sorted((PKG / "bench").glob("*.py")):
        tree = ast.parse(p.read_text())
        ours = set()                  # names bound to other twinkles_hpc modules and their members
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twinkles_hpc") \
                    and not node.module.startswith("twinkles_hpc.bench"):
                bad += [f"{node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") or "._" in node.module]
                ours |= {a.asname or a.name for a in node.names}
        bad += [f"{n.value.id}.{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name) and n.value.id in ours
                and n.attr.startswith("_") and not n.attr.endswith("__")]
    assert not bad, f"bench uses private names: {bad}"
    importers = [p.relative_to(PKG).as_posix() for p in sorted(PKG.rglob("*.py"))
                 if p.parent.name != "bench" and p.name != "cli.py"
                 and any(m == "twinkles_hpc.bench" or m.startswith("twinkles_hpc.bench.") for m in imports(p))]
    assert not importers, f"only cli imports bench: {importers}"
