"""The runner: protocol invariants, selection, resume, cancel, manifest."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from app.core.benchmark.results import COLUMNS, load_results, read_manifest
from app.core.benchmark.runner import BenchmarkPlan, iter_benchmark, run_benchmark
from app.core.errors import DatasetError
from app.core.methods.base import InteractiveMethod
from app.core.models.base import Candidates, Capabilities


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def toy_pairs(tmp_path):
    """Three 2D cases: one square, two squares, three squares of different sizes."""
    root = tmp_path / "toy"
    rng = np.random.default_rng(0)
    squares = [[(5, 5, 12)], [(4, 4, 10), (30, 30, 6)], [(3, 3, 14), (25, 30, 8), (40, 5, 5)]]
    for i, sq in enumerate(squares):
        m = np.zeros((48, 56), np.uint8)
        for r, c, s in sq:
            m[r:r + s, c:c + s] = 255
        img = np.where(m > 0, 180, 60).astype(np.uint8) + rng.integers(0, 20, m.shape, np.uint8)
        _png(root / "images" / f"c{i}.png", img)
        _png(root / "masks" / f"c{i}.png", m)
    return root


class ThreeCandidates(InteractiveMethod):
    """A test method with known candidates: 0 = empty, 1 = the box's pixels, 2 = everything.

    Scores prefer candidate 2. Records every call, to check how the runner calls methods.
    """

    name = "three"
    capabilities = Capabilities(points=True, boxes=True, mask_input=True,
                                meaningful_multimask=True)

    def __init__(self):
        super().__init__()
        self.calls = []

    def predict(self, state, prompt, multimask=True):
        self.calls.append(prompt)
        h, w = state.shape
        boxed = np.zeros((h, w), bool)
        if prompt.box_xyxy is not None:
            x0, y0, x1, y1 = (int(v) for v in prompt.box_xyxy)
            boxed[y0:y1 + 1, x0:x1 + 1] = True
        for x, y in prompt.points_xy.astype(int):
            boxed[y, x] = True
        masks = np.stack([np.zeros((h, w), bool), boxed, np.ones((h, w), bool)])
        return Candidates(masks, np.array([0.1, 0.5, 0.9], np.float32),
                          np.zeros((3, 256, 256), np.float32))


def _plan(data, out, **kw):
    base = dict(data=data, out_dir=out, methods=("three",), seed=3)
    base.update(kw)
    plan = BenchmarkPlan(**base)
    return plan


def test_modes_calls_and_selection(toy_pairs, tmp_path):
    method = ThreeCandidates()
    plan = _plan(toy_pairs, tmp_path / "out", selections=("first", "best_score", "oracle"),
                 prebuilt_methods={"three": method})
    rows = list(iter_benchmark(plan))
    df = load_results(tmp_path / "out")
    assert len(rows) == len(df) == 3 * 5 * 3
    assert list(df.columns) == list(COLUMNS)
    c2 = df[df["case"] == "c2"]
    # mode 2: the three components' points in ONE call; mode 4: one call per box
    m2 = c2[(c2["protocol"] == "mode2") & (c2["selection"] == "first")].iloc[0]
    assert m2["n_calls"] == 1 and len(json.loads(m2["points"])) == 3
    m4 = c2[(c2["protocol"] == "mode4") & (c2["selection"] == "oracle")].iloc[0]
    assert m4["n_calls"] == 3 and len(json.loads(m4["boxes"])) == 3
    # boxes of squares are the squares: candidate 1 united over the boxes is exact
    assert m4["iou"] == 1.0 and m4["candidate"] == 1
    m3 = c2[(c2["protocol"] == "mode3") & (c2["selection"] == "oracle")].iloc[0]
    assert json.loads(m3["boxes"]) == [[3, 3, 16, 16]]
    assert m3["iou"] == pytest.approx(196 / (196 + 64 + 25))
    first = c2[c2["selection"] == "first"]
    assert (first["candidate"] == 0).all() and (first["iou"] == 0).all()
    best = c2[c2["selection"] == "best_score"]
    assert (best["candidate"] == 2).all()
    assert np.allclose(best["iou"], (196 + 64 + 25) / (48 * 56))
    # mode 4 makes one call per component (1, 2, 3 on c0, c1, c2), the others one each
    assert method.images_prepared == 3
    assert len(method.calls) == 5 + 6 + 7
    assert (df["size_fraction"] > 0).all() and df["hd95_mm"].isna().all()


def test_iterative_protocols(toy_pairs, tmp_path):
    method = ThreeCandidates()
    plan = _plan(toy_pairs, tmp_path / "out", modes=(), protocols=("paper", "standard"),
                 clicks=4, selections=("oracle",), target_iou=0.5,
                 prebuilt_methods={"three": method})
    df = load_results(run_benchmark(plan))
    paper = df[(df["protocol"] == "paper") & (df["case"] == "c0")].sort_values("click")
    assert paper["click"].tolist() == [1, 2, 3, 4]
    pts = [json.loads(p) for p in paper["points"]]
    assert [len(p) for p in pts] == [1, 2, 3, 4]  # all clicks re-sent
    assert all(p[:-1] == q for p, q in zip(pts[1:], pts[:-1]))
    gt = np.zeros((48, 56), bool)
    gt[5:17, 5:17] = True
    for x, y, lab in pts[-1]:
        assert lab == int(gt[y, x])  # a click is positive exactly when it falls on the object
    # standard: stops as soon as the target is reached, feeds the previous logits back
    std = df[df["protocol"] == "standard"]
    for _, run in std.groupby("case"):
        ious = run.sort_values("click")["iou"].tolist()
        assert all(v < 0.5 for v in ious[:-1])
        assert ious[-1] >= 0.5 or len(ious) == 4
    fed = [p.mask_logits is not None for p in method.calls]
    assert any(fed)
    # standard clicks never repeat a pixel
    for _, run in std.groupby("case"):
        last = json.loads(run.sort_values("click")["points"].iloc[-1])
        assert len({(x, y) for x, y, _ in last}) == len(last)


def test_resume_gives_the_same_table_as_an_uninterrupted_run(toy_pairs, tmp_path, shared_data):
    data = shared_data / "png_pairs" / "fetal_head_us"
    kw = dict(methods=("region_growing",), modes=(1, 2, 3, 4, 5), protocols=("paper",),
              clicks=3, max_cases=3, seed=7)
    full = run_benchmark(BenchmarkPlan(data=data, out_dir=tmp_path / "full", **kw))
    part_dir = tmp_path / "part"
    gen = iter_benchmark(BenchmarkPlan(data=data, out_dir=part_dir, **kw))
    for _ in range(7):
        next(gen)
    gen.close()  # as Ctrl-C or Cancel would leave it
    assert read_manifest(part_dir)["status"] == "interrupted"
    before = (part_dir / "results.csv").read_bytes()
    with (part_dir / "results.csv").open("ab") as fh:
        fh.write(b"fetal_head_us,fetal_head_us,1,009_HC,0,region_gr")  # killed mid-write
    run_benchmark(BenchmarkPlan(data=data, out_dir=part_dir, resume=True, **kw))
    after = (part_dir / "results.csv").read_bytes()
    assert after.startswith(before)  # nothing that was written changed
    assert read_manifest(part_dir)["status"] == "complete"
    a, b = load_results(full), load_results(part_dir)
    timing = ["seconds", "prepare_seconds"]
    key = ["case", "protocol", "click", "selection"]
    a = a.drop(columns=timing).sort_values(key).reset_index(drop=True)
    b = b.drop(columns=timing).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    # resuming a complete run does nothing
    rows = list(iter_benchmark(BenchmarkPlan(data=data, out_dir=part_dir, resume=True, **kw)))
    assert rows == []


def test_existing_folder_needs_resume_and_same_options(toy_pairs, tmp_path):
    kw = dict(prebuilt_methods={"three": ThreeCandidates()}, modes=(5,))
    run_benchmark(_plan(toy_pairs, tmp_path / "o", **kw))
    with pytest.raises(DatasetError, match="--resume"):
        run_benchmark(_plan(toy_pairs, tmp_path / "o", **kw))
    with pytest.raises(DatasetError, match="seed"):
        run_benchmark(_plan(toy_pairs, tmp_path / "o", resume=True, **{**kw, "seed": 4}))


def test_cancel_and_progress(toy_pairs, tmp_path):
    cancel = threading.Event()
    seen = []

    def on_progress(p):
        seen.append(p)
        if p.images_done == 1:
            cancel.set()

    plan = _plan(toy_pairs, tmp_path / "o", prebuilt_methods={"three": ThreeCandidates()},
                 modes=(3, 5))
    rows = list(iter_benchmark(plan, on_progress=on_progress, cancel=cancel))
    assert len(rows) == 2 * 2  # one image, two modes, first + oracle
    assert read_manifest(tmp_path / "o")["status"] == "interrupted"
    assert seen[0].cases_total == 3 and seen[-1].rows_written == 4


def test_unreadable_case_is_skipped_and_listed(toy_pairs, tmp_path):
    (toy_pairs / "images" / "c1.png").write_bytes(b"not a png")
    plan = _plan(toy_pairs, tmp_path / "o", prebuilt_methods={"three": ThreeCandidates()},
                 modes=(5,))
    df = load_results(run_benchmark(plan))
    assert sorted(df["case"].unique()) == ["c0", "c2"]
    skipped = pd.read_csv(tmp_path / "o" / "skipped.csv")
    assert skipped["path"].str.endswith("c1.png").any()


def test_jitter_repeats_and_reopening_a_folder(toy_pairs, tmp_path):
    from app.core.benchmark import open_case, plan_from_manifest

    kw = dict(prebuilt_methods={"three": ThreeCandidates()}, modes=(3,), jitter=0.1,
              repeats=2, selections=("oracle",))
    out = tmp_path / "o"
    gen = iter_benchmark(_plan(toy_pairs, out, **kw))
    next(gen)
    gen.close()
    plan = plan_from_manifest(out, prebuilt_methods={"three": ThreeCandidates()})
    assert plan.resume and plan.jitter == 0.1 and plan.repeats == 2 and plan.modes == (3,)
    df = load_results(run_benchmark(plan))
    assert len(df) == 3 * 2 and sorted(df["repeat"].unique()) == [0, 1]
    c0 = df[df["case"] == "c0"].sort_values("repeat")
    boxes = [json.loads(b)[0] for b in c0["boxes"]]
    assert boxes[0] != boxes[1] and boxes[0] != [5, 5, 16, 16]  # jittered, per repeat
    shown = open_case(out, c0.iloc[0])
    assert shown["gt"].sum() == 144 and shown["image"].shape == (48, 56)
    assert shown["prediction"] is not None and shown["prediction"].shape == (48, 56)
    assert shown["boxes"] == [boxes[0]]


class BoxesOnly(ThreeCandidates):
    """Refuses point-only prompts, as a plug-in for a box-only model might."""

    name = "boxes_only"

    def predict(self, state, prompt, multimask=True):
        from app.core.models.base import PromptNotSupportedError

        if prompt.box_xyxy is None:
            raise PromptNotSupportedError("boxes_only takes boxes only")
        return super().predict(state, prompt, multimask)


def test_refused_prompts_are_recorded_not_fatal(toy_pairs, tmp_path):
    plan = BenchmarkPlan(data=toy_pairs, out_dir=tmp_path / "o", methods=("boxes_only",),
                         modes=(1, 5), protocols=("paper",), clicks=3, selections=("first",),
                         prebuilt_methods={"boxes_only": BoxesOnly()})
    df = load_results(run_benchmark(plan))
    refused = df[df["protocol"].isin(["mode1", "paper"])]
    assert len(refused) == 3 + 3  # one row per case and prompt group, then the run stops
    assert refused["iou"].isna().all() and (~refused["prompt_supported"]).all()
    assert refused["note"].str.contains("boxes only").all()
    assert df[df["protocol"] == "mode5"]["iou"].notna().all()


def test_cosmos_strategies_are_one_group_per_repeat_with_candidates(toy_pairs, tmp_path):
    """A COSMOS strategy: one call with all its points (and box), a row per selection in one
    group, the K candidates saved once; iterative rows keep every click's mask."""
    from app.core.benchmark.datasets import discover, iter_images
    from app.core.benchmark.runner import _Run, _run_clicks

    method = ThreeCandidates()
    out = tmp_path / "o"
    plan = _plan(toy_pairs, out, modes=(), protocols=("cosmos-box-centroid", "cosmos-2pos1neg",
                                                      "paper"),
                 clicks=2, selections=("first", "oracle"), jitter=0.05, repeats=2,
                 prebuilt_methods={"three": method})
    df = load_results(run_benchmark(plan))
    cos = df[df["protocol"].str.startswith("cosmos-")]
    assert len(cos) == 3 * 2 * 2 * 2 and (cos["click"] == 0).all()
    assert (cos.groupby("group").size() == 2).all()  # both selections in one group
    c0 = cos[(cos["case"] == "c0") & (cos["protocol"] == "cosmos-2pos1neg")]
    for _, row in c0.iterrows():
        pts = json.loads(row["points"])
        assert [p[2] for p in pts] == [1, 1, 0] and row["n_calls"] == 1
        assert json.loads(row["candidate_scores"]) == pytest.approx([0.1, 0.5, 0.9])
        files = json.loads(row["candidates_file"])
        assert len(files) == 3 and all((out / f).is_file() for f in files)
    bc = cos[(cos["case"] == "c0") & (cos["protocol"] == "cosmos-box-centroid")]
    assert len({r for r in bc["boxes"]}) == 2  # jittered differently per repeat
    # mask of every click of the iterative runs
    paper = df[df["protocol"] == "paper"]
    assert paper["mask_file"].str.len().gt(0).all()
    assert paper["mask_file"].map(lambda f: (out / f).is_file()).all()
    # the difficulty factors of a square, on every row
    sq = df[df["case"] == "c0"]
    # a 12 px square: 1.09 by the Crofton perimeter (4/pi = 1.27 for an ideal square)
    assert (sq["n_components"] == 1).all() and sq["boundary_complexity"].between(1.05, 1.3).all()
    assert (sq["contrast"] > 3).all()
    # callers looping over protocols x selections (app.core.benchmark.evaluate) get the rows
    # of that selection, identical to the run's
    run = _Run(_plan(toy_pairs, tmp_path / "p", modes=(), protocols=("cosmos-2pos1neg",),
                     jitter=0.05, repeats=2, save_masks=False), None)
    ds = discover(toy_pairs).datasets[0]
    sample = next(iter(iter_images(next(c for c in ds.cases if c.case == "c0"), [1])))
    rows = _run_clicks(run, ThreeCandidates(), sample.image, sample, 1, ds.tasks[0].name,
                       "cosmos-2pos1neg", 1, "oracle", 0.0)
    want = c0[(c0["repeat"] == 1) & (c0["selection"] == "oracle")].iloc[0]
    assert len(rows) == 1 and rows[0]["points"] == want["points"]
    assert rows[0]["iou"] == pytest.approx(want["iou"])


