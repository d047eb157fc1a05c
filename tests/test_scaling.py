"""The engine model (twinkles_hpc/parallel/simulate.py) and the scaling studies built on it
(twinkles_hpc/scaling.py): known answers on hand-made graphs, the overheads counted as the engine spends
them, a replay of a real engine run's trace, the modelled graph's durations, and bad input."""
import os

import numpy as np
import pytest

from twinkles_hpc import cli, scaling
from twinkles_hpc.parallel.simulate import Overheads, SimTask, critical_path, simulate
from twinkles_hpc.parallel.synthetic import run_simulated, synthetic_tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZERO = Overheads(dispatch_s=0.0, report_s=0.0, report_s_per_byte=0.0, rank0_s=0.0, commit_s=0.0)


def tasks(durations, chain=False, costs=None):
    return [SimTask(f"t{i:03d}", "k", float(costs[i] if costs else d), (f"t{i - 1:03d}",) if chain and i else (),
                    float(d)) for i, d in enumerate(durations)]


def test_independent_equal_tasks_share_the_workers():
    ts = tasks([2.0] * 12)
    walls = {n: simulate(ts, n, ZERO).wall_s for n in (1, 2, 4, 5, 13, 40)}
    # rank 0 computes only when it is alone: 1 and 2 ranks both have one computing rank
    assert walls == pytest.approx({1: 24.0, 2: 24.0, 4: 8.0, 5: 6.0, 13: 2.0, 40: 2.0})
    r = simulate(ts, 4, ZERO)
    assert r.efficiency == pytest.approx(24.0 / (4 * 8.0)) and r.utilisation == pytest.approx(1.0)


def test_a_chain_takes_its_length_whatever_the_ranks():
    ts = tasks([1.0, 2.0, 3.0, 4.0], chain=True)
    assert [simulate(ts, n, ZERO).wall_s for n in (1, 2, 8)] == pytest.approx([10.0] * 3)
    assert critical_path(ts, ZERO) == (pytest.approx(10.0), ["t000", "t001", "t002", "t003"])


def test_longest_first_beats_fifo_on_a_skewed_set():
    ts = tasks([1.0] * 8 + [8.0])
    longest, fifo = (simulate(ts, 3, ZERO, order).wall_s for order in ("longest", "fifo"))
    assert longest == pytest.approx(8.0) and fifo == pytest.approx(12.0)
    # the order follows the predicted cost, as the engine's: a cost that misjudges the long task loses it
    wrong = tasks([1.0] * 8 + [8.0], costs=[2.0] * 8 + [1.0])
    assert simulate(wrong, 3, ZERO, "longest").wall_s == pytest.approx(12.0)


def test_critical_path_first_starts_the_chain_that_holds_the_run_back():
    """A cheap task heading a long chain against costlier independent tasks, on 2 workers: longest first
    starts the chain last; critical path first (the engine's order) starts it at once."""
    ts = [SimTask("a", "k", 1.0, (), 1.0), SimTask("b", "k", 6.0, ("a",), 6.0),
          *[SimTask(f"x{i}", "k", 3.0, (), 3.0) for i in range(4)]]
    walls = {o: simulate(ts, 3, ZERO, o).wall_s for o in ("critical", "longest")}
    assert walls == pytest.approx({"critical": 10.0, "longest": 13.0})


def test_overheads_are_counted_where_the_engine_spends_them():
    oh = Overheads(dispatch_s=0.01, report_s=0.02, report_s_per_byte=1e-9, rank0_s=0.001, commit_s=0.005,
                   start_s=0.1, end_s=0.2)
    free = [SimTask(f"f{i}", "k", 1.0, (), 0.5, 10 ** 6) for i in range(4)]
    # one worker, independent tasks: each is sent as its predecessor is reported; one commit closes the run
    per_task = 0.01 + 0.5 + 0.02 + 0.001
    assert simulate(free, 2, oh).wall_s == pytest.approx(0.1 + 4 * per_task + 0.001 + 0.005 + 0.2)
    # a chain: each task waits for rank 0's bookkeeping and the commit of its parent's done line
    chain = [SimTask(f"c{i}", "k", 1.0, (f"c{i - 1}",) if i else (), 0.5, 10 ** 6) for i in range(4)]
    assert simulate(chain, 2, oh).wall_s == pytest.approx(0.1 + 4 * (per_task + 0.001 + 0.005) + 0.2)


