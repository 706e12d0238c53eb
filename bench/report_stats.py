"""Time the report's statistics (case bootstrap, paired tests, Spearman) on a large results table.

    python bench/report_stats.py [--cases 2000] [--slices 5] [--methods 3] [--n-boot 2000]

The table is synthetic in its values (IoUs drawn around a per-case mean, factors drawn per
object) but has the shape of a real run: cases x slices x methods x two modes and a 5-click
protocol. Prints seconds per table of :mod:`app.core.benchmark.tables` and for
:func:`app.core.benchmark.report.summarize`, and the width of a bootstrap interval over cases
against one that (wrongly) treats slices as independent.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def build(n_cases: int, n_slices: int, n_methods: int, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    case_mean = rng.uniform(0.4, 0.95, n_cases)
    cols: dict[str, list] = {k: [] for k in (
        "dataset", "task", "label", "case", "slice", "method", "protocol", "repeat", "click",
        "selection", "iou", "dice", "hd95_mm", "nsd", "seconds", "prompt_supported", "note",
        "size_fraction", "boundary_complexity", "curvature", "contrast", "n_components")}
    size = rng.lognormal(-4, 1, (n_cases, n_slices))
    for m in range(n_methods):
        for proto, clicks in (("mode1", [0]), ("mode3", [0]), ("paper", [1, 2, 3, 4, 5])):
            for k in clicks:
                iou = np.clip(case_mean[:, None] + 0.05 * m + 0.02 * k
                              + rng.normal(0, 0.08, (n_cases, n_slices)), 0, 1)
                n = n_cases * n_slices
                cols["dataset"] += ["synthetic"] * n
                cols["task"] += ["organ"] * n
                cols["label"] += [1] * n
                cols["case"] += [f"c{c:06d}:z{z}" for c in range(n_cases)
                                 for z in range(n_slices)]
                cols["slice"] += [z for _ in range(n_cases) for z in range(n_slices)]
                cols["method"] += [f"method{m}"] * n
                cols["protocol"] += [proto] * n
                cols["repeat"] += [0] * n
                cols["click"] += [k] * n
                cols["selection"] += ["first"] * n
                cols["iou"] += list(iou.ravel())
                cols["dice"] += list((2 * iou / (1 + iou)).ravel())
                cols["hd95_mm"] += [np.nan] * n
                cols["nsd"] += [np.nan] * n
                cols["seconds"] += [0.1] * n
                cols["prompt_supported"] += [True] * n
                cols["note"] += [""] * n
                cols["size_fraction"] += list(size.ravel())
                cols["boundary_complexity"] += list(1 + rng.gamma(2, 0.2, n))
                cols["curvature"] += list(rng.gamma(2, 0.02, n))
                cols["contrast"] += list(rng.gamma(2, 0.5, n))
                cols["n_components"] += list(rng.integers(1, 4, n))
    return pd.DataFrame(cols)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--slices", type=int, default=5)
    ap.add_argument("--methods", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()

    from app.core.benchmark import tables
    from app.core.benchmark.report import summarize
    from app.core.benchmark.stats import bootstrap_ci, case_ids

    t = time.perf_counter()
    df = build(args.cases, args.slices, args.methods)
    print(f"table: {len(df)} rows ({args.cases} cases x {args.slices} slices x "
          f"{args.methods} methods x 7 prompt rows), built in {time.perf_counter() - t:.1f} s")
    for name, fn in (("summarize", lambda: summarize(df, n_boot=args.n_boot)),
                     ("paired_table", lambda: tables.paired_table(df, n_boot=args.n_boot)),
                     ("strata_table", lambda: tables.strata_table(df, n_boot=args.n_boot)),
                     ("difficulty_table",
                      lambda: tables.difficulty_table(df, n_boot=args.n_boot))):
        t = time.perf_counter()
        out = fn()
        print(f"{name:17s} {time.perf_counter() - t:7.2f} s  ({len(out)} rows, "
              f"n_boot {args.n_boot})")
    g = df[(df["method"] == "method0") & (df["protocol"] == "mode1")]
    _, lo, hi = bootstrap_ci(g["iou"], case_ids(g), n_boot=args.n_boot)
    _, lo_n, hi_n = bootstrap_ci(g["iou"], np.arange(len(g)), n_boot=args.n_boot)
    print(f"95 % interval of mean IoU: resampling cases {hi - lo:.4f} wide, slices as if "
          f"independent {hi_n - lo_n:.4f} wide (x{(hi - lo) / (hi_n - lo_n):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
