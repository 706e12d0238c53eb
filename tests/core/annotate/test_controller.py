"""The annotation workflow driven step by step like a user, without a window, on the bundled
samples with the real models: the three ways the old dock lost or corrupted work, the model
choice that fits the prompt, and the session log (replay, crash recovery, live sessions)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from app.core import coords
from app.core.annotate import AnnotationController, Decision, UnsavedWorkError, recovery
from app.core.annotate.replay import replay_log
from app.core.metrics import iou


@pytest.fixture(scope="module")
def points_engine():
    """The default choice: litemedsam_points (boxes -> LiteMedSAM's decoder, clicks -> ours)."""
    from app.core.engine import Engine
    from app.core.models.registry import load_model

    return Engine(load_model("litemedsam_points", device="cpu"))


@pytest.fixture(scope="module")
def ultrasound():
    from app.core.io.samples import load_sample

    return load_sample("ultrasound")


@pytest.fixture(scope="module")
def ct():
    from app.core.io.samples import load_sample

    return load_sample("ct")


def _centre(mask):
    rows, cols = np.nonzero(mask)
    k = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return float(cols[k]), float(rows[k])  # (x, y)


def _controller(engine, tmp_path, **kw):
    return AnnotationController(engine=engine, log_dir=tmp_path / "sessions", **kw)


def test_object_clicks_stay_object_clicks_after_accept_undo_clear_restore(
        points_engine, ultrasound, tmp_path):
    volume, truth = ultrasound
    head = truth[0] > 0
    c = _controller(points_engine, tmp_path)
    c.open(volume, truth)
    x, y = _centre(head)
    c.add_point(x, y)
    assert c.prompt().point_labels.tolist() == [1]
    assert c.candidate_set is not None and c.candidate_set.answered_by == "LiteMedSAM (points)"
    first = c.accept()
    assert first.label == 1 and first.effort["clicks"] == 1
    # the bug: after an accept the next click came out as background
    c.add_point(x, y)
    assert c.prompt().point_labels.tolist() == [1]
    c.clear_prompts()
    c.add_point(x, y)
    assert c.prompt().point_labels.tolist() == [1]
    c.undo()  # the click
    c.undo()  # the clear
    c.add_point(x + 5, y)
    assert [cl.positive for cl in c.prompts.clicks(0)] == [True, True]
    # a background click is one only when asked for
    c.set_positive(False)
    c.add_point(5, 5)
    c.set_positive(True)
    c.add_point(x, y + 5)
    assert c.prompt().point_labels.tolist() == [1, 1, 0, 1]
    c.clear_prompts()
    c.restore_labels(c.labels.copy())
    c.add_point(x, y)
    assert c.prompt().point_labels.tolist() == [1]
    # the accepted click mask is the head, scored against the ground truth
    assert iou(c.labels[0] == 1, head) > 0.85  # measured 0.92 with one centre click


def test_restore_then_new_object_gets_a_new_label(points_engine, ultrasound, tmp_path):
    volume, truth = ultrasound
    head = truth[0] > 0
    restored = np.zeros(volume.shape, np.uint16)
    restored[0][head] = 1
    restored[0, :40, :40] = 3
    c = _controller(points_engine, tmp_path)
    c.open(volume)
    assert c.restore_labels(restored)
    assert c.next_label == 4
    c.set_box([600, 400, 700, 500])
    obj = c.accept()
    assert obj.label == 4
    assert (c.labels == 1).sum() == head.sum() - np.logical_and(
        head, c.labels == 4).sum()  # label 1 only lost what the new object painted over
    assert (c.labels == 3).sum() == 1600
    c.undo()  # the accept: the box comes back
    assert c.next_label == 4 and not (c.labels == 4).any() and c.prompts.box(0) is not None
    c.undo()  # the box
    c.undo()  # the restore itself
    assert not c.labels.any() and c.next_label == 1


def test_switching_image_or_quitting_with_unexported_labels_asks(points_engine, ultrasound, ct,
                                                                 tmp_path):
    volume, truth = ultrasound
    asked: list[str] = []
    answer = {"value": Decision.CANCEL}

    def confirm(reason):
        asked.append(reason)
        return answer["value"]

    c = _controller(points_engine, tmp_path, confirm_unsaved=confirm)
    c.open(volume)
    c.set_box(coords.mask_to_box_xyxy(truth[0] > 0))
    c.accept()
    assert c.has_unsaved_work
    # Cancel keeps the image and its labels
    assert not c.open(ct[0])
    assert asked == ["open another image"] and c.volume is volume and c.labels.any()
    # Save: the callback exports; then the new image opens
    out = tmp_path / "head.png"
    answer["value"] = Decision.SAVE

    def save(reason):
        asked.append(reason)
        c.export(out)
        return Decision.SAVE

    c.confirm_unsaved = save
    assert c.open(ct[0])
    assert out.is_file() and c.volume is ct[0] and not c.labels.any()
    # nothing unexported: no question
    c.confirm_unsaved = confirm
    assert c.open(volume) and asked == ["open another image", "open another image"]
    # quitting asks too; Cancel stays
    c.set_box(coords.mask_to_box_xyxy(truth[0] > 0))
    c.accept()
    answer["value"] = Decision.CANCEL
    assert not c.close("quit") and asked[-1] == "quit"
    # without a way to ask, leaving raises instead of dropping the work
    c.confirm_unsaved = None
    with pytest.raises(UnsavedWorkError, match="not exported"):
        c.open(ct[0])


def test_clean_quit_keeps_unexported_work_unless_discarded(points_engine, ultrasound, tmp_path):
    volume, truth = ultrasound
    box = coords.mask_to_box_xyxy(truth[0] > 0)
    c = _controller(points_engine, tmp_path)
    c.open(volume)
    c.set_box(box)
    c.accept()
    expected = c.labels.copy()
    # while the session runs, a second instance does not offer its work as a crash
    assert recovery.find_pending(tmp_path / "sessions") == ([], [])
    c.shutdown()  # the process ends without anyone being asked
    pending, problems = recovery.find_pending(tmp_path / "sessions")
    assert problems == [] and len(pending) == 1 and pending[0].n_objects == 1
    labels, _ = recovery.rebuild(pending[0])
    np.testing.assert_array_equal(labels, expected)
    # restored into a new session, the old log is retired, and the restore is unexported work
    c2 = _controller(points_engine, tmp_path)
    c2.open(volume)
    c2.restore_labels(labels)
    recovery.retire(pending[0], "restored")
    assert c2.has_unsaved_work and c2.next_label == 2
    c2.close("quit", discard=True)  # the user's explicit Discard
    assert recovery.find_pending(tmp_path / "sessions") == ([], [])
    # exported work is not offered either
    c3 = _controller(points_engine, tmp_path)
    c3.open(volume)
    c3.set_box(box)
    c3.accept()
    c3.export(tmp_path / "mask.png")
    c3.shutdown()
    assert recovery.find_pending(tmp_path / "sessions") == ([], [])


@pytest.mark.parametrize("sample", ["ultrasound", "ct"])
def test_recorded_log_replays_to_the_same_label_map(points_engine, ultrasound, ct, sample,
                                                    tmp_path):
    volume, truth = ultrasound if sample == "ultrasound" else ct
    c = _controller(points_engine, tmp_path)
    c.open(volume)
    z = volume.n_slices // 2
    c.set_slice(z)
    obj = truth[z] > 0
    c.set_box(coords.mask_to_box_xyxy(obj))
    x, y = _centre(obj)
    c.add_point(x, y)
    c.accept()
    x0, y0, x1, y1 = coords.mask_to_box_xyxy(obj)
    c.set_box([x0, y0, (x0 + x1) / 2, y1])  # a second object: the left half, box + clicks
    c.add_point(x0 + (x1 - x0) / 4, (y0 + y1) / 2)
    c.set_positive(False)
    c.add_point(3, 3)
    c.undo()
    c.set_positive(True)
    c.accept()
    if volume.n_slices > 1:
        c.select_object(1)
        assert c.propagate(1)
    c.refine(1)
    c.add_point(x, y)
    c.accept()
    c.undo()
    c.redo()
    expected = c.labels.copy()
    assert len(c.object_labels()) == 2
    path = c.log_path
    c.shutdown()
    # with the same model and weights: bit for bit, every accept matching its record
    result = replay_log(path, engine=points_engine)
    assert result.mismatches == []
    np.testing.assert_array_equal(result.labels, expected)
    assert result.model["weights_sha256"] and result.model["name"] == "litemedsam_points"
    from app.core.models.backends import BACKENDS, model_backend

    assert result.model["backend"] == model_backend(points_engine.model)
    assert result.model["backend"] in BACKENDS and result.model["backend"] != "auto"
    # effort counts every click made, the undone background click too
    assert [(e.clicks, e.boxes) for e in result.effort][:2] == [(1, 1), (2, 1)]
    # without a model, from the recorded masks (what crash recovery does)
    np.testing.assert_array_equal(replay_log(path).labels, expected)


def test_a_model_that_cannot_answer_clicks_says_so(lite_engine, ultrasound, tmp_path):
    volume, truth = ultrasound
    c = _controller(lite_engine, tmp_path)
    hints: list[str] = []
    c.events.hint.connect(hints.append)
    c.open(volume)
    c.add_point(*_centre(truth[0] > 0))
    assert c.candidate_set is None and c.accept() is None
    assert "trained on boxes" in hints[-1]
    c.set_box(coords.mask_to_box_xyxy(truth[0] > 0))  # box + click: the box model answers
    assert c.candidate_set is not None and c.candidate_set.answered_by == "LiteMedSAM"


def test_default_choice_routes_boxes_and_clicks(points_engine, ultrasound, tmp_path):
    volume, truth = ultrasound
    head = truth[0] > 0
    c = _controller(points_engine, tmp_path)
    c.open(volume, truth)
    c.set_box(coords.mask_to_box_xyxy(head))
    cs = c.candidate_set
    assert cs.answered_by == "LiteMedSAM" and cs.shown == (0,)
    (box_iou, _), = c.truth_scores()
    assert box_iou > 0.9  # measured 0.938 on this typical sample
    c.add_point(*_centre(head))
    assert c.candidate_set.answered_by == "LiteMedSAM (points)"
    assert len(c.candidate_set.shown) == 3


def test_damaged_and_torn_logs_are_reported_not_raised(points_engine, ultrasound, tmp_path):
    volume, truth = ultrasound
    c = _controller(points_engine, tmp_path)
    c.open(volume)
    c.set_box(coords.mask_to_box_xyxy(truth[0] > 0))
    c.accept()
    path = c.log_path
    c.shutdown()
    with open(path, "a") as fh:
        fh.write('{"t": 1, "action": "acc')  # torn by a crash mid-write
    (work,), problems = recovery.find_pending(tmp_path / "sessions")
    assert problems == [] and "incomplete last line" in work.problems[0]
    bad = path.with_name("zzz-damaged.jsonl")
    bad.write_text("not json at all\n")
    pending, problems = recovery.find_pending(tmp_path / "sessions")
    assert len(pending) == 1 and "zzz-damaged.jsonl" in problems[0]


def test_a_full_disk_on_the_log_is_told_not_swallowed(points_engine, ultrasound, tmp_path,
                                                     monkeypatch):
    volume, truth = ultrasound
    errors: list[str] = []
    c = _controller(points_engine, tmp_path)
    c.events.error.connect(errors.append)
    c.open(volume)

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    c.set_box(coords.mask_to_box_xyxy(truth[0] > 0))
    assert c.accept() is not None and c.labels.any()  # the work stays in memory
    assert "No space left" in errors[-1] and str(tmp_path) in errors[-1]
    assert "export" in c.log_problem


_CRASH_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from app.core import coords
    from app.core.annotate import AnnotationController
    from app.core.engine import Engine
    from app.core.io.samples import load_sample
    from app.core.models.registry import load_model

    volume, truth = load_sample("ct")
    c = AnnotationController(engine=Engine(load_model("litemedsam", device="cpu")),
                             log_dir=sys.argv[1])
    c.open(volume)
    for z in range(volume.n_slices):
        c.set_slice(z)
        c.set_box(coords.mask_to_box_xyxy(truth[z] > 0))
        c.accept()
    np.save(sys.argv[2], c.labels)
    print("accepted", flush=True)
    import time
    time.sleep(60)
""")


def test_killed_right_after_an_accept_recovers_every_object(tmp_path):
    script = tmp_path / "annotate.py"
    script.write_text(_CRASH_SCRIPT)
    sessions = tmp_path / "sessions"
    proc = subprocess.Popen([sys.executable, str(script), str(sessions), str(tmp_path / "x.npy")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "accepted"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    expected = np.load(tmp_path / "x.npy")
    assert set(np.unique(expected)) == {0, 1, 2, 3}
    (work,), problems = recovery.find_pending(sessions)
    assert problems == [] and work.n_objects == 3
    labels, _ = recovery.rebuild(work)
    np.testing.assert_array_equal(labels, expected)
    header = json.loads(work.path.read_text().splitlines()[0])
    assert header["image"]["source"].endswith("ct")


def test_two_instances_keep_their_own_recovery(points_engine, ultrasound, ct, tmp_path):
    """One log per image and session, locked while it lives: a second instance never offers
    (or retires) a running instance's work, and a clean exit of one leaves the other's alone."""
    sessions = tmp_path / "sessions"
    a = _controller(points_engine, tmp_path)
    b = _controller(points_engine, tmp_path)
    a.open(ultrasound[0])
    a.accept_mask(ultrasound[1][0] > 0)
    b.open(ct[0])
    b.accept_mask(ct[1][1] > 0, z=1)
    a_log = a.log_path
    assert a_log != b.log_path
    assert recovery.find_pending(sessions) == ([], [])  # both alive: nothing to offer
    a.shutdown()  # a ends without exporting; b keeps running
    (work,), _ = recovery.find_pending(sessions)
    assert work.path == a_log and work.source.endswith("280_HC.png")
    assert recovery.prune_logs(sessions, keep=0) == 0  # nothing pending or live is deleted
    b.export(tmp_path / "liver.nii.gz")
    b.shutdown()
    (work,), _ = recovery.find_pending(sessions)  # b's exported work is not offered
    assert work.path == a_log


def test_objects_are_named_coded_measured_and_exported_with_their_names(points_engine, ct,
                                                                         tmp_path):
    import highdicom as hd

    from app.core.io.itksnap import itksnap_path_for, read_itksnap_labels

    volume, truth = ct
    c = _controller(points_engine, tmp_path)
    c.open(volume, truth)
    c.set_slice(1)
    c.set_box(coords.mask_to_box_xyxy(truth[1] > 0))
    c.accept()
    c.set_box([20, 20, 60, 60])  # a second object that matches no ground truth
    c.accept()
    c.set_name(1, "liver")  # typed: the terminology knows it
    c.set_name(2, "my marker")
    liver, marker = c.objects()
    assert (liver.label, liver.name, liver.snomed) == (1, "liver", "10200004")
    assert marker.snomed == "" and marker.truth_iou == 0.0
    sz, sy, sx = volume.spacing_mm
    assert liver.size_unit == "mL" and liver.size == pytest.approx(
        liver.n_voxels * sz * sy * sx / 1000)
    assert liver.truth_iou > 0.75  # scored against the liver label it overlaps (measured 0.84)
    c.set_visible(2, False)
    assert [o.visible for o in c.objects()] == [True, False]
    # NIfTI + ITK-SNAP label description beside it
    out = c.export(tmp_path / "ct_labels.nii.gz")
    desc = read_itksnap_labels(itksnap_path_for(out))
    assert desc[1] == (liver.colour, "liver") and desc[2][1] == "my marker"
    # DICOM SEG: names as segment labels, the known one with its SNOMED CT code
    seg = hd.seg.segread(str(c.export(tmp_path / "ct_labels.dcm")))
    described = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert described[1].SegmentLabel == "liver" and described[2].SegmentLabel == "my marker"
    assert described[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert described[1].SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == \
        "Anatomical Structure"


def test_rtstruct_export_reads_back_with_rt_utils(points_engine, ct, tmp_path):
    pytest.importorskip("rt_utils")
    from app.core.io.rtstruct import read_rtstruct_masks

    volume, truth = ct
    c = _controller(points_engine, tmp_path)
    c.open(volume)
    c.set_slice(1)
    c.set_box(coords.mask_to_box_xyxy(truth[1] > 0))
    c.accept()
    assert c.propagate(1)
    c.set_name(1, "Liver")
    out = c.export(tmp_path / "ct_rt.dcm", format="rtstruct")
    import pydicom

    ds = pydicom.dcmread(str(out))
    assert ds.Modality == "RTSTRUCT" and ds.StructureSetROISequence[0].ROIName == "Liver"
    back = read_rtstruct_masks(out, volume)["Liver"]
    mine = c.labels == 1
    assert back.shape == mine.shape and not c.has_unsaved_work
    assert iou(back, mine) > 0.95  # contours of the masks, rasterised again (measured 0.99+)
    for z in range(volume.n_slices):  # each slice's contour on its own slice
        assert iou(back[z], mine[z]) > 0.9, z
