"""One evaluation path: fine-tuning and the model card score through the benchmark runner.

The in-memory entry point (:mod:`app.core.benchmark.evaluate`) must give exactly the rows
``iter_benchmark`` writes for the same image, and fine-tuning's samples must reach it with the
benchmark's own case ids; box routing is decided by paired case-bootstrap evidence.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from app.core.benchmark.evaluate import (
    PrecomputedMethod,
    evaluate,
    mean_of_tasks_ci,
    summarize,
    task_table,
)


@pytest.fixture(scope="module")
def one_case_dataset(shared_data, tmp_path_factory):
    """A copy of one fetal-head case laid out as its own images/ + masks/ dataset."""
    src = shared_data / "png_pairs" / "fetal_head_us"
    root = tmp_path_factory.mktemp("bench") / "fetal_head_us"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for sub in ("images", "masks"):
        shutil.copy(src / sub / "033_HC.png", root / sub / "033_HC.png")
    return root


def _key(r):
    return (r["protocol"], r["selection"], int(r["click"]))


def test_evaluate_gives_the_runners_rows_exactly(one_case_dataset, tmp_path):
    from app.core.benchmark.datasets import discover, iter_images
    from app.core.benchmark.runner import BenchmarkPlan, iter_benchmark
    from app.core.engine import Engine
    from app.core.finetune import benchmark_rows, load_training_samples
    from app.core.methods.sam_family import SamFamilyMethod
    from app.core.models.registry import load_model

    model = load_model("litemedsam_points", device="cpu")
    method = SamFamilyMethod("litemedsam_points", engine=Engine(model))
    opts = dict(modes=(1, 3), protocols=("paper", "standard"), clicks=3,
                selections=("first", "oracle"), seed=0, target_iou=1.0)
    plan = BenchmarkPlan(data=one_case_dataset, out_dir=tmp_path / "run",
                         methods=("litemedsam_points",), save_masks=False,
                         prebuilt_methods={"litemedsam_points": method}, **opts)
    ran = {_key(r): r["iou"] for r in iter_benchmark(plan)}

    ds = discover(one_case_dataset).datasets[0]
    samples = [s for ref in ds.cases for s in iter_images(ref, [t.label for t in ds.tasks])]
    mine = {_key(r): r["iou"] for r in evaluate({"litemedsam_points": method}, samples, **opts)}
    assert len(ran) == 2 * 2 + 2 * 2 * 3 and mine == ran  # every row, bit for bit

    # fine-tuning's samples (loaded from the developer data set) reach the same rows
    ts = load_training_samples(one_case_dataset)
    emb = method.engine.embed(ts[0].image)
    ft = {_key(r): r["iou"] for r in benchmark_rows({"litemedsam_points": model}, ts, [emb],
                                                     **opts)}
    assert ft == ran


def test_precomputed_method_skips_the_encoder(shared_data, litemedsam):
    from app.core.finetune import load_training_samples

    s = load_training_samples(shared_data / "png_pairs" / "fetal_head_us")[4]
    emb = litemedsam.embed(s.image)
    calls = []

    class Counting:
        name, capabilities = litemedsam.name, litemedsam.capabilities

        def embed(self, image):
            calls.append(image)
            return litemedsam.embed(image)

        def predict(self, e, p, multimask=True):
            return litemedsam.predict(e, p, multimask=multimask)

    m = PrecomputedMethod(Counting(), {id(s.image): emb})
    rows = evaluate({"base": m}, [s.as_image_sample()], modes=(3,))
    assert not calls and len(rows) == 1
    # a tight box on a fetal head: the base model segments it
    assert rows[0]["iou"] > 0.8


def test_mean_of_tasks_interval_is_stratified_by_task():
    rng = np.random.default_rng(0)
    a = (rng.uniform(0.6, 0.8, 40), np.repeat(np.arange(10), 4))  # 10 cases of 4 slices
    b = (rng.uniform(0.1, 0.3, 8), np.arange(8))
    est, lo, hi = mean_of_tasks_ci({"a": a, "b": b}, n_boot=500)
    assert est == pytest.approx((a[0].mean() + b[0].mean()) / 2)
    assert lo < est < hi and hi - lo < 0.2
    # a task with one value per case and no spread has a zero-width interval
    flat = mean_of_tasks_ci({"c": (np.full(5, 0.5), np.arange(5))}, n_boot=100)
    assert flat == pytest.approx((0.5, 0.5, 0.5))


def _rows(method, task, values, protocol="mode3"):
    return [{"method": method, "task": task, "dataset": task, "case": f"c{i}", "label": 1,
             "repeat": 0, "protocol": protocol, "selection": "first", "click": 0, "iou": v}
            for i, v in enumerate(values)]


def test_box_routing_follows_the_evidence():
    from app.core.finetune import choose_box_decoder

    rng = np.random.default_rng(1)
    base_a, base_b = rng.uniform(0.5, 0.7, 12), rng.uniform(0.5, 0.7, 12)
    rows = [*_rows("base", "a", base_a), *_rows("base", "b", base_b)]
    # better on average, one task slightly and noisily worse: one decoder for everything
    noisy = base_b + rng.normal(-0.01, 0.05, 12)
    better = [*_rows("tuned", "a", base_a + 0.1), *_rows("tuned", "b", noisy)]
    r = choose_box_decoder(rows + better, modes=(3,))
    assert r["decoder"] == "tuned" and r["mean_of_tasks_diff"] > 0
    # one task worse on every case: significantly worse, boxes stay with the base decoder
    worse = [*_rows("tuned", "a", base_a + 0.1), *_rows("tuned", "b", base_b - 0.05)]
    r = choose_box_decoder(rows + worse, modes=(3,))
    assert r["decoder"] == "base" and "b (mode 3" in r["reason"]
    # worse on average: base
    r = choose_box_decoder(rows + [*_rows("tuned", "a", base_a - 0.02),
                                   *_rows("tuned", "b", base_b)], modes=(3,))
    assert r["decoder"] == "base"


def _volume_rows(method, task, values, protocol="mode3"):
    """One volume's slices: one case, ``case:z<k>`` per slice (as the benchmark names them)."""
    return [{**r, "case": f"vol:z{i}"} for i, r in enumerate(_rows(method, task, values,
                                                                     protocol))]


