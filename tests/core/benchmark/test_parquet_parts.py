"""Partitioned Parquet (issue 12): a table past ``PARQUET_PART_ROWS`` rows is written as parts
while the run goes; the report read from the parts is the report read from the CSV; a run
killed while it lists a part leaves nothing a later reader or run would trust.

Real runs of real images (fetal head ultrasound, region_growing), with the part size made
small so that a few dozen rows make several parts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from app.core.benchmark import _parquet
from app.core.benchmark import results as results_mod
from app.core.benchmark.report import ANALYSIS_COLUMNS, noc_table, summarize, write_report
from app.core.benchmark.results import load_results, parquet_current, read_manifest
from app.core.benchmark.runner import BenchmarkPlan, run_benchmark

REPO = Path(__file__).resolve().parents[3]
KW = dict(methods=("region_growing",), modes=(1, 3), protocols=("paper",), clicks=2,
          max_cases=6, seed=3, save_masks=False)
TIMING = ["seconds", "prepare_seconds"]
KEY = ["dataset", "task", "case", "method", "protocol", "repeat", "click", "selection"]


def _same(a, b):
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


@pytest.fixture(scope="module")
def data(shared_data):
    return shared_data / "png_pairs" / "fetal_head_us"


@pytest.fixture(scope="module")
def parted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("parts") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(results_mod, "PARQUET_PART_ROWS", 5)
    try:
        run_benchmark(BenchmarkPlan(data=data, out_dir=out, **KW))
    finally:
        mp.undo()
    return out


def test_a_large_table_is_written_in_parts_that_hold_all_its_rows(parted):
    index = json.loads((parted / "parquet.json").read_text())["parts"]
    files = parquet_current(parted)
    assert files is not None and len(files) == len(index) >= 3
    assert all(f.parent.name == "results.parts" for f in files)
    assert not (parted / "results.parquet").exists()
    # chained byte ranges of the CSV, from the header to its end, whole groups each
    raw = (parted / "results.csv").read_bytes()
    assert index[0]["start"] == raw.index(b"\n") + 1 and index[-1]["end"] == len(raw)
    assert all(a["end"] == b["start"] for a, b in zip(index, index[1:]))
    full = load_results(parted)
    assert sum(p["rows"] for p in index) == len(full) > 15
    for p in index:
        groups = pd.read_parquet(parted / p["file"], columns=["group", "group_rows"])
        assert (groups.groupby("group").size() == groups.groupby("group")["group_rows"]
                .first()).all(), p["file"]


def test_report_from_parts_equals_report_from_the_csv(parted, data, tmp_path):
    full = load_results(parted)  # the CSV, every column
    proj = load_results(parted, columns=ANALYSIS_COLUMNS)  # the parts
    _same(proj, full[list(proj.columns)])
    _same(summarize(proj, n_boot=200), summarize(full, n_boot=200))
    _same(noc_table(proj), noc_table(full))
    # and the same rows as an unpartitioned run of the plan
    single = tmp_path / "single"
    run_benchmark(BenchmarkPlan(data=data, out_dir=single, **KW))
    assert parquet_current(single) == [single / "results.parquet"]
    _same(load_results(single, columns=ANALYSIS_COLUMNS).drop(columns=["seconds"]),
          proj.drop(columns=["seconds"]))
    write_report(parted, figures=False)
    write_report(single, figures=False)
    a = pd.read_csv(parted / "summary.csv").drop(columns=["seconds_mean"])
    b = pd.read_csv(single / "summary.csv").drop(columns=["seconds_mean"])
    _same(a, b)


_KILLER = """
import os, signal, sys
from app.core.benchmark import _parquet, results
from app.core.benchmark.runner import BenchmarkPlan, run_benchmark

results.PARQUET_PART_ROWS = 5
real_replace = os.replace
listed = []
def write_index(out_dir, parts, _real=_parquet.write_index):
    listed.append(len(parts))
    if len(parts) == 3:  # the third part is renamed into place, not yet listed: killed
        os.kill(os.getpid(), signal.SIGKILL)
    _real(out_dir, parts)
_parquet.write_index = write_index
run_benchmark(BenchmarkPlan(data=sys.argv[1], out_dir=sys.argv[2], **{kw}))
"""


def test_a_run_killed_while_it_lists_a_part_leaves_no_part_trusted_that_is_not(data, tmp_path):
    out = tmp_path / "killed"
    script = textwrap.dedent(_KILLER).replace("{kw}", repr(KW))
    proc = subprocess.run([sys.executable, "-c", script, str(data), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    listed = json.loads((out / "parquet.json").read_text())["parts"]
    on_disk = sorted((out / "results.parts").glob("*.parquet"))
    assert len(listed) == 2 and len(on_disk) == 3  # the third part exists, unlisted
    assert read_manifest(out)["status"] == "running"
    # a reader uses the two listed parts and the CSV's rows after them, never the third
    parts, covered = _parquet.trusted(out, results_mod._HEADER)
    assert [p["file"] for p in parts] == [p["file"] for p in listed]
    assert parquet_current(out) is None
    full = load_results(out)
    _same(load_results(out, columns=ANALYSIS_COLUMNS), full[list(ANALYSIS_COLUMNS)])
    # the resumed run deletes the unlisted part, redoes nothing done, ends with parts that
    # hold exactly the rows of an uninterrupted run
    mp = pytest.MonkeyPatch()
    mp.setattr(results_mod, "PARQUET_PART_ROWS", 5)
    try:
        run_benchmark(BenchmarkPlan(data=data, out_dir=out, resume=True, **KW))
    finally:
        mp.undo()
    assert read_manifest(out)["status"] == "complete"
    files = parquet_current(out)
    assert files is not None and len(files) >= 3
    assert sorted((out / "results.parts").glob("*")) == sorted(files)
    ref = tmp_path / "ref"
    run_benchmark(BenchmarkPlan(data=data, out_dir=ref, **KW))
    a = load_results(ref).drop(columns=TIMING).sort_values(KEY).reset_index(drop=True)
    b = load_results(out).drop(columns=TIMING).sort_values(KEY).reset_index(drop=True)
    _same(a, b)
    c = (load_results(out, columns=ANALYSIS_COLUMNS).drop(columns=["seconds"])
         .sort_values(KEY).reset_index(drop=True))
    _same(c, a[[k for k in ANALYSIS_COLUMNS if k != "seconds"]])


def test_a_resume_that_rewrites_the_csv_drops_the_parts_it_changed(parted, tmp_path):
    import shutil

    out = tmp_path / "cut"
    shutil.copytree(parted, out)
    csv = out / "results.csv"
    raw = csv.read_bytes()
    index = json.loads((out / "parquet.json").read_text())["parts"]
    # a row inside the second part loses its last byte: that group is damaged
    line_end = raw.index(b"\n", index[1]["start"] + 10)
    csv.write_bytes(raw[:line_end - 1] + b"0" + raw[line_end:])
    store = results_mod.ResultsStore(out, resume=True, check_masks=False)
    assert store.dropped
    store.repair()
    kept = json.loads((out / "parquet.json").read_text())["parts"]
    assert [p["file"] for p in kept] == [index[0]["file"]]  # the first part's bytes unchanged
    assert sorted((out / "results.parts").glob("*")) == [out / index[0]["file"]]
    _same(load_results(out, columns=ANALYSIS_COLUMNS), load_results(out)[list(ANALYSIS_COLUMNS)])
