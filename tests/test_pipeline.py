"""The stage registry: one word per stage across config, task, folder and module; the task graph derived
from the stages' declarations and checked when built (a missing dependency or a cycle is an error naming
the tasks, exit 1 on 1 and 3 ranks, never 75); config checks between stages."""
import ast
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC, TINY_TOML, cli

from twinkles_hpc import config
from twinkles_hpc.errors import InputError
from twinkles_hpc.pipeline import registry
from twinkles_hpc.pipeline.setup import plan
from twinkles_hpc.pipeline.stage import GraphError, Stage, Upstream, check_graph
from twinkles_hpc.rundir import layout
from twinkles_hpc.rundir.task import Task

ROOT = Path(__file__).resolve().parents[1]


def test_one_word_per_stage():
    names = [s.name for s in registry.STAGES]
    assert names == ["sky", "variables", "visit", "calexp", "coadd", "objects", "forced", "template", "diffim",
                     "associate", "lenses", "lensmodel", "lensphot", "diaforced", "ingest"]
    stages_dir = ROOT / "twinkles_hpc" / "pipeline" / "stages"
    assert sorted(p.stem for p in stages_dir.glob("*.py") if p.stem != "__init__") == sorted(names)
    cfg = config.from_dict({})
    for s in registry.STAGES:
        assert s.name.isalpha() and s.name.islower()
        if s.section is not None:                        # the config section is the stage's name
            assert isinstance(getattr(cfg, s.name), s.section)
        for t in s.tables:
            assert t[0].isupper()
    # per-visit product folders are the stage names
    assert layout.eimage(1, "r").split("/")[0] == "visit"
    assert layout.calexp(1, "r").split("/")[0] == "calexp"
    assert layout.coadd("r", 0, 0).split("/")[0] == "coadd"
    assert layout.objects(0, 0).split("/")[0] == "objects"
    assert layout.forced(1, "r").split("/")[0] == "forced"
    assert layout.variables_truth(0).split("/")[0] == "variables"
    assert layout.ingest_receipt("truth").split("/")[0] == "ingest"
    assert layout.template("r", 0, 0).split("/")[0] == layout.template("r", 0, 0, year=2).split("/")[0] == "template"


def test_stage_order_follows_requirements():
    seen = set()
    for s in registry.STAGES:
        assert set(s.requires) | set(s.uses) <= seen, f"{s.name} comes before what it reads"
        seen.add(s.name)


def test_graph_is_derived_and_checked():
    cfg = config.load(ROOT / "jobs" / "demo.toml")
    ctx, tasks = plan(cfg, None)
    ids = {t.id for t in tasks}
    kinds = {t.kind for t in tasks}
    assert kinds == {s.name for s in registry.enabled_stages(cfg)}
    assert all(d in ids for t in tasks for d in t.deps)
    assert all(t.id.split("/")[0] == t.kind for t in tasks)
    v = int(ctx.visits["visit_id"][0])
    calexp = next(t for t in tasks if t.id == layout.task_id("calexp", layout.visit_key(v)))
    assert calexp.deps == (layout.task_id("visit", layout.visit_key(v)),)


def test_missing_dependency_and_cycle_name_the_tasks():
    a, b, c = Task("a", "x"), Task("b", "x", deps=("a",)), Task("c", "x", deps=("b",))
    assert check_graph([a, b, c]) == [a, b, c]
    with pytest.raises(GraphError, match="task c depends on task nope, which is not in the graph"):
        check_graph([a, b, Task("c", "x", deps=("nope",))])
    with pytest.raises(GraphError, match=r"cycle: (a -> c -> b -> a|b -> a -> c -> b|c -> b -> a -> c)"):
        check_graph([Task("a", "x", deps=("c",)), b, c])
    with pytest.raises(GraphError, match="task a is in the graph twice"):
        check_graph([a, Task("a", "x")])
    up = Upstream()
    up.add("sky", [Task("sky", "sky")])
    with pytest.raises(GraphError, match="task calexp/00000001 depends on task visit/00000001"):
        up.get("visit", "00000001", for_task="calexp/00000001")

    class Sneaky(Stage):
        name, requires = "sneaky", ("sky",)
    with pytest.raises(GraphError, match="stage sneaky looks up tasks of stage visit"):
        up.view(Sneaky()).get("visit", "00000001", for_task="sneaky")


def test_enabled_stage_needs_what_it_requires():
    with pytest.raises(InputError, match=r"coadd\.enabled: expected false unless calexp\.enabled = true"):
        config.from_dict({"coadd": {"enabled": True}})
    with pytest.raises(InputError, match=r"level2: expected its keys in \[calexp\]"):
        config.from_dict({"level2": {"calibrate": True}})


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("how, message", [("missing", "depends on task visit/99999999, which is not in the graph"),
                                          ("cycle", "the task graph has a cycle")])
def test_broken_graph_exits_1_on_any_rank_count(tmp_path, n, how, message):
    if n > 1 and not MPIEXEC:
        pytest.skip("no mpiexec")
    (tmp_path / "c.toml").write_text(TINY_TOML)
    r = cli("run", tmp_path / "c.toml", "-o", tmp_path / "run", mpi=n if n > 1 else 0,
            env={"TWINKLES_HPC_FAULT": f"graph={how}"}, timeout=300)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1         # one line, from rank 0