def test_everything_options_in_the_manifest_round_trip(toy_pairs, tmp_path):
    """The manifest keeps the explicit everything-mode filters apart from each model's
    effective set; a plan rebuilt from it (the dock's resume) has the same digest. A plan
    without everything mode keeps the digest form of earlier runs (full defaults)."""
    from app.core.benchmark import plan_from_manifest
    from app.core.everything import DEFAULT_OPTIONS, options_for

    kw = dict(prebuilt_methods={"three": ThreeCandidates()}, modes=(), grids=(16,),
              everything_options={"box_nms_thresh": "0.5"})
    out = run_benchmark(_plan(toy_pairs, tmp_path / "o", **kw))
    options = read_manifest(out)["options"]
    assert options["everything_options"] == {"box_nms_thresh": 0.5}
    assert options["everything_effective"] == {}  # "three" is no registry model
    plan = plan_from_manifest(out, prebuilt_methods={"three": ThreeCandidates()})
    assert plan.everything_options == {"box_nms_thresh": 0.5}
    assert plan.digest() == read_manifest(out)["plan_digest"]
    both = BenchmarkPlan(data=toy_pairs, out_dir=tmp_path / "x", grids=(16,), modes=(),
                         methods=("litemedsam_points", "sam_vit_b", "region_growing"),
                         everything_options={"stability_score_thresh": 0.9})
    eff = both.options()["everything_effective"]
    assert sorted(eff) == ["litemedsam_points", "sam_vit_b"]
    assert eff["sam_vit_b"] == {**DEFAULT_OPTIONS, "stability_score_thresh": 0.9}
    assert eff["litemedsam_points"] == options_for("litemedsam_points",
                                                   {"stability_score_thresh": 0.9})
    plain = BenchmarkPlan(data=toy_pairs, out_dir=tmp_path / "y", modes=(1,),
                          methods=("region_growing",))
    assert plain.options()["everything_options"] == DEFAULT_OPTIONS
    assert "everything_effective" not in plain.options()
