"""The JSON-lines files of a run directory (journal.jsonl, trace.jsonl)."""
import json
import os


def read_jsonl(path):
    """The JSON objects of a JSON-lines file (the journal, trace.jsonl), skipping blank lines and a torn
    line that a killed run left; [] when the file does not exist."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return out
