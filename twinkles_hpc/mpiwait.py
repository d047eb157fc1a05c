"""Waiting on MPI without spinning a core.

MPICH's blocking calls (recv, wait) busy-poll: a rank that waits burns a core that a worker on the same
node needs (with -n 3 on 2 cores the scheduler would take one). Every wait in the package therefore polls
(Iprobe, Request.Test) with a sleep that grows from FIRST_POLL_SLEEP by POLL_SLEEP_GROWTH per miss up
to MAX_POLL_SLEEP. Used by the scheduler (parallel/engine.py) and the coadd's gather (level2/coadd.py);
the communicator is always an argument, and mpi4py is imported only when a receive needs a Status.
"""
import time

#: First sleep after a miss (s).
FIRST_POLL_SLEEP = 1e-4
#: Each further miss sleeps this many times longer...
POLL_SLEEP_GROWTH = 1.5
#: ... up to this (s): bounds the latency of a wake-up; a waiting rank wakes at most 1/MAX_POLL_SLEEP
#: times a second, a negligible load.
MAX_POLL_SLEEP = 0.005


class Backoff:
    """The growing sleep between polls, for a loop that does more than wait: sleep() after a miss,
    reset() after a hit."""

    def __init__(self):
        self.delay = FIRST_POLL_SLEEP

    def sleep(self):
        time.sleep(self.delay)
        self.delay = min(self.delay * POLL_SLEEP_GROWTH, MAX_POLL_SLEEP)

    def reset(self):
        self.delay = FIRST_POLL_SLEEP


def wait_until(test, on_miss=None):
    """Call test() until it returns true, sleeping with back-off between calls (and calling on_miss(),
    if given, after each miss)."""
    backoff = Backoff()
    while not test():
        if on_miss is not None:
            on_miss()
        backoff.sleep()


def poll_recv(comm, source, tag=None, on_miss=None):
    """Receive the next message from `source` (an MPI rank or MPI.ANY_SOURCE) with `tag` (None: any)
    without spinning; returns (message, source, tag). on_miss: called between polls (wait_until)."""
    from mpi4py import MPI
    st = MPI.Status()
    tag = MPI.ANY_TAG if tag is None else tag
    wait_until(lambda: comm.Iprobe(source=source, tag=tag, status=st), on_miss)
    return comm.recv(source=st.Get_source(), tag=st.Get_tag()), st.Get_source(), st.Get_tag()


def poll_send(comm, obj, dest, tag):
    """Send `obj` to rank `dest` (non-blocking send, then Test with back-off until it has completed)."""
    req = comm.isend(obj, dest=dest, tag=tag)
    wait_until(req.Test)
