"""The report reads the results one (dataset, task) at a time, so its memory follows the
largest task, not the run. On a real run of two datasets: the partitioning pass gives every
row once, in order, typed as the whole read, whatever the batch size and however many task
files are open; and the report's tables are the numbers of the whole-table functions."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from app.core.benchmark import results as results_mod
from app.core.benchmark.report import (
    ANALYSIS_COLUMNS,
    analysis_tables,
    noc_table,
    summarize,
    write_report,
)
from app.core.benchmark.results import iter_task_results, load_results, read_manifest
from app.core.benchmark.runner import BenchmarkPlan, run_benchmark
from app.core.errors import WriteError


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("by_task") / "run"
    run_benchmark(BenchmarkPlan(
        data=shared_data, out_dir=out, methods=("region_growing", "grabcut"), modes=(1, 3),
        protocols=("paper",), clicks=2, datasets=("fetal_head_us", "cxr_lungs"),
        max_cases=3, jitter=0.05, repeats=2, seed=3))
    return out


def _spills(out):
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".report-tasks-"))


@pytest.mark.parametrize("source", ["parquet", "csv"])
def test_tasks_partition_the_table(two_datasets, tmp_path, monkeypatch, source):
    out = two_datasets
    if source == "csv":  # an interrupted run: rows only in results.csv
        out = tmp_path / "csv_only"
        out.mkdir()
        for name in ("results.csv", "manifest.json"):
            (out / name).write_bytes((two_datasets / name).read_bytes())
    monkeypatch.setattr(results_mod, "_SPILL_BATCH_ROWS", 7)  # many batches
    monkeypatch.setattr(results_mod, "_SPILL_OPEN", 1)  # a task file closed at each switch
    full = load_results(out, columns=ANALYSIS_COLUMNS)
    seen = []
    got = list(iter_task_results(out, ANALYSIS_COLUMNS, on_batch=seen.append))
    keys = [k for k, _ in got]
    assert len(keys) >= 2 and keys == sorted(keys)
    assert sum(len(b) for b in seen) == len(full)
    for (ds, task), frame in got:
        assert (frame["dataset"] == ds).all() and (frame["task"] == task).all()
        assert frame.index.is_monotonic_increasing
    joined = pd.concat([f for _, f in got]).sort_index()
    pd.testing.assert_frame_equal(joined, full)
    assert _spills(out) == []


def test_abandoned_or_failed_partitioning_leaves_no_task_files(two_datasets, monkeypatch):
    out = two_datasets
    it = iter_task_results(out, ANALYSIS_COLUMNS)
    next(it)
    assert len(_spills(out)) == 1  # the other task waits on disk
    it.close()
    assert _spills(out) == []

    import pyarrow.parquet as pq

    class FullDisk(pq.ParquetWriter):
        def write_batch(self, *a, **k):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "ParquetWriter", FullDisk)
    with pytest.raises(WriteError, match="No space left on device") as err:
        list(iter_task_results(out, ANALYSIS_COLUMNS))
    assert str(out) in str(err.value)
    assert _spills(out) == []


def _read(text_or_path):
    return pd.read_csv(text_or_path, keep_default_na=False, na_values=["", "nan"])


def test_report_tables_are_the_whole_tables_numbers(two_datasets):
    out = two_datasets
    write_report(out)
    full = load_results(out, columns=ANALYSIS_COLUMNS)
    methods = read_manifest(out).get("methods")
    expect = {"summary": summarize(full), "noc": noc_table(full, max_clicks={"paper": 2}),
              **analysis_tables(full, manifest_methods=methods)}
    assert len(expect["paired"]) and len(expect["randomness"]) and len(expect["strata"])
    for name in ("summary", "noc", "paired", "randomness"):
        # computed task by task, then concatenated: the same text, digit for digit
        assert (out / f"{name}.csv").read_text() == expect[name].to_csv(index=False), name
    for name in ("strata", "difficulty"):
        # pooled over tasks from each task's final rows: the same up to summation order
        a, b = _read(out / f"{name}.csv"), _read(io.StringIO(expect[name].to_csv(index=False)))
        assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0, name
        num = a.select_dtypes("number").columns
        pd.testing.assert_frame_equal(a.drop(columns=num), b.drop(columns=num))
        np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float),
                                   rtol=1e-9, atol=1e-12, equal_nan=True)
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {"fig2_modes.png", "fig5_clicks_paper.png", "fig8_size.png",
            "fig4_delta_grabcut_vs_region_growing.png"} <= figures
    html = (out / "report.html").read_text()
    assert f"{len(full)} result rows" in html
    assert _spills(out) == []
