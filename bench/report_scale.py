"""Wall time and peak memory of ``load_results`` and ``write_report`` at 10^5 and 10^6 result rows.

    python bench/report_scale.py [--rows 100000,1000000] [--work /tmp/report_scale] [--keep]
                                 [--no-figures]

Builds, per size, a run folder of the real format -- ``results.csv`` appended through
:class:`app.core.benchmark.results.ResultsStore` (the runner's writer: row CRCs, group ids),
``results.parquet`` (or, past 100,000 rows, ``results.parts/``) from
:meth:`ResultsStore.write_parquet`, ``manifest.json`` from
:func:`write_manifest` -- with synthetic values: 2 datasets x 2 tasks, 3 methods (two SAM-family,
one classical), prompt modes 1 and 3 with the ``first`` and ``oracle`` selections and a 5-click
``paper`` protocol, 5 slices per case, points/boxes/paths/candidate scores of realistic length,
no masks kept (a run of this size keeps none). Groups hold up to 1000 rows (the runner's hold a
few; the report does not read them). Each measurement runs in a fresh Python process, so its
peak RSS (``ru_maxrss``) is its own; the imports alone are measured the same way.
A folder is reused when its manifest says it has the asked-for rows (``--keep`` keeps it).

Measured 2026-12-02 on the shared 2-CPU machine (load average 5-7, so times are inflated and
noisy), 99,900 and 1,000,080 rows (CSV 48 / 478 MiB, Parquet 7 / 94 MiB), peak RSS of the
process (imports alone 121 MiB):

=================================  ==================  ===================
                                   10^5 rows            10^6 rows
=================================  ==================  ===================
load_results, full CSV             1.0 s, 292 MiB       12.9 s, 1331 MiB
load_results(ANALYSIS_COLUMNS)     0.1 s, 206 MiB       3.6 s, 660 MiB
write_report before (f59c3c2)      57 s, 446 MiB        1393 s, 2028 MiB
write_report after                 50 s, 385 MiB        275 s, 1031 MiB
=================================  ==================  ===================

Before, the NoC table and Fig. 5's curves looped in Python over every run (time x24 for x10
rows); now the report's time grows x5.5 for x10 rows (fixed costs: drawing the figures).

The report then read the table one (dataset, task) at a time (``iter_task_results``: one pass
partitions it into per-task Parquet files; tables per task; the pooled strata and difficulty
from ~63 bytes per final row). Measured 2026-12-02 (the test suite running beside it, imports
alone 120-145 MiB), ``--tasks 4`` (default) and ``--tasks 28`` (the Mazurowski study's count):

=================================  ==================  ===================
write_report                       10^5 rows            10^6 rows
=================================  ==================  ===================
before, 4 tasks                    50 s, 385 MiB        93 s, 1119 MiB
after, 4 tasks                     17.5-21.7 s, 328-    88-102 s, 677-741 MiB
                                   345 MiB
after, 28 tasks                    36.5-48.6 s, 348-    110-171 s, 612-631 MiB
                                   349 MiB
=================================  ==================  ===================
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("litemedsam", "litemedsam_points", "otsu")
#: (protocol, clicks, selections)
PROMPTS = (("mode1", (0,), ("first", "oracle")), ("mode3", (0,), ("first", "oracle")),
           ("paper", (1, 2, 3, 4, 5), ("first",)))
ROWS_PER_SLICE = len(METHODS) * sum(len(c) * len(s) for _, c, s in PROMPTS)  # 27
TASKS = (("ds0", "liver"), ("ds0", "kidney"), ("ds1", "tumour"), ("ds1", "vessel"))
SLICES = 5


def tasks(n: int) -> tuple[tuple[str, str], ...]:
    """``n`` (dataset, task) pairs: the four above, or two tasks per dataset."""
    return TASKS if n == len(TASKS) else tuple((f"ds{i // 2}", f"task{i}") for i in range(n))


def build(folder: Path, n_rows: int, seed: int = 0, n_tasks: int = len(TASKS)) -> int:
    """Write the run folder; returns the rows written (n_rows rounded to whole cases)."""
    from app.core.benchmark.results import ResultsStore, write_manifest

    rng = np.random.default_rng(seed)
    task_list = tasks(n_tasks)
    per_task = max(1, round(n_rows / (ROWS_PER_SLICE * SLICES * len(task_list))))
    if folder.exists():
        shutil.rmtree(folder)
    store = ResultsStore(folder)
    digest = "5f3a9c0e12b4d7a8"
    written = 0
    gid = 0
    chunk = 200  # cases per group
    for t, (dataset, task) in enumerate(task_list):
        case_mean = rng.uniform(0.4, 0.95, per_task)
        size = rng.lognormal(-4, 1, (per_task, SLICES))
        factors = {"boundary_complexity": 1 + rng.gamma(2, 0.2, (per_task, SLICES)),
                   "curvature": rng.gamma(2, 0.02, (per_task, SLICES)),
                   "contrast": rng.gamma(2, 0.5, (per_task, SLICES)),
                   "n_components": rng.integers(1, 4, (per_task, SLICES))}
        xy = rng.uniform(20, 236, (per_task, SLICES, 6, 2)).round(1)
        for m, method in enumerate(METHODS):
            sam = method != "otsu"
            for proto, clicks, selections in PROMPTS:
                for c0 in range(0, per_task, chunk):
                    cs = range(c0, min(per_task, c0 + chunk))
                    rows = []
                    gid += 1
                    for sel in selections:
                        for k in clicks:
                            for c in cs:
                                for z in range(SLICES):
                                    iou = float(np.clip(case_mean[c] + 0.05 * m + 0.02 * k
                                                        + (0.03 if sel == "oracle" else 0)
                                                        + rng.normal(0, 0.08), 0, 1))
                                    n_pts = k if proto == "paper" else int(proto[-1])
                                    pts = [[float(x), float(y), 1 if i % 3 else 0]
                                           for i, (x, y) in enumerate(xy[c, z, :n_pts])]
                                    case = f"case{c:06d}:z{z}"
                                    scores = rng.uniform(0.5, 1, 3).round(4).tolist()
                                    rows.append({
                                        "dataset": dataset, "task": task, "label": t + 1,
                                        "case": case, "slice": z, "method": method,
                                        "protocol": proto, "repeat": 0, "click": k,
                                        "selection": sel, "iou": iou,
                                        "dice": 2 * iou / (1 + iou),
                                        "hd95_mm": float(rng.gamma(2, 3)),
                                        "nsd": float(np.clip(iou + rng.normal(0, 0.05), 0, 1)),
                                        "nsd_tolerance_mm": 2.0,
                                        "size_fraction": float(size[c, z]),
                                        "points": json.dumps(pts), "boxes": json.dumps(
                                            [[*xy[c, z, 0].tolist(), *xy[c, z, 1].tolist()]]),
                                        "candidate": 0 if sel == "first" else 1,
                                        "score": scores[0] if sam else float("nan"),
                                        "n_calls": 1, "seconds": 0.01, "prepare_seconds": 0.0,
                                        "prompt_supported": True, "note": "",
                                        "height": 256, "width": 256, "spacing_mm": "[1.0, 1.0]",
                                        "image_path": f"/data/{dataset}/imagesTr/{case}.nii.gz",
                                        "label_path": f"/data/{dataset}/labelsTr/{case}.nii.gz",
                                        "mask_file": "", "n_pred": float("nan"),
                                        "matched": float("nan"), "precision": float("nan"),
                                        "recall": float("nan"), "f1": float("nan"),
                                        **{f: float(v[c, z]) for f, v in factors.items()},
                                        "candidate_scores": json.dumps(scores) if sam else "",
                                        "candidates_file": "", "group": f"g{gid:08d}",
                                        "plan_digest": digest})
                    store.write_group(rows)
                    written += len(rows)
    store.write_parquet()
    write_manifest(folder, {
        "status": "complete", "started": "2026-12-02T00:00:00Z",
        "finished": "2026-12-02T01:00:00Z", "rows": written,
        "options": {"data": "synthetic (bench/report_scale.py)", "clicks": 5},
        "methods": {"litemedsam": "LiteMedSAM (SAM family)",
                    "litemedsam_points": "LiteMedSAM + click decoder (SAM family)",
                    "otsu": "Otsu threshold (classical)"},
        "versions": {}})
    return written


_CHILD = r"""
import resource, sys, time
t0 = time.perf_counter()
import pandas, matplotlib
from app.core.benchmark import load_results, write_report
what, folder, figures = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
t = time.perf_counter()
if what == "load":
    n = len(load_results(folder))
