"""Fine-tuning: prompt sampling, the split by case, a short real training run, save/reload,
safe loading, cancel, and the shipped point-capable default on images it never saw."""

from __future__ import annotations

import json
import pickle
import shutil
import threading
from collections import Counter

import numpy as np
import pytest

from app.core.finetune import (
    FinetuneConfig,
    TrainingSample,
    finetune,
    load_training_samples,
    sample_prompt,
    split_by_case,
)
from app.core.image import Image2D
from app.core.models.base import Prompt


def _two_blobs() -> np.ndarray:
    mask = np.zeros((80, 120), bool)
    mask[10:41, 10:51] = True  # 31 x 41, the largest
    mask[50:71, 80:101] = True  # 21 x 21
    return mask


# --- prompts ----------------------------------------------------------------------------------
def test_sampled_prompts_follow_the_recipe():
    mask = _two_blobs()
    rng = np.random.default_rng(0)
    cfg = FinetuneConfig()
    kinds: Counter = Counter()
    for _ in range(400):
        tp = sample_prompt(mask, rng, cfg)
        assert tp.target.shape == mask.shape and tp.target.any()
        assert not (tp.target & ~mask).any()  # the target is the mask or one of its parts
        if tp.prompt.has_box:
            kinds["box"] += 1
            assert not tp.ambiguous and not tp.prompt.has_points
            tp.prompt.validate_for(mask.shape)
            x0, y0, x1, y1 = tp.prompt.box_xyxy.astype(int)
            inside = np.zeros_like(mask)
            inside[y0:y1 + 1, x0:x1 + 1] = True
            # a (possibly jittered) box still covers most of its target
            assert (tp.target & inside).sum() > 0.5 * tp.target.sum()
            continue
        kinds["points"] += 1
        pts, labels = tp.prompt.points_xy.astype(int), tp.prompt.point_labels
        assert 1 <= (labels == 1).sum() <= cfg.max_points
        for (x, y), lab in zip(pts, labels):
            assert mask[y, x] == bool(lab)  # positives on the object, negatives off it
        assert tp.ambiguous == (len(pts) == 1)
        kinds["negative"] += int((labels == 0).any())
        kinds["part_target"] += int(tp.target.sum() < mask.sum())
    assert 0.2 < kinds["box"] / 400 < 0.4
    assert kinds["negative"] > 20 and kinds["part_target"] > 20


def test_single_click_goes_to_the_farthest_pixel_when_asked():
    mask = np.zeros((60, 60), bool)
    mask[10:41, 20:51] = True  # 31 x 31: a unique centre (25, 35) in (row, col)
    cfg = FinetuneConfig(p_box=0, p_farthest=1.0, max_points=1, p_negative=0)
    tp = sample_prompt(mask, np.random.default_rng(3), cfg)
    assert tp.prompt.points_xy.tolist() == [[35.0, 25.0]] and tp.ambiguous


def _sample(case: str, task: str, z: int = 0) -> TrainingSample:
    img = Image2D.from_array(np.full((8, 8), z, np.uint8))
    return TrainingSample(img, np.ones((8, 8), bool), case=case, task=task, source=f"{case}#{z}")


def test_split_is_by_case_per_dataset_and_reproducible():
    samples = [_sample(f"a/{i}", "a") for i in range(8)]
    samples += [_sample(f"vol/{i}", "vol", z) for i in range(3) for z in range(4)]
    samples += [_sample("single/0", "single", z) for z in range(3)]
    train, val = split_by_case(samples, 0.25, seed=7)
    tr_cases, va_cases = {s.case for s in train}, {s.case for s in val}
    assert not tr_cases & va_cases
    assert len(train) + len(val) == len(samples)
    assert sum(c.startswith("a/") for c in va_cases) == 2
    assert sum(c.startswith("vol/") for c in va_cases) == 1
    assert sum(s.case.startswith("vol/") for s in val) == 4  # all slices of the case
    assert "single/0" in tr_cases  # a one-case dataset trains only
    again = split_by_case(samples, 0.25, seed=7)[1]
    assert [s.source for s in again] == [s.source for s in val]