def test_a_task_of_one_volume_is_judged_by_its_own_slices():
    """A task with a single case has no case bootstrap; it must still be able to veto
    (before, its interval was NaN and a loss on every slice passed unnoticed)."""
    from app.core.benchmark.evaluate import significantly_worse, task_differences
    from app.core.finetune import choose_box_decoder

    rng = np.random.default_rng(2)
    base_a, base_v = rng.uniform(0.5, 0.7, 12), rng.uniform(0.5, 0.7, 7)
    rows = [*_rows("base", "a", base_a), *_volume_rows("base", "mri", base_v)]
    # much better on the task of many cases, worse on every slice of the one volume
    tuned = [*_rows("tuned", "a", base_a + 0.2),
             *_volume_rows("tuned", "mri", base_v - rng.uniform(0.05, 0.15, 7))]
    d = task_differences(rows + tuned, "tuned", "base", "mode3")
    assert d["a"]["noise"] == "cases" and d["mri"]["noise"] == "images"
    assert d["mri"]["n_cases"] == 1 and d["mri"]["n_rows"] == 7
    assert d["mri"]["high"] < 0 and significantly_worse(d) == ["mri"]
    r = choose_box_decoder(rows + tuned, modes=(3,))
    assert r["mean_of_tasks_diff"] > 0
    assert r["decoder"] == "base" and "mri (mode 3" in r["reason"]
    assert "1 case, its 7 images resampled" in r["reason"]
    # the same volume only slightly and noisily worse: within its noise, one decoder
    noisy = [*_rows("tuned", "a", base_a + 0.2),
             *_volume_rows("tuned", "mri", base_v + rng.normal(-0.005, 0.05, 7))]
    r = choose_box_decoder(rows + noisy, modes=(3,))
    assert r["decoder"] == "tuned", r["reason"]
    # one image: no noise estimate at all, said so
    one = task_differences([*_rows("base", "x", [0.5]), *_rows("tuned", "x", [0.3])],
                           "tuned", "base", "mode3")
    assert one["x"]["noise"] == "none" and significantly_worse(one) == []


def test_summaries_and_task_table_agree():
    rows = [*_rows("m", "a", [0.2, 0.4]), *_rows("m", "b", [0.9, 0.7, 0.8])]
    summ = {(s.task): s for s in summarize(rows, n_boot=200)}
    assert summ["a"].mean == pytest.approx(0.3) and summ["b"].mean == pytest.approx(0.8)
    assert summ["mean of tasks"].mean == pytest.approx(0.55)
    table = task_table(rows)
    assert table["a"]["mode3_first"] == pytest.approx(0.3) and table["all"]["n"] == 5


def test_augmented_copies_keep_mask_and_image_aligned():
    from app.core.finetune import TrainingSample, augment_sample
    from app.core.image import Image2D

    mask = np.zeros((120, 160), bool)
    mask[30:50, 100:130] = True
    mask[80:110, 10:40] = True
    s = TrainingSample(Image2D.from_array(mask.astype(np.uint8) * 200), mask, case="x/1",
                       task="x", source="x.png")
    rng = np.random.default_rng(0)
    shapes = set()
    for _ in range(30):
        a = augment_sample(s, rng)
        px = a.image.unit_range()
        assert px.shape == a.mask.shape and a.mask.any()
        # intensities changed, geometry did not drift: the bright pixels are the mask
        np.testing.assert_array_equal(px > 0.5, a.mask)
        assert a.case == s.case and a.origin is None
        shapes.add(a.mask.shape)
    assert len(shapes) > 5  # crops of several sizes
