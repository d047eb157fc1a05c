"""The dependency rules of docs/design.md, checked on the source: level2 never imports sky or imsim
(it measures pixels, never the truth); sky, imsim and level2 never import parallel; only __main__
imports cli; each compiled kernel (ext/_X.pyx -> twinkles_hpc._X) has exactly one wrapper module;
mpiwait (used by level2 and parallel) imports nothing of the package; the mask planes and flag bits keep
their values."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "twinkles_hpc"


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
])
def test_package_imports_respect_the_layers(package, forbidden):
    bad = [(p.name, m) for p in sorted((PKG / package).glob("*.py")) for m in imports(p)
           if m.startswith(forbidden)]
    assert not bad, f"{package} imports what it must not: {bad}"


def test_each_kernel_has_one_wrapper():
    """Only the wrapper validates a kernel's inputs and documents it, so only the wrapper imports it."""
    kernels = sorted(f"twinkles_hpc.{p.stem}" for p in (ROOT / "ext").glob("_*.pyx"))
    assert kernels
    users = {k: sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if k in set(imports(p)))
             for k in kernels}
    assert all(len(u) == 1 for u in users.values()), f"kernel -> importing modules: {users}"


def test_mpiwait_imports_nothing_of_the_package():
    """level2 and parallel both wait through twinkles_hpc.mpiwait: it must sit below both."""
    assert not [m for m in imports(PKG / "mpiwait.py") if m.startswith("twinkles_hpc")]


def test_mask_planes_and_flags_keep_their_data_model_bits():
    """Each family is defined once (level2/masks.py, the kernels' FLAGS); products already written depend
    on the values (docs/data-model.md)."""
    from twinkles_hpc.level2 import detect, forced, masks
    assert masks.PLANES == {"SAT": 1, "CR": 2, "EDGE": 4, "DETECTED": 8, "NO_DATA": 16, "BAD": 32}
    assert ((forced.FLAG_OFF_IMAGE, forced.FLAG_EDGE, forced.FLAG_MASKED, forced.FLAG_SATURATED,
             forced.FLAG_NO_DATA, forced.FLAG_AP_FILLED) == (1, 2, 4, 8, 16, 32))
    assert ((detect.FLAG_DEBLENDED, detect.FLAG_EDGE, detect.FLAG_MASKED, detect.FLAG_CENTROID,
             detect.FLAG_NEGATIVE) == (1, 2, 4, 8, 16))