elif what == "load_analysis":
    try:
        from app.core.benchmark.report import ANALYSIS_COLUMNS
    except ImportError:  # before the projected read existed
        print("nan 0 0")
        raise SystemExit(0)
    n = len(load_results(folder, columns=ANALYSIS_COLUMNS))
elif what == "report":
    write_report(folder, figures=figures)
    n = -1
else:
    n = 0
print(f"{time.perf_counter() - t:.3f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} {n}")
"""


def measure(what: str, folder: Path, figures: bool = True) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one step in a fresh process."""
    res = subprocess.run([sys.executable, "-c", _CHILD, what, str(folder), "1" if figures
                          else "0"], cwd=ROOT, capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"{what} on {folder} failed:\n{res.stderr[-3000:]}")
    sec, kib, _ = res.stdout.split()
    return float(sec), int(kib) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="100000,1000000")
    ap.add_argument("--tasks", type=int, default=len(TASKS),
                    help="(dataset, task) pairs the rows are spread over (default 4; the "
                    "Mazurowski study has 28)")
    ap.add_argument("--work", default="/tmp/report_scale")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    ap.add_argument("--no-figures", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import os
    import resource

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    figs = not args.no_figures
    base = measure("imports", work, figs)
    print(f"imports alone (pandas, matplotlib, app.core.benchmark): peak RSS {base[1]:.0f} MiB")
    results = {}
    for n in (int(s) for s in args.rows.split(",")):
        folder = work / (f"rows{n}" if args.tasks == len(TASKS) else f"rows{n}_t{args.tasks}")
        try:
            have = json.loads((folder / "manifest.json").read_text())["rows_asked"]
        except (OSError, ValueError, KeyError):
            have = None
        if have != n:
            t = time.perf_counter()
            written = build(folder, n, n_tasks=args.tasks)
            man = json.loads((folder / "manifest.json").read_text())
            man["rows_asked"] = n
            (folder / "manifest.json").write_text(json.dumps(man))
            print(f"built {written} rows in {time.perf_counter() - t:.0f} s "
                  f"(peak RSS of the builder so far "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
        csv_mb = (folder / "results.csv").stat().st_size / 2**20
        pq_mb = sum((folder / p["file"]).stat().st_size for p in json.loads(
            (folder / "parquet.json").read_text())["parts"]) / 2**20  # one file or parts
        rows = int(json.loads((folder / "manifest.json").read_text())["rows"])
        print(f"{folder}: {rows} rows, results.csv {csv_mb:.0f} MiB, Parquet "
              f"{pq_mb:.0f} MiB")
        r = {}
        for what in ("load", "load_analysis", "report"):
            r[what] = measure(what, folder, figs)
            print(f"  {what:14s} {r[what][0]:8.1f} s   peak RSS {r[what][1]:7.0f} MiB")
        results[n] = r
        if not args.keep:
            shutil.rmtree(folder)
    sizes = sorted(results)
    if len(sizes) > 1:
        a, b = sizes[0], sizes[-1]
        for what in ("load", "load_analysis", "report"):
            (ta, ma), (tb, mb) = results[a][what], results[b][what]
            if not (ma > 0 and ta > 0):  # not measured (a checkout before the projected read)
                continue
            print(f"{what:14s} x{b // a} rows: time x{tb / ta:.1f}, peak RSS x{mb / ma:.1f} "
                  f"(above the imports' {base[1]:.0f} MiB: x"
                  f"{(mb - base[1]) / max(ma - base[1], 1):.1f})")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(times are shared-machine times)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
