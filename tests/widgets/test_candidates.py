"""Candidate previews: three tiles, selection, and live IoU/Dice computed right."""

from __future__ import annotations

import numpy as np
import pytest

from app.widgets.candidates import CandidatesWidget, render_preview

pytestmark = pytest.mark.gui


def test_three_candidates_selection_and_truth(qtbot):
    w = CandidatesWidget()
    qtbot.addWidget(w)
    img = np.linspace(0, 1, 60 * 80, dtype=np.float32).reshape(60, 80)
    masks = np.zeros((3, 60, 80), bool)
    masks[0, 10:20, 10:20] = True
    masks[1, 10:30, 10:30] = True
    masks[2, 5:40, 5:50] = True
    got = []
    w.selected.connect(got.append)
    w.show_candidates(img, masks, np.array([0.5, 0.9, 0.7]), selected=1)
    assert w.count == 3 and w.current == 1 and got == [1]
    assert all(t.isVisibleTo(w) for t in w.tiles)
    assert "0.90" in w.tiles[1].caption.text()
    # the scores against the ground truth come from the controller (one metric path)
    w.set_scores([(0.25, 0.4), (1.0, 1.0), (0.254, 0.405)])
    assert w.truth_scores()[1] == (1.0, 1.0)
    assert "IoU 1.000" in w.tiles[1].truth.text() and "Dice 0.400" in w.tiles[0].truth.text()
    w.set_scores(None)
    assert w.tiles[1].truth.text() == ""
    w.select(2)
    assert w.current == 2 and got[-1] == 2
    w.select(7)  # out of range: ignored
    assert w.current == 2
    # one mask: the other tiles hide
    w.show_candidates(img, masks[:1], np.array([0.3]))
    assert w.count == 1 and not w.tiles[1].isVisibleTo(w)


def test_preview_marks_the_mask_in_colour():
    img = np.zeros((50, 50), np.float32)
    mask = np.zeros((50, 50), bool)
    mask[20:30, 20:30] = True
    rgb = render_preview(img, mask, (slice(0, 50), slice(0, 50)), (255, 200, 0), size_px=50)
    assert rgb.shape == (50, 50, 3)
    assert rgb[25, 25, 0] > 100 and rgb[5, 5].sum() == 0
