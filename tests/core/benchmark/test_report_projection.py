"""The report's bounded read: the projected table (Parquet columns, or CSV columns when the
Parquet is stale) gives the numbers of the full read, on a real run of real images."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from app.core.benchmark.report import (
    ANALYSIS_COLUMNS,
    FILE_COLUMNS,
    analysis_tables,
    file_rows,
    noc_table,
    summarize,
    write_report,
)
from app.core.benchmark.results import load_results, parquet_current
from app.core.benchmark.runner import BenchmarkPlan, run_benchmark


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, shared_data):
    data = shared_data / "png_pairs" / "fetal_head_us"
    out = tmp_path_factory.mktemp("projection") / "run"
    run_benchmark(BenchmarkPlan(data=data, out_dir=out, methods=("region_growing", "grabcut"),
                                modes=(1, 3), protocols=("paper",), clicks=2, max_cases=3,
                                seed=5))
    return out


def _same(a, b):
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def _check(out, full):
    proj = load_results(out, columns=ANALYSIS_COLUMNS)
    assert list(proj.columns) == [c for c in full.columns if c in ANALYSIS_COLUMNS]
    _same(proj, full[list(proj.columns)])
    _same(summarize(proj, n_boot=200), summarize(full, n_boot=200))
    _same(noc_table(proj), noc_table(full))
    a, b = analysis_tables(proj, n_boot=200), analysis_tables(full, n_boot=200)
    assert a.keys() == b.keys() and len(a["paired"]) > 0
    for name in a:
        _same(a[name], b[name])
    files = file_rows(out, proj)
    named = full[(full["mask_file"] != "") | (full["candidates_file"] != "")]
    assert len(files) == len(named) > 0
    _same(files[[*proj.columns, *FILE_COLUMNS]], named[[*proj.columns, *FILE_COLUMNS]])


def test_projected_read_gives_the_full_reads_numbers(real_run):
    out = real_run
    assert parquet_current(out) == [out / "results.parquet"]  # the run wrote it last
    full = load_results(out)
    assert len(full) > 0 and (full["points"] != "").all()
    _check(out, full)
    # the report's summary.csv is the full table's summary
    write_report(out, figures=False)
    expect = summarize(full)
    _same(pd.read_csv(out / "summary.csv", keep_default_na=False, na_values=[""]),
          pd.read_csv(__import__("io").StringIO(expect.to_csv(index=False)),
                      keep_default_na=False, na_values=[""]))


def test_rows_after_the_parquet_come_from_the_csv(real_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(real_run, out)
    csv = out / "results.csv"
    last = csv.read_bytes().splitlines(keepends=True)[-1]
    with csv.open("ab") as fh:  # rows appended after the Parquet (as a resume does)
        fh.write(last)
    assert parquet_current(out) is None
    _check(out, load_results(out))
    assert len(load_results(out, columns=["iou"])) == len(load_results(real_run)) + 1


def test_an_edited_csv_range_is_not_served_from_its_parquet(real_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(real_run, out)
    csv = out / "results.csv"
    raw = csv.read_bytes()
    full = load_results(real_run)
    old = repr(float(full["iou"].iloc[1]))
    assert raw.count(f",{old},".encode()) >= 1
    # the same length and file, newer than nothing: only the bytes tell
    st = csv.stat()
    edited = raw.replace(f",{old},".encode(), f",{'0.' + '1' * (len(old) - 2)},".encode(), 1)
    assert len(edited) == len(raw) and edited != raw
    csv.write_bytes(edited)
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert parquet_current(out) is None
    now = load_results(out)
    assert (now["iou"] != full["iou"]).sum() == 1
    _check(out, now)
