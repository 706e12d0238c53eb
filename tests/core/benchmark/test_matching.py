"""Mask matching on a hand-made image: two objects, three predictions, answers worked out by
hand (IoU of each pair below)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.core.benchmark.matching import match_objects, overlap_matrices


@pytest.fixture
def case():
    """10 x 20 image. A = left half (100 px), B = right half (100 px).

    P0 covers both (200 px): IoU 0.5 with A and with B (Dice 2/3 each).
    P1 = A's first 4 columns (40 px): IoU 0.4 with A (Dice 80/140).
    P2 = B's first 3 columns (30 px): IoU 0.3 with B (Dice 60/130).
    """
    a = np.zeros((10, 20), bool)
    a[:, :10] = True
    b = ~a
    p = np.zeros((3, 10, 20), bool)
    p[0] = True
    p[1, :, :4] = True
    p[2, :, 10:13] = True
    return p, {1: a, 2: b}


def test_overlap_matrices_by_hand(case):
    p, objs = case
    iou, dice = overlap_matrices(p, [objs[1], objs[2]])
    assert iou == pytest.approx(np.array([[0.5, 0.4, 0.0], [0.5, 0.0, 0.3]]))
    assert dice == pytest.approx(np.array([[2 / 3, 80 / 140, 0.0], [2 / 3, 0.0, 60 / 130]]))


def test_cosmos_rule_lets_one_prediction_serve_both_objects(case):
    p, objs = case
    m = match_objects(p, objs)
    for rule in ("match_dice", "match_iou"):
        a, b = m[rule][1], m[rule][2]
        assert (a.pred, b.pred) == (0, 0)
        assert a.dice == pytest.approx(2 / 3) and b.iou == pytest.approx(0.5)
        assert a.matched == b.matched == 1
        assert a.precision is None and a.f1 is None


def test_hungarian_is_one_to_one_at_iou_half(case):
    """Best total IoU: A-P1 + B-P0 = 0.9 (A-P0 + B-P2 = 0.8). A-P1 is below 0.5, so only B is
    matched: precision 1/3, recall 1/2, F1 = 2 TP / (2 TP + FP + FN) = 2 / 5."""
    p, objs = case
    h = match_objects(p, objs)["hungarian"]
    assert h[2].pred == 0 and h[2].iou == pytest.approx(0.5) and h[2].matched == 1
    assert h[1].pred is None and h[1].iou == 0.0 and h[1].dice == 0.0 and h[1].matched == 0
    for r in h.values():
        assert r.precision == pytest.approx(1 / 3)
        assert r.recall == pytest.approx(1 / 2)
        assert r.f1 == pytest.approx(2 / 5)


def test_a_better_third_prediction_changes_the_assignment(case):
    p, objs = case
    p[1, :, :8] = True  # P1 now 80 px of A: IoU 0.8 -> A-P1 and B-P0 both match
    h = match_objects(p, objs)["hungarian"]
    assert (h[1].pred, h[2].pred) == (1, 0)
    assert h[1].precision == pytest.approx(2 / 3) and h[1].recall == 1.0
    assert h[1].f1 == pytest.approx(4 / 5)


def test_no_predictions(case):
    _, objs = case
    m = match_objects(np.zeros((0, 10, 20), bool), objs)
    for rule in m.values():
        for r in rule.values():
            assert r.pred is None and r.iou == 0.0 and r.matched == 0
    h = m["hungarian"][1]
    assert math.isnan(h.precision) and h.recall == 0.0 and h.f1 == 0.0
