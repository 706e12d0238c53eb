"""Regenerate the README's screenshots of the docks into ``docs/``, at the size the window
opens with on the screen it runs on (no resize: what a user sees first).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py [--out docs]
    xvfb-run -a -s "-screen 0 1280x800x24" python scripts/screenshots.py --out /tmp/small
    # the README keeps the second run's segment_dock.png as docs/segment_dock_1280x800.png

* ``docs/segment_dock.png``: the bundled ultrasound sample, a box and a click on the fetal
  head, the three candidates with their predicted IoU and their IoU/Dice against the ground
  truth.
* ``docs/segment_propagate.png``: the bundled 3-slice CT after accepting the liver on the middle
  slice and propagating it through the volume.
* ``docs/benchmark_dock.png``: a small real benchmark (LiteMedSAM and the random walker, the five
  prompt modes, a few cases of the given dataset) with its table and the per-mode figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _settle(app, seconds: float = 0.4) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "png_pairs" /
                                          "fetal_head_us"),
                    help="an images/+masks/ dataset for the benchmark screenshot")
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["SAMSCOPE_STATE_DIR"] = tempfile.mkdtemp(prefix="samscope-shots-")

    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from app.cli.gui import _wait
    from app.core import coords
    from app.core.annotate.session import box_from_mask
    from app.widgets.main_window import create_main_window, raise_dock

    win = create_main_window(show=True)  # at the size it opens with: no resize
    app = QApplication.instance()
    seg, bench, viewer = win.segment_dock, win.benchmark_dock, win.viewer
    c = seg.controller

    # 1. Segment dock: a box and its candidate, scored against the ground truth
    c.open_sample("ultrasound")
    _wait(app, lambda: c.session is not None and c.truth is not None, 120, "sample")
    _wait(app, lambda: c.engine is not None, 120, "model")
    head = c.truth_mask()
    c.set_box(coords.mask_to_box_xyxy(head))
    rows, cols = np.nonzero(head)
    c.add_point(float(np.median(cols)), float(np.median(rows)))  # box + click: 3 candidates
    _wait(app, lambda: c.candidate_set is not None and c.candidate_set.prompt.has_points, 120,
          "candidates")
    _settle(app)
    viewer.screenshot(str(out / "segment_dock.png"), canvas_only=False)
    print("wrote", out / "segment_dock.png")

    # 2. Propagation on the CT sample
    c.open_sample("ct", discard=True)
    _wait(app, lambda: c.session is not None and c.volume.n_slices == 3
          and c.truth is not None, 120, "CT sample")
    gt = c.truth > 0
    c.set_slice(1)
    c.set_box(box_from_mask(gt[1]))
    _wait(app, lambda: c.candidate_set is not None, 120, "CT candidates")
    c.accept()
    c.propagate()
    _wait(app, lambda: not c.task_running, 180, "propagation")
    _settle(app)
    viewer.screenshot(str(out / "segment_propagate.png"), canvas_only=False)
    print("wrote", out / "segment_propagate.png")

    # 3. Benchmark dock on a few real cases
    work = Path(tempfile.mkdtemp(prefix="samscope-shots-data-"))
    src = Path(args.data)
    stems = sorted(p.stem for p in (src / "images").glob("*.png"))[: args.cases]
    for sub in ("images", "masks"):
        (work / "fetal_head_us" / sub).mkdir(parents=True)
        for s in stems:
            shutil.copy(src / sub / f"{s}.png", work / "fetal_head_us" / sub / f"{s}.png")
    raise_dock(bench)
    bench.set_dataset(work / "fetal_head_us")
    _wait(app, lambda: bench.suite is not None, 60, "dataset")
    for i in range(bench.methods_list.count()):
        item = bench.methods_list.item(i)
        name = item.data(Qt.ItemDataRole.UserRole)
        item.setCheckState(Qt.CheckState.Checked if name in ("litemedsam", "random_walker")
                           else Qt.CheckState.Unchecked)
    bench.out_edit.setText(str(work / "run"))
    bench.run()
    _wait(app, lambda: not bench.running and not bench.loading, 900, "the benchmark")
    if "IoU per mode" in bench.figure_tabs:
        bench.tabs.setCurrentWidget(bench.figure_tabs["IoU per mode"])
    from qtpy.QtWidgets import QScrollArea

    area = bench.tabs.parentWidget()
    while area is not None and not isinstance(area, QScrollArea):
        area = area.parentWidget()
    if area is not None:  # the dock scrolls: show its results (the plan is above them)
        _settle(app, 0.5)
        area.ensureWidgetVisible(bench.tabs, 0, 0)
    _settle(app, 1.0)
    viewer.screenshot(str(out / "benchmark_dock.png"), canvas_only=False)
    print("wrote", out / "benchmark_dock.png", f"({bench.status})")
    c.discard_unsaved()
    win.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