def test_bad_graphs_are_refused():
    with pytest.raises(ValueError, match="not in the graph"):
        simulate([SimTask("a", "k", 1.0, ("b",), 1.0)], 2)
    cycle = [SimTask("a", "k", 1.0, ("b",), 1.0), SimTask("b", "k", 1.0, ("a",), 1.0)]
    with pytest.raises(ValueError, match="cannot progress"):
        simulate(cycle, 3)
    with pytest.raises(ValueError, match="order"):
        simulate(tasks([1.0]), 2, order="random")


def test_replay_of_an_engine_run_gives_its_wall_time(tmp_path):
    """The real scheduler, journal and trace (simulated workers sleeping 20-60 ms, each odd task depending
    on the one before) on 3 workers; the replay from the trace and journal at 4 ranks gives the wall time
    the journal measured."""
    rundir = str(tmp_path / "run")
    graph = synthetic_tasks(60, 0.04, pairs=True)
    run_simulated(rundir, 3, 60, 0.04, pairs=True)
    run = scaling.load_run(rundir, planned=graph)
    assert run.ranks == 4 and len(run.records) == 60
    (replay,) = scaling.check(run, scaling.replay_tasks(run), run)      # in the order the engine ran
    assert run.order == replay["order"] == "critical" and abs(replay["error"]) < 0.10, replay
    assert run.overheads.dispatch_s < 0.02 and run.overheads.report_s < 0.02


def test_a_restart_is_not_counted_as_dispatch_time():
    """A worker's gap between the sessions of a restarted run (same rank, another process) is not time
    spent handing out a task: dispatch is measured within each process."""
    from twinkles_hpc.rundir.task import Task
    recs, done, t = [], {}, 0.0
    for pid, t0 in ((11, 0.0), (12, 500.0)):           # the second session starts 500 s later
        t = t0
        for i in range(5):
            name = f"k/{pid}-{i}"
            recs.append({"task": name, "rank": 1, "pid": pid, "start": t, "end": t + 1.0, "bytes": 0})
            done[name] = t + 1.01
            t += 1.03                                   # 20 ms from a done line to the next task's start
    planned = {r["task"]: Task(r["task"], "k") for r in recs}
    oh = scaling.measure_overheads(recs, done, planned, ({"time": -0.1}, {"time": t}), 1e-4, 1e-3)
    assert oh.dispatch_s == pytest.approx(0.02, abs=1e-6)


def test_cadence_grows_as_same_night_sequences_and_shrinks_evenly():
    from twinkles_hpc import config
    from twinkles_hpc.pipeline.setup import select_cadence
    base = select_cadence(config.from_dict({"cadence": {"max_visits": 40}}))
    grown = scaling.resize_cadence(base, 130)
    assert len(grown) == 130 and len(set(grown["visit_id"])) == 130
    assert set(grown["night"]) == set(base["night"])
    shrunk = scaling.resize_cadence(base, 12)
    assert len(shrunk) == 12 and set(shrunk["band"]) == set(base["band"])


