"""The Segment dock in a real napari viewer (run under ``xvfb-run``), with the real models on the
bundled samples, driven the way a user drives it: boxes dragged and points clicked through the
layers' own mouse modes, keys pressed through the window, files opened through the reader,
dialogs answered with their buttons. Then we check what the user sees and what lands on disk."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from app.core import coords
from app.core.annotate.session import box_from_mask

pytestmark = pytest.mark.gui


def _iou(a, b):
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


@pytest.fixture
def dock(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    monkeypatch.setenv("SAMSCOPE_STATE_DIR", str(tmp_path / "state"))
    from app.widgets.segment_dock import SegmentDock

    viewer = make_napari_viewer()
    d = SegmentDock(viewer)
    viewer.window.add_dock_widget(d, name="Segment")
    qtbot.waitUntil(lambda: d.engine is not None, timeout=120_000)
    yield d
    d.controller.discard_unsaved()  # let the viewer close without asking
    d.scheduler.shutdown(5)


def _open(dock, qtbot, sample):
    dock.open_sample(sample)
    qtbot.waitUntil(lambda: dock.session is not None and dock.controller.truth is not None,
                    timeout=60_000)


def _press(dock, key):
    dock.viewer.window._qt_viewer._key_map_handler.press_key(key)


# --- the mouse, through the layers' own modes (napari's mouse callbacks) -------------------
@dataclass
class _MouseEvent:
    type: str
    position: tuple
    is_dragging: bool = False
    modifiers: list = field(default_factory=list)
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: list | None = None
    up_direction: list | None = None
    dims_displayed: list = field(default_factory=lambda: [0, 1])
    button: int = 1
    handled: bool = False


def _event(**kw):
    from napari.utils._proxies import ReadOnlyWrapper

    return ReadOnlyWrapper(_MouseEvent(**kw), exceptions=("handled",))


def _world(layer, rc, z=None):
    data = [float(v) for v in rc] if z is None else [float(z), *map(float, rc)]
    return tuple(float(v) for v in layer.data_to_world(data))


def mouse_click(layer, rc, z=None):
    """A left click at data (row, col) on ``layer`` in its current mode."""
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    pos = _world(layer, rc, z)
    mouse_press_callbacks(layer, _event(type="mouse_press", position=pos))
    mouse_release_callbacks(layer, _event(type="mouse_release", position=pos))


def mouse_drag(layer, rc0, rc1, z=None, between=None):
    """Press at data (row, col) ``rc0``, drag to ``rc1``, release (drawing a rectangle).

    ``between()`` runs between the mouse events (e.g. ``qtbot.wait``): a real drag is many
    events, each handled in its own turn of the event loop."""
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    p0, p1 = _world(layer, rc0, z), _world(layer, rc1, z)
    mouse_press_callbacks(layer, _event(type="mouse_press", position=p0))
    for t in np.linspace(0.2, 1.0, 5):
        if between is not None:
            between()
        pos = tuple(a + (b - a) * t for a, b in zip(p0, p1))
        mouse_move_callbacks(layer, _event(type="mouse_move", position=pos, is_dragging=True))
    if between is not None:
        between()
    mouse_release_callbacks(layer, _event(type="mouse_release", position=p1, is_dragging=True))


def _drag_box(dock, box_xyxy, z=None, between=None):
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    dock.box_button.click()
    mouse_drag(dock.binding.box_layer, (y0, x0), (y1, x1), z, between)


def _click(dock, row, col, z=None):
    dock.point_button.click()
    mouse_click(dock.binding.points_layer, (row, col), z)


def _wait_candidates(dock, qtbot, with_points=None):
    c = dock.controller

    def ready():
        cs = c.candidate_set
        return cs is not None and (with_points is None or cs.prompt.has_points == with_points)

    qtbot.waitUntil(ready, timeout=60_000)
    return c.candidate_set


def test_mouse_clicks_stay_object_clicks_after_accept_undo_and_clear(dock, qtbot):
    """Bug 1 of the annotation-controller issue: after the first Accept, Undo or Clear, a
    mouse click came out red (background) although 'Background clicks' was unticked."""
    _open(dock, qtbot, "ultrasound")
    c = dock.controller
    truth = c.truth[0] > 0
    rows, cols = np.nonzero(truth)
    r, q = float(np.median(rows)), float(np.median(cols))
    _drag_box(dock, coords.mask_to_box_xyxy(truth))
    cs = _wait_candidates(dock, qtbot)
    assert cs.answered_by == "LiteMedSAM"  # boxes go to the box model
    assert c.prompts.box(0) is not None and len(dock.binding.box_layer.data) == 1
    _press(dock, "Enter")
    qtbot.wait(20)  # the layers are redrawn on the next event-loop turn
    assert c.labels.any() and len(dock.binding.box_layer.data) == 0

    def clicked_signs():
        qtbot.wait(20)  # the binding redraws on the next event-loop turn
        layer = dock.binding.points_layer
        green = [bool(np.allclose(fc[:3], [0.1, 0.95, 0.2], atol=0.02)) for fc in
                 layer.face_color]
        return c.prompt().point_labels.tolist() if c.prompt() else [], green

    _click(dock, r, q)
    assert clicked_signs() == ([1], [True])
    cs = _wait_candidates(dock, qtbot, with_points=True)
    assert cs.answered_by == "LiteMedSAM (points)" and len(cs.shown) == 3
    _press(dock, "Escape")  # clear
    _click(dock, r, q)
    assert clicked_signs() == ([1], [True])
    _press(dock, "Control-Z")  # the click
    _press(dock, "Control-Z")  # the clear: the first click is back
    _click(dock, r + 5, q)
    assert clicked_signs() == ([1, 1], [True, True])
    _press(dock, "N")  # background clicks on
    assert dock.negative_check.isChecked()
    _click(dock, 5, 5)
    assert clicked_signs() == ([1, 1, 0], [True, True, False])
    _press(dock, "N")
    _click(dock, r, q + 5)
    assert clicked_signs()[0] == [1, 1, 0, 1]
    # the candidates on screen answer these clicks, scored against the ground truth
    cs = _wait_candidates(dock, qtbot, with_points=True)
    qtbot.waitUntil(lambda: len(c.candidate_set.prompt.points_xy) == 4, timeout=60_000)
    assert max(iou for iou, _ in c.truth_scores()) > 0.85  # measured 0.93-0.95
    assert "IoU" in dock.candidates_widget.tiles[0].truth.text()


def _answer_dialog(qtbot, button):
    """Press ``button`` of the message box that is about to open (it is modal)."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    seen = {}

    def press():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, press)
            return
        seen["text"] = box.text() + " " + box.informativeText()
        box.button(button).click()

    QTimer.singleShot(20, press)
    return seen


