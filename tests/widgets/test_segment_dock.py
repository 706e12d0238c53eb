"""The Segment dock in a real napari viewer (run under ``xvfb-run``), with the real LiteMedSAM
on the bundled samples: box → candidates → accept, undo/redo by keys, hints, propagation, and
a click stream during an embedding that must keep the event loop responsive."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.core import coords
from app.core.session import box_from_mask

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
    d.engine_thread.shutdown(5)


def _open(dock, qtbot, sample):
    dock.open_sample(sample)
    qtbot.waitUntil(lambda: dock.session is not None and dock.truth_mask() is not None,
                    timeout=60_000)


def _press(dock, key):
    dock.viewer.window._qt_viewer._key_map_handler.press_key(key)


def test_box_candidates_accept_undo_redo(dock, qtbot, tmp_path):
    _open(dock, qtbot, "ultrasound")
    truth = dock.truth_mask()
    box = coords.mask_to_box_xyxy(truth)
    dock.set_box(box)
    qtbot.waitUntil(lambda: dock.candidates is not None, timeout=60_000)
    # LiteMedSAM: one usable mask, and the dock says why
    assert dock.candidates_widget.count == 1
    assert "one usable mask" in dock.candidates_widget.note.text()
    (iou_live, dice_live), = dock.candidates_widget.truth_scores()
    assert "IoU" in dock.candidates_widget.tiles[0].truth.text()
    _press(dock, "1")
    _press(dock, "Enter")
    accepted = dock.session.labels[0] == 1
    # measured: 0.688 (the model keeps inside the skull; the annotation is the outer ellipse)
    assert _iou(accepted, truth) > 0.6
    assert abs(_iou(accepted, truth) - iou_live) < 1e-6 and dice_live > 0.75
    # not just the box filled in
    x0, y0, x1, y1 = box.astype(int)
    box_mask = np.zeros_like(truth)
    box_mask[y0 : y1 + 1, x0 : x1 + 1] = True
    assert _iou(accepted, box_mask) < 0.9
    # prompts cleared, next label proposed
    assert len(dock.box_layer.data) == 0 and dock.label_spin.value() == 2
    after = dock.session.labels.copy()
    _press(dock, "Control-Z")
    assert not dock.session.labels.any()
    assert len(dock.box_layer.data) == 1  # the undone accept gives its prompt back
    _press(dock, "Control-Shift-Z")
    np.testing.assert_array_equal(dock.session.labels, after)
    assert len(dock.box_layer.data) == 0
    assert dock.labels_layer.data[accepted].min() == 1  # the layer shows the session's map
    # accepted labels are autosaved for crash recovery
    from app.core.session import RecoveryStore

    store = RecoveryStore(tmp_path / "state")
    qtbot.waitUntil(lambda: store.npz_path.is_file(), timeout=10_000)
    np.testing.assert_array_equal(store.load(), after)

    # refine the accepted object: its box comes back, its logits are fed to the model, and
    # the next accept replaces label 1 instead of adding a new object
    dock.label_spin.setValue(1)
    dock.refine()
    assert len(dock.box_layer.data) == 1
    qtbot.waitUntil(lambda: dock.candidates is not None, timeout=60_000)
    assert dock.candidates_prompt.mask_logits is not None
    assert dock.accept()
    refined = dock.session.labels[0] == 1
    assert set(np.unique(dock.session.labels)) == {0, 1}
    # measured: 0.599 vs the truth; the same object, not a new one
    assert _iou(refined, truth) > 0.5 and _iou(refined, accepted) > 0.8
    dock.undo()
    np.testing.assert_array_equal(dock.session.labels, after)


def test_point_only_prompt_to_box_model_gets_a_hint(dock, qtbot):
    _open(dock, qtbot, "ultrasound")
    rows, cols = np.nonzero(dock.truth_mask())
    dock.add_point(float(np.median(rows)), float(np.median(cols)))
    qtbot.waitUntil(lambda: "box" in dock.hint.text().lower(), timeout=5_000)
    assert dock.points_layer.features["positive"].tolist() == [True]
    qtbot.waitUntil(lambda: dock.candidates is not None, timeout=60_000)
    assert "box" in dock.hint.text().lower()
    # background clicks: by the toggle (or Alt/Ctrl-click), red, label 0 in the prompt
    dock.negative_check.setChecked(True)
    dock.points_layer.add([[5.0, 5.0]])
    assert dock.points_layer.features["positive"].tolist() == [True, False]
    np.testing.assert_allclose(dock.points_layer.face_color[1], [1.0, 0.15, 0.15, 1.0])
    assert dock.prompt_for_slice(0).point_labels.tolist() == [1, 0]


def test_propagate_on_ct_volume_is_one_undo_step_and_exports(dock, qtbot, tmp_path):
    _open(dock, qtbot, "ct")
    vol = dock.session.volume
    assert vol.n_slices == 3
    gt = np.asarray(dock.viewer.layers[dock.gt_combo.currentText()].data) > 0
    # neighbouring slices are embedded in the background, with progress
    qtbot.waitUntil(lambda: dock.engine.stats.cache_entries >= 3, timeout=60_000)
    assert "embeddings ready" in dock.task_progress.format()
    # a prompt on slice 0, then a slice change before its result: the result is dropped
    dock.viewer.dims.set_current_step(0, 0)
    qtbot.waitUntil(lambda: dock.current_slice() == 0, timeout=5_000)
    dock.set_box(box_from_mask(gt[0]))
    qtbot.wait(1)
    dock.viewer.dims.set_current_step(0, 1)
    qtbot.waitUntil(lambda: not dock.engine_thread.busy, timeout=60_000)
    qtbot.wait(50)
    assert dock.candidates is None
    dock.clear_prompts()
    dock.viewer.dims.set_current_step(0, 1)
    qtbot.waitUntil(lambda: dock.current_slice() == 1, timeout=5_000)
    dock.set_box(box_from_mask(gt[1]))
    qtbot.waitUntil(lambda: dock.candidates is not None, timeout=60_000)
    assert dock.accept()
    assert _iou(dock.session.labels[1] == 1, gt[1]) > 0.75  # measured 0.84
    assert not dock.session.labels[[0, 2]].any()
    assert dock.propagate()
    qtbot.waitUntil(lambda: not dock.task_running, timeout=120_000)
    for z in (0, 2):
        # measured 0.85 / 0.82 with the propagated box
        assert _iou(dock.session.labels[z] == 1, gt[z]) > 0.7, z
    # export with the source geometry, read back onto the same grid
    from app.core.io import read_labels

    labels = dock.session.labels.copy()
    for name in ("liver.nii.gz", "liver_seg.dcm"):
        out = dock.export_labels(tmp_path / name)
        assert out is not None and out.is_file(), dock.status.text()
        back = read_labels(out, vol)
        np.testing.assert_array_equal(back > 0, labels > 0)
    dock.undo()
    assert not dock.session.labels[[0, 2]].any() and dock.session.labels[1].any()


def test_click_stream_during_embedding_stays_responsive(dock, qtbot):
    from qtpy.QtCore import QTimer

    _open(dock, qtbot, "ultrasound")
    truth = dock.truth_mask()
    base = coords.mask_to_box_xyxy(truth)
    dock.engine.clear_cache()  # the embedding is computed while the prompts stream in
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    boxes = [base + np.array([-d, -d, d, d], np.float32) for d in range(12, -1, -2)]
    for b in boxes:
        dock.set_box(b)
        qtbot.wait(60)
    last = boxes[-1]
    qtbot.waitUntil(lambda: dock.candidates is not None and
                    np.array_equal(dock.candidates_prompt.box_xyxy, last), timeout=60_000)
    qtbot.waitUntil(lambda: not dock.engine_thread.busy, timeout=60_000)
    qtbot.wait(50)
    timer.stop()
    gaps = np.diff(ticks)
    assert len(ticks) > 50
    assert gaps.max() < 0.100, f"event loop stalled for {gaps.max() * 1000:.0f} ms"
    # the result on screen is the last prompt's; overtaken ones were dropped, not shown
    stats = dock.engine_thread.stats
    assert stats["dropped_before_run"] + stats["dropped_after_run"] >= 1
    expected = dock.session.predict(0, dock.candidates_prompt).masks[0]
    np.testing.assert_array_equal(dock.selected_mask(), expected)
    assert len(dock.box_layer.data) == 1  # one box per slice: new boxes replaced old ones


def test_image_opened_through_napari_reader_is_adopted(dock, qtbot):
    """File menu / drag and drop go through our npe2 reader; the dock takes the new image."""
    from app.core.io.samples import sample_path

    layers = dock.viewer.open(str(sample_path("ultrasound")), plugin="samscope")
    qtbot.waitUntil(lambda: dock.image_layer is layers[0], timeout=10_000)
    assert dock.session.volume.shape == (1, 540, 800)
    assert dock.session.volume.source.endswith("006_HC.png")  # the reader's own Volume
    assert dock.box_layer.mode == "add_rectangle"  # ready to draw


def test_model_needing_a_download_offers_it(dock, qtbot):
    from app.core.models.registry import model_status

    idx = next((i for i in range(dock.model_combo.count())
                if model_status(dock.model_combo.itemData(i)) == "not downloaded"), None)
    if idx is None:
        pytest.skip("every model is on disk here")
    dock.model_combo.setCurrentIndex(idx)
    assert dock.download_button.isVisibleTo(dock)
    assert "MB" in dock.download_button.text()
    assert "needs a download" in dock.status.text()
    assert "not downloaded" in dock.model_combo.itemText(idx) or \
        "needs download" in dock.model_combo.itemText(idx)
