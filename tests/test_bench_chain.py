"""`twinkles-hpc bench chain`: the per-visit table from a run's trace, its stages, steps and totals."""
import re

import pytest
from conftest import cli

from twinkles_hpc.bench import chain

CALEXP_STEPS = ("saturation", "background", "cosmic_rays", "variance", "detection", "astrometry", "psf",
                "photometry", "zero_point", "source_table", "read", "write")


def test_stage_costs_per_visit_and_amortised():
    recs = [{"task": f"calexp/v{i}", "kind": "calexp", "start": 0.0, "end": 2.0, "cpu": 1.5,
             "steps": {"psf": [0.5, 0.4]}} for i in range(4)]
    recs += [{"task": "coadd/r/1-1", "kind": "coadd", "start": 0.0, "end": 8.0, "cpu": 6.0,
              "steps": {"warp": [4.0, 4.0]}},
             {"task": "sky", "kind": "sky", "start": 0.0, "end": 9.0, "cpu": 9.0}]
    c = chain.stage_costs(recs, 4)
    assert set(c) == {"calexp", "coadd"}                         # set-up stages are not per visit
    assert c["calexp"]["wall"] == 2.0 and c["calexp"]["cpu"] == 1.5 and c["calexp"]["tasks"] == 4
    assert c["calexp"]["steps"] == {"psf": [0.5, 0.4]}
    assert c["coadd"]["cpu"] == 1.5 and c["coadd"]["steps"] == {"warp": [1.0, 1.0]}   # a visit's share


def test_report_of_a_run_has_every_stage_its_steps_and_the_totals(level2_run):
    lines = chain.chain_report(str(level2_run), "head", repeat=1)
    text = "\n".join(lines)
    rows = {m.group(1).strip(): (int(m.group(2)), float(m.group(3)), float(m.group(4)))
            for m in re.finditer(r"^  (\S[\w ]*?)\s+(\d+)\s+([\d.]+)\s+([\d.]+)", text, re.M)}
    for label in ("simulate", "calexp", "coadd", "Objects", "forced", "template", "diffim", "associate",
                  "DIA forced"):
        assert label in rows, text
    assert rows["calexp"][0] == 6 and rows["simulate"][0] == 6
    for step in CALEXP_STEPS:
        assert re.search(rf"^    {step}\s", text, re.M), step
    totals = [float(x) for x in re.findall(r"^  chain .*?\s([\d.]+)\s+[\d.]+$", text, re.M)]
    before = sum(rows[k][2] for k in ("simulate", "calexp", "coadd", "Objects", "forced"))
    after = before + sum(rows[k][2] for k in ("template", "diffim", "associate", "DIA forced"))
    assert totals == pytest.approx([before, after], abs=0.01)
    assert "sep" in lines[-1]


def test_bad_options_are_one_line_errors():
    r = cli("bench", "chain", "--visits", "2")
    assert r.returncode == 2 and "--visits" in r.stderr and "Traceback" not in r.stderr
    r = cli("bench", "chain", "--band", "q")
    assert r.returncode == 2 and "--band" in r.stderr and "Traceback" not in r.stderr
