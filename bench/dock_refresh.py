"""The Benchmark dock on a large run folder: does the window stay responsive while it loads?

    xvfb-run -a python bench/dock_refresh.py [--rows 100000] [--work /tmp/dock_refresh]

Builds a run folder of the real format with ``--rows`` synthetic result rows
(:func:`bench.report_scale.build`: the runner's writer, Parquet, manifest), opens it in the
Benchmark dock as a user does (``open_run``), and while the results are read, summarised and
shown, ticks a 10 ms QTimer on the GUI thread. Prints the time until the per-case table shows
every row, the longest gap between ticks (the longest the window froze), and, in the same run,
the baseline: the time the dock's former per-case table (a ``QTableWidget`` filled with one
item per cell, on the GUI thread, at every 2 s refresh of a running benchmark) takes for the
same rows. Figures, no assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dock_refresh")
    args = ap.parse_args()
    os.environ.setdefault("SAMSCOPE_STATE_DIR", tempfile.mkdtemp(prefix="samscope-bench-"))

    import numpy as np
    import report_scale
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QTableWidget

    folder = args.work / f"rows{args.rows}"
    t = time.perf_counter()
    rows = report_scale.build(folder, args.rows)
    print(f"built {rows} rows in {time.perf_counter() - t:.1f} s: {folder}")

    import napari

    from app.widgets.benchmark_dock import _CASE_COLUMNS, BenchmarkDock

    viewer = napari.Viewer(show=True)
    dock = BenchmarkDock(viewer)
    viewer.window.add_dock_widget(dock, name="Benchmark")
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    t0 = time.perf_counter()
    dock.open_run(folder)
    t_call = time.perf_counter() - t0
    while dock.loading or dock.cases_model.rowCount() < rows:
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - t0 > 600:
            print("gave up after 600 s")
            break
    t_shown = time.perf_counter() - t0
    for _ in range(10):
        app.processEvents()
    timer.stop()
    gaps = np.diff([t0, *ticks]) * 1000

    # baseline, same rows: the former table, one item per cell, built on the GUI thread
    table = QTableWidget()
    t1 = time.perf_counter()
    dock._fill_table(table, dock.results, _CASE_COLUMNS)
    t_widget = time.perf_counter() - t1
    out = {"rows": rows, "open_run_call_s": round(t_call, 3),
           "table_shown_s": round(t_shown, 2),
           "longest_gui_gap_ms": round(float(gaps.max()), 1),
           "p99_gui_gap_ms": round(float(np.percentile(gaps, 99)), 1),
           "figures_drawn": len(dock.figure_tabs),
           "baseline_widget_table_fill_s": round(t_widget, 2)}
    print(f"open_run returned in {t_call * 1000:.0f} ms; every row shown after "
          f"{t_shown:.1f} s (read, summary with 2000 resamples, figures)")
    print(f"GUI thread: longest gap {out['longest_gui_gap_ms']} ms, p99 "
          f"{out['p99_gui_gap_ms']} ms while loading")
    print(f"baseline, same run: the former QTableWidget fill of {rows} rows blocks the GUI "
          f"thread {t_widget:.1f} s (at every 2 s refresh of a running benchmark)")
    print(json.dumps(out))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
