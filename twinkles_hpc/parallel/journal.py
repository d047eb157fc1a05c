"""The append-only run journal (`journal.jsonl`): one JSON object a line, fsynced.

Only `done` events decide what a restart skips, and only if every output they name still exists
with the size recorded (`completed`, always). A `done` event also records each output's CRC-32
(`file_checksums`, computed by the rank that wrote it); `damaged` recomputes them on request
(`twinkles-hpc run --verify`). A torn last line (a crash mid-append) is ignored.
"""
import json
import os
import time
import zlib

from twinkles_hpc.rundir import layout
from twinkles_hpc.rundir.jsonl import read_jsonl


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
    """{relpath: checksum} of a task's outputs ({relpath: size}, paths relative to `rundir`)."""
    return {rel: file_checksum(os.path.join(rundir, rel)) for rel in sorted(outputs)}


class Journal:
    def __init__(self, rundir):
        self.rundir = rundir
        self.path = os.path.join(rundir, layout.JOURNAL)
        self._done = None

    def append(self, event, **fields):
        self._done = None
        rec = {"event": event, "time": round(time.time(), 3), **fields}
        line = json.dumps(rec, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def events(self):
        return read_jsonl(self.path)

    def _last_done(self):
        """{task_id: its last `done` event}: the journal read once until the next append."""
        if self._done is None:
            self._done = {ev["task"]: ev for ev in self.events() if ev.get("event") == "done"}
        return self._done

    def completed(self):
        """{task_id: outputs} for done tasks whose outputs are all present with the recorded sizes."""
        done, lost = {}, []
        for tid, ev in self._last_done().items():
            outputs = ev.get("outputs", {})
            if all(os.path.exists(p := os.path.join(self.rundir, rel)) and os.path.getsize(p) == size
                   for rel, size in outputs.items()):
                done[tid] = outputs
            else:
                lost.append(tid)
        return done, lost

    def damaged(self, done):
        """The tasks of `done` (from `completed`) with an output whose bytes no longer have the checksum
        recorded when it was written: [(task_id, relpath)], reading every recorded output once."""
        out = []
        for tid in sorted(done):
            for rel, want in sorted(self._last_done()[tid].get("checksums", {}).items()):
                if file_checksum(os.path.join(self.rundir, rel)) != want:
                    out.append((tid, rel))
                    break
        return out
