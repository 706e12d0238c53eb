"""The application window, the self-test the packaged app's smoke check calls, and the
crash-recovery offer on the next start."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_main_window_has_title_and_both_docks(make_napari_viewer, monkeypatch, tmp_path):
    monkeypatch.setenv("SAMSCOPE_STATE_DIR", str(tmp_path))
    from app.widgets.benchmark_dock import BenchmarkDock
    from app.widgets.main_window import create_main_window
    from app.widgets.segment_dock import SegmentDock

    win = create_main_window(viewer=make_napari_viewer())
    try:
        assert win.viewer.title == "SAMScope"
        assert isinstance(win.segment_dock, SegmentDock)
        assert isinstance(win.benchmark_dock, BenchmarkDock)
    finally:
        win.segment_dock.scheduler.shutdown(5)


def test_self_test_command_prints_iou_and_saves_screenshot(tmp_path):
    shot = tmp_path / "window.png"
    env = dict(os.environ, SAMSCOPE_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.run([sys.executable, "-m", "app", "--self-test", "--screenshot", str(shot)],
                          capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    result = json.loads(lines[0])
    assert proc.returncode == 0, result
    assert result["self_test"] == "ok" and result["iou"] >= 0.85 and result["box_fill"] < 0.9
    from PIL import Image

    with Image.open(shot) as im:
        w, h = im.size
        pixels = np.asarray(im.convert("L"))
    assert w >= 1000 and h >= 600
    assert pixels.std() > 10  # a real picture of the window, not a blank frame


def test_recovery_is_offered_and_restored_after_a_crash(make_napari_viewer, qtbot, monkeypatch,
                                                        tmp_path):
    """A session that ended without an export (here: recorded by a controller that stopped)
    is offered at the next start; Restore reopens its image, puts the objects back as one
    undo step and the next object gets a label past them (bug 2 of the controller issue)."""
    from app.core import coords
    from app.core.annotate import AnnotationController
    from app.core.annotate.recovery import sessions_dir
    from app.core.io.samples import load_sample
    from app.widgets.segment_dock import SegmentDock

    monkeypatch.setenv("SAMSCOPE_STATE_DIR", str(tmp_path))
    volume, truth = load_sample("ultrasound")
    head = truth[0] > 0
    earlier = AnnotationController(log_dir=sessions_dir())
    earlier.open(volume)
    corner = np.zeros_like(head)
    corner[:40, :40] = True
    for mask in (head, corner, np.roll(corner, (480, 700), (0, 1))):  # objects 1, 2, 3
        earlier.accept_mask(mask)
    labels = earlier.labels.copy()
    earlier.shutdown()

    dock = SegmentDock(make_napari_viewer())
    try:
        assert dock.recovery_box.isVisibleTo(dock)
        assert "280_HC.png" in dock.recovery_label.text()
        dock.restore_button.click()
        qtbot.waitUntil(lambda: dock.session is not None and dock.session.labels.any(),
                        timeout=60_000)
        np.testing.assert_array_equal(dock.session.labels, labels)
        assert not dock.recovery_box.isVisibleTo(dock)
        assert dock.label_spin.value() == 4 and dock.controller.next_label == 4
        qtbot.waitUntil(lambda: dock.engine is not None, timeout=120_000)
        dock.controller.set_box(coords.mask_to_box_xyxy(head))
        qtbot.waitUntil(lambda: dock.controller.candidate_set is not None, timeout=60_000)
        assert dock.accept() and 4 in dock.controller.object_labels()
        dock.controller.undo()
        dock.controller.undo()
        dock.controller.undo()  # restoring is itself undoable
        assert not dock.session.labels.any()
    finally:
        dock.controller.discard_unsaved()
        dock.scheduler.shutdown(5)


def test_samscope_with_a_path_opens_it_in_the_app(monkeypatch):
    import app.cli.gui as gui
    from app.cli import main
    from app.core.io.samples import sample_path

    seen = {}
    monkeypatch.setattr(gui, "run", lambda args: seen.setdefault("image", args.image) and 0)
    path = str(sample_path("ultrasound"))
    assert main([path]) == 0
    assert seen["image"] == path
    seen.clear()
    assert main(["gui", path]) == 0 and seen["image"] == path


def test_window_opens_at_screen_size_with_the_image_fitted(qtbot, monkeypatch, tmp_path):
    """It opened at 1089x701 on a 1600x1000 screen with the image about 135 px wide."""
    from qtpy.QtWidgets import QApplication

    from app.widgets.main_window import create_main_window

    monkeypatch.setenv("SAMSCOPE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # a first launch
    win = create_main_window(show=True)  # as `samscope` opens it: no viewer given, no resize
    try:
        qtbot.waitUntil(win.qt_window.isVisible, timeout=10_000)
        area = QApplication.primaryScreen().availableGeometry()
        assert win.qt_window.width() >= 0.9 * area.width()
        assert win.qt_window.height() >= 0.9 * area.height()
        c = win.segment_dock.controller
        c.open_sample("ultrasound")
        qtbot.waitUntil(lambda: c.session is not None, timeout=60_000)
        qtbot.wait(200)
        canvas = win.viewer.window._qt_viewer.canvas.native
        # the whole image is in view and fills the canvas along one side
        h_mm, w_mm = (n * s for n, s in zip(c.volume.shape[1:], c.volume.spacing_mm[1:]))
        zoom = win.viewer.camera.zoom  # screen px per world unit (mm)
        shown_w, shown_h = w_mm * zoom, h_mm * zoom
        assert shown_w <= canvas.width() + 2 and shown_h <= canvas.height() + 2
        assert max(shown_w / canvas.width(), shown_h / canvas.height()) > 0.85
        assert canvas.width() >= 0.35 * win.qt_window.width()  # the canvas, not the docks
    finally:
        win.segment_dock.controller.discard_unsaved()
        win.close()


def test_the_model_choice_reads_in_full_at_the_opening_size(qtbot, monkeypatch, tmp_path):
    """At 1600x1000 the combo showed 'Automatic — boxes: LiteMedSAM, clicks: LiteMedSAM': the
    end that says clicks go to the click-tuned decoder was cut off."""
    from qtpy.QtWidgets import QStyle, QStyleOptionComboBox

    from app.widgets.main_window import create_main_window

    monkeypatch.setenv("SAMSCOPE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # a first launch
    win = create_main_window(show=True)  # no resize: the size a user meets
    try:
        qtbot.waitUntil(win.qt_window.isVisible, timeout=10_000)
        qtbot.wait(200)
        combo = win.segment_dock.model_combo
        opt = QStyleOptionComboBox()
        combo.initStyleOption(opt)
        field = combo.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                             QStyle.SubControl.SC_ComboBoxEditField, combo)
        shown = combo.currentText()
        assert "click" in shown.lower()
        assert combo.fontMetrics().horizontalAdvance(shown) <= field.width(), (
            f"{shown!r} needs {combo.fontMetrics().horizontalAdvance(shown)} px, "
            f"the combo shows {field.width()}")
    finally:
        win.close()
