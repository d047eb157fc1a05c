"""steptimer: named steps of a task, nested and in laps, recorded only inside recording()."""
import time

from twinkles_hpc import steptimer


def _spin(seconds):
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        pass


def test_steps_nest_add_up_and_record_only_when_asked():
    with steptimer.step("outside"):                 # nothing records: no effect, no error
        _spin(0.001)
    with steptimer.recording() as rec:
        with steptimer.step("fit"):
            _spin(0.01)
            with steptimer.step("solve"):
                _spin(0.01)
        with steptimer.step("fit"):
            _spin(0.005)
        lap = steptimer.laps()
        _spin(0.01)
        lap("read")
        lap("nothing")
    assert sorted(rec) == ["fit", "fit/solve", "nothing", "read"]
    wall, cpu, calls = rec["fit"]
    assert calls == 2 and cpu >= 0.025 and wall >= cpu * 0.5
    assert 0.01 <= rec["fit/solve"][1] <= cpu
    assert rec["read"][1] >= 0.01 and rec["nothing"][1] < 0.005
    assert steptimer.laps() is steptimer._noop       # recording ended: laps are free again
    assert steptimer.rounded(rec)["fit/solve"] == [round(rec["fit/solve"][0], 4), round(rec["fit/solve"][1], 4)]


def test_inner_recording_suspends_the_outer_one():
    with steptimer.recording() as outer:
        with steptimer.step("a"):
            with steptimer.recording() as inner:
                with steptimer.step("b"):
                    pass
        with steptimer.step("c"):
            pass
    assert sorted(outer) == ["a", "c"] and sorted(inner) == ["b"]
