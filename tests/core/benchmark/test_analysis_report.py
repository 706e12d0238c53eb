"""Issue 16's report: analysis tables and figures 6, 7, 9 from a run folder.

The run folder (:mod:`analysis_run`, next to this file) is built from real ultrasound images
and their ground truth, with predictions made from the ground truth, so the tables and figure
titles can be checked against hand computations. No model runs (the runner's own rows are
checked in the runner's tests).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest


def _builder():
    path = Path(__file__).with_name("analysis_run.py")
    spec = importlib.util.spec_from_file_location("samscope_tests_analysis_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN = _builder()
CASES = RUN.CASES


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    if not RUN.available():
        pytest.skip("shared/data/png_pairs/fetal_head_us is missing")
    return RUN.build_run(tmp_path_factory.mktemp("analysis_run"))


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


def test_difficulty_figure_when_an_interval_misses_its_estimate():
    from app.core.benchmark.figures import fig_difficulty

    # a percentile interval of few cases can lie beside the full-sample rho (a real run did)
    t = pd.DataFrame([dict(method="m", protocol="mode1", selection="first", factor=f,
                           rho=0.5, rho_ci_low=0.6, rho_ci_high=0.9, p=0.1, n_rows=5,
                           n_cases=2) for f in ("size_fraction", "contrast")])
    fig = fig_difficulty(t)
    ax = fig.axes[0]
    assert [tick.get_text() for tick in ax.get_yticklabels()] == [
        "size (fraction of image)", "contrast (object vs ring)"]
    assert fig_difficulty(t.assign(rho=float("nan"))) is None
