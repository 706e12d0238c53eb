"""SAM-family paths with a tiny, randomly initialised SAM (real SAM geometry, toy encoder).

Real ViT-B weights cannot be downloaded here and a ViT-B embedding takes ~40 s on these CPUs,
so these tests check shapes, coordinate conventions and checkpoint loading, not mask quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.core.engine import Engine
from app.core.errors import CheckpointRefusedError, SamScopeError
from app.core.image import Image2D
from app.core.models._preprocess import MEDSAM_1024, SAM_1024
from app.core.models.base import Prompt, PromptNotSupportedError
from app.core.models.checkpoints import CheckpointSource
from app.core.models.registry import ModelSpec, load_model_from_spec
from app.core.models.sam import SAM_CAPABILITIES, build_tiny_sam_net


def _tiny_spec(tmp_path, preprocessing=SAM_1024) -> tuple[ModelSpec, dict]:
    torch.manual_seed(0)
    net = build_tiny_sam_net()
    state = net.state_dict()
    return ModelSpec(
        name="tiny_sam", title="tiny", description="test", capabilities=SAM_CAPABILITIES,
        preprocessing=preprocessing,
        checkpoint=CheckpointSource("tiny_sam.pth", url="http://127.0.0.1:9/tiny_sam.pth"),
        build=build_tiny_sam_net,
    ), state


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    spec, state = _tiny_spec(tmp)
    path = tmp / "tiny.pth"
    torch.save({"model": state}, path)
    model = load_model_from_spec(spec, checkpoint=path, device="cpu")
    return model, state


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image2D.from_array(rng.integers(0, 255, (540, 800), dtype=np.uint8))


def test_checkpoint_weights_are_the_ones_loaded(tiny):
    model, state = tiny
    for k, v in model.net.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_gpu_saved_tiny_checkpoint_loads_on_cpu(tmp_path, monkeypatch):
    spec, state = _tiny_spec(tmp_path)
    path = tmp_path / "gpu.pth"
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, path)
    model = load_model_from_spec(spec, checkpoint=path, device="cpu")
    assert next(model.net.parameters()).device.type == "cpu"


def test_checkpoint_of_another_network_is_a_clear_error(tmp_path):
    spec, _ = _tiny_spec(tmp_path)
    path = tmp_path / "other.pth"
    torch.save({"image_encoder.foo": torch.zeros(2)}, path)
    with pytest.raises(SamScopeError, match="does not fit model 'tiny_sam'"):
        load_model_from_spec(spec, checkpoint=path, device="cpu")


def test_pickled_code_checkpoint_is_refused_by_the_loader(tmp_path):
    spec, _ = _tiny_spec(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": np.dtype("float32")}, path)  # numpy objects: not weights
    with pytest.raises(CheckpointRefusedError):
        load_model_from_spec(spec, checkpoint=path, device="cpu")


def test_embedding_and_multimask_shapes(tiny, image):
    model, _ = tiny
    emb = model.embed(image)
    assert tuple(emb.features.shape) == (1, 256, 64, 64)
    assert emb.original_size == (540, 800) and emb.input_size == (691, 1024)
    c = model.predict(emb, Prompt.from_points([[100, 200]]), multimask=True)
    assert c.masks.shape == (3, 540, 800) and c.masks.dtype == bool
    assert c.scores.shape == (3,) and c.low_res_logits.shape == (3, 256, 256)
    assert c.meaningful
    single = model.predict(emb, Prompt.from_box([10, 20, 300, 400]), multimask=False)
    assert single.masks.shape == (1, 540, 800)
    # low-res logits fed back, with a negative point
    again = model.predict(emb, Prompt(points_xy=[[100, 200], [5, 5]], point_labels=[1, 0],
                                      mask_logits=c.low_res_logits[0]))
    assert again.masks.shape == (3, 540, 800)


def test_masks_are_the_returned_low_res_logits_upsampled(tiny, image):
    # the full-resolution masks and the low-res logits handed back for refinement must be
    # the same prediction (crop to content, upsample, threshold at 0)
    model, _ = tiny
    emb = model.embed(image)
    c = model.predict(emb, Prompt.from_box([100, 50, 600, 500]), multimask=True)
    back = SAM_1024.logits_to_original(torch.from_numpy(c.low_res_logits), (691, 1024),
                                       (540, 800))
    # the masks are upsampled by matrix products over the positive crop: pixels may differ
    # only where the logit is zero up to float rounding
    differ = (back.numpy() > 0) != c.masks
    assert differ.sum() <= 1e-5 * differ.size
    assert np.all(np.abs(back.numpy()[differ]) < 1e-4)


def _spy_prompt_encoder(model, monkeypatch):
    seen = {}
    original = model.net.prompt_encoder.forward

    def spy(points, boxes, masks):
        seen["points"], seen["boxes"], seen["masks"] = points, boxes, masks
        return original(points, boxes, masks)

    monkeypatch.setattr(model.net.prompt_encoder, "forward", spy)
    return seen


def test_prompt_coordinates_reach_the_encoder_as_model_xy(tiny, image, monkeypatch):
    model, _ = tiny
    emb = model.embed(image)
    seen = _spy_prompt_encoder(model, monkeypatch)
    model.predict(emb, Prompt(points_xy=[[799, 0], [0, 539]], point_labels=[1, 0],
                              box_xyxy=[0, 0, 799, 539]))
    s = 1024 / 800  # 540 -> 691 rows: 691 / 540 = 1.2796
    pts, labels = seen["points"]
    np.testing.assert_allclose(
        pts[0].numpy(),
        [[(799.5) * s - 0.5, 0.5 * 691 / 540 - 0.5], [0.5 * s - 0.5, 539.5 * 691 / 540 - 0.5]],
        rtol=1e-5)
    assert labels[0].tolist() == [1, 0]
    np.testing.assert_allclose(seen["boxes"][0].numpy(),
                               [0.5 * s - 0.5, 0.5 * 691 / 540 - 0.5, 799.5 * s - 0.5,
                                539.5 * 691 / 540 - 0.5], rtol=1e-5)


def test_medsam_stretches_boxes(tmp_path, image, monkeypatch):
    spec, state = _tiny_spec(tmp_path, preprocessing=MEDSAM_1024)
    path = tmp_path / "t.pth"
    torch.save(state, path)
    model = load_model_from_spec(spec, checkpoint=path, device="cpu")
    emb = model.embed(image)
    assert emb.input_size == (1024, 1024)
    seen = _spy_prompt_encoder(model, monkeypatch)
    c = model.predict(emb, Prompt.from_box([0, 0, 799, 539]), multimask=False)
    np.testing.assert_allclose(seen["boxes"][0].numpy(),
                               [0.5 * 1.28 - 0.5, 0.5 * 1024 / 540 - 0.5,
                                1024 - 0.5 * 1.28 - 0.5, 1024 - 0.5 * 1024 / 540 - 0.5],
                               atol=1e-3)
    assert c.masks.shape == (1, 540, 800)


def test_several_boxes_give_one_mask_each(tiny, image):
    model, _ = tiny
    engine = Engine(model)
    boxes = np.array([[10, 10, 100, 100], [300, 200, 700, 500], [0, 0, 799, 539]], np.float32)
    c = engine.predict_boxes(image, boxes)
    assert c.masks.shape == (3, 540, 800) and not c.meaningful
    for i, b in enumerate(boxes):  # same as asking one box at a time
        one = engine.predict(image, Prompt.from_box(b), multimask=False)
        assert (one.masks[0] == c.masks[i]).mean() > 0.999
    assert engine.stats.embeddings_computed == 1


def test_bad_prompts(tiny, image):
    model, _ = tiny
    emb = model.embed(image)
    with pytest.raises(PromptNotSupportedError):
        model.predict(emb, Prompt())
    with pytest.raises(ValueError, match="outside the 800x540 image"):
        model.predict(emb, Prompt.from_box([0, 0, 800, 100]))
    with pytest.raises(ValueError, match="256, 256"):
        model.predict(emb, Prompt.from_box([0, 0, 10, 10], mask_logits=np.zeros((64, 64))))
