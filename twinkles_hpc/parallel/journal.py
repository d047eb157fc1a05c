"""The append-only run journal (`journal.jsonl`): one JSON object a line, fsynced.

Only `done` events decide what a restart skips, and only if every output they name still exists
with the size recorded. A torn last line (a crash mid-append) is ignored.
"""
import json
import os
import time

from twinkles_hpc.rundir import layout
from twinkles_hpc.rundir.jsonl import read_jsonl


class Journal:
    def __init__(self, rundir):
        self.rundir = rundir
        self.path = os.path.join(rundir, layout.JOURNAL)

    def append(self, event, **fields):
        rec = {"event": event, "time": round(time.time(), 3), **fields}
        line = json.dumps(rec, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def events(self):
        return read_jsonl(self.path)

    def completed(self):
        """{task_id: outputs} for done tasks whose outputs are all present with the recorded sizes."""
        done, lost = {}, []
        for ev in self.events():
            if ev.get("event") == "done":
                done[ev["task"]] = ev.get("outputs", {})
        for tid, outputs in list(done.items()):
            for rel, size in outputs.items():
                p = os.path.join(self.rundir, rel)
                if not os.path.exists(p) or os.path.getsize(p) != size:
                    lost.append(tid)
                    del done[tid]
                    break
        return done, lost
