"""Wall and CPU seconds of the named steps of a task, for the trace and `twinkles-hpc bench chain`.

    with step("background"):
        ...

or, in straight-line code, `lap = laps()` then `lap("background")` after each step. Either costs one
function call when nothing records (the common case outside the engine and the benchmarks), and
two clock reads per clock when `recording()` is active. Steps nest: an inner step's name is prefixed by the
outer one's ("detect/deblend"); a step run several times in one recording adds up. Use it for the few
coarse steps of a task (a dozen or so), never inside a loop over objects or pixels.
"""
from __future__ import annotations

import contextlib
import time

_stack = []         # names of the open steps
_record = None      # name -> [wall s, CPU s, calls] while recording(); None: not recording


@contextlib.contextmanager
def step(name):
    """Time the enclosed block as step `name` of the current recording (nothing when none is active)."""
    if _record is None:
        yield
        return
    _stack.append(name)
    key = "/".join(_stack)
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        w1, c1 = time.perf_counter(), time.process_time()
        _stack.pop()
        _add(key, w1 - w0, c1 - c0)


def _add(key, wall, cpu):
    acc = _record.setdefault(key, [0.0, 0.0, 0])
    acc[0] += wall
    acc[1] += cpu
    acc[2] += 1


def _noop(name):
    pass


def laps():
    """For straight-line code: returns lap(name), which books the time since the previous lap (or since
    laps() was called) to step `name`; a no-op when nothing records.

        lap = laps()
        ...            # read
        lap("read")
        ...            # fit
        lap("fit")
    """
    if _record is None:
        return _noop
    prefix = "/".join(_stack)
    last = [time.perf_counter(), time.process_time()]

    def lap(name):
        w, c = time.perf_counter(), time.process_time()
        if _record is not None:
            _add(f"{prefix}/{name}" if prefix else name, w - last[0], c - last[1])
        last[0], last[1] = w, c
    return lap


@contextlib.contextmanager
def recording():
    """Collect the steps run inside the block: yields the dict name -> [wall s, CPU s, calls], filled as the
    steps end. Recordings nest: the outer one is suspended while an inner one runs."""
    global _record, _stack
    saved = _record, _stack
    _record, _stack = {}, []
    try:
        yield _record
    finally:
        _record, _stack = saved


def rounded(steps, digits=4):
    """The recording as the trace stores it: name -> [wall s, CPU s], rounded."""
    return {k: [round(v[0], digits), round(v[1], digits)] for k, v in sorted(steps.items())}
