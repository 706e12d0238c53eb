"""Results are whole or absent: a full disk, cut-off files, two writers, lost manifests.

Each test first reproduces a way a user lost, mixed or doubled results (issue 14), then checks
that the run folder either refuses with the reason or resumes to exactly the table an
uninterrupted run gives. region_growing keeps them fast (< 2 ms per prompt).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from app.core.benchmark import results as results_mod
from app.core.benchmark._lock import RunLock
from app.core.benchmark.results import load_results, read_manifest
from app.core.benchmark.runner import BenchmarkPlan, iter_benchmark, run_benchmark
from app.core.errors import RunFolderBusyError, RunFolderError, WriteError
from app.core.io import _atomic

TIMING = ["seconds", "prepare_seconds"]
KEY = ["case", "method", "protocol", "repeat", "click", "selection"]


@pytest.fixture(scope="module")
def kw(shared_data):
    return dict(data=shared_data / "png_pairs" / "fetal_head_us", methods=("region_growing",),
                modes=(1, 2, 3, 4, 5), protocols=("paper",), clicks=3, max_cases=3, seed=7)


@pytest.fixture(scope="module")
def reference(kw, tmp_path_factory):
    """An uninterrupted run to compare with."""
    out = tmp_path_factory.mktemp("ref") / "full"
    run_benchmark(BenchmarkPlan(out_dir=out, **kw))
    return out


def _table(out):
    return load_results(out).drop(columns=TIMING).sort_values(KEY).reset_index(drop=True)


def assert_same_as_reference(out, reference):
    a, b = _table(reference), _table(out)
    assert not b.duplicated(KEY).any(), "rows doubled"
    assert len(b) == len(a), f"{len(b)} rows, expected {len(a)}"
    pd.testing.assert_frame_equal(a, b)
    for rel in b["mask_file"]:
        if rel:
            assert (out / rel).read_bytes() == (reference / rel).read_bytes(), rel
    assert read_manifest(out)["status"] == "complete"
    assert (out / "results.parquet").is_file()


class DiskFull:
    """Replaces the one ``os.write`` of the checked writers: ``budget`` bytes, then ENOSPC.

    The write that crosses the budget writes what fits (a partial line or a partial PNG), as a
    real full disk does.
    """

    def __init__(self, budget: int) -> None:
        self.left = budget

    def __call__(self, fd, data):
        data = bytes(data)
        if len(data) <= self.left:
            self.left -= len(data)
            return os.write(fd, data)
        if self.left > 0:
            n = os.write(fd, data[: self.left])
            self.left = 0
            return n
        raise OSError(errno.ENOSPC, "No space left on device")


# budgets chosen (by counting this run's writes) to cut: the first manifest, a mode group's
# rows, a click group's rows, a mask PNG, the last group's rows, the closing manifest
@pytest.mark.parametrize("budget", [1_000, 7_000, 34_000, 48_000, 90_000, 91_500])
def test_disk_full_mid_group_then_resume_gives_every_row_once(kw, reference, tmp_path,
                                                              monkeypatch, budget):
    out = tmp_path / "run"
    monkeypatch.setattr(_atomic, "_os_write", DiskFull(budget))
    with pytest.raises(WriteError) as err:
        run_benchmark(BenchmarkPlan(out_dir=out, **kw))
    msg = str(err.value)
    assert "disk full" in msg and ".tmp" not in msg and str(out) in msg, msg
    monkeypatch.undo()  # the disk is freed
    run_benchmark(BenchmarkPlan(out_dir=out, resume=True, **kw))
    assert_same_as_reference(out, reference)
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_a_line_cut_inside_a_click_group_is_redone(kw, reference, tmp_path):
    out = tmp_path / "run"
    run_benchmark(BenchmarkPlan(out_dir=out, **kw))
    lines = (out / "results.csv").read_bytes().split(b"\n")
    df = pd.read_csv(out / "results.csv")
    # the second click row of the first paper group: its group has rows before and after it
    i = int(df.index[(df["protocol"] == "paper") & (df["click"] == 2)][0]) + 1
    cut = b"\n".join(lines[:i]) + b"\n" + lines[i][: len(lines[i]) // 2]
    (out / "results.csv").write_bytes(cut)
    run_benchmark(BenchmarkPlan(out_dir=out, resume=True, **kw))
    assert_same_as_reference(out, reference)


def test_empty_or_missing_mask_files_are_redone(kw, reference, tmp_path):
    out = tmp_path / "run"
    run_benchmark(BenchmarkPlan(out_dir=out, **kw))
    masks = [m for m in load_results(out)["mask_file"] if m]
    (out / masks[0]).write_bytes(b"")
    (out / masks[3]).unlink()
    data = (out / masks[5]).read_bytes()
    (out / masks[5]).write_bytes(data[: len(data) // 2])  # truncated PNG
    run_benchmark(BenchmarkPlan(out_dir=out, resume=True, **kw))
    assert_same_as_reference(out, reference)


def test_doubled_groups_from_two_writers_are_redone_once(kw, reference, tmp_path):
    out = tmp_path / "run"
    run_benchmark(BenchmarkPlan(out_dir=out, **kw))
    raw = (out / "results.csv").read_bytes()
    body = raw.split(b"\n", 1)[1]
    (out / "results.csv").write_bytes(raw + body[: len(body) // 3].rsplit(b"\n", 1)[0] + b"\n")
    run_benchmark(BenchmarkPlan(out_dir=out, resume=True, **kw))
    assert_same_as_reference(out, reference)


def test_second_writer_is_refused_naming_folder_and_pid(kw, tmp_path):
    out = tmp_path / "run"
    first = iter_benchmark(BenchmarkPlan(out_dir=out, **kw))
    next(first)  # running, holding the folder
    second = iter_benchmark(BenchmarkPlan(out_dir=out, resume=True, **kw))
    with pytest.raises(RunFolderBusyError) as err:
        next(second)
    assert str(out) in str(err.value) and str(os.getpid()) in str(err.value)
    first.close()
    assert read_manifest(out)["status"] == "interrupted"
    # the first one has let go: the resume goes ahead
    run_benchmark(BenchmarkPlan(out_dir=out, resume=True, **kw))
    assert read_manifest(out)["status"] == "complete"


def test_lock_of_a_killed_process_is_gone(tmp_path):
    code = ("import sys, time; from app.core.benchmark._lock import RunLock; "
            f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusyError, match=f"process {proc.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()  # kill -9: no chance to clean up
        proc.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            RunLock(tmp_path).acquire().release()
            break
        except RunFolderBusyError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _partial(out, kw, n=5):
    gen = iter_benchmark(BenchmarkPlan(out_dir=out, **kw))
    for _ in range(n):
        next(gen)
    gen.close()


def test_resume_with_other_options_is_refused_naming_them(kw, tmp_path):
    out = tmp_path / "run"
    _partial(out, kw)
    before = (out / "results.csv").read_bytes()
    with pytest.raises(RunFolderError) as err:
        run_benchmark(BenchmarkPlan(out_dir=out, resume=True, **{**kw, "seed": 2, "clicks": 5}))
    assert "clicks" in str(err.value) and "seed" in str(err.value)
    assert (out / "results.csv").read_bytes() == before


def test_resume_without_manifest_is_refused_unless_rebuilt_from_matching_rows(
        kw, reference, tmp_path):
    out = tmp_path / "run"
    _partial(out, kw)
    (out / "manifest.json").unlink()
    before = (out / "results.csv").read_bytes()
    other = {**kw, "seed": 2, "clicks": 5}
    with pytest.raises(RunFolderError, match="manifest.json: missing.*--rebuild-manifest"):
        run_benchmark(BenchmarkPlan(out_dir=out, resume=True, **kw))
    # the rebuild flag does not let other options in: the rows carry their plan's digest
    for flag in (False, True):
        with pytest.raises(RunFolderError, match="missing, and its rows were made with other"):
            run_benchmark(BenchmarkPlan(out_dir=out, resume=True, rebuild_manifest=flag,
                                        **other))
    assert (out / "results.csv").read_bytes() == before
    run_benchmark(BenchmarkPlan(out_dir=out, resume=True, rebuild_manifest=True, **kw))
    assert read_manifest(out)["rebuilt_from_rows"] is True
    assert_same_as_reference(out, reference)


def test_damaged_manifest_is_named(kw, tmp_path):
    out = tmp_path / "run"
    _partial(out, kw)
    (out / "manifest.json").write_text('{"options": {"seed": 7, "cli', encoding="utf-8")
    with pytest.raises(RunFolderError) as err:
        run_benchmark(BenchmarkPlan(out_dir=out, resume=True, **kw))
    assert "manifest.json: damaged" in str(err.value) and "line 1" in str(err.value)


def test_non_utf8_results_are_named(kw, tmp_path):
    out = tmp_path / "run"
    _partial(out, kw)
    with (out / "results.csv").open("ab") as fh:
        fh.write(b"\xff\xfe broken\n")
    with pytest.raises(RunFolderError.__mro__[1]) as err:  # DatasetError
        run_benchmark(BenchmarkPlan(out_dir=out, resume=True, **kw))
    assert "results.csv: not UTF-8" in str(err.value)
    with pytest.raises(RunFolderError.__mro__[1], match="results.csv: not UTF-8"):
        load_results(out)


def test_manifest_is_complete_only_after_parquet(kw, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def no_space(self):
        raise WriteError(f"{self.out_dir / 'results.parquet'}: disk full, could not be written")

    monkeypatch.setattr(results_mod.ResultsStore, "write_parquet", no_space)
    with pytest.raises(WriteError, match="results.parquet"):
        run_benchmark(BenchmarkPlan(out_dir=out, **kw))
    manifest = read_manifest(out)
    assert manifest["status"] != "complete" and "results.parquet" in manifest["error"]


def test_a_failed_start_does_not_block_the_corrected_rerun(kw, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="regon_growing"):
        run_benchmark(BenchmarkPlan(out_dir=out, **{**kw, "methods": ("regon_growing",)}))
    run_benchmark(BenchmarkPlan(out_dir=out, **kw))  # no --resume needed
    assert read_manifest(out)["status"] == "complete"
    # a header-only table (an older version's failed start) does not block either
    out2 = tmp_path / "run2"
    out2.mkdir()
    (out2 / "results.csv").write_text(",".join(results_mod.COLUMNS) + "\n", encoding="utf-8")
    run_benchmark(BenchmarkPlan(out_dir=out2, **kw))
    assert read_manifest(out2)["status"] == "complete"


def test_every_row_carries_group_and_plan_digest(reference, kw):
    df = load_results(reference)
    plan = BenchmarkPlan(out_dir=reference, **kw)
    assert (df["plan_digest"] == plan.digest()).all()
    counts = df.groupby("group").size()
    assert (df.groupby("group")["group_rows"].first() == counts).all()
    assert json.loads((reference / "manifest.json").read_text())["plan_digest"] == plan.digest()


def test_an_edited_value_fails_its_check_sum_and_is_redone(kw, reference, tmp_path):
    out = tmp_path / "run"
    run_benchmark(BenchmarkPlan(out_dir=out, **kw))
    text = (out / "results.csv").read_text(encoding="utf-8")
    df = pd.read_csv(out / "results.csv")
    old = repr(float(df["iou"].iloc[4]))
    assert text.count(old) >= 1
    (out / "results.csv").write_text(text.replace(old, "0.99", 1), encoding="utf-8")
    run_benchmark(BenchmarkPlan(out_dir=out, resume=True, **kw))
    assert_same_as_reference(out, reference)
