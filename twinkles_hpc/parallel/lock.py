"""One run per run directory: an exclusive flock on RUNDIR/.lock, held by rank 0.

The kernel drops the lock when the process dies (SIGKILL included), so a killed run never leaves a
stale lock behind. flock works on local file systems and on Lustre mounted with `flock` (NERSC scratch).
"""
import fcntl
import json
import os
import socket
import time

from twinkles_hpc.errors import RunDirError
from twinkles_hpc.rundir import layout


class RunLock:
    def __init__(self, rundir):
        self.path = os.path.join(rundir, layout.LOCK)
        self.fh = None

    def acquire(self):
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            who = fh.read().strip() or "{}"
            fh.close()
            try:
                info = json.loads(who)
            except json.JSONDecodeError:
                info = {}
            raise RunDirError(
                f"{os.path.dirname(self.path)}: run directory is in use by another run "
                f"(pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
                f"started {info.get('started', '?')}); wait for it or stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        fh.flush()
        self.fh = fh
        return self

    def release(self):
        if self.fh is not None:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None

    @staticmethod
    def is_locked(rundir):
        path = os.path.join(rundir, layout.LOCK)
        if not os.path.exists(path):
            return False
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False