def test_cross_validation_folds_validate_every_case_once():
    from app.core.finetune import folds_by_case

    samples = [_sample(f"a/{i}", "a") for i in range(10)]
    samples += [_sample(f"vol/{i}", "vol", z) for i in range(3) for z in range(4)]
    samples += [_sample("single/0", "single", z) for z in range(3)]
    folds = folds_by_case(samples, 4, seed=3)
    assert len(folds) == 4
    seen: list[str] = []
    for train, val in folds:
        tr_cases, va_cases = {s.case for s in train}, {s.case for s in val}
        assert not tr_cases & va_cases
        assert len(train) + len(val) == len(samples)
        assert "single/0" in tr_cases
        # every dataset keeps training cases; about a quarter of "a" in each fold
        assert any(c.startswith("vol/") for c in tr_cases)
        assert 2 <= sum(c.startswith("a/") for c in va_cases) <= 3
        # the slices of a volume stay together
        for c in va_cases:
            assert sum(s.case == c for s in val) == sum(s.case == c for s in samples)
        seen += sorted(va_cases)
    assert sorted(seen) == sorted({s.case for s in samples} - {"single/0"})
    again = folds_by_case(samples, 4, seed=3)
    assert [[s.source for s in v] for _, v in again] == [[s.source for s in v]
                                                         for _, v in folds]
    assert [[s.case for s in v] for _, v in folds_by_case(samples, 4, seed=4)] != [
        [s.case for s in v] for _, v in folds]
    with pytest.raises(ValueError, match="2 folds"):
        folds_by_case(samples, 1, seed=0)


def test_split_rejects_a_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_case([_sample("a/0", "a")], 1.0, 0)


def test_empty_training_set_is_a_dataset_error():
    from app.core.errors import DatasetError

    with pytest.raises(DatasetError, match="no training samples"):
        finetune([], [])