def test_data_model_doc_names_every_layout_path():
    """docs/data-model.md agrees with rundir/layout.py: every product path template is documented."""
    text = (ROOT / "docs" / "data-model.md").read_text()
    tree = ast.parse((ROOT / "twinkles_hpc" / "rundir" / "layout.py").read_text())
    consts = [n.targets[0].id for n in tree.body if isinstance(n, ast.Assign)
              and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str) and n.targets[0].id.isupper()
              and not n.targets[0].id.endswith("_GLOB")]
    for name in consts:
        assert f"`{getattr(layout, name)}`" in text, f"docs/data-model.md does not name layout.{name}"
    documented = {
        layout.eimage: ("NNNNNNNN", "B"), layout.band_view: ("B",), layout.calexp: ("NNNNNNNN", "B"),
        layout.coadd: ("B", "I", "J"), layout.detection_coadd: ("I", "J"), layout.objects: ("I", "J"),
        layout.forced: ("NNNNNNNN", "B"), layout.variables_truth: ("KKKK",), layout.checkpoint: ("NNNNNNNN",),
        layout.instcat: ("NNNNNNNN",), layout.ingest_receipt: ("STEP",), layout.template: ("B", "I", "J"),
        layout.diffim: ("NNNNNNNN", "B"), layout.diffim_fits: ("NNNNNNNN", "B"), layout.association: ("I", "J"),
        layout.dia_forced: ("NNNNNNNN", "B"), layout.lensphot: ("NNNNNNNN", "B")}
    assert "`coadd/B/tiles/patch-I-J-tK.h5`" in text and layout.tile_of(layout.coadd("B", 1, 2), 3) == \
        "coadd/B/tiles/patch-1-2-t0003.h5"
    assert "`lenses/scenes-sKKK.h5`" in text and layout.lens_scenes_share(4) == "lenses/scenes-s004.h5"
    for fn, args in documented.items():
        assert f"`{_template(fn, args)}`" in text, f"docs/data-model.md does not name {_template(fn, args)}"
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
    assert funcs - {f.__name__ for f in documented} == {"visit_key", "chunk_key", "patch_key", "task_id",
                                                        "split_task_id", "path", "eimage_fits", "tile_of",
                                                        "lens_scenes_share"}


def _template(fn, args):
    """A layout function's path with placeholders (visit_key and friends format integers: patch them)."""
    import twinkles_hpc.rundir.layout as L
    saved = L.visit_key, L.chunk_key, L.patch_key
    L.visit_key, L.chunk_key, L.patch_key = str, str, (lambda i, j: f"{i}-{j}")
    try:
        return fn(*args)
    finally:
        L.visit_key, L.chunk_key, L.patch_key = saved


def test_algorithm_settings_are_in_the_toml_and_the_fingerprint(tmp_path):
    """[calexp] and [coadd] hold the science configs' settings: settable in the TOML, printed by
    config --defaults, and a change on an existing run directory is refused like any other."""
    from twinkles_hpc import rundir as rd
    from twinkles_hpc.errors import RunDirError
    from twinkles_hpc.level2.calibrate import CalibrateConfig
    from twinkles_hpc.level2.coadd import CoaddConfig
    text = config.defaults_toml()
    assert "[calexp.cosmic_rays]" in text and "[calexp.background]" in text and "clip_sigma" in text
    base = {"calexp": {"enabled": True}}
    cfg = config.from_dict(base)
    assert isinstance(cfg.calexp, CalibrateConfig) and isinstance(cfg.coadd, CoaddConfig)
    visits = np.zeros(1, [("visit_id", "i8")])
    rd.init(cfg, str(tmp_path), "", visits)
    rd.check(config.from_dict(base), str(tmp_path))                      # the same config: accepted
    changed = config.from_dict({"calexp": {"enabled": True, "cosmic_rays": {"nsigma": 6.0}}})
    with pytest.raises(RunDirError, match=r"calexp\.cosmic_rays differs"):
        rd.check(changed, str(tmp_path))
    with pytest.raises(InputError, match=r"calexp\.background\.mesh_size"):
        config.from_dict({"calexp": {"background": {"mesh_size": 2}}})


def test_every_table_has_an_ingest_step_in_the_demo():
    """The demo enables every stage with tables: the ingest stage's steps load every one of them, and every
    stage's methods are its class's (a function defined in the middle of a class body would end it)."""
    cfg = config.load(ROOT / "jobs" / "demo.toml")
    _, tasks = plan(cfg, None)
    steps = {t.params["step"] for t in tasks if t.kind == "ingest"}
    tables = {t for s in registry.STAGES if s.enabled(cfg) for t in s.tables}
    assert tables - {"TruthStar", "TruthGalaxy", "TruthSupernova", "TruthLensSystem", "TruthLensedImage",
                     "TruthVariable", "TruthVariableFlux"} <= steps, sorted(tables - steps)
    for s in registry.STAGES:
        if s.tables:
            assert type(s).ingest_steps is not Stage.ingest_steps and type(s).ingest is not Stage.ingest, s.name


def test_tiles_leave_the_later_stages_graph_unchanged(tmp_path):
    """With the coadds and templates in tiles ([coadd] task_visits), the Objects, difference and scene-model
    tasks wait for the tasks that write the patches' files, with the costs of one task per patch."""
    from conftest import LEVEL2_TILES_TOML, LEVEL2_TOML

    from twinkles_hpc import config
    from twinkles_hpc.pipeline.setup import plan
    graphs = []
    for name, text in (("one", LEVEL2_TOML), ("tiles", LEVEL2_TILES_TOML)):
        (tmp_path / f"{name}.toml").write_text(text)
        graphs.append({t.id: t for t in plan(config.load(tmp_path / f"{name}.toml"), tmp_path / name)[1]})
    one, tiles = graphs
    assert any(t.params.get("step") == "assemble" for t in tiles.values())
    for tid, t in one.items():
        if t.kind in ("objects", "diffim", "forced", "associate"):
            assert (tiles[tid].deps, tiles[tid].cost) == (t.deps, t.cost), tid