def test_split_and_drop_keep_the_graph_consistent():
    ts = [SimTask("a", "calexp", 1.0, (), 1.0), SimTask("c", "coadd", 5.0, ("a",), 250.0),
          SimTask("o", "objects", 1.0, ("c",), 2.0), SimTask("i", "ingest", 1.0, ("o",), 3.0),
          SimTask("f", "forced", 1.0, ("i", "a"), 1.0)]
    split = scaling.split_tasks(ts, {"coadd"}, 100.0)
    pieces = [t for t in split if t.kind == "coadd"]
    assert len(pieces) == 3 and all(t.deps == ("a",) for t in pieces)
    assert sum(t.seconds for t in pieces) == pytest.approx(250.0)
    assert next(t for t in split if t.id == "o").deps == tuple(t.id for t in pieces)
    dropped = scaling.drop_kinds(ts, {"ingest"})
    assert [t.id for t in dropped] == ["a", "c", "o", "f"]
    assert next(t for t in dropped if t.id == "f").deps == ("a", "o")


def _measured(tmp_path, sensor=(400, 400), seconds_per_cost=2.0):
    """A MeasuredRun of the demo's stages on 12 visits whose every task took `seconds_per_cost` x its
    predicted cost."""
    from twinkles_hpc import config
    from twinkles_hpc.pipeline.setup import plan, select_cadence
    cfg = config.load(os.path.join(ROOT, "jobs", "demo.toml"))
    cfg = scaling.model_config(cfg, sensor, {"max_visits": 12})
    cfg.coadd.task_visits = 0.002               # coadds and templates in tiles, then assembled
    cfg.lensmodel.tasks = 2                     # the lens candidates in two shares, then joined
    visits = select_cadence(cfg)
    _, planned = plan(cfg, None, visits=visits)
    records = [{"task": t.id, "kind": t.kind, "rank": 1, "start": 0.0, "end": seconds_per_cost * t.cost,
                "bytes": 1000} for t in planned]
    return scaling.MeasuredRun(str(tmp_path), cfg, visits, {t.id: t for t in planned}, records, 3, 1.0, 1,
                               Overheads())


def test_modelled_durations_follow_the_measured_rate_and_the_sensor_area(tmp_path):
    run = _measured(tmp_path)
    rates = scaling.class_rates(run, (800, 400))
    assert all(r.rate == pytest.approx(2.0) and np.allclose(r.spread, 1.0) for r in rates.values())
    # per-visit stages carry the pixels in their predicted cost; the ingest steps' costs do not
    assert rates["calexp"].pixel_factor == 1.0 and rates["ingest/ForcedSource"].pixel_factor == 2.0
    model, missing = scaling.model_tasks(run, 30, sensor=(800, 400), rates=rates)
    assert missing == [] and sum(t.kind == "visit" for t in model) == 30
    assert {"coadd/assemble", "template/assemble"} <= set(rates) and any("/t0" in t.id for t in model)
    assert rates["lensmodel"].pixel_factor == rates["lensmodel/merge"].pixel_factor == 1.0    # cost: the area
    for t in model:
        c = t.kind if t.kind != "ingest" else f"ingest/{t.id.split('/')[1]}"
        assert t.seconds == pytest.approx(2.0 * t.cost * rates[c].pixel_factor)


def test_a_study_has_a_row_per_machine_order_and_ranks(tmp_path):
    run = _measured(tmp_path)
    rows, notes = scaling.study(run, [4, 16], [scaling.MACHINES["here"], scaling.MACHINES["knl"]],
                                ["longest", "fifo"], n_visits=24, weak=True, sensor=(400, 400))
    assert len(rows) == 8 and notes["critical_path_kinds"]
    here = {(r["order"], r["ranks"]): r for r in rows if r["machine"] == "here"}
    knl = {(r["order"], r["ranks"]): r for r in rows if r["machine"] == "knl"}
    assert here[("longest", 4)]["visits"] == 6 and here[("longest", 16)]["visits"] == 24
    assert knl[("longest", 16)]["wall_s"] > 5 * here[("longest", 16)]["wall_s"]
    assert all(0 < r["efficiency"] <= 1 for r in rows)


def test_a_run_directory_without_a_trace_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["scaling", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and os.path.join(str(tmp_path), "trace.jsonl") in err[0]
    assert cli.main(["scaling", str(tmp_path), "--ranks", "0,4"]) == 2
    assert "--ranks" in capsys.readouterr().err
