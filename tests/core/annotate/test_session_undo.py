"""Undo history and session edits, on label maps built in the test (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.annotate.session import SegmentSession, box_from_mask
from app.core.annotate.undo import UndoStack, apply_label_change
from app.core.image import Volume


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture
def session():
    vol = Volume(pixels=np.random.default_rng(0).normal(size=(4, 64, 80)).astype(np.float32))
    return SegmentSession(vol)


def test_accept_undo_redo_many_levels(session):
    a = _disc((64, 80), (20, 20), 8)
    b = _disc((64, 80), (40, 50), 10)
    session.accept(1, a, 1)
    session.accept(1, b, 2)
    session.accept(2, b, 2)
    after = session.labels.copy()
    assert (session.labels[1] == 1).sum() == a.sum()
    assert session.undo() and session.undo() and session.undo()
    assert not session.labels.any()
    assert session.undo() is None
    for _ in range(3):
        session.redo()
    np.testing.assert_array_equal(session.labels, after)
    # a new edit drops the redo branch
    session.undo()
    session.accept(3, a, 5)
    assert session.redo() is None
    assert (session.labels[2] == 0).all() and (session.labels[3] == 5).sum() == a.sum()


def test_refine_replaces_only_that_label(session):
    a = _disc((64, 80), (30, 30), 12)
    session.accept(0, a, 1)
    session.accept(0, _disc((64, 80), (30, 60), 6), 2)
    smaller = _disc((64, 80), (30, 30), 5)
    session.accept(0, smaller, 1, replace=True)
    assert (session.labels[0] == 1).sum() == smaller.sum()
    assert (session.labels[0] == 2).sum() > 0
    session.undo()
    assert (session.labels[0] == 1).sum() == a.sum()


def test_clear_and_delete_are_undoable(session):
    session.accept(0, _disc((64, 80), (30, 30), 12), 1)
    session.accept(2, _disc((64, 80), (30, 30), 12), 1)
    session.accept(2, _disc((64, 80), (10, 10), 4), 3)
    before = session.labels.copy()
    session.delete_label(1)
    assert not (session.labels == 1).any() and (session.labels == 3).any()
    session.clear_all()
    assert not session.labels.any()
    session.undo()
    session.undo()
    np.testing.assert_array_equal(session.labels, before)
    assert session.next_free_label() == 2


def test_label_edit_stores_only_the_changed_box():
    labels = np.zeros((50, 512, 512), np.uint16)
    new = labels.copy()
    new[10, 100:110, 200:220] = 4
    edit = apply_label_change(labels, new)
    assert edit.nbytes == 2 * 10 * 20 * 2
    stack = UndoStack(max_bytes=10_000)
    stack.push(edit)
    stack.undo()
    assert not labels.any()


def test_box_from_mask_is_inclusive_and_clipped():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    np.testing.assert_array_equal(box_from_mask(m), [3, 2, 8, 4])
    np.testing.assert_array_equal(box_from_mask(m, 5), [0, 0, 11, 9])
    assert box_from_mask(np.zeros((3, 3), bool)) is None
