"""Click-to-mask latency in the real SAMScope window, with the slice's embedding cached.

Opens the main window (run under ``xvfb-run -a`` without a display) on the bundled ultrasound
sample, waits for the model and the embedding, draws a box on the head, then adds N clicks
inside it one at a time through the annotation controller's public API. For each click it
measures the time from the click to the new candidates being on screen (result delivered to the
GUI thread, tiles, the candidate layer and the points layer updated, one repaint processed). The baseline, in the same run, is the
bare ``Engine.predict`` for the same prompts on the same cached embedding, without the GUI.
It also reports the longest gap between ticks of a 10 ms QTimer during the clicks, and the
floor set by the renderer: the median time of one canvas repaint with every layer shown and with
none (under Xvfb that is Mesa's software OpenGL, so this floor is the machine's, not SAMScope's).

    xvfb-run -a python bench/ui_latency.py [--clicks 30]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ["SAMSCOPE_STATE_DIR"] = tempfile.mkdtemp(prefix="samscope-bench-")

    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from app.cli.gui import _wait
    from app.core import coords
    from app.widgets.main_window import create_main_window

    win = create_main_window(show=True)
    app = QApplication.instance()
    c = win.segment_dock.controller
    c.open_sample("ultrasound")
    _wait(app, lambda: c.session is not None and c.truth is not None, 120, "sample")
    _wait(app, lambda: c.engine is not None, 120, "model")
    truth = c.truth_mask()
    box = coords.mask_to_box_xyxy(truth)
    c.set_box(box)
    _wait(app, lambda: c.candidate_set is not None, 120, "first candidates (embedding)")
    _wait(app, lambda: not win.segment_dock.scheduler.busy, 120, "idle")
    win.segment_dock.binding.activate_point_mode()

    rng = np.random.default_rng(args.seed)
    rows, cols = np.nonzero(truth)
    picks = rng.choice(len(rows), size=args.clicks, replace=False)

    shown: list[float] = []
    c.events.candidates_changed.connect(
        lambda cs: cs is not None and shown.append(time.perf_counter()))
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    gui_s, worker_s = [], []
    for i in picks:
        n_before = len(shown)
        t0 = time.perf_counter()
        c.add_point(float(cols[i]), float(rows[i]))  # x = column, y = row
        _wait(app, lambda n=n_before: len(shown) > n, 60, "the mask")
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents)  # layers redrawn, repaint
        gui_s.append(time.perf_counter() - t0)
        worker_s.append(c.candidate_set.latency_s)
        t_idle = time.perf_counter() + 0.05
        _wait(app, lambda t=t_idle: time.perf_counter() > t, 5, "a pause")
    timer.stop()
    gaps_ms = np.diff(ticks) * 1000

    # baseline: the bare engine on the same prompts, cached embedding, no GUI
    from app.core.models.base import Prompt

    engine = c.engine
    emb = engine.embed(c.session.image(0))
    base_s = []
    pts_xy = coords.rowcol_to_xy(np.column_stack([rows[picks], cols[picks]]).astype(float))
    for k in range(1, len(picks) + 1):
        prompt = Prompt(points_xy=pts_xy[:k], point_labels=np.ones(k, np.int32), box_xyxy=box)
        t0 = time.perf_counter()
        engine.predict(emb, prompt)
        base_s.append(time.perf_counter() - t0)

    # the renderer's floor: one canvas repaint, all layers shown vs none
    canvas = win.viewer.window._qt_viewer.canvas.native

    def repaint_ms() -> float:
        ts = []
        for _ in range(15):
            t0 = time.perf_counter()
            canvas.repaint()
            app.processEvents()
            ts.append(time.perf_counter() - t0)
        return round(float(np.median(ts)) * 1000, 1)

    paint_all = repaint_ms()
    shown_before = [(layer, layer.visible) for layer in win.viewer.layers]
    for layer, _ in shown_before:
        layer.visible = False
    paint_none = repaint_ms()
    for layer, vis in shown_before:
        layer.visible = vis

    def pct(v, q):
        return round(float(np.percentile(np.asarray(v) * 1000, q)), 1)

    out = {
        "image": "bundled ultrasound 800x540", "model": c.identity.name,
        "device": getattr(engine.model, "device", "cpu"), "clicks": len(picks),
        "click_to_mask_ms": {"p50": pct(gui_s, 50), "p95": pct(gui_s, 95)},
        "request_to_result_ms": {"p50": pct(worker_s, 50), "p95": pct(worker_s, 95)},
        "bare_engine_predict_ms": {"p50": pct(base_s, 50), "p95": pct(base_s, 95)},
        "gui_overhead_ratio_p50": round(float(np.median(gui_s) / np.median(base_s)), 2),
        "gui_overhead_ratio_p95": round(float(np.percentile(gui_s, 95)
                                              / np.percentile(base_s, 95)), 2),
        "event_loop_max_gap_ms": round(float(gaps_ms.max()), 1),
        "event_loop_p99_gap_ms": round(float(np.percentile(gaps_ms, 99)), 1),
        "canvas_repaint_ms": {"all_layers": paint_all, "no_layers": paint_none,
                              "layers": len(shown_before)},
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(f"click-to-mask (GUI, cached embedding): p50 {out['click_to_mask_ms']['p50']} ms, "
          f"p95 {out['click_to_mask_ms']['p95']} ms over {len(picks)} clicks")
    print(f"bare Engine.predict, same prompts:     p50 {out['bare_engine_predict_ms']['p50']} ms,"
          f" p95 {out['bare_engine_predict_ms']['p95']} ms")
    print(f"GUI / bare: p50 x{out['gui_overhead_ratio_p50']}, p95 "
          f"x{out['gui_overhead_ratio_p95']}; event loop: longest gap "
          f"{out['event_loop_max_gap_ms']} ms (p99 {out['event_loop_p99_gap_ms']} ms)")
    print(f"one canvas repaint: {paint_all} ms with the {len(shown_before)} layers, "
          f"{paint_none} ms with none (the renderer's floor); 1-min load {out['load_average_1min']}")
    print(json.dumps(out))
    c.discard_unsaved()
    win.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
