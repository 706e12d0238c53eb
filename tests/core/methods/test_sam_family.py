"""The registry-model adapter over the real LiteMedSAM engine (one small real image)."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.benchmark.datasets import iter_images, open_dataset
from app.core.methods.sam_family import SamFamilyMethod
from app.core.metrics import iou
from app.core.models.base import Prompt
from app.core.prompts import mode_prompts


@pytest.fixture(scope="module")
def brain_slice(shared_data):
    ds = open_dataset(shared_data / "msd_like")
    ref = next(c for c in ds.cases if c.case == "brain1")
    # the slice with the largest lesion area (z16, 984 px)
    return max(iter_images(ref, [1]), key=lambda s: s.masks[1].sum())


def test_adapter_embeds_once_and_flags_point_prompts(lite_engine, brain_slice):
    method = SamFamilyMethod("litemedsam", engine=lite_engine)
    assert not method.capabilities.points and "box" in method.note
    assert not method.supports(Prompt.from_points([[10, 10]]))
    assert method.supports(Prompt.from_box([1, 1, 20, 20]))
    before = lite_engine.stats
    state = method.prepare(brain_slice.image)
    again = method.prepare(brain_slice.image)
    after = lite_engine.stats
    assert state is again
    assert after.embeddings_computed + after.embeddings_reused == (
        before.embeddings_computed + before.embeddings_reused + 2)
    assert after.embeddings_reused >= before.embeddings_reused + 1
    gt = brain_slice.masks[1]
    box = mode_prompts(gt, 5, np.random.default_rng(0)).prompts[0]
    cands = method.predict(state, box)
    assert cands.masks.shape[1:] == gt.shape
    # measured 0.73 for this lesion; a broken box mapping gives ~0
    assert iou(cands.masks[0], gt) > 0.5
    stats = method.stats()
    assert stats["prepared"] == 2 and stats["predictions"] >= 1
