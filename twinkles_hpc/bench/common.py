"""What every benchmark shares: wall times of repeated calls (best and median), the machine they ran on,
and the markdown block that `--record FILE` appends (docs/benchmarks.md)."""
import os
import platform
import shlex
import sys
import time

import numpy as np


class Timer:
    """Wall times (seconds) of the calls made through it; the first `warmup` calls are not kept."""

    def __init__(self, warmup=0):
        self.warmup, self.seconds = warmup, []

    def __call__(self, fn, *args, **kwargs):
        """fn(*args, **kwargs), timed."""
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        dt = time.perf_counter() - t0
        if self.warmup > 0:
            self.warmup -= 1
        else:
            self.seconds.append(dt)
        return out

    @property
    def best(self):
        return min(self.seconds)

    @property
    def median(self):
        return float(np.median(self.seconds))


def time_calls(fn, repeat, setup=None):
    """(Timer, last result) of max(1, repeat) calls of fn(), or fn(setup()) with setup's work untimed."""
    timer, out = Timer(), None
    for _ in range(max(1, repeat)):
        out = timer(fn) if setup is None else timer(fn, setup())
    return timer, out


def machine_line():
    """CPU model, core count, Python and OS of this machine, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def command_line():
    """The command being run, as a user would type it."""
    return "twinkles-hpc " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def record(path, command, lines):
    """Append `lines` to the markdown file `path` under the command, the date and the machine."""
    block = [f"\n### `{command}`", "", f"- date: {time.strftime('%Y-%m-%d')}", f"- machine: {machine_line()}",
             "", "```", *lines, "```", ""]
    with open(path, "a") as fh:
        fh.write("\n".join(block))