def test_missing_dataset_folder(tmp_path):
    from app.core.errors import DatasetError

    with pytest.raises(DatasetError, match="does not exist"):
        load_training_samples(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no dataset"):
        load_training_samples(tmp_path / "empty")


# --- a short real training run ------------------------------------------------------------------
@pytest.fixture(scope="module")
def fetal(shared_data):
    return load_training_samples(shared_data / "png_pairs" / "fetal_head_us")


def test_training_decodes_through_the_inference_path(fetal):
    """What the optimiser sees is what a user gets: the trainer's four outputs are the
    inference path's single-mask and multimask outputs, and its masks the user's masks."""
    import torch

    from app.core.finetune import _Trainer
    from app.core.models.registry import load_model

    model = load_model("litemedsam", device="cpu", backend="torch")
    sample = fetal[0]
    emb = model.embed(sample.image)
    ys, xs = np.nonzero(sample.mask)
    trainer = _Trainer(model, "cpu", None)
    for prompt in (Prompt(points_xy=[[xs[0], ys[0]], [5, 5]], point_labels=[1, 0]),
                   Prompt(box_xyxy=[xs.min(), ys.min(), xs.max(), ys.max()])):
        low, iou = trainer.forward(emb, prompt)
        assert low.requires_grad, "training needs gradients through the decoder"
        single = model.predict(emb, prompt, multimask=False)
        np.testing.assert_allclose(low[:1].detach().numpy(), single.low_res_logits, atol=1e-5)
        np.testing.assert_allclose(iou[:1].detach().numpy(), single.scores, atol=1e-6)
        np.testing.assert_array_equal(trainer.lowres_to_mask(emb, low[0]), single.masks[0])
        with torch.no_grad():
            multi = model.decoder_outputs(emb.features, *model.model_prompt(
                prompt, None if prompt.box_xyxy is None else prompt.box_xyxy[None],
                emb.original_size))[0][0, 1:]
        np.testing.assert_allclose(low[1:].detach().numpy(), multi.numpy(), atol=1e-5)


@pytest.mark.parametrize("feed_back", [True, False])
def test_every_click_of_a_sequence_is_trained(fetal, feed_back):
    """``every_click_loss``: a simulated 4-click sequence of the standard (logits fed back)
    or the paper protocol back-propagates at each click: four forward passes with gradients,
    the clicks growing by one each time, each new click placed in the previous answer's
    error and labelled by the ground truth, the fed-back logits those of the click before."""
    import torch

    from app.core.finetune import _click_sequence_loss, _Trainer
    from app.core.models.registry import load_model

    model = load_model("litemedsam_points", device="cpu", backend="torch")
    model = getattr(model, "tuned", model)
    sample = fetal[1]
    emb = model.embed(sample.image)
    trainer = _Trainer(model, "cpu", None)
    params = trainer.params()
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    seen = []
    forward = trainer.forward

    def spy(e, prompt):
        out = forward(e, prompt)
        seen.append((prompt, out[0].requires_grad, out[0].detach().clone()))
        return out

    trainer.forward = spy
    try:
        loss = _click_sequence_loss(trainer, emb, sample.mask, 4, feed_back,
                                    np.random.default_rng(0), monotone_weight=1.0, scale=1.0)
    finally:
        for p in params:
            p.requires_grad_(False)
    assert np.isfinite(loss) and loss > 0
    assert [len(p.points_xy) for p, _, _ in seen] == [1, 2, 3, 4]
    assert all(g for _, g, _ in seen)
    for prompt, _, _ in seen:  # labels from the ground truth at each click
        for (x, y), lab in zip(prompt.points_xy.astype(int), prompt.point_labels):
            assert lab == int(sample.mask[y, x])
    assert seen[0][0].mask_logits is None
    for (prompt, _, _), (_, _, before) in zip(seen[1:], seen[:-1]):
        if feed_back:
            assert any(np.array_equal(prompt.mask_logits, before[k].numpy())
                       for k in (1, 2, 3))
        else:
            assert prompt.mask_logits is None
    grads = [p.grad for p in params if p.grad is not None]
    assert grads and sum(float(torch.count_nonzero(g)) for g in grads) > 0


@pytest.fixture(scope="module")
def trained(fetal):
    """12 steps of the shipped recipe (augmented copies, click sequences of both iterative
    protocols, box distillation) on 3 real ultrasound images, validated on the same images
    (does it learn?); click sequences kept short and one augmented copy, for speed."""
    samples = fetal[:3]
    reports = []
    cfg = FinetuneConfig(steps=12, batch_size=4, lr=3e-4, val_every=6, patience=0, p_box=0.15,
                         p_correction=0.2, max_clicks=3, augment_copies=1, seed=0)
    res = finetune(samples, samples, base="litemedsam", name="test_ft", config=cfg,
                   device="cpu", on_progress=reports.append)
    return res, reports, samples


def test_loss_falls_and_clicks_start_to_work(trained):
    res, reports, _ = trained
    hist = res.history
    assert [h["step"] for h in hist] == [0, 6, 12]
    assert hist[2]["loss"] < hist[1]["loss"]
    # base LiteMedSAM: a single click gives an almost empty mask
    assert hist[0]["val_point_iou"] < 0.1
    assert hist[-1]["val_point_iou"] > hist[0]["val_point_iou"] + 0.2
    phases = Counter(r.phase for r in reports)
    # validation and training images are the same three, plus one augmented copy of each:
    # nine reports, six encoder runs
    assert phases["embedding"] == 9 and phases["training"] == 12 and phases["done"] == 1
    assert res.stopped == "steps"
    seen = res.manifest["recipe"]["prompt_kinds_seen"]
    assert seen["clicks"] > 0 and seen["box"] > 0 and seen["points"] > 0


def test_manifest_records_recipe_data_and_scores(trained):
    res, _, samples = trained
    m = res.manifest
    assert m["base_model"] == "litemedsam" and m["name"] == "test_ft"
    assert m["recipe"]["seed"] == 0 and m["recipe"]["lr"] == 3e-4 and m["recipe"]["steps"] == 12
    assert m["training"]["steps_taken"] == 12 and m["training"]["embeddings_computed"] == 6
    assert m["data"]["n_train_images"] == 3 and len(m["data"]["train_sha256"]) == 64
    assert m["data"]["n_augmented_images"] == 3
    before, after = m["validation"]["before"], m["validation"]["after"]
    assert before["fetal_head_us"]["n"] == 3
    assert after["all"]["mode1_first"] > before["all"]["mode1_first"]
    # the box routing is decided by paired evidence and recorded with its reason
    routing = m["validation"]["box_routing"]
    assert routing["decoder"] == m["box_decoder"] in ("tuned", "base") and routing["reason"]
    assert set(routing["per_task"]) == {"mode3", "mode5"}
    json.dumps(m)  # serialisable as is
    assert res.model.capabilities.meaningful_multimask and res.model.capabilities.points


def test_the_kept_step_scores_what_the_saved_weights_score(trained):
    """The best validated step's figures (the history, the card's recipe table) are those of
    the model as saved: its three ranked candidates (training from the box-only base once
    scored the base's single output instead, 0.607 where the saved model gave 0.579) and its
    float16 weights."""
    res, _, _ = trained
    tr = res.manifest["training"]
    best = next(h for h in tr["history"] if h["step"] == tr["best_step"])
    tuned = res.manifest["validation"]["after_tuned_decoder"]["fetal_head_us"]
    assert tuned["mode1_first"] == best["val_point_iou"]
    assert tuned["mode3_first"] == best["val_box_iou"]


def test_save_reload_predicts_identically(trained, tmp_path):
    from dataclasses import replace

    from app.core.models.finetuned import load_finetuned, read_manifest, save_finetuned

    res, _, samples = trained
    out = save_finetuned(res.model, tmp_path / "m", res.manifest)
    manifest = read_manifest(out)
    assert manifest["weights_dtype"] == "float16" and manifest["weights_bytes"] < 10e6
    reloaded = load_finetuned(out, device="cpu")
    # bit-identity is checked torch against torch (tests/core/models/test_backends.py checks
    # the exported graphs of fine-tuned models against torch)
    from app.core.models.backends import set_backend

    set_backend(reloaded, "torch")
    assert reloaded.name == "test_ft" and reloaded.capabilities.meaningful_multimask
    emb = res.model.embed(samples[0].image)
    for prompt in (Prompt.from_points([[400, 270]]), Prompt.from_box([250, 120, 560, 420])):
        a = res.model.predict(emb, prompt)
        b = reloaded.predict(replace(emb, model_name=reloaded.name), prompt)
        np.testing.assert_array_equal(a.low_res_logits, b.low_res_logits)
        np.testing.assert_array_equal(a.scores, b.scores)
    with pytest.raises(Exception, match="already exists"):
        save_finetuned(res.model, out, res.manifest)


def test_changed_or_pickled_weights_are_refused(trained, tmp_path):
    from app.core.errors import CheckpointRefusedError
    from app.core.models.checkpoints import sha256_file
    from app.core.models.finetuned import load_finetuned, save_finetuned

    res, _, _ = trained
    out = save_finetuned(res.model, tmp_path / "m", res.manifest)
    weights = out / "decoder.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointRefusedError, match="SHA-256"):
        load_finetuned(out, device="cpu")

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    weights.write_bytes(pickle.dumps({"prompt_encoder.x": Evil()}))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["weights_sha256"] = sha256_file(weights)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointRefusedError):
        load_finetuned(out, device="cpu")
    assert not marker.exists()


