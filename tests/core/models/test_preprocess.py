"""Model-input preparation: intensities, resize/pad, prompt coordinates and mask geometry.

No network is run here: these check that the pixels, the prompts and the masks agree about
where things are, for every preprocessing recipe in the registry.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.core.image import Image2D, Window
from app.core.models._preprocess import LITEMEDSAM_256, MEDSAM_1024, SAM_1024

RECIPES = [LITEMEDSAM_256, SAM_1024, MEDSAM_1024]


def _blob_image(shape_hw, centre_xy, radius):
    h, w = shape_hw
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx - centre_xy[0]) ** 2 + (yy - centre_xy[1]) ** 2 <= radius**2)


def test_litemedsam_sizes():
    assert LITEMEDSAM_256.resized_size((540, 800)) == (173, 256)
    assert LITEMEDSAM_256.resized_size((1000, 1000)) == (256, 256)
    assert LITEMEDSAM_256.resized_size((277, 375)) == (189, 256)
    assert SAM_1024.resized_size((540, 800)) == (691, 1024)
    assert MEDSAM_1024.resized_size((540, 800)) == (1024, 1024)


@pytest.mark.parametrize("pre", RECIPES, ids=lambda p: p.name)
def test_image_edges_map_to_model_input_edges(pre):
    # pixel (x, y) spans [x - 0.5, x + 0.5] in prompt pixels: the outer edges of the image
    # must land on the outer edges of the resized content
    hw = (540, 800)
    h_in, w_in = pre.resized_size(hw)
    edges = pre.points_to_model(np.array([[-0.5, -0.5], [799.5, 539.5]]), hw)
    np.testing.assert_allclose(edges, [[-0.5, -0.5], [w_in - 0.5, h_in - 0.5]], atol=1e-4)


@pytest.mark.parametrize("pre", RECIPES, ids=lambda p: p.name)
def test_points_land_where_the_resized_pixels_are(pre):
    # a bright disc off the diagonal of a non-square image: after prepare(), its centroid in
    # the model input must be where points_to_model sends the original centroid (an x/y swap
    # or a half-pixel slip would miss by several pixels)
    hw = (300, 500)
    disc = _blob_image(hw, centre_xy=(380.0, 70.0), radius=30)
    img = Image2D(pixels=disc.astype(np.float32), window=Window(0.5, 1.0))
    arr, (h_in, w_in) = pre.prepare(img)
    content = arr[0, :h_in, :w_in]
    content = content - content.min()
    yy, xx = np.mgrid[0:h_in, 0:w_in]
    centroid_model = np.array([(xx * content).sum(), (yy * content).sum()]) / content.sum()
    ys, xs = np.nonzero(disc)
    expected = pre.points_to_model(np.array([[xs.mean(), ys.mean()]]), hw)[0]
    np.testing.assert_allclose(centroid_model, expected, atol=0.05 * pre.input_size / 256)


@pytest.mark.parametrize("pre", RECIPES, ids=lambda p: p.name)
def test_boxes_map_corner_by_corner(pre):
    hw = (540, 800)
    box = np.array([10, 20, 300, 400], np.float32)
    mapped = pre.boxes_to_model(box, hw)
    np.testing.assert_allclose(mapped[0, :2], pre.points_to_model([[10, 20]], hw)[0])
    np.testing.assert_allclose(mapped[0, 2:], pre.points_to_model([[300, 400]], hw)[0])


def test_prepare_litemedsam_minmax_and_padding():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, size=(540, 800)).astype(np.uint16)  # 12-bit in uint16
    img = Image2D(pixels=pixels, window=Window(2048, 4096))
    arr, (h, w) = LITEMEDSAM_256.prepare(img)
    assert arr.shape == (3, 256, 256) and arr.dtype == np.float32
    assert (h, w) == (173, 256)
    content = arr[:, :h, :w]
    assert content.min() == pytest.approx(0.0) and content.max() == pytest.approx(1.0)
    assert np.all(arr[:, h:, :] == 0)
    np.testing.assert_array_equal(arr[0], arr[1])  # grey repeated to 3 channels


def test_prepare_ct_goes_through_the_window():
    # HU from -1024 to 3000 with an abdomen window: values below/above the window saturate
    hu = np.linspace(-1024, 3000, 64 * 64, dtype=np.float32).reshape(64, 64)
    img = Image2D(pixels=hu.astype(np.int16), window=Window(50, 400), modality="CT")
    arr, _ = LITEMEDSAM_256.prepare(img)
    unit = arr[0]
    # ~ (−150 − −1024) / 4024 of the image is below the window: those pixels are all 0
    frac_zero = float((unit == 0).mean())
    assert 0.2 < frac_zero < 0.25
    assert float((unit >= 0.999).mean()) > 0.6  # everything above 250 HU saturates


def test_prepare_float_and_uint16_do_not_overflow():
    big = np.full((32, 48), 65535, np.uint16)
    big[:16] = 0
    arr, _ = SAM_1024.prepare(Image2D.from_array(big))
    assert np.isfinite(arr).all()
    f = np.random.default_rng(1).normal(1e6, 1e5, (32, 48)).astype(np.float64)
    arr, _ = LITEMEDSAM_256.prepare(Image2D.from_array(f))
    assert np.isfinite(arr).all() and arr.max() <= 1.0


def test_prepare_rgb_keeps_channels():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = 50
    arr, (h, w) = SAM_1024.prepare(Image2D.from_array(rgb))
    mean = np.array([123.675, 116.28, 103.53])
    std = np.array([58.395, 57.12, 57.375])
    expected = (np.array([200, 0, 50]) - mean) / std
    np.testing.assert_allclose(arr[:, h // 2, w // 2], expected, atol=1e-3)
    assert np.all(arr[:, h:, :] == 0)  # SAM pads after normalising


@pytest.mark.parametrize("pre", RECIPES, ids=lambda p: p.name)
@pytest.mark.parametrize("hw", [(540, 800), (1000, 1000), (277, 375), (120, 45)])
def test_logits_back_to_original_resolution(pre, hw):
    # simulate a perfect model: the object's mask in model-input space, downsampled to the
    # 256x256 low-res grid, must come back onto the object in the original image
    h, w = hw
    obj = _blob_image(hw, centre_xy=(0.3 * w, 0.6 * h), radius=0.2 * min(h, w))
    arr, resized_hw = pre.prepare(Image2D(pixels=obj.astype(np.float32), window=Window(0.5, 1)))
    model_mask = torch.from_numpy(arr[0] > 0.5).float()[None, None]
    low = torch.nn.functional.interpolate(model_mask, (256, 256), mode="area")
    logits = (low - 0.5) * 20
    back = pre.logits_to_original(logits[0], resized_hw, hw)
    assert back.shape == (1, h, w)
    mask = back[0].numpy() > 0
    iou = (mask & obj).sum() / (mask | obj).sum()
    assert iou > 0.93, iou


def test_cache_token_differs_between_recipes():
    tokens = {p.cache_token() for p in RECIPES}
    assert len(tokens) == 3


@pytest.mark.parametrize("pre", RECIPES, ids=lambda p: p.name)
def test_edges_and_centre_for_any_shape(pre):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None)
    @given(h=st.integers(1, 3000), w=st.integers(1, 3000))
    def check(h, w):
        h_in, w_in = pre.resized_size((h, w))
        assert 1 <= h_in <= pre.input_size and 1 <= w_in <= pre.input_size
        assert max(h_in, w_in) == pre.input_size
        pts = pre.points_to_model(np.array([[-0.5, -0.5], [w - 0.5, h - 0.5],
                                            [(w - 1) / 2, (h - 1) / 2]]), (h, w))
        np.testing.assert_allclose(pts[0], [-0.5, -0.5], atol=1e-3)
        np.testing.assert_allclose(pts[1], [w_in - 0.5, h_in - 0.5], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(pts[2], [(w_in - 1) / 2, (h_in - 1) / 2], rtol=1e-5,
                                   atol=1e-3)

    check()
