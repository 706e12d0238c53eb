"""Metrics against hand computation on tiny masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.core.metrics import dice, hd95, iou, nsd, size_fraction, surface_distances


def _mask(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


def test_iou_and_dice_by_hand():
    gt = _mask((6, 6), slice(0, 2), slice(0, 3))  # 6 pixels
    pred = _mask((6, 6), slice(0, 2), slice(0, 2))  # 4 pixels, all inside gt
    assert iou(pred, gt) == pytest.approx(4 / 6)
    assert dice(pred, gt) == pytest.approx(2 * 4 / (4 + 6))
    assert iou(np.zeros_like(gt), gt) == 0.0
    assert iou(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    assert size_fraction(gt) == pytest.approx(6 / 36)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        iou(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_hd95_and_nsd_of_shifted_squares():
    # 3x3 squares shifted by one column: 8 of 16 border distances are 0, 8 are 1 pixel
    gt = _mask((8, 8), slice(2, 5), slice(2, 5))
    pred = _mask((8, 8), slice(2, 5), slice(3, 6))
    d_pg, d_gp = surface_distances(pred, gt)
    assert sorted(d_pg.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert sorted(d_gp.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert hd95(pred, gt) == pytest.approx(1.0)
    assert nsd(pred, gt, tolerance_mm=0.5) == pytest.approx(0.5)
    assert nsd(pred, gt, tolerance_mm=1.0) == pytest.approx(1.0)
    # column spacing 2 mm: the 1-pixel column shift is now 2 mm
    assert hd95(pred, gt, spacing_mm=(1.0, 2.0)) == pytest.approx(2.0)
    # per direction: 4 border pixels at 0 mm, 1 at 1 mm (row neighbour), 3 at 2 mm
    assert nsd(pred, gt, spacing_mm=(1.0, 2.0), tolerance_mm=1.5) == pytest.approx(10 / 16)


def test_single_pixels_with_anisotropic_spacing():
    gt = _mask((3, 6), 0, 3)
    pred = _mask((3, 6), 0, 0)
    assert hd95(pred, gt, spacing_mm=(1.0, 0.5)) == pytest.approx(1.5)
    assert nsd(pred, gt, spacing_mm=(1.0, 0.5), tolerance_mm=1.0) == 0.0
    assert nsd(pred, gt, spacing_mm=(1.0, 0.5), tolerance_mm=2.0) == 1.0


def test_empty_prediction():
    gt = _mask((5, 5), slice(1, 3), slice(1, 3))
    empty = np.zeros_like(gt)
    assert math.isnan(hd95(empty, gt))
    assert nsd(empty, gt) == 0.0
    assert hd95(empty, empty) == 0.0