def test_cancel_keeps_the_weights_so_far(fetal):
    cancel = threading.Event()

    def on_progress(p):
        if p.phase == "training" and p.done == 2:
            cancel.set()

    cfg = FinetuneConfig(steps=50, batch_size=1, seed=1, augment_copies=0)
    res = finetune(fetal[3:4], [], config=cfg, device="cpu", on_progress=on_progress,
                   cancel=cancel, evaluate=False)
    assert res.stopped == "cancelled"
    assert res.manifest["training"]["steps_taken"] == 2


# --- the shipped point-capable default --------------------------------------------------------
def test_shipped_points_model_answers_a_single_click_on_unseen_images(fetal):
    from app.core.engine import Engine
    from app.core.finetune import evaluate_modes
    from app.core.models.finetuned import bundled_model_dir, read_manifest
    from app.core.models.registry import load_model

    folder = bundled_model_dir("litemedsam_points")
    if not (folder / "manifest.json").is_file():
        pytest.skip("litemedsam_points is not trained in this checkout")
    manifest = read_manifest(folder)
    val_cases = set(manifest["data"]["val_cases"])
    unseen = [s for s in fetal if s.case in val_cases][:2]
    assert len(unseen) == 2 and not val_cases & set(manifest["data"]["train_cases"])
    model = load_model("litemedsam_points", device="cpu")
    assert model.capabilities.points and model.capabilities.meaningful_multimask
    engine = Engine(model)
    scores = evaluate_modes(model, unseen, modes=(1,), engine=engine)["all"]
    # base LiteMedSAM gives ~0.0 for this click; the fine-tuned decoder segments the head
    assert scores["mode1_first"] > 0.5 and scores["mode1_best_score"] > 0.5
    # the three candidates of one click are alternatives, not copies
    from app.core.metrics import iou
    from app.core.prompts import farthest_from_boundary

    pairwise = []
    for s in unseen:
        r, c = farthest_from_boundary(s.mask, np.random.default_rng(0))
        m = engine.predict(s.image, Prompt.from_points([[c, r]])).masks
        pairwise += [iou(m[a], m[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert np.mean(pairwise) < 0.95


def test_shipped_model_folder_is_small_and_documented():
    from app.core.models.finetuned import bundled_model_dir

    folder = bundled_model_dir("litemedsam_points")
    if not (folder / "manifest.json").is_file():
        pytest.skip("litemedsam_points is not trained in this checkout")
    assert (folder / "decoder.pt").stat().st_size < 20e6
    card = (folder / "MODEL_CARD.md").read_text()
    for needed in ("Validation", "Data", "Recipe", "CC BY", "fetal_head_us", "cxr_lungs"):
        assert needed in card


def test_bundled_folder_can_be_copied_and_loaded_by_path(tmp_path):
    from app.core.models.finetuned import bundled_model_dir, resolve_finetuned

    folder = bundled_model_dir("litemedsam_points")
    if not (folder / "manifest.json").is_file():
        pytest.skip("litemedsam_points is not trained in this checkout")
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert resolve_finetuned(str(copy)) == copy
    assert resolve_finetuned("no_such_model") is None


def test_shipped_model_answers_boxes_exactly_like_the_base(fetal, litemedsam):
    from dataclasses import replace

    from app.core.models.finetuned import bundled_model_dir, read_manifest
    from app.core.models.registry import load_model
    from app.core.prompts import tight_box

    if not (bundled_model_dir("litemedsam_points") / "manifest.json").is_file():
        pytest.skip("litemedsam_points is not trained in this checkout")
    model = load_model("litemedsam_points", device="cpu")
    if read_manifest(bundled_model_dir("litemedsam_points"))["box_decoder"] != "base":
        pytest.skip("this build answers boxes with the fine-tuned decoder")
    s = fetal[5]
    emb = litemedsam.embed(s.image)
    box = Prompt.from_box(tight_box(s.mask))
    base = litemedsam.predict(emb, box)
    ours = model.predict(replace(emb, model_name=model.name), box)
    np.testing.assert_array_equal(base.low_res_logits, ours.low_res_logits)
    # a click together with the box goes to the fine-tuned decoder: three candidates
    both = Prompt(points_xy=[[400, 270]], point_labels=[1], box_xyxy=tight_box(s.mask))
    assert len(model.predict(replace(emb, model_name=model.name), both)) == 3


def test_the_time_budget_is_kept(fetal):
    import time

    budget_s = 20.0
    t0 = time.perf_counter()
    cfg = FinetuneConfig(steps=100_000, minutes=budget_s / 60, batch_size=2, seed=2,
                         val_every=5, augment_copies=0)
    res = finetune(fetal[6:7], fetal[7:8], config=cfg, device="cpu", evaluate=False)
    elapsed = time.perf_counter() - t0
    assert res.stopped == "time"
    assert res.manifest["training"]["steps_taken"] > 0
    assert elapsed < budget_s * 1.2, elapsed
