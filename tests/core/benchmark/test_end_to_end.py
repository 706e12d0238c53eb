"""End to end on real data: LiteMedSAM and the random walker on ultrasound and MRI slices.

Thresholds come from what these methods achieved on these images (seed 0), measured when the
test was written: LiteMedSAM whole-mask box IoU 0.69-0.85 on the three ultrasound heads (mean
0.78), random walker 0.44-0.72 (mean 0.61); both far below that if prompts, coordinates or the
preprocessing break.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.core.benchmark.report import write_report
from app.core.benchmark.results import load_results, read_manifest
from app.core.benchmark.runner import BenchmarkPlan, run_benchmark
from app.core.methods.sam_family import SamFamilyMethod


@pytest.fixture(scope="module")
def real_run(shared_data, lite_engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    lite = SamFamilyMethod("litemedsam", engine=lite_engine)
    before = lite_engine.stats
    plan = BenchmarkPlan(
        data=shared_data, out_dir=out, methods=("litemedsam", "random_walker"),
        modes=(1, 3, 5), datasets=("fetal_head_us", "msd_like"), max_cases=3, max_slices=1,
        seed=0, prebuilt_methods={"litemedsam": lite},
    )
    run_benchmark(plan)
    return out, lite, before, lite_engine.stats


def test_box_modes_clear_real_thresholds(real_run):
    out, *_ = real_run
    df = load_results(out)
    us = df[(df["dataset"] == "fetal_head_us") & (df["protocol"] == "mode5")]
    lite = us[us["method"] == "litemedsam"]["iou"]
    rw = us[us["method"] == "random_walker"]["iou"]
    assert len(lite) == 3 and lite.mean() > 0.7 and lite.min() > 0.6
    assert len(rw) == 3 and rw.mean() > 0.45
    # spacing from cases.csv -> surface metrics in mm on the ultrasound rows
    assert us["hd95_mm"].notna().all() and (us["nsd"] > 0).all()
    msd = df[(df["dataset"] == "msd_like") & (df["method"] == "litemedsam")]
    assert set(msd["case"].str.split(":").str[0]) == {"brain1", "brain2", "breast1"}
    assert msd[msd["protocol"] == "mode5"]["iou"].max() > 0.5


def test_point_prompts_to_a_box_model_are_flagged_not_hidden(real_run):
    out, *_ = real_run
    df = load_results(out)
    lite_pts = df[(df["method"] == "litemedsam") & (df["protocol"] == "mode1")]
    assert len(lite_pts) == 6
    assert (~lite_pts["prompt_supported"]).all()
    assert lite_pts["note"].str.contains("box").all()
    assert lite_pts["iou"].mean() < 0.2  # the known failure, measured, not hidden
    boxes = df[(df["method"] == "litemedsam") & (df["protocol"] == "mode5")]
    assert boxes["prompt_supported"].all()
    rw = df[df["method"] == "random_walker"]
    assert rw["prompt_supported"].all()
    # LiteMedSAM's multimask outputs are not meaningful: only "first" by default
    assert set(df[df["method"] == "litemedsam"]["selection"]) == {"first"}
    p = json.loads(lite_pts.iloc[0]["points"])
    assert len(p) == 1 and p[0][2] == 1


def test_each_image_embedded_once(real_run):
    out, lite, before, after = real_run
    df = load_results(out)
    n_images = df[df["method"] == "litemedsam"]["case"].nunique()
    assert lite.images_prepared == n_images == 6
    computed = after.embeddings_computed - before.embeddings_computed
    reused = after.embeddings_reused - before.embeddings_reused
    assert computed + reused == n_images and computed <= n_images
    # 3 modes on each image, one decoder call each
    assert after.predictions - before.predictions == 3 * n_images
    stats = read_manifest(out)["embedding_stats"]["litemedsam"]
    assert stats["images_prepared_this_run"] == 6 and stats["predict_calls_this_run"] == 18


def test_manifest_records_checkpoint_hash_and_versions(real_run):
    from app.core.models.registry import get_spec

    out, *_ = real_run
    m = read_manifest(out)
    assert m["status"] == "complete"
    assert m["methods"]["litemedsam"]["checkpoint_sha256"] == get_spec(
        "litemedsam").checkpoint.sha256
    assert m["options"]["seed"] == 0 and "numpy" in m["versions"]
    assert (out / "results.parquet").is_file()


def test_report_and_figures(real_run):
    out, *_ = real_run
    report = write_report(out)
    html = report.read_text()
    for stem in ("fig2_modes", "fig4_delta_litemedsam_vs_random_walker", "fig8_size",
                 "fig3_examples_litemedsam"):
        for ext in ("png", "svg"):
            f = out / "figures" / f"{stem}.{ext}"
            assert f.is_file() and f.stat().st_size > 5000, f
        assert f"figures/{stem}.png" in html
    assert "not meant for" in html
    import pandas as pd

    summary = pd.read_csv(out / "summary.csv")
    df = load_results(out)
    row = summary[(summary["dataset"] == "fetal_head_us") & (summary["method"] == "litemedsam")
                  & (summary["protocol"] == "mode5")].iloc[0]
    expected = df[(df["dataset"] == "fetal_head_us") & (df["method"] == "litemedsam")
                  & (df["protocol"] == "mode5")]["iou"]
    assert row["n"] == 3 and row["iou_mean"] == pytest.approx(expected.mean())
    assert row["iou_ci_low"] <= row["iou_mean"] <= row["iou_ci_high"]
    # the PNG is a real picture, not an empty canvas
    from PIL import Image

    img = np.asarray(Image.open(out / "figures" / "fig2_modes.png").convert("L"))
    assert img.std() > 10
