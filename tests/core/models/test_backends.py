"""The exported-graph backend (ONNX Runtime) against torch, on real images.

Equivalence: per mask IoU >= 0.99, predicted IoU within 0.01, same candidate order, for box,
point, point + box and mask-input prompts, with LiteMedSAM, the bundled fine-tuned
``litemedsam_points`` (three ranked candidates; boxes routed to the base decoder) and a tiny
SAM (1024-px geometry, meaningful multimask). Graphs are exported once into a temporary cache
for the whole module; a second model with the same weights finds them.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from app.core.coords import mask_to_box_xyxy  # noqa: E402
from app.core.models.base import Prompt  # noqa: E402


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("samscope_cache")
        mp.setenv("SAMSCOPE_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def cases(shared_data):
    """Two real images with their ground truth: fetal-head ultrasound and chest X-ray."""
    from app.core.io import read_image, read_labels

    out = []
    for folder, idx in (("fetal_head_us", 3), ("cxr_lungs", 5)):
        d = shared_data / "png_pairs" / folder
        path = sorted((d / "images").iterdir())[idx]
        vol = read_image(path)
        gt = read_labels((d / "masks" / path.name).with_suffix(".png"), reference=vol)[0] > 0
        out.append((vol.slice(0), gt))
    return out


def _prompts(gt: np.ndarray, first_logits: np.ndarray):
    from scipy import ndimage

    lab, n = ndimage.label(gt)
    big = 1 + int(np.argmax(ndimage.sum(gt, lab, range(1, n + 1))))
    obj = lab == big
    box = mask_to_box_xyxy(obj)
    dist = ndimage.distance_transform_edt(obj)
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    pt = [[float(x), float(y)]]
    bg = [[float(box[0]), float(box[1])]]
    return {
        "box": Prompt.from_box(box),
        "point": Prompt.from_points(pt),
        "points+/-": Prompt(points_xy=[*pt, *bg], point_labels=[1, 0]),
        "point+box": Prompt(points_xy=pt, point_labels=[1], box_xyxy=box),
        "box+mask": Prompt(box_xyxy=box, mask_logits=first_logits),
        "point+mask": Prompt(points_xy=pt, point_labels=[1], mask_logits=first_logits),
    }


def _assert_same(a, b, what: str) -> None:
    assert a.masks.shape == b.masks.shape, what
    for k, (ma, mb) in enumerate(zip(a.masks, b.masks)):
        union = (ma | mb).sum()
        iou = 1.0 if union == 0 else (ma & mb).sum() / union
        assert iou >= 0.99, f"{what}: mask {k} IoU {iou:.4f}"
    np.testing.assert_allclose(a.scores, b.scores, atol=0.01, err_msg=what)
    if len(a) > 1:
        assert list(np.argsort(-a.scores)) == list(np.argsort(-b.scores)), what
    assert a.meaningful == b.meaningful


@pytest.mark.parametrize(("name", "backend"), [("litemedsam", "onnx"),
                                               ("litemedsam_points", "onnx"),
                                               ("litemedsam", "openvino")])
def test_exported_graphs_match_torch_on_real_images(name, backend, cases, export_cache):
    from app.core.models.backends import model_backend
    from app.core.models.registry import load_model

    if backend == "openvino":
        pytest.importorskip("openvino")
    status: list[str] = []
    torch_model = load_model(name, device="cpu", backend="torch")
    onnx_model = load_model(name, device="cpu", backend=backend, on_status=status.append)
    assert model_backend(torch_model) == "torch" and model_backend(onnx_model) == backend
    assert not status, "nothing is exported before first use"
    for image, gt in cases:
        et, eo = torch_model.embed(image), onnx_model.embed(image)
        assert isinstance(eo.features, np.ndarray) and eo.features.shape == (1, 256, 64, 64)
        np.testing.assert_allclose(eo.features, et.features.numpy(), atol=1e-3)
        first = torch_model.predict(et, Prompt.from_box(mask_to_box_xyxy(gt)), multimask=False)
        for kind, prompt in _prompts(gt, first.low_res_logits[0]).items():
            for multimask in (True, False):
                a = torch_model.predict(et, prompt, multimask=multimask)
                b = onnx_model.predict(eo, prompt, multimask=multimask)
                _assert_same(a, b, f"{name} {kind} multimask={multimask}")
        # several boxes at once (the benchmark's mode 4)
        boxes = np.array([mask_to_box_xyxy(gt), [5, 5, 60, 50]], np.float32)
        _assert_same(torch_model.predict_boxes(et, boxes), onnx_model.predict_boxes(eo, boxes),
                     f"{name} predict_boxes")
    # the tight-box quality is what the model is known for (a broken export would miss it)
    image, gt = cases[0]
    c = onnx_model.predict(onnx_model.embed(image), Prompt.from_box(mask_to_box_xyxy(gt)))
    m = c.masks[c.best_index]
    assert (m & gt).sum() / (m | gt).sum() > 0.7  # torch: 0.77 on this image


def test_export_happens_once_per_weights_digest(export_cache, cases):
    from app.core.models.registry import load_model

    first: list[str] = []
    model = load_model("litemedsam", device="cpu", backend="onnx", on_status=first.append)
    image, gt = cases[0]
    model.predict(model.embed(image), Prompt.from_box(mask_to_box_xyxy(gt)))
    graphs = sorted(p.name for p in (export_cache / "exports").glob("*.onnx"))
    assert any(g.startswith("encoder-") for g in graphs)
    assert any(g.startswith("prepare-") for g in graphs) and any(g.startswith("click-") for g in graphs)
    # a second load finds the graphs (the test above or the line before exported them)
    again: list[str] = []
    model2 = load_model("litemedsam", device="cpu", backend="onnx", on_status=again.append)
    model2.predict(model2.embed(image), Prompt.from_box(mask_to_box_xyxy(gt)))
    assert model2._runtime.exported == [] and not any("Export" in s for s in again)
    assert sorted(p.name for p in (export_cache / "exports").glob("*.onnx")) == graphs
    # a damaged graph file is exported again, not trusted
    enc = next((export_cache / "exports").glob("encoder-*.onnx"))
    enc.write_bytes(b"not a graph")
    model3 = load_model("litemedsam", device="cpu", backend="onnx")
    np.testing.assert_allclose(model3.embed(image).features, model2.embed(image).features,
                               atol=1e-5)
    assert model3._runtime.exported == [str(enc)]


def test_changed_weights_are_exported_again(export_cache):
    """Weights modified in place after the first use (e.g. fine-tuning) get their own graph."""
    import torch

    from app.core.image import Image2D
    from app.core.models._preprocess import SAM_1024
    from app.core.models._sam_family import SamFamilyModel
    from app.core.models.backends import set_backend
    from app.core.models.sam import SAM_CAPABILITIES, build_tiny_sam_net

    torch.manual_seed(0)
    model = SamFamilyModel(build_tiny_sam_net(), name="tiny_sam", preprocessing=SAM_1024,
                           capabilities=SAM_CAPABILITIES, device="cpu")
    ref = SamFamilyModel(build_tiny_sam_net(), name="tiny_sam", preprocessing=SAM_1024,
                         capabilities=SAM_CAPABILITIES, device="cpu")
    ref.net.load_state_dict(model.net.state_dict())
    set_backend(model, "onnx")
    rng = np.random.default_rng(0)
    image = Image2D.from_array(rng.integers(0, 255, (300, 420), dtype=np.uint8))
    prompts = [Prompt.from_points([[100, 120], [300, 40]], labels=[1, 0]),
               Prompt.from_box([50, 60, 250, 220])]
    for step in range(2):
        if step == 1:  # an in-place change of the decoder, as an optimiser step makes
            with torch.no_grad():
                for p in (model.net.mask_decoder.parameters()):
                    p.add_(0.01 * torch.randn_like(p))
                ref.net.load_state_dict(model.net.state_dict())
        e_ref, e = ref.embed(image), model.embed(image)
        for prompt in prompts:
            a, b = ref.predict(e_ref, prompt), model.predict(e, prompt)
            assert len(a) == 3
            _assert_same(a, b, f"tiny SAM step {step}")
    assert len(model._runtime.exported) == 5  # encoder, decoder pair, changed decoder pair


def test_backend_names_and_auto():
    import importlib.util

    from app.core.models.backends import resolve_backend

    has_ov = importlib.util.find_spec("openvino") is not None
    assert resolve_backend("auto", "cpu") == ("openvino+onnx" if has_ov else "onnx")
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("openvino", "cpu") == "openvino"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("tensorrt", "cpu")
    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve_backend("onnx", "cuda")
    with pytest.raises(ValueError, match="openvino backend runs on the CPU"):
        resolve_backend("openvino", "cuda:1")


def test_per_image_work_runs_once_per_slice_and_never_goes_stale(cases, export_cache):
    """Clicks on one embedding run the decoder's per-image graph once; a changed mask input
    (even the same array changed in place) or another slice runs it again."""
    from app.core.models.registry import load_model

    torch_model = load_model("litemedsam", device="cpu", backend="torch")
    model = load_model("litemedsam", device="cpu", backend="onnx")
    (image, gt), (image2, gt2) = cases
    emb, emb_t = model.embed(image), torch_model.embed(image)
    box = mask_to_box_xyxy(gt)
    model.predict(emb, Prompt.from_box(box))  # opens both decoder graphs
    rt = model._runtime
    stamp, prepare, path = rt._sessions["prepare"]
    calls = []

    def counting(inputs):
        calls.append(bool(inputs["has_mask_input"][0]))
        return prepare(inputs)

    rt._sessions["prepare"] = (stamp, counting, path)
    rt._prepared.clear()
    ys, xs = np.nonzero(gt)
    for i in range(0, len(xs), len(xs) // 5)[:5]:
        model.predict(emb, Prompt(points_xy=[[xs[i], ys[i]]], point_labels=[1], box_xyxy=box))
    assert calls == [False], "five clicks on one slice: the per-image graph ran once"

    logits = torch_model.predict(emb_t, Prompt.from_box(box), multimask=False).low_res_logits[0]
    feed = logits.copy()
    for _ in range(2):  # refining one object: its logits fed back unchanged
        _assert_same(torch_model.predict(emb_t, Prompt(box_xyxy=box, mask_logits=logits)),
                     model.predict(emb, Prompt(box_xyxy=box, mask_logits=feed)), "refine")
    assert calls == [False, True]
    feed *= -1  # the same array, changed in place: not the answer kept for it
    _assert_same(torch_model.predict(emb_t, Prompt(box_xyxy=box, mask_logits=-logits)),
                 model.predict(emb, Prompt(box_xyxy=box, mask_logits=feed)), "changed mask")
    assert calls == [False, True, True]
    # another slice, then back: each embedding has its own entry
    emb2 = model.embed(image2)
    model.predict(emb2, Prompt.from_box(mask_to_box_xyxy(gt2)))
    model.predict(emb, Prompt.from_box(box))
    assert calls == [False, True, True, False]


def test_auto_falls_back_from_openvino_to_onnx_runtime(cases, export_cache, monkeypatch):
    """A workstation whose OpenVINO cannot compile (a broken plugin, a frozen bundle without
    it) still gets exported graphs: 'auto' says why and runs ONNX Runtime; asked for by name,
    openvino fails with the reason instead."""
    pytest.importorskip("openvino")
    from app.core.models import _onnx
    from app.core.models._onnx import BackendUnavailableError
    from app.core.models.backends import model_backend
    from app.core.models.registry import load_model

    def broken(path, threads):
        raise RuntimeError("Device with 'CPU' name is not registered in the OpenVINO Runtime")

    monkeypatch.setattr(_onnx, "_open_openvino", broken)
    image, gt = cases[0]
    status: list[str] = []
    model = load_model("litemedsam", device="cpu", backend="auto", on_status=status.append)
    assert model_backend(model) == "openvino+onnx"
    emb = model.embed(image)
    assert model_backend(model) == "onnx"
    assert any("not registered" in s and s.endswith("using ONNX Runtime") for s in status)
    reference = load_model("litemedsam", device="cpu", backend="onnx")
    box = Prompt.from_box(mask_to_box_xyxy(gt))
    _assert_same(reference.predict(reference.embed(image), box), model.predict(emb, box),
                 "after the fallback")
    strict = load_model("litemedsam", device="cpu", backend="openvino")
    with pytest.raises(BackendUnavailableError, match="not registered"):
        strict.embed(image)
