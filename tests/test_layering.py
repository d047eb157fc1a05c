"""The dependency rules of docs/design.md, checked on the source of every module: level2 and timedomain never
import sky or imsim (they measure pixels, never the truth); sky, imsim, level2 and timedomain never import
the pipeline, the scheduler (parallel) or the testing seams; store never imports level2 (it knows formats,
not algorithms); validation, report and bench never import the scheduler; the scheduler knows tasks, never
stages; only the CLI installs the testing seams; nothing below the CLI imports it."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "twinkles_hpc"

P = "twinkles_hpc."
RULES = {
    "level2": ("sky", "imsim", "pipeline", "parallel", "testing", "cli", "validation", "report", "bench", "config"),
    "timedomain": ("sky", "imsim", "pipeline", "parallel", "testing", "cli", "validation", "report", "bench",
                   "config"),
    "sky": ("level2", "pipeline", "parallel", "testing", "cli", "validation", "report", "bench"),
    "imsim": ("level2", "pipeline", "parallel", "testing", "cli", "validation", "report", "bench"),
    "store": ("level2", "sky", "imsim", "pipeline", "parallel", "testing", "cli", "validation", "report", "bench"),
    "rundir": ("level2", "sky", "imsim", "parallel", "testing", "cli", "validation", "report", "bench"),
    "parallel": ("pipeline", "testing", "cli", "validation", "report", "bench", "level2", "sky", "imsim"),
    "pipeline": ("testing", "cli", "validation", "report", "bench"),
    "validation": ("parallel", "testing", "cli", "report", "bench"),
    "report": ("parallel", "testing", "cli", "bench"),
    "bench": ("parallel", "testing", "cli"),
    "testing": ("cli",),
}
#: top-level modules: what they must not import
BASE = ("sky", "imsim", "level2", "store", "rundir", "parallel", "pipeline", "validation", "report", "bench",
        "testing", "cli", "config", "options")
MODULES = {"config.py": ("parallel", "testing", "cli"), "options.py": BASE, "errors.py": BASE, "mpiwait.py": BASE,
           "threads.py": BASE,
           "instrument.py": BASE, "profiles.py": BASE, "truthmatch.py": ("parallel", "pipeline", "testing", "cli")}


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def forbidden_imports(path, forbidden):
    bad = tuple(P + f for f in forbidden)
    return [(str(path.relative_to(PKG)), m) for m in imports(path) if m.startswith(bad)]


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_respect_the_layers(package):
    files = sorted((PKG / package).rglob("*.py"))
    assert files, f"no package {package}"
    bad = [b for p in files for b in forbidden_imports(p, RULES[package])]
    assert not bad, f"{package} imports what it must not: {bad}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_respect_the_layers(module):
    path = PKG / module
    if not path.exists():
        pytest.skip(f"no {module}")
    bad = forbidden_imports(path, MODULES[module])
    assert not bad, f"{module} imports what it must not: {bad}"


def test_every_package_has_rules():
    packages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert packages <= set(RULES), f"packages without layering rules: {sorted(packages - set(RULES))}"


def test_only_the_cli_installs_the_testing_seams():
    users = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if "testing" not in p.parts
                   and any(m.startswith(P + "testing") for m in imports(p)))
    assert users == ["cli.py"], users


def test_nothing_below_the_cli_imports_it():
    users = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                   if any(m == P + "cli" or m.startswith(P + "cli.") for m in imports(p)))
    assert users == ["__main__.py"], users


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
    from twinkles_hpc.level2 import detect, masks, photometry
    assert masks.PLANES == {"SAT": 1, "CR": 2, "EDGE": 4, "DETECTED": 8, "NO_DATA": 16, "BAD": 32}
    assert ((photometry.FLAG_OFF_IMAGE, photometry.FLAG_EDGE, photometry.FLAG_MASKED, photometry.FLAG_SATURATED,
             photometry.FLAG_NO_DATA, photometry.FLAG_AP_FILLED) == (1, 2, 4, 8, 16, 32))
    assert ((detect.FLAG_DEBLENDED, detect.FLAG_EDGE, detect.FLAG_MASKED, detect.FLAG_CENTROID,
             detect.FLAG_NEGATIVE) == (1, 2, 4, 8, 16))
