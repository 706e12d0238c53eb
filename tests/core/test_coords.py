"""napari (row, col) <-> prompt (x, y) conversions, and rectangles <-> inclusive boxes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.coords import (
    box_xyxy_to_rectangle,
    clip_box_xyxy,
    mask_to_box_xyxy,
    rectangle_to_box_xyxy,
    rowcol_to_xy,
    split_slice,
    xy_to_rowcol,
)


def test_click_swaps_axes_only():
    # napari data coords (row=10, col=3) is the pixel image[10, 3]: x=3, y=10
    np.testing.assert_allclose(rowcol_to_xy([[10, 3], [0.4, 7.6]]), [[3, 10], [7.6, 0.4]], rtol=1e-6)
    np.testing.assert_array_equal(xy_to_rowcol(rowcol_to_xy([[10, 3]])), [[10, 3]])


def test_split_slice_rounds_z_to_nearest_slice():
    z, xy = split_slice([[2.4, 5, 6], [2.6, 1, 2]])
    assert z.tolist() == [2, 3]
    np.testing.assert_array_equal(xy, [[6, 5], [2, 1]])


def test_rectangle_from_pixel_centres_is_inclusive():
    # drawn from the centre of pixel (row 2, col 3) to the centre of pixel (row 5, col 9)
    verts = [[2, 3], [2, 9], [5, 9], [5, 3]]
    np.testing.assert_array_equal(rectangle_to_box_xyxy(verts), [3, 2, 9, 5])


def test_rectangle_edges_between_pixels_take_the_pixels_inside():
    verts = [[1.5, 2.5], [1.5, 6.5], [4.5, 6.5], [4.5, 2.5]]  # edges between pixels
    box = rectangle_to_box_xyxy(verts)
    np.testing.assert_array_equal(box, [3, 2, 6, 4])
    # the same box selects exactly those pixels of an image
    img = np.zeros((10, 10), bool)
    img[2:5, 3:7] = True
    np.testing.assert_array_equal(mask_to_box_xyxy(img), box)


def test_degenerate_rectangle_gives_one_pixel_wide_box():
    box = rectangle_to_box_xyxy([[3.2, 1.1], [3.2, 1.3], [3.4, 1.3], [3.4, 1.1]])
    np.testing.assert_array_equal(box, [1, 3, 1, 3])


def test_rectangle_with_z_and_clipping():
    verts = [[7, -3, -2], [7, -3, 40], [7, 12, 40], [7, 12, -2]]
    np.testing.assert_array_equal(rectangle_to_box_xyxy(verts, (10, 20)), [0, 0, 19, 9])
    with pytest.raises(ValueError, match="outside the 20x10 image"):
        clip_box_xyxy([25, 0, 30, 5], (10, 20))


@given(
    x0=st.integers(0, 500), y0=st.integers(0, 500),
    w=st.integers(0, 300), h=st.integers(0, 300),
)
def test_box_rectangle_round_trip(x0, y0, w, h):
    box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
    np.testing.assert_array_equal(rectangle_to_box_xyxy(box_xyxy_to_rectangle(box)), box)


def test_mask_box_of_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        mask_to_box_xyxy(np.zeros((4, 4), bool))
