"""The benchmark on a Ray cluster (issue 12): the local run's rows exactly, through lost workers
and a killed driver.

A Ray started by this module on 127.0.0.1 with 2 CPUs (no dashboard, no usage reports);
region_growing keeps each case at a few ms of prompts, so the cost is Ray's start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from app.core.benchmark import cluster
from app.core.benchmark.results import ResultsStore, load_results, read_manifest
from app.core.benchmark.runner import BenchmarkPlan, iter_benchmark, run_benchmark

ray = pytest.importorskip("ray")

TIMING = ["seconds", "prepare_seconds"]
KEY = ["dataset", "task", "case", "method", "protocol", "repeat", "click", "selection"]
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ray_address():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _table(out):
    return load_results(out).drop(columns=TIMING).sort_values(KEY).reset_index(drop=True)


def assert_same_rows(out, reference):
    manifest = read_manifest(out)
    # first the run's own account: a case given up names itself here and in skipped.csv
    assert (manifest["status"], manifest.get("failed_cases", [])) == ("complete", []), (
        manifest.get("failed_cases"), (out / "skipped.csv").read_text())
    a, b = _table(reference), _table(out)
    assert not b.duplicated(KEY).any(), "rows doubled"
    assert len(b) == len(a), f"{len(b)} rows, expected {len(a)}"
    pd.testing.assert_frame_equal(a, b)
    for rel in b["mask_file"]:
        if rel:
            assert (out / rel).read_bytes() == (reference / rel).read_bytes(), rel
    assert read_manifest(out)["status"] == "complete"
    assert (out / "results.parquet").is_file()


@pytest.fixture(scope="module")
def suite_kw(shared_data):
    # two 2D datasets and the 3D volumes (slices of several tasks), a few cases each
    return dict(data=shared_data, datasets=("fetal_head_us", "cxr_lungs", "msd_like"),
                methods=("region_growing",), modes=(1, 2, 3, 4, 5), protocols=("paper",),
                clicks=3, max_cases=2, max_slices=2, seed=3)


def test_cluster_run_gives_the_local_rows_exactly(ray_address, suite_kw, tmp_path):
    local = run_benchmark(BenchmarkPlan(out_dir=tmp_path / "local", **suite_kw))
    logs: list[str] = []
    cluster = run_benchmark(BenchmarkPlan(out_dir=tmp_path / "ray", ray=ray_address,
                                          workers=2, **suite_kw), on_log=logs.append)
    assert_same_rows(cluster, local)
    manifest = read_manifest(cluster)
    assert manifest["cluster"]["workers"] == 2
    assert manifest["options"] == read_manifest(local)["options"]
    assert manifest["plan_digest"] == read_manifest(local)["plan_digest"]
    assert manifest["methods"] == read_manifest(local)["methods"]
    # each image prepared once, wherever it ran
    n_images = _table(local).groupby(["dataset", "case"]).ngroups
    assert manifest["embedding_stats"]["region_growing"]["images_prepared_this_run"] == n_images
    assert (cluster / "skipped.csv").read_text() == (local / "skipped.csv").read_text()


def test_resume_across_local_and_cluster(ray_address, suite_kw, tmp_path):
    """A run started locally and finished on the cluster (same folder, same keys)."""
    ref = run_benchmark(BenchmarkPlan(out_dir=tmp_path / "ref", **suite_kw))
    out = tmp_path / "mixed"
    it = iter_benchmark(BenchmarkPlan(out_dir=out, **suite_kw))
    for _ in range(12):
        next(it)
    it.close()
    run_benchmark(BenchmarkPlan(out_dir=out, resume=True, ray=ray_address, **suite_kw))
    assert_same_rows(out, ref)


@pytest.fixture(scope="module")
def many_kw(shared_data):
    return dict(data=shared_data / "png_pairs" / "fetal_head_us", methods=("region_growing",),
                modes=(1, 2, 3, 4, 5), protocols=("paper",), clicks=3, max_cases=14, seed=5)


@pytest.fixture(scope="module")
def many_reference(many_kw, tmp_path_factory):
    return run_benchmark(BenchmarkPlan(out_dir=tmp_path_factory.mktemp("many") / "ref",
                                       **many_kw))


def test_killed_worker_is_replaced_and_every_row_written_once(ray_address, many_kw,
                                                              many_reference, tmp_path):
    logs: list[str] = []
    out = tmp_path / "killed"
    plan = BenchmarkPlan(out_dir=out, ray=ray_address, workers=2, **many_kw)
    pids = []
    for i, _row in enumerate(iter_benchmark(plan, on_log=logs.append)):
        if i == 0:
            pids = [int(line.split("pid ")[1].split()[0]) for line in logs
                    if line.startswith("Ray worker ") and " pid " in line]
            assert len(pids) == 2, logs
            os.kill(pids[0], signal.SIGKILL)
    text = "\n".join(logs)
    assert "Ray worker 0 lost" in text or "Ray worker 0 was replaced" in text, text
    assert_same_rows(out, many_reference)


def _ray_workers() -> list[int]:
    """Pids of this machine's SAMScope Ray actors (Ray titles them ``ray::_Worker...``)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "cmdline").read_bytes().startswith(b"ray::_Worker"):
                pids.append(int(d.name))
        except OSError:
            pass  # ended meanwhile
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="needs Linux's /proc")
def test_a_case_whose_worker_keeps_dying_is_a_failed_case_and_the_run_incomplete(
        ray_address, many_kw, tmp_path, monkeypatch):
    """Every worker process killed as soon as it appears: no case can finish. The run must end
    ``incomplete`` (not ``complete`` with rows missing), name each case with its error, and a
    resume must then give the local rows exactly."""
    kw = {**many_kw, "max_cases": 2}
    reference = run_benchmark(BenchmarkPlan(out_dir=tmp_path / "ref", **kw))
    monkeypatch.setattr(cluster, "WORKER_WAIT_S", 4.0)
    stop, kills = threading.Event(), []

    def killer():
        while not stop.is_set():
            for pid in _ray_workers():
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                except OSError:
                    pass
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    logs: list[str] = []

    def on_log(line):
        logs.append(line)
        if line.startswith("Ray worker 0: pid") and not thread.is_alive():
            thread.start()  # once the pool is up (a worker lost while starting is an error)

    out = tmp_path / "run"
    try:
        rows = list(iter_benchmark(BenchmarkPlan(out_dir=out, ray=ray_address, workers=1, **kw),
                                   on_log=on_log))
    finally:
        stop.set()
        thread.join()
    assert kills, logs
    manifest = read_manifest(out)
    assert manifest["status"] == "incomplete", logs
    failed = [Path(f["path"]) for f in manifest["failed_cases"]]
    assert sorted(p.stem for p in failed) == sorted(set(load_results(reference)["case"])), logs
    assert all(f["error"].startswith(cluster.NOT_FINISHED) for f in manifest["failed_cases"])
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(skipped["path"]) == sorted(f["path"] for f in manifest["failed_cases"])
    assert not rows and load_results(out).empty
    # a resume (no more killing) finishes them; the list of skipped files forgets them
    run_benchmark(BenchmarkPlan(out_dir=out, resume=True, ray=ray_address, workers=1, **kw))
    assert_same_rows(out, reference)
    assert (out / "skipped.csv").read_text() == (reference / "skipped.csv").read_text()


def test_resume_after_the_driver_is_killed(ray_address, many_kw, many_reference, tmp_path):
    out = tmp_path / "driver"
    cmd = [sys.executable, "-m", "app", "benchmark", str(many_kw["data"]),
           "--methods", "region_growing", "--modes", "1,2,3,4,5", "--protocol", "paper",
           "--clicks", "3", "--max-cases", "14", "--seed", "5", "--out", str(out),
           "--no-report", "-q", "--ray", ray_address, "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    results = out / "results.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.is_file() and results.read_text().count("\n") > 20:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()}"
    proc.kill()
    proc.wait(timeout=30)
    proc.stderr.close()
    before = ResultsStore(out, resume=True, check_masks=True)
    groups_per_image = 6  # five modes and one click run
    whole = sum(n == groups_per_image for n in before.done_by_image.values())
    assert 0 < whole < 14, whole
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert_same_rows(out, many_reference)
    manifest = json.loads((out / "manifest.json").read_text())
    stats = manifest["embedding_stats"]["region_growing"]
    assert stats["images_prepared_this_run"] == 14 - whole  # finished images not redone
