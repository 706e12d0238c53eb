"""Classical methods: same prompts as SAM, masks checked against ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.image import Image2D
from app.core.methods import CLASSICAL_METHODS, create_method
from app.core.metrics import iou
from app.core.models.base import Prompt, PromptNotSupportedError
from app.core.prompts import mode_prompts


@pytest.fixture(scope="module")
def disc_image():
    """A bright ellipse on a darker, noisy background (300 x 400), and its mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :400]
    gt = ((yy - 140) / 70.0) ** 2 + ((xx - 220) / 100.0) ** 2 <= 1.0
    pixels = np.where(gt, 170.0, 70.0) + rng.normal(0, 12, gt.shape)
    return Image2D.from_array(np.clip(pixels, 0, 255).astype(np.uint8)), gt


@pytest.mark.parametrize("name", CLASSICAL_METHODS)
def test_box_prompt_segments_the_object(name, disc_image):
    image, gt = disc_image
    method = create_method(name)
    state = method.prepare(image)
    box = mode_prompts(gt, 5, np.random.default_rng(0)).prompts[0]
    cands = method.predict(state, box)
    assert cands.masks.shape == (1, *gt.shape) and cands.masks.dtype == bool
    assert cands.low_res_logits.shape == (1, 256, 256)
    assert not cands.meaningful
    assert iou(cands.masks[0], gt) > 0.85, name


@pytest.mark.parametrize(
    ("name", "threshold"),
    # GrabCut from one click treats the whole image as its box: a weaker start (measured 0.58)
    [("random_walker", 0.8), ("region_growing", 0.8), ("grabcut", 0.5)],
)
def test_point_prompt_segments_the_object(name, threshold, disc_image):
    image, gt = disc_image
    method = create_method(name)
    state = method.prepare(image)
    point = mode_prompts(gt, 1, np.random.default_rng(0)).prompts[0]
    assert iou(method.predict(state, point).masks[0], gt) > threshold, name


def test_negative_click_removes_a_region(disc_image):
    image, gt = disc_image
    method = create_method("region_growing")
    state = method.prepare(image)
    # a positive click in the background grows the background; a negative click in the
    # object then has no effect on it, and a negative click in the background removes it
    bg = method.predict(state, Prompt.from_points([[20, 20]]))
    assert iou(bg.masks[0], ~gt) > 0.8
    both = method.predict(state, Prompt.from_points([[20, 20], [220, 140]], [1, 0]))
    assert iou(both.masks[0], ~gt) > 0.8
    gone = method.predict(state, Prompt.from_points([[220, 140], [20, 20]], [1, 0]))
    assert iou(gone.masks[0], gt) > 0.8


def test_empty_prompt_is_refused(disc_image):
    image, _ = disc_image
    method = create_method("grabcut")
    with pytest.raises(PromptNotSupportedError):
        method.predict(method.prepare(image), Prompt())


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="random_walker"):
        create_method("no_such_method")


def test_describe_records_settings():
    d = create_method("gac").describe()
    assert d["name"] == "geodesic_active_contour" and d["iterations"] > 0
