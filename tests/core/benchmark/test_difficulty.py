"""Difficulty factors on constructed shapes with known values."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from app.core.benchmark.difficulty import (
    boundary_complexity,
    contour_curvature,
    contrast,
    difficulty_factors,
    n_components,
)
from app.core.prompts import outer_ring


def _disc(r, shape=(400, 400), centre=(200, 200)):
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, centre, r, 1, -1)
    return m.astype(bool)


def _star(r=100, depth=40, arms=5):
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    rr = r + depth * np.cos(arms * t)
    pts = np.stack([200 + rr * np.cos(t), 200 + rr * np.sin(t)], 1).astype(np.int32)
    m = np.zeros((400, 400), np.uint8)
    cv2.fillPoly(m, [pts], 1)
    return m.astype(bool)


@pytest.mark.parametrize("r", [30, 100, 160])
def test_a_disc_is_round(r):
    disc = _disc(r)
    assert 1.0 <= boundary_complexity(disc) < 1.03
    assert contour_curvature(disc) == pytest.approx(1 / r, rel=0.1)


def test_a_star_is_more_complex_than_a_disc():
    star, disc = _star(), _disc(100)
    assert boundary_complexity(star) > 2.0 > 1.1 > boundary_complexity(disc)
    assert contour_curvature(star) > 2 * contour_curvature(disc)


def test_two_equal_discs_have_complexity_two():
    m = _disc(40, centre=(100, 200)) | _disc(40, centre=(300, 200))
    assert n_components(m) == 2
    assert boundary_complexity(m) == pytest.approx(2 * boundary_complexity(_disc(40)), rel=0.02)


def test_contrast_of_a_known_difference():
    """Inside mean 0.6, surroundings 0.4, both with sd 0.05: contrast (0.6-0.4)/0.05 = 4."""
    rng = np.random.default_rng(0)
    disc = _disc(60)
    img = np.where(disc, 0.6, 0.4) + rng.normal(0, 0.05, disc.shape)
    assert contrast(img, disc) == pytest.approx(4.0, rel=0.05)
    # the surroundings are what the ring holds: a far region of another value does not count
    img[:20] = 1.0
    assert contrast(img, disc) == pytest.approx(4.0, rel=0.05)
    flat = np.full(disc.shape, 0.5)
    assert contrast(flat, disc) == 0.0
    assert contrast(np.where(disc, 0.7, 0.5), disc) == math.inf


def test_outer_ring_surrounds_the_object_and_never_touches_it():
    disc = _disc(50)
    ring = outer_ring(disc)
    assert not (ring & disc).any()
    width = max(3, round(0.1 * 2 * math.sqrt(disc.sum() / math.pi)))  # 10
    dist = cv2.distanceTransform((~disc).astype(np.uint8), cv2.DIST_L2, 5)
    assert dist[ring].max() <= width and ring.sum() > 2 * math.pi * 50 * (width - 1)
    assert not outer_ring(np.zeros((5, 5), bool)).any()


def test_all_factors_of_a_row():
    disc = _disc(30)
    f = difficulty_factors(disc, np.where(disc, 0.8, 0.2))
    assert set(f) == {"size_fraction", "boundary_complexity", "curvature", "contrast",
                      "n_components"}
    assert f["size_fraction"] == pytest.approx(disc.sum() / disc.size)
    assert f["n_components"] == 1 and f["contrast"] == math.inf
    assert math.isnan(difficulty_factors(disc)["contrast"])
