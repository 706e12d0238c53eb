"""Issue 16's report: analysis tables and figures 6, 7, 9 from a run folder.

The run folder is built here from real ultrasound images and their ground truth: the
"predictions" are the ground truth eroded, dilated, halved or joined by a spurious blob, so
every metric in the rows is computed from the masks written, and the tables and figure titles
can be checked against hand computations. No model runs (the runner's own rows are checked in
the runner's tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
US = DATA / "png_pairs" / "fetal_head_us"
CASES = ("006_HC", "033_HC", "060_HC", "088_HC")


def _iou(a, b):
    return float((a & b).sum() / (a | b).sum())


def _dice(a, b):
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _write(path: Path, array: np.ndarray) -> str:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import cv2

    if not all((US / "images" / f"{c}.png").is_file() for c in CASES):
        pytest.skip("shared/data/png_pairs/fetal_head_us is missing")
    out = tmp_path_factory.mktemp("analysis_run")
    rows = []
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    for ci, case in enumerate(CASES):
        image, label = US / "images" / f"{case}.png", US / "masks" / f"{case}.png"
        gt = cv2.imread(str(label), cv2.IMREAD_GRAYSCALE) > 127
        h, w = gt.shape
        ys, xs = np.nonzero(gt)
        cx, cy = int(xs.mean()), int(ys.mean())
        base = dict(dataset="fetal_head_us", task="fetal_head_us", label=1, case=case,
                    slice=0, repeat=0, hd95_mm=np.nan, nsd=np.nan, seconds=0.5,
                    prompt_supported=True, note="", boxes="[]", image_path=str(image),
                    label_path=str(label), height=h, width=w, candidate_scores="",
                    candidates_file="", size_fraction=float(gt.mean()),
                    boundary_complexity=1.0 + 0.1 * ci, curvature=0.01 * (ci + 1),
                    contrast=2.0 - 0.3 * ci, n_components=1, mask_file="")
        # iterative: a prediction eroded less with each click (click 3 is a negative click)
        pts = []
        for method, slack in (("sam_like", 0), ("region_growing", 2)):
            pts = [[cx, cy, 1]]
            for k in range(1, 5):
                if k == 2:
                    pts.append([int(xs.min()) + 3, cy, 1])
                elif k == 3:
                    pts.append([min(w - 1, int(xs.max()) + 20), cy, 0])
                elif k == 4:
                    pts.append([cx, int(ys.min()) + 3, 1])
                pred = cv2.erode(gt.astype(np.uint8), kernel, iterations=(5 - k) * 2 + slack
                                 + ci) > 0
                rel = f"masks/it/{method}_{case}_c{k}.png"
                _write(out / rel, pred.astype(np.uint8) * 255)
                rows.append({**base, "method": method, "protocol": "paper", "click": k,
                             "selection": "first", "iou": _iou(pred, gt),
                             "dice": _dice(pred, gt), "points": json.dumps(pts),
                             "mask_file": rel})
        # mode 1 with three candidates: the truth, dilated, the left half
        half = gt.copy()
        half[:, cx:] = False
        cands = [cv2.dilate(gt.astype(np.uint8), kernel, iterations=4) > 0, gt, half]
        files = []
        for k, c in enumerate(cands):
            rel = f"masks/cands/{case}_k{k}.png"
            _write(out / rel, c.astype(np.uint8) * 255)
            files.append(rel)
        scores = [0.71, 0.93 - 0.01 * ci, None]  # the third has a NaN predicted IoU
        for method in ("sam_like", "region_growing"):
            first = cands[1] if method == "sam_like" else cands[0]
            rows.append({**base, "method": method, "protocol": "mode1", "click": 0,
                         "selection": "first", "iou": _iou(first, gt), "dice": _dice(first, gt),
                         "points": json.dumps([[cx, cy, 1]]),
                         "candidate_scores": json.dumps(scores) if method == "sam_like"
                         else "", "candidates_file": json.dumps(files)
                         if method == "sam_like" else ""})
        # COSMOS centroid with 3 jittered repeats: IoU drops with the repeat number
        for r in range(3):
            pred = cv2.erode(gt.astype(np.uint8), kernel, iterations=2 * r * (ci + 1)) > 0
            rows.append({**base, "method": "sam_like", "protocol": "cosmos-centroid",
                         "click": 0, "repeat": r, "selection": "first", "iou": _iou(pred, gt),
                         "dice": _dice(pred, gt), "points": json.dumps([[cx, cy, 1]])})
        # everything mode at 16, 32, 64: the head (eroded less with a denser grid) + a blob
        for g, it in ((16, 6), (32, 3), (64, 1)):
            head = cv2.erode(gt.astype(np.uint8), kernel, iterations=it) > 0
            lab = np.zeros(gt.shape, np.uint16)
            lab[head] = 1
            n_pred = 1
            if g >= 32:
                lab[5:25, 5:25] = 2
                n_pred = 2
            rel = f"masks/every/{case}_g{g}.png"
            _write(out / rel, lab)
            iou, dice = _iou(head, gt), _dice(head, gt)
            matched = int(iou >= 0.5)
            for sel in ("match_dice", "match_iou", "hungarian"):
                hung = sel == "hungarian"
                rows.append({**base, "method": "sam_like", "protocol": f"everything{g}",
                             "click": 0, "selection": sel, "iou": iou, "dice": dice,
                             "points": "[]", "mask_file": rel, "n_pred": n_pred,
                             "matched": matched if hung else 1,
                             "precision": matched / n_pred if hung else np.nan,
                             "recall": matched / 1 if hung else np.nan,
                             "f1": (2 * matched / (n_pred + 1)) if hung else np.nan,
                             "seconds": 2.0 * g / 16})
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    return out


def test_report_has_the_new_tables_and_figures(run_dir):
    from app.core.benchmark.report import write_report

    html = write_report(run_dir).read_text(encoding="utf-8")
    for title in ("Everything mode (everything.csv)", "Paired differences between methods",
                  "IoU by modality", "What makes an object hard", "Randomness test",
                  "(Fig. 6)", "(Fig. 7)", "(Fig. 9)", "difficulty factors"):
        assert title in html, title
    for stem in ("fig6_iterative", "fig7_ambiguity_sam_like", "fig9_everything_sam_like",
                 "fig_difficulty"):
        assert (run_dir / "figures" / f"{stem}.png").stat().st_size > 10_000
    assert "Figures left out" not in html

    ev = pd.read_csv(run_dir / "everything.csv").set_index("grid")
    df = pd.read_csv(run_dir / "results.csv")
    g64 = df[(df["protocol"] == "everything64") & (df["selection"] == "match_dice")]
    assert ev.loc[64, "match_dice"] == pytest.approx(g64["dice"].mean())
    assert ev.loc[64, "images"] == len(CASES) and ev.loc[64, "objects"] == len(CASES)
    # one object and two masks per image at 32 and 64 points per side: precision 1/2
    assert ev.loc[64, "precision"] == pytest.approx(0.5)
    assert ev.loc[16, "precision"] == pytest.approx(1.0) and ev.loc[16, "found"] == 1.0
    assert ev.loc[64, "seconds_per_image"] == pytest.approx(8.0)

    paired = pd.read_csv(run_dir / "paired.csv")
    p1 = paired[paired["protocol"] == "mode1"].iloc[0]
    # the SAM-family method goes first against the classical one
    assert (p1["method_a"], p1["method_b"], p1["kind"]) == ("sam_like", "region_growing",
                                                           "SAM vs competitor")
    m1 = df[df["protocol"] == "mode1"]
    diff = (m1[m1["method"] == "sam_like"]["iou"].to_numpy()
            - m1[m1["method"] == "region_growing"]["iou"].to_numpy())
    assert p1["diff"] == pytest.approx(diff.mean()) and p1["n_cases"] == len(CASES)
    last = paired[paired["protocol"] == "paper (last click)"].iloc[0]
    assert last["diff"] > 0  # less erosion for sam_like at every click

    rnd = pd.read_csv(run_dir / "randomness.csv").iloc[0]
    c = df[df["protocol"] == "cosmos-centroid"]
    per_case_sd = c.groupby("case")["iou"].std(ddof=1)
    assert rnd["repeats"] == 3 and rnd["std_mean"] == pytest.approx(per_case_sd.mean())
    assert rnd["iou_mean"] == pytest.approx(c.groupby("case")["iou"].mean().mean())

    from scipy.stats import spearmanr

    diff_t = pd.read_csv(run_dir / "difficulty.csv")
    row = diff_t[(diff_t["method"] == "sam_like") & (diff_t["protocol"] == "paper (last click)")
                 & (diff_t["factor"] == "contrast")].iloc[0]
    last4 = df[(df["method"] == "sam_like") & (df["protocol"] == "paper") & (df["click"] == 4)]
    assert row["rho"] == pytest.approx(spearmanr(last4["contrast"], last4["iou"]).statistic)
    assert row["n_cases"] == len(CASES)


def test_ambiguity_panels_are_ordered_by_predicted_iou(run_dir):
    from app.core.benchmark.figures import fig_ambiguity
    from app.core.benchmark.results import load_results

    df = load_results(run_dir)
    fig = fig_ambiguity(df, run_dir, "sam_like")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    # every case has the same score spread; the first case by name is shown
    assert titles[0].startswith("1st: predicted 0.93, IoU 1.00")
    assert titles[1].startswith("2nd: predicted 0.71")
    assert titles[2].startswith("3rd: predicted –")
    assert fig_ambiguity(df, run_dir, "region_growing") is None


def test_iterative_and_everything_figures(run_dir):
    from app.core.benchmark.figures import fig_everything, fig_iterative
    from app.core.benchmark.results import load_results

    df = load_results(run_dir)
    fig = fig_iterative(df, run_dir)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 2 * 4  # two methods x four clicks
    assert [p.get_title().split(":")[0] for p in panels[:4]] == [
        "1 click", "2 clicks", "3 clicks", "4 clicks"]
    # the negative click is drawn from the third click on
    assert sum(line.get_marker() == "X" for line in panels[2].get_lines()) == 1
    assert sum(line.get_marker() == "X" for line in panels[1].get_lines()) == 0

    fig9 = fig_everything(df, run_dir, "sam_like")
    titles = [ax.get_title() for ax in fig9.axes if ax.get_title()]
    assert [t.split(":")[0] for t in titles] == ["16×16 points", "32×32 points", "64×64 points"]
    assert "1 mask," in titles[0] and "2 masks" in titles[2]


def test_figures_left_out_with_a_reason_when_masks_are_missing(run_dir, tmp_path):
    import shutil

    from app.core.benchmark.report import write_report

    bare = tmp_path / "bare"
    bare.mkdir()
    df = pd.read_csv(run_dir / "results.csv")
    # the rows without their masks: the example figures cannot be drawn
    df.to_csv(bare / "results.csv", index=False)
    html = write_report(bare).read_text(encoding="utf-8")
    assert "Figures left out" in html
    assert "Fig. 6" in html and "no run has a saved mask for every click" in html
    assert not (bare / "figures" / "fig6_iterative.png").exists()
    # only modes and clicks, nothing of issue 16: the report still works and says why
    plain = tmp_path / "plain"
    plain.mkdir()
    df[df["protocol"].isin(["paper", "mode1"])].drop(
        columns=["candidates_file", "candidate_scores", "n_pred", "matched", "precision",
                 "recall", "f1", "boundary_complexity", "curvature", "contrast",
                 "n_components"]).to_csv(plain / "results.csv", index=False)
    shutil.copytree(run_dir / "masks", plain / "masks")
    html = write_report(plain).read_text(encoding="utf-8")
    assert "no everything-mode rows" in html and "no saved candidates" in html
    assert (plain / "figures" / "fig6_iterative.png").is_file()