def test_opening_another_image_with_unexported_labels_asks(dock, qtbot, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    _open(dock, qtbot, "ultrasound")
    c = dock.controller
    _drag_box(dock, coords.mask_to_box_xyxy(c.truth[0] > 0))
    _wait_candidates(dock, qtbot)
    _press(dock, "Enter")
    accepted = c.labels.copy()
    image = c.volume
    # Cancel: the ultrasound and its labels stay
    seen = _answer_dialog(qtbot, QMessageBox.StandardButton.Cancel)
    dock.sample_ct_button.click()
    assert "not exported" in seen["text"] and "280_HC.png" in seen["text"]
    qtbot.wait(200)
    assert c.volume is image and np.array_equal(c.labels, accepted)
    # Save: the export dialog opens, the file is written, then the CT opens
    out = tmp_path / "head.png"
    monkeypatch.setattr("qtpy.QtWidgets.QFileDialog.getSaveFileName",
                        lambda *a, **k: (str(out), "PNG mask (*.png)"))
    _answer_dialog(qtbot, QMessageBox.StandardButton.Save)
    dock.sample_ct_button.click()
    qtbot.waitUntil(lambda: c.volume is not image and c.volume.n_slices == 3, timeout=60_000)
    from app.core.io import read_labels

    np.testing.assert_array_equal(read_labels(out, image)[0] > 0, accepted[0] > 0)
    # the old image's layers are gone
    names = [layer.name for layer in dock.viewer.layers]
    assert "280_HC.png" not in names and names.count("ground truth") == 1


def test_quit_with_unexported_labels_asks_and_cancel_keeps_the_window(dock, qtbot):
    from qtpy.QtWidgets import QMessageBox

    _open(dock, qtbot, "ultrasound")
    _drag_box(dock, coords.mask_to_box_xyxy(dock.controller.truth[0] > 0))
    _wait_candidates(dock, qtbot)
    _press(dock, "Enter")
    window = dock.window()
    assert window is not dock
    window.show()
    qtbot.waitUntil(window.isVisible, timeout=5_000)
    seen = _answer_dialog(qtbot, QMessageBox.StandardButton.Cancel)
    window.close()
    qtbot.wait(100)
    assert "quit" in seen["text"] and window.isVisible()
    # the session log still holds the object: nothing was discarded
    assert dock.controller.has_unsaved_work and dock.controller.log_path.is_file()


def test_propagate_on_ct_volume_is_one_undo_step_and_exports(dock, qtbot, tmp_path):
    _open(dock, qtbot, "ct")
    c = dock.controller
    vol = c.volume
    assert vol.n_slices == 3
    gt = c.truth > 0
    # neighbouring slices are embedded in the background, with progress
    qtbot.waitUntil(lambda: dock.engine.stats.cache_entries >= 3, timeout=60_000)
    assert "embeddings ready" in dock.task_progress.format()
    # a prompt on slice 0, then a slice change before its result: the result is dropped
    dock.viewer.dims.set_current_step(0, 0)
    qtbot.waitUntil(lambda: c.z == 0, timeout=5_000)
    _drag_box(dock, box_from_mask(gt[0]), z=0)
    dock.viewer.dims.set_current_step(0, 1)
    qtbot.waitUntil(lambda: c.z == 1 and not dock.engine_thread.busy, timeout=60_000)
    qtbot.wait(50)
    assert c.candidate_set is None
    _drag_box(dock, box_from_mask(gt[1]), z=1)
    _wait_candidates(dock, qtbot)
    _press(dock, "Enter")
    assert _iou(c.labels[1] == 1, gt[1]) > 0.75  # measured 0.84
    assert not c.labels[[0, 2]].any()
    dock.propagate_button.click()
    qtbot.waitUntil(lambda: not c.task_running, timeout=120_000)
    for z in (0, 2):
        # measured 0.85 / 0.82 with the propagated box
        assert _iou(c.labels[z] == 1, gt[z]) > 0.7, z
    from app.core.io import read_labels

    labels = c.labels.copy()
    for name in ("liver.nii.gz", "liver_seg.dcm"):
        out = dock.export_labels(tmp_path / name)
        assert out is not None and out.is_file(), dock.status.text()
        np.testing.assert_array_equal(read_labels(out, vol) > 0, labels > 0)
    assert not c.has_unsaved_work
    _press(dock, "Control-Z")
    assert not c.labels[[0, 2]].any() and c.labels[1].any()
    assert c.has_unsaved_work  # the exported state is gone again


def test_click_stream_during_embedding_stays_responsive(dock, qtbot):
    from qtpy.QtCore import QTimer

    _open(dock, qtbot, "ultrasound")
    c = dock.controller
    base = coords.mask_to_box_xyxy(c.truth[0] > 0)
    dock.engine.clear_cache()  # the embedding is computed while the prompts stream in
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    boxes = [base + np.array([-d, -d, d, d], np.float32) for d in range(12, -1, -2)]
    for b in boxes:
        _drag_box(dock, b, between=lambda: qtbot.wait(8))
        qtbot.wait(60)
    last = c.prompts.box(0)  # what the last drag became (pixel centres inside it)
    assert np.abs(last - boxes[-1]).max() <= 1.0
    qtbot.waitUntil(lambda: c.candidate_set is not None and
                    np.array_equal(c.candidate_set.prompt.box_xyxy, last), timeout=60_000)
    qtbot.waitUntil(lambda: not dock.engine_thread.busy, timeout=60_000)
    qtbot.wait(50)
    timer.stop()
    gaps = np.diff(ticks)
    assert len(ticks) > 50
    # the embedding takes seconds: a loop that waited on it would stall for seconds. Drawing a
    # result costs up to ~90 ms here under Xvfb's software OpenGL (bench/ui_latency.py
    # measures the fine figures); 150 ms keeps this test about blocking, not about load.
    assert gaps.max() < 0.150, f"event loop stalled for {gaps.max() * 1000:.0f} ms"
    stats = dock.engine_thread.stats
    assert stats["dropped_before_run"] + stats["dropped_after_run"] >= 1
    qtbot.wait(20)
    assert len(dock.binding.box_layer.data) == 1  # one box per slice: new boxes replaced old


def test_image_opened_through_napari_reader_is_adopted(dock, qtbot):
    """File menu / drag and drop go through our npe2 reader; the dock takes the new image."""
    from app.core.io.samples import sample_path

    layers = dock.viewer.open(str(sample_path("ultrasound")), plugin="samscope")
    qtbot.waitUntil(lambda: dock.binding.image_layer is layers[0], timeout=10_000)
    assert dock.session.volume.shape == (1, 540, 800)
    assert dock.session.volume.source.endswith("280_HC.png")  # the reader's own Volume
    assert dock.binding.box_layer.mode == "add_rectangle"  # ready to draw


def test_model_needing_a_download_offers_it(dock, qtbot):
    from app.core.models.registry import model_status

    idx = next((i for i in range(dock.model_combo.count())
                if dock.model_combo.itemData(i) != "auto"
                and model_status(dock.model_combo.itemData(i)) == "not downloaded"), None)
    if idx is None:
        pytest.skip("every model is on disk here")
    dock.model_combo.setCurrentIndex(idx)
    assert dock.download_button.isVisibleTo(dock)
    assert "MB" in dock.download_button.text()
    assert "needs a download" in dock.status.text()
    assert "needs download" in dock.model_combo.itemText(idx)


def test_export_dialog_suggests_a_name_adds_the_extension_and_remembers(dock, qtbot, tmp_path,
                                                                       monkeypatch):
    """With "DICOM SEG (*.dcm)" chosen, a bare name used to fail ("unknown label format")."""
    _open(dock, qtbot, "ct")
    c = dock.controller
    c.set_slice(1)
    _drag_box(dock, box_from_mask(c.truth[1] > 0), z=1)
    _wait_candidates(dock, qtbot)
    _press(dock, "Enter")
    c.set_name(1, "Liver")
    asked = []

    def save_dialog(parent, title, suggested, filters, selected):
        asked.append((suggested, filters.split(";;"), selected))
        return str(tmp_path / "liver"), "DICOM SEG (*.dcm)"

    monkeypatch.setattr("qtpy.QtWidgets.QFileDialog.getSaveFileName", save_dialog)
    dock.export_button.click()
    out = tmp_path / "liver.dcm"
    assert out.is_file(), dock.status.text()
    suggested, filters, _ = asked[0]
    assert suggested.endswith("ct_labels.nii.gz") and "DICOM SEG (*.dcm)" in filters
    import highdicom as hd

    seg = hd.seg.segread(str(out))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver"]
    # the next export starts in that folder, with that format
    c.set_name(1, "Liver left lobe")
    dock.export_button.click()
    suggested, filters, selected = asked[1]
    assert suggested == str(tmp_path / "ct_labels.dcm")
    assert filters[0] == selected == "DICOM SEG (*.dcm)"


@pytest.mark.parametrize("size", [(1280, 800), (1600, 1000)])
def test_nothing_in_the_dock_is_cut_off(make_napari_viewer, qtbot, monkeypatch, tmp_path, size):
    """At 1280x800 the third candidate's figures and the right-hand buttons used to be cut
    off: every button and every candidate label must lie inside the dock's viewport."""
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QLabel

    from app.widgets.main_window import create_main_window

    monkeypatch.setenv("SAMSCOPE_STATE_DIR", str(tmp_path / "state"))
    win = create_main_window(viewer=make_napari_viewer(show=True))
    dock, c = win.segment_dock, win.segment_dock.controller
    try:
        win.qt_window.resize(*size)
        qtbot.waitUntil(lambda: dock.engine is not None, timeout=120_000)
        _open(dock, qtbot, "ultrasound")
        c.set_box(coords.mask_to_box_xyxy(c.truth[0] > 0))
        rows, cols = np.nonzero(c.truth[0])
        c.add_point(float(np.median(cols)), float(np.median(rows)))  # three candidates
        qtbot.waitUntil(lambda: c.candidate_set is not None and len(c.candidate_set.shown) == 3,
                        timeout=60_000)
        qtbot.wait(100)
        view = dock.scroll.viewport()
        width = view.width()
        assert width > 300, width
        checked = 0
        for w in dock.scroll.widget().findChildren(QAbstractButton) + \
                dock.scroll.widget().findChildren(QComboBox) + \
                [t.caption for t in dock.candidates_widget.tiles] + \
                [t.truth for t in dock.candidates_widget.tiles]:
            if not w.isVisibleTo(dock) or (isinstance(w, QLabel) and not w.text()):
                continue
            left = w.mapTo(view, QPoint(0, 0)).x()
            assert left >= 0 and left + w.width() <= width + 1, (
                f"{type(w).__name__} {getattr(w, 'text', lambda: '')()!r} spans "
                f"{left}..{left + w.width()} of a {width}-px wide dock")
            checked += 1
        assert checked > 20
        # the figures of the third candidate are readable, not elided away
        assert "IoU" in dock.candidates_widget.tiles[2].truth.text()
        assert dock.candidates_widget.tiles[2].truth.height() >= 2 * \
            dock.candidates_widget.tiles[2].truth.fontMetrics().height() - 2
    finally:
        c.discard_unsaved()
        dock.scheduler.shutdown(5)


def test_objects_panel_names_hides_and_picks_the_object_to_act_on(dock, qtbot):
    from qtpy.QtCore import Qt

    _open(dock, qtbot, "ultrasound")
    c = dock.controller
    head = c.truth[0] > 0
    _drag_box(dock, coords.mask_to_box_xyxy(head))
    _wait_candidates(dock, qtbot)
    _press(dock, "Enter")
    _drag_box(dock, [10, 10, 120, 120])
    _wait_candidates(dock, qtbot)
    _press(dock, "Enter")
    table = dock.objects_table
    assert table.rowCount() == 2
    assert table.item(0, 4).text().startswith("IoU 0.9")  # the head vs its ground truth
    assert table.item(1, 4).text() == "IoU 0.000"  # the second object is not the head
    # choose the first object and name it from the terminology list
    table.selectRow(0)
    assert c.selected_label == 1
    k = next(i for i in range(dock.name_combo.count())
             if dock.name_combo.itemData(i) == "Head (fetal head)")
    dock.name_combo.activated.emit(k)
    assert c.names[1] == "Head (fetal head)"
    assert "SNOMED CT 69536005" in table.item(0, 2).toolTip()
    # hide the second: its pixels go transparent on the labels layer, the map is unchanged
    table.item(1, 0).setCheckState(Qt.CheckState.Unchecked)
    assert c.hidden == {2} and (c.labels == 2).any()
    assert dock.binding.labels_layer.colormap.map(2)[3] == 0
    assert dock.binding.labels_layer.colormap.map(1)[3] > 0
    # Delete acts on the chosen row
    table.selectRow(1)
    dock.delete_button.click()
    assert c.object_labels() == [1] and table.rowCount() == 1


def test_keys_work_with_the_focus_in_the_dock(dock, qtbot):
    """Keys used to do nothing unless the canvas had the focus; after clicking a dock button
    the user pressed Enter and nothing was accepted."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    window = dock.window()
    window.show()
    window.activateWindow()  # shortcuts go to the active window, as on a desktop
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5_000)
    _open(dock, qtbot, "ct")
    c = dock.controller
    dock.box_button.click()
    dock.box_button.setFocus()
    qtbot.keyClick(dock.box_button, Qt.Key.Key_Right)  # next slice, focus on a button
    assert c.z == 1
    qtbot.keyClick(dock.box_button, Qt.Key.Key_PageDown)
    qtbot.keyClick(dock.box_button, Qt.Key.Key_PageUp)
    assert c.z == 1
    _drag_box(dock, box_from_mask(c.truth[1] > 0), z=1)
    _wait_candidates(dock, qtbot)
    dock.box_button.setFocus()
    qtbot.keyClick(dock.box_button, Qt.Key.Key_Return)
    assert c.labels[1].any()
    qtbot.keyClick(dock.box_button, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not c.labels.any()
    # arrows in a text field move its cursor, not the slice
    dock.label_spin.setFocus()
    qtbot.keyClick(dock.label_spin, Qt.Key.Key_Left)
    assert c.z == 1
    # typing a label value still goes into the spin box, not to the shortcuts
    dock.label_spin.lineEdit().selectAll()
    qtbot.keyClicks(dock.label_spin, "3")
    assert dock.label_spin.value() == 3 and c.next_label == 3


def test_status_bar_names_the_dock_keys_not_napari_layer_modes(dock, qtbot):
    """napari's hint said '<3> for select points' while 3 chooses the third candidate."""
    _open(dock, qtbot, "ultrasound")
    dock.point_button.click()
    assert "<3>" not in dock.viewer.help and "1/2/3 choose a candidate" in dock.viewer.help
    dock.box_button.click()
    assert "<3>" not in dock.viewer.help and "drag a box" in dock.viewer.help
