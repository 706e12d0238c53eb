"""Case bootstrap, paired differences, Holm and Spearman: by hand and on a real run's rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.core.benchmark.stats import (
    bootstrap_ci,
    case_ids,
    holm,
    paired_difference,
    spearman_ci,
)

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def test_slices_of_one_case_move_together():
    rng = np.random.default_rng(5)
    case_values = rng.uniform(0.3, 0.95, 12)
    # two slices per case, both with the case's value
    values = np.repeat(case_values, 2)
    cases = np.repeat([f"c{i:02d}" for i in range(12)], 2)
    per_slice = bootstrap_ci(values, cases, seed=3)
    per_case = bootstrap_ci(case_values, [f"c{i:02d}" for i in range(12)], seed=3)
    assert per_slice == pytest.approx(per_case, abs=1e-12)
    # the same rows taken as 24 independent images give a narrower (wrong) interval
    naive = bootstrap_ci(values, np.arange(24), seed=3)
    assert naive[2] - naive[1] < 0.85 * (per_case[2] - per_case[1])
    # the generic path (any statistic) draws the same cases
    med_slice = bootstrap_ci(values, cases, statistic=np.median, n_boot=400, seed=3)
    med_case = bootstrap_ci(case_values, [f"c{i:02d}" for i in range(12)],
                            statistic=np.median, n_boot=400, seed=3)
    assert med_slice == pytest.approx(med_case, abs=1e-12)


def test_bootstrap_reproducible_from_seed_and_degenerate_cases():
    rng = np.random.default_rng(0)
    v = rng.uniform(0, 1, 40)
    c = rng.integers(0, 10, 40)
    assert bootstrap_ci(v, c, seed=7) == bootstrap_ci(v, c, seed=7)
    assert bootstrap_ci(v, c, seed=7) != bootstrap_ci(v, c, seed=8)
    est, lo, hi = bootstrap_ci(v, c)
    assert est == pytest.approx(v.mean()) and lo < est < hi
    # NaN rows are dropped first; one case has no interval; nothing left is all NaN
    with_nan = np.append(v, np.nan)
    assert bootstrap_ci(with_nan, np.append(c, 99))[0] == pytest.approx(v.mean())
    one = bootstrap_ci([0.2, 0.4], ["a", "a"])
    assert one[0] == pytest.approx(0.3) and np.isnan(one[1]) and np.isnan(one[2])
    assert all(np.isnan(bootstrap_ci([np.nan], ["a"])))
    with pytest.raises(ValueError, match="length"):
        bootstrap_ci([1.0, 2.0], ["a"])


def test_holm_against_hand_computation():
    p = [0.01, 0.04, np.nan, 0.03, 0.005]
    # m = 4 finite: sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04
    # = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    adj = holm(p)
    assert adj[4] == pytest.approx(0.02)
    assert adj[0] == pytest.approx(0.03)
    assert adj[3] == pytest.approx(0.06)
    assert adj[1] == pytest.approx(0.06)
    assert np.isnan(adj[2])
    assert holm([0.5, 0.6])[1] == pytest.approx(1.0)  # capped at 1
    assert holm([]).size == 0


def test_spearman_ci_follows_scipy_and_resamples_cases():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, 60)
    y = x + rng.normal(0, 0.3, 60)
    cases = np.repeat(np.arange(20), 3)
    r = spearman_ci(x, y, cases, n_boot=500, seed=2)
    assert r["rho"] == pytest.approx(spearmanr(x, y).statistic)
    assert r["low"] < r["rho"] < r["high"] and r["low"] > 0
    assert r["n_cases"] == 20 and r["n_rows"] == 60
    assert spearman_ci(x, y, cases, n_boot=500, seed=2) == r
    flat = spearman_ci(np.ones(10), np.arange(10.0), np.arange(10))
    assert np.isnan(flat["rho"])


@pytest.fixture(scope="module")
def real_rows(tmp_path_factory):
    """IoUs of a real run: region growing, modes 1 and 3, on real ultrasound/X-ray pairs."""
    if not (DATA / "png_pairs").is_dir():
        pytest.skip("shared/data/png_pairs is missing")
    from app.core.benchmark import BenchmarkPlan, load_results, run_benchmark

    out = tmp_path_factory.mktemp("run")
    run_benchmark(BenchmarkPlan(data=DATA / "png_pairs", out_dir=out,
                                methods=["region_growing"], modes=[1, 3], protocols=[],
                                max_cases=12, save_masks=False))
    df = load_results(out)
    d = df[df["protocol"] == "mode3"].sort_values(["dataset", "case"]).reset_index(drop=True)
    assert len(d) >= 20 and d["iou"].std() > 0.05  # a real spread of IoUs
    return d


def test_paired_difference_detects_a_planted_shift_and_not_a_null(real_rows):
    iou = real_rows["iou"].to_numpy(float)
    cases = case_ids(real_rows)
    rng = np.random.default_rng(11)
    noise = rng.normal(0, 0.05, iou.size)
    planted = paired_difference(iou + 0.1 + noise, iou, cases)
    assert planted["n_cases"] == len(set(cases))
    assert planted["low"] < 0.1 < planted["high"] and planted["low"] > 0
    assert planted["p_wilcoxon"] < 1e-3
    # null: the same rows against themselves with the pairs randomly swapped
    other = iou + rng.normal(0, 0.05, iou.size)
    swap = rng.random(iou.size) < 0.5
    a, b = np.where(swap, other, iou), np.where(swap, iou, other)
    null = paired_difference(a, b, cases)
    assert null["low"] < 0 < null["high"]
    assert null["p_wilcoxon"] > 0.05
    # a permutation of the partner rows breaks the pairing: the shift is still found
    # but the interval is wider than with the true pairs
    perm = paired_difference(iou[rng.permutation(iou.size)] + 0.1, iou, cases)
    assert perm["high"] - perm["low"] > planted["high"] - planted["low"]
    # identical methods: no non-zero difference, no p-value
    same = paired_difference(iou, iou, cases)
    assert same["mean_diff"] == 0 and np.isnan(same["p_wilcoxon"])


def test_spearman_resamples_equal_the_explicit_concatenated_resamples():
    from scipy.stats import spearmanr

    from app.core.benchmark import stats

    rng = np.random.default_rng(4)
    sizes = rng.integers(1, 5, 15)  # uneven cases: 1-4 slices each
    # case labels sort as their numbers (the draws index cases in sorted label order)
    cases = np.repeat([f"c{i:02d}" for i in range(15)], sizes)
    x = np.round(rng.uniform(0, 1, cases.size), 1)  # ties
    y = x + rng.normal(0, 0.4, cases.size)
    got = spearman_ci(x, y, cases, n_boot=300, seed=9)
    draws = next(stats._draws(np.random.default_rng(9), 15, 300))
    rows_of = [np.flatnonzero(cases == f"c{c:02d}") for c in range(15)]
    boot = []
    for idx in draws:
        rows = np.concatenate([rows_of[i] for i in idx])
        boot.append(spearmanr(x[rows], y[rows]).statistic)
    lo, hi = np.quantile(np.asarray(boot)[np.isfinite(boot)], [0.025, 0.975])
    assert (got["low"], got["high"]) == pytest.approx((lo, hi), abs=1e-9)


def test_case_ids_join_the_slices_of_a_volume():
    import pandas as pd

    df = pd.DataFrame({"dataset": ["msd", "msd", "msd", "us"],
                       "case": ["p1:z3", "p1:z4", "p2:z3", "p1"]})
    assert list(case_ids(df)) == ["msd/p1", "msd/p1", "msd/p2", "us/p1"]


def test_paired_table_holm_across_tasks_and_strata_by_hand():
    import pandas as pd
    from scipy.stats import wilcoxon

    from app.core.benchmark.tables import paired_table, strata_table

    rng = np.random.default_rng(2)
    rows = []
    for task, shift in (("t1", 0.1), ("t2", 0.0)):
        for c in range(9):
            base = rng.uniform(0.4, 0.8)
            for z in range(2):  # two slices per case
                b = base + rng.normal(0, 0.02)
                a = b + shift + rng.normal(0, 0.03)
                for m, v in (("region_growing", b), ("litemedsam", a)):
                    rows.append(dict(dataset="d", task=task, label=1, case=f"{task}c{c}:z{z}",
                                     slice=z, method=m, protocol="mode3", repeat=0, click=0,
                                     selection="first", iou=v, size_fraction=0.01 * (c + 1),
                                     n_components=1 + (c % 4)))
    df = pd.DataFrame(rows)
    t = paired_table(df, n_boot=500).set_index("task")
    assert set(t["method_a"]) == {"litemedsam"} and set(t["kind"]) == {"SAM vs competitor"}
    ps = []
    for task in ("t1", "t2"):
        d = df[df["task"] == task].copy()
        d["vol"] = d["case"].str.split(":").str[0]
        per = d.pivot_table(index="vol", columns="method", values="iou", aggfunc="mean")
        ps.append(wilcoxon(per["litemedsam"] - per["region_growing"]).pvalue)
        assert t.loc[task, "n_cases"] == 9 and t.loc[task, "n_rows"] == 18
    assert t.loc["t1", "p_wilcoxon"] == pytest.approx(ps[0])
    lo, hi = sorted(ps)
    # Holm over the two tasks: the smaller p doubled, the larger max(itself, that)
    assert t.loc["t1" if ps[0] < ps[1] else "t2", "p_holm"] == pytest.approx(min(1, 2 * lo))
    assert t.loc["t2" if ps[0] < ps[1] else "t1", "p_holm"] == pytest.approx(
        min(1, max(hi, 2 * lo)))
    assert t.loc["t1", "significant"] and t.loc["t1", "diff_ci_low"] > 0.05
    s = strata_table(df, n_boot=200)
    size = s[(s["method"] == "litemedsam") & (s["stratum"] == "size")]
    assert sorted(size["n_cases"]) == [6, 6, 6]  # 3 sizes per tercile, in each of 2 tasks
    comp = s[(s["method"] == "litemedsam") & (s["stratum"] == "components")]
    # c % 4 = 0 (c = 0, 4, 8), 1 (1, 5), 2 or 3 (2, 3, 6, 7) -> 3, 2, 4 cases x 2 slices x 2 tasks
    assert list(comp["level"]) == ["1", "2", "3+"] and list(comp["n_rows"]) == [12, 8, 16]


def test_spearman_fast_path_keeps_ranks_and_agrees_with_reranking():
    rng = np.random.default_rng(6)
    cases = np.repeat([f"c{i:03d}" for i in range(100)], 4)
    x = np.round(rng.uniform(0, 1, cases.size), 2)
    y = x + rng.normal(0, 0.7, cases.size)
    exact = spearman_ci(x, y, cases, n_boot=1000, rerank=True)
    fast = spearman_ci(x, y, cases, n_boot=1000, rerank=False)
    assert fast["rho"] == exact["rho"]
    assert fast["low"] == pytest.approx(exact["low"], abs=0.01)
    assert fast["high"] == pytest.approx(exact["high"], abs=0.01)
    # a large table takes the fast path by itself
    from app.core.benchmark import stats

    assert cases.size * 1000 < stats.EXACT_SPEARMAN_WORK
    big = np.repeat(np.arange(6000), 2)
    xb = rng.uniform(0, 1, big.size)
    r = spearman_ci(xb, xb + rng.normal(0, 1, big.size), big, n_boot=2000)
    assert r["low"] < r["rho"] < r["high"]


def test_one_case_rule_for_tables_and_rows():
    """The report (tables) and fine-tuning's evaluation (dict rows) resample the same cases:
    a slice's ':z<k>' is dropped, a ':z' inside a case's own name is kept."""
    import pandas as pd

    from app.core.benchmark.evaluate import case_of
    from app.core.benchmark.stats import case_ids

    rows = [{"dataset": "ct", "case": c} for c in
            ("liver:zone2", "liver:zone2:z0", "liver:zone2:z14", "p07", "p07:z3")]
    assert list(case_ids(pd.DataFrame(rows))) == [case_of(r) for r in rows] == [
        "ct/liver:zone2", "ct/liver:zone2", "ct/liver:zone2", "ct/p07", "ct/p07"]
