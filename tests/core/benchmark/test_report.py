"""Summary and NoC tables against hand computation on a hand-made results table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.core.benchmark.figures import fig_clicks, mean_ci
from app.core.benchmark.report import noc_table, summarize
from app.core.benchmark.stats import bootstrap_ci


def _rows():
    base = dict(dataset="d", task="t", method="m", selection="first", repeat=0, dice=0.5,
                hd95_mm=float("nan"), nsd=float("nan"), seconds=0.1, prompt_supported=True,
                note="")
    rows = []
    # case a (standard): 0.5, 0.82, 0.91 -> stops; case b: 0.3, 0.4, 0.5, 0.6 (budget 4)
    for case, ious in (("a", [0.5, 0.82, 0.91]), ("b", [0.3, 0.4, 0.5, 0.6])):
        for k, v in enumerate(ious, 1):
            rows.append({**base, "case": case, "protocol": "standard", "click": k, "iou": v})
    for case, v in (("a", 0.6), ("b", 0.8), ("c", 1.0)):
        rows.append({**base, "case": case, "protocol": "mode5", "click": 0, "iou": v})
    return pd.DataFrame(rows)


def test_noc_by_hand():
    t = noc_table(_rows(), max_clicks={"standard": 4}).iloc[0]
    assert t["runs"] == 2 and t["max_clicks"] == 4
    assert t["noc80"] == pytest.approx((2 + 4) / 2) and t["fail80"] == 1
    assert t["noc90"] == pytest.approx((3 + 4) / 2) and t["fail90"] == 1
    # without the budget, the largest click seen (4) is used
    assert noc_table(_rows()).iloc[0]["noc85"] == pytest.approx((3 + 4) / 2)


def test_summary_by_hand():
    s = summarize(_rows())
    m5 = s[s["protocol"] == "mode5"].iloc[0]
    assert m5["n"] == 3 and m5["n_cases"] == 3 and m5["iou_mean"] == pytest.approx(0.8)
    # the interval is the case bootstrap of the three cases' IoUs (0.6, 0.8, 1.0), inside
    # the range of the values
    est, lo, hi = bootstrap_ci([0.6, 0.8, 1.0], ["d/a", "d/b", "d/c"])
    assert (m5["iou_ci_low"], m5["iou_ci_high"]) == pytest.approx((lo, hi))
    assert 0.6 <= lo < 0.8 < hi <= 1.0
    # one value is one case: no interval
    assert mean_ci([0.5])[0] == 0.5 and np.isnan(mean_ci([0.5])[1])


def test_click_curve_carries_the_last_iou_after_a_stop():
    fig = fig_clicks(_rows(), "standard")
    line = fig.axes[0].get_lines()[0]
    # click 4: case a kept 0.91 after stopping at click 3, case b 0.6
    assert line.get_ydata()[-1] == pytest.approx((0.91 + 0.6) / 2)
