"""The append-only run journal (`journal.jsonl`): one JSON object a line, fsynced.

Only `done` events decide what a restart skips, and only if every output they name still exists
with the size recorded (`completed`, always). A `done` event also records each output's CRC-32
(`file_checksums`, computed by the rank that wrote it); `damaged` recomputes them on request
(`twinkles-hpc run --verify`). A task may record a path with the size REMOVED: it deleted an
intermediate file that an earlier task wrote (a coadd strip once the patch's file is assembled); that
record holds while the path does not exist. A torn last line (a crash mid-append) is ignored, and the next commit
starts on a line of its own.

Group commit: `stage` queues an event in memory and `commit` writes every queued line in one append and
makes it durable with one fsync, in the order staged; `append` is both. A line never reaches the file
before the lines staged ahead of it, so a crash loses a suffix of the events at most: a `done` line lost
that way only means the task is run again. The engine stages the completions that arrive together and
commits them before it hands out a task that depends on one of them (docs/design.md, "Scheduler").
"""
import json
import os
import time
import zlib

from twinkles_hpc.rundir import layout
from twinkles_hpc.rundir.jsonl import read_jsonl


#: The size a task records for a path it removed (an intermediate product, once it was used).
REMOVED = -1

#: Bytes read at a time when a checksum is computed.
CHECKSUM_CHUNK = 16 * 2 ** 20


def file_checksum(path):
    """'crc32:XXXXXXXX' of a file's bytes."""
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHECKSUM_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"crc32:{crc:08x}"


def file_checksums(rundir, outputs):
    """{relpath: checksum} of a task's outputs ({relpath: size}, paths relative to `rundir`), those it
    removed (size REMOVED) left out."""
    return {rel: file_checksum(os.path.join(rundir, rel)) for rel, size in sorted(outputs.items()) if size != REMOVED}


def _as_recorded(path, size):
    """True if `path` is as a done record left it: absent for REMOVED, else present with `size` bytes."""
    if size == REMOVED:
        return not os.path.exists(path)
    return os.path.exists(path) and os.path.getsize(path) == size


class Journal:
    def __init__(self, rundir):
        self.rundir = rundir
        self.path = os.path.join(rundir, layout.JOURNAL)
        self._done = None
        self._staged = []           # lines not yet written
        self._tail_checked = False  # whether the file is known to end with a newline (or to be empty)
        self.commits = 0            # fsyncs made by this object
        self.lines = 0              # lines they made durable

    def stage(self, event, **fields):
        """Queue an event for the next `commit`; nothing reaches the file before it."""
        self._done = None
        rec = {"event": event, "time": round(time.time(), 3), **fields}
        self._staged.append(json.dumps(rec, sort_keys=True) + "\n")

    @property
    def staged(self):
        """Events staged and not yet committed."""
        return len(self._staged)

    def commit(self):
        """Write the staged lines in one append and fsync once; returns how many were committed."""
        if not self._staged:
            return 0
        data = "".join(self._staged)
        if not self._tail_checked:
            data = self._after_torn_tail() + data
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        n = len(self._staged)
        self._staged.clear()
        self._tail_checked = True
        self.commits += 1
        self.lines += n
        return n

    def append(self, event, **fields):
        """Stage an event and commit it, with every event staged before it."""
        self.stage(event, **fields)
        self.commit()

    def _after_torn_tail(self):
        """'\\n' if the file ends inside a line that a killed run left torn, so that the first line committed
        now is a line of its own; '' otherwise."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() == 0:
                    return ""
                fh.seek(-1, os.SEEK_END)
                return "" if fh.read(1) == b"\n" else "\n"
        except FileNotFoundError:
            return ""

    def events(self):
        return read_jsonl(self.path)

    def _last_done(self):
        """{task_id: its last `done` event}: the journal read once until the next append."""
        if self._done is None:
            self._done, self._order = {}, {}
            for i, ev in enumerate(self.events()):
                if ev.get("event") == "done":
                    self._done[ev["task"]], self._order[ev["task"]] = ev, i
        return self._done

    def _holders(self):
        """{relpath: (task ids whose last done event names it, in journal order: the last one wrote it last)}.
        A path named by two tasks was rewritten by the later one (an eimage whose pixels its calexp task
        dropped, [store] keep_eimages = false): its size and checksum are the later record's."""
        out = {}
        last = self._last_done()
        for tid, ev in sorted(last.items(), key=lambda kv: self._order[kv[0]]):
            for rel in ev.get("outputs", {}):
                out.setdefault(rel, []).append(tid)
        return out

    def completed(self):
        """{task_id: outputs} for done tasks whose outputs are all present with the sizes last recorded for
        them, and [lost task ids]. A task whose output a lost task had rewritten is lost with it (the
        rewriting task needs what the first one wrote)."""
        last, holders = self._last_done(), self._holders()
        done, lost = {}, []
        for tid, ev in last.items():
            outputs = ev.get("outputs", {})
            if all(_as_recorded(os.path.join(self.rundir, rel), last[holders[rel][-1]]["outputs"][rel])
                   for rel in outputs):
                done[tid] = outputs
            else:
                lost.append(tid)
        stack = list(lost)
        while stack:
            for rel in last[stack.pop()].get("outputs", {}):
                for other in holders[rel]:
                    if other in done:
                        del done[other]
                        lost.append(other)
                        stack.append(other)
        return done, lost

    def damaged(self, done):
        """The tasks of `done` (from `completed`) with an output whose bytes no longer have the checksum
        recorded when it was last written: [(task_id, relpath)], reading every recorded output once. Every
        task naming a damaged path is listed (its rewriter needs what the first one wrote)."""
        last, holders = self._last_done(), self._holders()
        out, seen = [], set()
        for tid in sorted(done):
            for rel, want in sorted(last[tid].get("checksums", {}).items()):
                if holders[rel][-1] != tid or rel in seen:
                    continue            # judged by the task that wrote it last
                if file_checksum(os.path.join(self.rundir, rel)) != want:
                    seen.add(rel)
                    out += [(h, rel) for h in holders[rel] if h in done]
                    break
        return out
