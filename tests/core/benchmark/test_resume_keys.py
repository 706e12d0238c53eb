"""Resume keys held compactly (issue 12): the streamed scan of ``results.csv`` finds exactly
the complete groups of a real run, per image for Ray workers, as 64-bit keys; a repair
streams the kept lines."""

from __future__ import annotations

from app.core.benchmark.results import ResultsStore, load_results
from app.core.benchmark.runner import BenchmarkPlan, run_benchmark

KW = dict(methods=("region_growing",), modes=(1, 3), protocols=("paper",), clicks=2,
          max_cases=4, seed=1, save_masks=False)


def test_resume_keys_are_the_complete_groups_per_image(shared_data, tmp_path):
    out = tmp_path / "run"
    run_benchmark(BenchmarkPlan(data=shared_data / "png_pairs" / "fetal_head_us",
                                out_dir=out, **KW))
    df = load_results(out)
    store = ResultsStore(out, resume=True)
    assert not store.dropped and store.rows_existing == len(df)
    assert set(store.done) == set(df["group"]) and len(store.done) == df["group"].nunique()
    assert all(g in store.done for g in df["group"]) and "0" * 16 not in store.done
    assert store.done._keys.nbytes == 8 * len(store.done)  # 8 bytes a group
    for (ds, image), rows in df.groupby(["dataset", "image_path"]):
        assert store.done_for_image(ds, image) == frozenset(rows["group"])
    assert store.done_for_image("fetal_head_us", "/no/such.png") == frozenset()
    assert sorted(store.done_by_image.values()) == sorted(
        df.groupby("image_path")["group"].nunique())


def test_repair_streams_only_the_complete_groups(shared_data, tmp_path):
    out = tmp_path / "run"
    run_benchmark(BenchmarkPlan(data=shared_data / "png_pairs" / "fetal_head_us",
                                out_dir=out, **KW))
    csv = out / "results.csv"
    raw = csv.read_bytes()
    lines = raw.splitlines(keepends=True)
    victim = lines[3].split(b",")  # one row's group loses a row: the group is redone
    group = load_results(out)["group"].iloc[2]
    assert group.encode() in lines[3]
    csv.write_bytes(b"".join(lines[:3] + lines[4:]) + lines[5][:20])  # and a cut-off line
    store = ResultsStore(out, resume=True)
    reasons = [r for _, r in store.dropped]
    assert any("a cut-off last line" in r for r in reasons), reasons
    assert group not in store.done and len(victim) > 10
    store.repair()
    after = load_results(out)
    expect = [ln for ln in lines[1:] if group.encode() not in ln]
    assert csv.read_bytes() == lines[0] + b"".join(expect)
    assert len(after) == len(expect) == store.rows_existing
