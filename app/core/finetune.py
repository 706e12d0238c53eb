"""Adapt a SAM-family model to labelled data: train its prompt encoder and mask decoder.

The image encoder stays frozen, so every training image is embedded **once** (through the
engine's cache) and each training step only runs the small prompt encoder + mask decoder
(LiteMedSAM: 4 M parameters, ~0.2 s per prompt forward + backward on one CPU core).

Prompts are drawn with the benchmark's own simulator (:mod:`app.core.prompts`): points at the
farthest-from-boundary pixel and at random inside the object, negative clicks near it,
tight and jittered boxes, and correction clicks (the RITM protocol's next click) with the
previous low-resolution logits fed back. Prompt coordinates go through the model's own
:class:`~app.core.models._preprocess.Preprocessing`, exactly as at inference.

Loss, as SAM was trained: a single click is ambiguous, so its binary cross-entropy + Dice is
taken on the **best** of the three multimask outputs; any other prompt (a box, several clicks,
a click with a previous mask) is unambiguous and every output is trained on it, so the single
output, the first candidate and the best-scored candidate all answer it. The IoU head learns the
true IoU of each trained output (mean squared error).

>>> result = finetune(samples, base="litemedsam", config=FinetuneConfig(minutes=5))  # doctest: +SKIP
>>> save_finetuned(result.model, "my_model", result.manifest)                        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import DatasetError
from app.core.image import Image2D
from app.core.models.base import Embedding, Prompt
from app.core.models.finetuned import POINT_CAPABILITIES, FinetunedModel

__all__ = [
    "TrainingSample",
    "FinetuneConfig",
    "FinetuneProgress",
    "FinetuneResult",
    "load_training_samples",
    "split_by_case",
    "sample_prompt",
    "evaluate_modes",
    "finetune",
    "POINT_CAPABILITIES",
    "choose_box_decoder",
    "volume_samples",
]


ProgressCallback = Callable[["FinetuneProgress"], None]


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TrainingSample:
    """One labelled 2D image.

    Parameters
    ----------
    image : Image2D
        As the model sees it (CT through its window, MR through percentiles).
    mask : ndarray of bool, shape (H, W)
        Non-empty ground truth of one object class (may have several components).
    case : str
        The case it belongs to (a 2D picture, or a volume for its slices): the unit of the
        train/validation split, so slices of one volume never land on both sides.
    task : str
        ``"<dataset>/<label>"``: validation scores are reported per task.
    source : str
        Image path (and slice), for the manifest.
    dataset : str
        The dataset it came from (the split is stratified by it; default: ``task``'s first
        part).
    """

    image: Image2D
    mask: np.ndarray
    case: str
    task: str
    source: str = ""
    dataset: str = ""


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _label_values(lab: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(lab) if v != 0]


def volume_samples(image_path: str | os.PathLike, label_path: str | os.PathLike, *,
                   dataset: str, case: str | None = None, max_slices: int | None = None,
                   modality: str | None = None) -> list[TrainingSample]:
    """The labelled axial slices of a volume: one sample per (slice, label value).

    Parameters
    ----------
    image_path, label_path : path
        Any format :func:`app.core.io.read_image` reads; labels aligned to the image.
    dataset : str
        Dataset name (tasks are ``dataset`` or ``dataset/<value>``).
    max_slices : int, optional
        Keep at most this many slices per label, evenly spaced (reproducible).
    modality : str, optional
        Override the reader's modality (a NIfTI file does not say it holds CT; with ``"CT"``
        the slices get the abdomen window instead of percentiles).
    """
    from dataclasses import replace as _replace

    from app.core.io import read_image, read_labels

    vol = read_image(image_path)
    if modality is not None:
        vol = _replace(vol, modality=modality)
    lab = read_labels(label_path, reference=vol)
    case = case or f"{dataset}/{_stem(Path(image_path))}"
    out = []
    values = _label_values(lab)
    for value in values:
        zs = [z for z in range(lab.shape[0]) if np.any(lab[z] == value)]
        if max_slices is not None and len(zs) > max_slices:
            zs = [zs[int(i)] for i in np.linspace(0, len(zs) - 1, max_slices).round()]
        task = dataset if len(values) <= 1 else f"{dataset}/{value}"
        for z in zs:
            out.append(TrainingSample(vol.slice(z), lab[z] == value, case=case, task=task,
                                      source=f"{image_path}#z={z}", dataset=dataset))
    return out


def load_training_samples(path: str | os.PathLike, *, max_slices_per_volume: int | None = 12,
                          seed: int = 0) -> list[TrainingSample]:
    """Read labelled images from a dataset folder, with the benchmark's dataset detection.

    Every layout :func:`app.core.benchmark.datasets.discover` recognises works: MSD, nnU-Net
    v2 raw, ``images/`` + ``masks/`` pairs (mask suffixes such as ``_mask``/``_seg``
    accepted), MedSAM ``.npz``, or a folder of those. Volumes give their labelled axial slices
    (at most ``max_slices_per_volume`` per label, a reproducible subset). Each (dataset, label)
    is a task: named after the dataset when it has one label, ``dataset/label name`` otherwise.
    Cases that fail to read are skipped.

    Returns
    -------
    list of TrainingSample
        Ordered by dataset (as discovered), image path and slice: the order does not depend
        on the file system.

    Raises
    ------
    DatasetError
        When the folder is missing or holds no labelled image.
    """
    from app.core.benchmark.datasets import discover, iter_images
    from app.core.errors import SamScopeError

    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    try:
        suite = discover(root)
    except DatasetError:
        raise DatasetError(
            f"{root} holds no dataset: expected images/ + masks/ folders, an MSD or nnU-Net "
            f"dataset.json, or .npz files (directly or in sub-folders)") from None
    samples: list[TrainingSample] = []
    for ds in suite.datasets:
        tasks = ds.tasks
        names = {t.label: ds.name if len(tasks) == 1 else f"{ds.name}/{t.name}" for t in tasks}
        for ref in sorted(ds.cases, key=lambda r: str(r.image)):
            try:
                images = list(iter_images(ref, [t.label for t in tasks],
                                          max_slices=max_slices_per_volume, seed=seed))
            except (SamScopeError, OSError, ValueError):
                continue  # an unreadable or mismatched pair is skipped, as in the benchmark
            for im in images:
                for value, mask in sorted(im.masks.items()):
                    samples.append(TrainingSample(
                        im.image, mask, case=f"{ds.name}/{ref.case}", task=names[value],
                        source=f"{ref.image}" + (f"#z={im.slice_index}" if
                                                 ref.image.name.endswith((".nii", ".nii.gz",
                                                                          ".nrrd", ".npz"))
                                                 else ""),
                        dataset=ds.name))
    samples = [s for s in samples if s.mask.any()]
    if not samples:
        raise DatasetError(f"{root}: no image with a non-empty mask was found")
    return samples


def split_by_case(samples: Sequence[TrainingSample], val_fraction: float,
                  seed: int) -> tuple[list[TrainingSample], list[TrainingSample]]:
    """Split into (train, validation) by case, per dataset, reproducibly.

    Each dataset (first part of ``task``) with at least two cases gives
    ``max(1, round(val_fraction * n_cases))`` cases to validation; a dataset with a single
    case is used for training only.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    by_ds: dict[str, list[str]] = {}
    for s in samples:
        cases = by_ds.setdefault(s.dataset or s.task.split("/")[0], [])
        if s.case not in cases:
            cases.append(s.case)
    val_cases: set[str] = set()
    for ds, cases in sorted(by_ds.items()):
        if val_fraction == 0 or len(cases) < 2:
            continue
        from app.core.prompts import derive_rng

        rng = derive_rng(seed, "split", ds)
        n_val = min(len(cases) - 1, max(1, round(val_fraction * len(cases))))
        order = rng.permutation(len(cases))
        val_cases.update(sorted(cases)[i] for i in order[:n_val])
    train = [s for s in samples if s.case not in val_cases]
    val = [s for s in samples if s.case in val_cases]
    return train, val


def samples_digest(samples: Iterable[TrainingSample]) -> str:
    """SHA-256 over every sample's pixels and mask (order-independent), for manifests."""
    parts = []
    for s in samples:
        h = hashlib.sha256()
        px = np.ascontiguousarray(s.image.pixels)
        h.update(f"{px.dtype.str}|{px.shape}|".encode())
        h.update(memoryview(px).cast("B"))
        h.update(np.packbits(np.asarray(s.mask, bool)).tobytes())
        parts.append(h.hexdigest())
    return hashlib.sha256("".join(sorted(parts)).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FinetuneConfig:
    """Training recipe. Defaults are what ``litemedsam_points`` was trained with.

    Parameters
    ----------
    steps : int
        Optimiser steps at most.
    minutes : float or None
        Wall-clock budget for the whole run (embedding included); ``None`` = no limit.
    batch_size : int
        Prompts per step (0 = 4 on CPU, 16 on a GPU).
    lr, weight_decay : float
        AdamW.
    seed : int
        Everything random (split, prompts, order) derives from it.
    val_fraction : float
        Share of each dataset's cases held out for validation.
    val_every : int
        Steps between validations (the best validated weights are kept).
    patience : int
        Stop after this many validations without improvement (0 = never stop early).
    p_box, p_negative, p_farthest, p_correction, p_whole_target : float
        Prompt mix: share of box prompts; chance of a negative click; chance that a point
        prompt includes the farthest-from-boundary pixel; chance of a correction step
        (previous logits fed back); chance that a click on one component of a multi-part mask
        targets the whole mask rather than the clicked part.
    max_points : int
        Positive clicks per point prompt: 1..max_points.
    box_jitter : float
        Largest box-edge jitter (sd as a fraction of the object's size, drawn uniformly).
    half_weights : bool
        Store (and round the returned model's) trained weights in float16.
    threads : int or None
        torch CPU threads (None: the engine's default, one core left free).
    """

    steps: int = 300
    minutes: float | None = None
    batch_size: int = 0
    lr: float = 5e-5
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.25
    val_every: int = 25
    patience: int = 4
    p_box: float = 0.3
    p_negative: float = 0.25
    p_farthest: float = 0.5
    p_correction: float = 0.2
    p_whole_target: float = 0.5
    max_points: int = 3
    box_jitter: float = 0.1
    half_weights: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1; got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be positive; got {self.minutes}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0; got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr}")

    def recipe(self) -> dict[str, Any]:
        """The prompt and optimiser recipe as a plain dict (for manifests)."""
        return asdict(self)


@dataclass(frozen=True, eq=False)
class TrainingPrompt:
    """A sampled prompt and what it should produce.

    Attributes
    ----------
    prompt : Prompt
        Original-image pixels.
    target : ndarray of bool, shape (H, W)
    ambiguous : bool
        A single click: trained on the best of the three multimask outputs.
    kind : str
        ``"points"``, ``"box"`` or ``"correction"`` (filled in by the trainer).
    """

    prompt: Prompt
    target: np.ndarray
    ambiguous: bool
    kind: str


def _random_inside(region: np.ndarray, rng: np.random.Generator, min_dist: float = 0.0):
    """A random (x, y) inside ``region``, preferring pixels at least ``min_dist`` from its edge."""
    import cv2

    if min_dist > 0:
        padded = np.pad(region.astype(np.uint8), 1)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
        inner = dist >= min_dist
        if inner.any():
            region = inner
    rows, cols = np.nonzero(region)
    k = int(rng.integers(0, len(rows)))
    return int(cols[k]), int(rows[k])


def sample_prompt(mask: np.ndarray, rng: np.random.Generator,
                  config: FinetuneConfig | None = None) -> TrainingPrompt:
    """Draw one training prompt for a ground-truth mask.

    Boxes (``p_box``): the tight box of the largest component (paper mode 3, target that
    component) or of the whole mask (mode 5), jittered with :func:`app.core.prompts.jitter_box`
    half of the time. Points: 1..``max_points`` positive clicks on one component (the largest
    70 % of the time), including its farthest-from-boundary pixel
    (:func:`app.core.prompts.farthest_from_boundary`) with probability ``p_farthest``, plus a
    negative click near the object with probability ``p_negative``.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        Non-empty.
    rng : Generator
    config : FinetuneConfig, optional

    Returns
    -------
    TrainingPrompt
    """
    from app.core.prompts import components_by_size, farthest_from_boundary, jitter_box, tight_box

    cfg = config or FinetuneConfig()
    mask = np.asarray(mask, bool)
    shape = mask.shape
    comps = components_by_size(mask)
    if not comps:
        raise ValueError("sample_prompt: the mask is empty")

    if rng.random() < cfg.p_box:
        whole = len(comps) == 1 or rng.random() < 0.5
        target = mask if whole else comps[0]
        box = tight_box(target)
        if cfg.box_jitter > 0 and rng.random() < 0.5:
            box = jitter_box(box, float(rng.uniform(0.0, cfg.box_jitter)), rng, shape)
        return TrainingPrompt(Prompt.from_box(box), target, ambiguous=False, kind="box")

    comp = comps[0] if (len(comps) == 1 or rng.random() < 0.7) else comps[
        int(rng.integers(1, len(comps)))]
    n_pos = int(rng.integers(1, cfg.max_points + 1))
    pts: list[tuple[int, int]] = []
    if rng.random() < cfg.p_farthest:
        r, c = farthest_from_boundary(comp, rng)
        pts.append((c, r))
    # random clicks, kept a few pixels inside the edge the way a user clicks
    min_dist = max(1.0, 0.05 * math.sqrt(comp.sum()))
    while len(pts) < n_pos:
        pts.append(_random_inside(comp, rng, min_dist))
    labels = [1] * len(pts)
    if rng.random() < cfg.p_negative:
        x0, y0, x1, y1 = tight_box(comp)
        pad_x, pad_y = max(2, (x1 - x0) // 4), max(2, (y1 - y0) // 4)
        near = np.zeros(shape, bool)
        near[max(0, y0 - pad_y): y1 + pad_y + 1, max(0, x0 - pad_x): x1 + pad_x + 1] = True
        near &= ~mask
        if near.any():
            pts.append(_random_inside(near, rng))
            labels.append(0)
    whole = len(comps) > 1 and rng.random() < cfg.p_whole_target
    target = mask if (whole or len(comps) == 1) else comp
    ambiguous = len(pts) == 1
    return TrainingPrompt(Prompt.from_points(pts, labels), target, ambiguous=ambiguous,
                          kind="points")


# --------------------------------------------------------------------------------------------
# progress and results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FinetuneProgress:
    """One progress report (sent to ``on_progress``).

    Attributes
    ----------
    phase : {"embedding", "validating", "training", "done"}
    done, total : int
        Images embedded, or steps taken, out of how many.
    loss : float or None
        Mean training loss over the last ``val_every`` steps.
    val_point_iou, val_box_iou : float or None
        Latest validation: mean IoU of a single farthest-from-boundary click (best-scored
        candidate) and of a tight box (first candidate).
    elapsed_s : float
    message : str
    """

    phase: str
    done: int
    total: int
    loss: float | None = None
    val_point_iou: float | None = None
    val_box_iou: float | None = None
    elapsed_s: float = 0.0
    message: str = ""


@dataclass(eq=False)
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    model : FinetunedModel
        The fine-tuned (best validated) prompt encoder + decoder on the base network, named
        ``name``, rounded to float16 when ``half_weights`` (so it predicts exactly what a
        reload of the saved folder predicts). Box-only prompts go to the base decoder when
        fine-tuning made boxes worse on validation (:func:`choose_box_decoder`).
    manifest : dict
        For :func:`app.core.models.finetuned.save_finetuned`: base, data, recipe, steps,
        seed, validation scores before and after.
    history : list of dict
        One row per validation: step, loss, val_point_iou, val_box_iou, elapsed_s.
    stopped : str
        ``"steps"``, ``"time"``, ``"early_stopping"`` or ``"cancelled"``.
    """

    model: Any
    manifest: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "steps"


# --------------------------------------------------------------------------------------------
# evaluation (same prompts as the benchmark's modes)
# --------------------------------------------------------------------------------------------
def evaluate_modes(model, samples: Sequence[TrainingSample], *, modes: Sequence[int] = (1, 3),
                   seed: int = 0, engine=None, embeddings: Sequence[Embedding] | None = None,
                   cancel: threading.Event | None = None) -> dict[str, dict[str, float]]:
    """Mean IoU per task and mode, with the benchmark's prompts and metric.

    Mode ``m`` prompts come from :func:`app.core.prompts.mode_prompts` (tie-breaks seeded by
    ``seed`` and the sample's source), masks are predicted at the original resolution through
    an :class:`~app.core.engine.Engine` and scored with :func:`app.core.metrics.iou` against
    the whole ground-truth mask.

    ``embeddings`` (one per sample, from any model sharing this image encoder) skips the
    image encoder: a fine-tuned decoder reuses its base model's embeddings.

    Returns
    -------
    dict
        ``{task: {"mode1_first": ..., "mode1_best_score": ..., "mode1_oracle": ...,
        "mode1_single": ..., "mode1_pairwise_iou": ..., "mode3_first": ..., "n": ...}}`` plus
        an ``"all"`` entry averaged over samples. ``_single`` is the single-output prediction
        (``multimask=False``); ``_pairwise_iou`` the mean IoU between the three candidates of
        one prompt (1.0 = copies; only for models with three outputs).
    """
    from app.core.engine import Engine
    from app.core.metrics import iou
    from app.core.prompts import derive_rng, mode_prompts

    engine = engine or Engine(model)
    rows: dict[str, list[dict[str, float]]] = {}
    for i, s in enumerate(samples):
        if cancel is not None and cancel.is_set():
            break
        if embeddings is not None:
            emb = replace(embeddings[i], model_name=model.name)
        else:
            emb = engine.embed(s.image)
        row: dict[str, float] = {}
        for mode in modes:
            mp = mode_prompts(s.mask, mode, derive_rng(seed, "eval", s.source, mode))
            preds = [engine.predict(emb, p, multimask=True) for p in mp.prompts]
            k = min(len(p) for p in preds)
            united = [np.logical_or.reduce([p.masks[i] for p in preds]) for i in range(k)]
            ious = [iou(m, s.mask) for m in united]
            scores = np.mean([p.scores[:k] for p in preds], axis=0)
            row[f"mode{mode}_first"] = ious[0]
            row[f"mode{mode}_best_score"] = ious[int(np.argmax(scores))]
            row[f"mode{mode}_oracle"] = max(ious)
            if len(mp.prompts) == 1:
                single = engine.predict(emb, mp.prompts[0], multimask=False)
                row[f"mode{mode}_single"] = iou(single.masks[0], s.mask)
            if k == 3 and len(preds) == 1:
                m = preds[0].masks
                row[f"mode{mode}_pairwise_iou"] = float(np.mean(
                    [iou(m[a], m[b]) for a, b in ((0, 1), (0, 2), (1, 2))]))
        rows.setdefault(s.task, []).append(row)
    out: dict[str, dict[str, float]] = {}
    every = [r for rs in rows.values() for r in rs]
    for task, rs in [*sorted(rows.items()), ("all", every)]:
        if not rs:
            continue
        keys = sorted({k for r in rs for k in r})
        out[task] = {k: float(np.mean([r[k] for r in rs if k in r])) for k in keys}
        out[task]["n"] = len(rs)
    return out


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
class _Trainer:
    """Differentiable prompt encoder + mask decoder on cached embeddings (one model)."""

    def __init__(self, model, device: str, amp_dtype):
        self.model = model
        self.net = model.net
        self.pre = model.preprocessing
        self.device = device
        self.amp_dtype = amp_dtype

    def params(self):
        return [*self.net.prompt_encoder.parameters(), *self.net.mask_decoder.parameters()]

    def forward(self, emb: Embedding, prompt: Prompt):
        """All four decoder outputs: logits (4, 256, 256) and predicted IoU (4,)."""
        import torch

        hw = emb.original_size
        dev = self.device
        points = None
        if prompt.has_points:
            coords = torch.from_numpy(self.pre.points_to_model(prompt.points_xy, hw)).to(dev)
            labels = torch.from_numpy(prompt.point_labels.astype(np.int64)).to(dev)
            points = (coords[None], labels[None])
        boxes = None
        if prompt.box_xyxy is not None:
            boxes = torch.from_numpy(self.pre.boxes_to_model(prompt.box_xyxy[None], hw)).to(dev)
        masks = None
        if prompt.mask_logits is not None:
            masks = torch.from_numpy(np.asarray(prompt.mask_logits, np.float32))[None, None].to(dev)
        ctx = (torch.autocast(device_type="cuda", dtype=self.amp_dtype)
               if self.amp_dtype is not None else _null())
        with ctx:
            sparse, dense = self.net.prompt_encoder(points=points, boxes=boxes, masks=masks)
            low_res, iou_pred = self.net.mask_decoder.predict_masks(
                image_embeddings=emb.features,
                image_pe=self.net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
            )
        return low_res[0].float(), iou_pred[0].float()

    def target_lowres(self, emb: Embedding, target: np.ndarray):
        """Ground truth in model-input space: (h, w) content of the 256 x 256 output."""
        import cv2
        import torch

        h, w = emb.input_size
        t = cv2.resize(target.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(t).to(self.device)

    def loss(self, logits, iou_pred, target, ambiguous: bool):
        """BCE + Dice (best output if ambiguous, else all four) + MSE on the IoU head."""
        import torch
        import torch.nn.functional as F

        h, w = target.shape
        lg = logits[:, :h, :w]
        idx = [1, 2, 3] if ambiguous else [0, 1, 2, 3]
        lg = lg[idx]
        tgt = target[None].expand_as(lg)
        bce = F.binary_cross_entropy_with_logits(lg, tgt, reduction="none").mean(dim=(1, 2))
        prob = torch.sigmoid(lg)
        inter = (prob * tgt).sum(dim=(1, 2))
        dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2)) + tgt.sum(dim=(1, 2)) + 1)
        seg = bce + dice
        with torch.no_grad():
            hard = lg > 0
            tb = tgt > 0.5
            inter_h = (hard & tb).sum(dim=(1, 2)).float()
            union_h = (hard | tb).sum(dim=(1, 2)).float()
            true_iou = torch.where(union_h > 0, inter_h / union_h.clamp(min=1),
                                   torch.ones_like(union_h))
        iou_loss = F.mse_loss(iou_pred[idx], true_iou)
        seg_loss = seg.min() if ambiguous else seg.mean()
        return seg_loss + iou_loss, true_iou

    def lowres_to_mask(self, emb: Embedding, logits_256) -> np.ndarray:
        # the inference path's post-processing (Preprocessing.logits_to_masks), not a copy
        low = logits_256.detach().float().cpu().numpy()[None]
        return self.pre.logits_to_masks(low, emb.input_size, emb.original_size)[0]


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _validate(trainer: _Trainer, val: Sequence[tuple[TrainingSample, Embedding]],
              seed: int) -> tuple[float, float]:
    """Low-cost validation: (mean IoU of a farthest click, best-scored output; mean box IoU).

    IoU is measured in model-input space (256 px), which is what the training loss sees.
    """
    import torch

    from app.core.prompts import derive_rng, mode_prompts

    if not val:
        return float("nan"), float("nan")
    pts, boxes = [], []
    with torch.no_grad():
        for s, emb in val:
            tgt = trainer.target_lowres(emb, s.mask) > 0.5
            h, w = tgt.shape
            for mode, out in ((1, pts), (3, boxes)):
                mp = mode_prompts(s.mask, mode, derive_rng(seed, "val", s.source, mode))
                logits, iou_pred = trainer.forward(emb, mp.prompts[0])
                k = 1 + int(torch.argmax(iou_pred[1:])) if mode == 1 else 1
                pred = logits[k, :h, :w] > 0
                union = (pred | tgt).sum().item()
                out.append((pred & tgt).sum().item() / union if union else 1.0)
    return float(np.mean(pts)), float(np.mean(boxes))


def _round_half_(module) -> None:
    import torch

    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point() and "positional_encoding" not in name:
                t.copy_(t.half().float())


def _device_info(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def finetune(train: Sequence[TrainingSample], val: Sequence[TrainingSample] = (), *,
             base: str = "litemedsam", name: str = "finetuned", config: FinetuneConfig | None = None,
             device: str | None = None, on_progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None, evaluate: bool = True,
             data_description: dict[str, Any] | None = None) -> FinetuneResult:
    """Fine-tune the prompt encoder + mask decoder of registry model ``base``.

    Parameters
    ----------
    train, val : sequence of TrainingSample
        Split them by case first (:func:`split_by_case`); ``val`` may be empty (then no early
        stopping and the last weights are kept).
    base : str
        Registry name of the model to adapt (any SAM-family entry).
    name : str
        Name of the new model (its registry key once saved).
    config : FinetuneConfig
    device : str, optional
        Default: CUDA, then MPS, then CPU. On CUDA the decoder runs under bf16 autocast (where
        the GPU supports it) and the batch grows to 16.
    on_progress : callable(FinetuneProgress), optional
        Called from the calling thread after every embedding, every step and validation.
    cancel : threading.Event, optional
        When set, training stops after the current step and the best weights so far are kept.
    evaluate : bool
        Score the base and the fine-tuned model on ``val`` with :func:`evaluate_modes`
        (modes 1 and 3) for the manifest.
    data_description : dict, optional
        Extra provenance for the manifest (dataset paths, licences).

    Returns
    -------
    FinetuneResult
    """
    import torch

    from app.core.engine import Engine, configure_torch_threads
    from app.core.models.registry import load_model
    from app.core.prompts import derive_rng, standard_next_click

    cfg = config or FinetuneConfig()
    if not train:
        raise DatasetError("no training samples: the dataset is empty or all of it was held out")
    t0 = time.perf_counter()
    deadline = None if cfg.minutes is None else t0 + 60.0 * cfg.minutes
    if cfg.threads is not None:
        configure_torch_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    def report(phase, done, total, **kw):
        if on_progress is not None:
            on_progress(FinetuneProgress(phase, done, total,
                                         elapsed_s=time.perf_counter() - t0, **kw))

    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    model = load_model(base, device=device, precision="fp32", backend="torch")
    dev = str(model.device)
    amp_dtype = None
    if dev.startswith("cuda"):
        # bf16 needs no loss scaling; older GPUs without it train in fp32
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    batch = cfg.batch_size or (16 if dev.startswith("cuda") else 4)
    engine = Engine(model, cache_bytes=1 << 40, n_threads=cfg.threads)

    # 1. embeddings, once (validation first: without it there is no early stopping)
    items = [*val, *train]
    embs: list[Embedding] = []
    for i, s in enumerate(items):
        if cancelled():
            break
        if deadline is not None and i >= len(val) + 8 and (
                time.perf_counter() - t0) > 0.5 * (deadline - t0):
            break  # keep half the budget for training: train on what is embedded
        embs.append(engine.embed(s.image))
        report("embedding", i + 1, len(items), message=f"embedded {s.source}")
    val_pairs = list(zip(val, embs[: len(val)]))
    train_pairs = list(zip(train, embs[len(val):]))
    if not train_pairs and not cancelled():
        raise DatasetError("the time budget ran out before any training image was embedded")
    n_embedded = engine.stats.embeddings_computed

    val_samples, val_embs = [s for s, _ in val_pairs], [e for _, e in val_pairs]
    before = {}
    if evaluate and val_pairs and not cancelled():
        report("validating", 0, cfg.steps, message=f"scoring {base} on the validation split")
        before = evaluate_modes(model, val_samples, seed=cfg.seed, engine=engine,
                                embeddings=val_embs, cancel=cancel)

    # 2. training
    for p in model.net.image_encoder.parameters():
        p.requires_grad_(False)
    trainer = _Trainer(model, dev, amp_dtype)
    params = trainer.params()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    tv0 = time.perf_counter()
    vp, vb = _validate(trainer, val_pairs, cfg.seed)
    val_s = time.perf_counter() - tv0
    history = [{"step": 0, "loss": None, "val_point_iou": vp, "val_box_iou": vb,
                "elapsed_s": time.perf_counter() - t0}]
    report("validating", 0, cfg.steps, val_point_iou=vp, val_box_iou=vb)
    best_score = (vp + vb) / 2 if val_pairs else -math.inf
    best_state = _decoder_state(model.net)
    best_step = 0
    since_best = 0
    stopped = "steps"
    losses: list[float] = []
    rng = derive_rng(cfg.seed, "train")
    step_s = 0.0
    step = 0
    kinds = {"points": 0, "box": 0, "correction": 0}
    for step in range(1, cfg.steps + 1):
        if cancelled():
            stopped, step = "cancelled", step - 1
            break
        if deadline is not None:
            left = deadline - time.perf_counter()
            # leave time for one more validation and the final evaluation
            reserve = step_s + 2 * val_s + (val_s * 2 if evaluate else 0)
            if left < reserve:
                stopped, step = "time", step - 1
                break
        ts = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(batch):
            s, emb = train_pairs[int(rng.integers(0, len(train_pairs)))]
            tp = sample_prompt(s.mask, rng, cfg)
            prompt, target, ambiguous, kind = tp.prompt, tp.target, tp.ambiguous, tp.kind
            if kind == "points" and rng.random() < cfg.p_correction:
                # one RITM correction click on the model's own current answer, logits fed back
                with torch.no_grad():
                    lg, ip = trainer.forward(emb, prompt)
                k = 1 + int(torch.argmax(ip[1:])) if ambiguous else 0
                pred = trainer.lowres_to_mask(emb, lg[k])
                not_clicked = np.ones(target.shape, bool)
                for x, y in prompt.points_xy.astype(int):
                    not_clicked[y, x] = False
                x, y, lab = standard_next_click(target, pred, not_clicked)
                prompt = Prompt.from_points(
                    np.vstack([prompt.points_xy, [[x, y]]]), [*prompt.point_labels, lab],
                    mask_logits=lg[k].detach().cpu().numpy())
                ambiguous, kind = False, "correction"
            kinds[kind] += 1
            logits, iou_pred = trainer.forward(emb, prompt)
            loss, _ = trainer.loss(logits, iou_pred, trainer.target_lowres(emb, target), ambiguous)
            (loss / batch).backward()
            total += float(loss.detach()) / batch
        opt.step()
        losses.append(total)
        step_s = time.perf_counter() - ts
        report("training", step, cfg.steps, loss=float(np.mean(losses[-cfg.val_every:])))
        if val_pairs and (step % cfg.val_every == 0 or step == cfg.steps):
            tv0 = time.perf_counter()
            vp, vb = _validate(trainer, val_pairs, cfg.seed)
            val_s = time.perf_counter() - tv0
            mean_loss = float(np.mean(losses[-cfg.val_every:]))
            history.append({"step": step, "loss": mean_loss, "val_point_iou": vp,
                            "val_box_iou": vb, "elapsed_s": time.perf_counter() - t0})
            report("validating", step, cfg.steps, loss=mean_loss, val_point_iou=vp,
                   val_box_iou=vb)
            score = (vp + vb) / 2
            if score > best_score:
                best_score, best_state, best_step, since_best = score, _decoder_state(
                    model.net), step, 0
            else:
                since_best += 1
                if cfg.patience and since_best >= cfg.patience:
                    stopped = "early_stopping"
                    break
    steps_taken = step
    if not val_pairs:
        best_state, best_step = _decoder_state(model.net), steps_taken
    _load_decoder_state(model.net, best_state)
    for p in params:
        p.requires_grad_(False)
    if cfg.half_weights:
        _round_half_(model.net.prompt_encoder)
        _round_half_(model.net.mask_decoder)
    train_s = time.perf_counter() - t0

    # 3. the adapted model: same object, new name, point capabilities
    model.name = name
    model.capabilities = POINT_CAPABILITIES
    model.checkpoint_path = f"{getattr(model, 'checkpoint_path', '')}+{name}@{best_step}"
    after: dict[str, Any] = {}
    after_tuned: dict[str, Any] = {}
    box_decoder = "tuned"
    if evaluate and val_pairs and not cancelled():
        report("validating", steps_taken, cfg.steps,
               message=f"scoring {name} on the validation split")
        after_tuned = evaluate_modes(model, val_samples, seed=cfg.seed,
                                     engine=Engine(model, cache_bytes=0), embeddings=val_embs,
                                     cancel=cancel)
        box_decoder = choose_box_decoder(before, after_tuned)
    routed = FinetunedModel(
        model, load_model(base, device=dev, precision="fp32", backend="torch")
        if box_decoder == "base" else None,
        box_decoder=box_decoder)
    if box_decoder == "base" and not cancelled():
        after = evaluate_modes(routed, val_samples, seed=cfg.seed,
                               engine=Engine(routed, cache_bytes=0), embeddings=val_embs,
                               cancel=cancel)
    else:
        after = after_tuned

    import app

    manifest = {
        "format": "samscope-finetuned/1",
        "name": name,
        "base_model": base,
        "base_checkpoint_sha256": _base_sha(base),
        "trained_modules": ["prompt_encoder", "mask_decoder"],
        "capabilities": asdict(POINT_CAPABILITIES),
        "data": {
            "n_train_images": len(train_pairs),
            "n_val_images": len(val_pairs),
            "train_cases": sorted({s.case for s, _ in train_pairs}),
            "val_cases": sorted({s.case for s, _ in val_pairs}),
            "tasks": sorted({s.task for s in [*train, *val]}),
            "train_sha256": samples_digest(s for s, _ in train_pairs),
            "val_sha256": samples_digest(val),
            **(data_description or {}),
        },
        "recipe": {**cfg.recipe(), "batch_size": batch,
                   "loss": "BCE + Dice (best of 3 outputs for a single click, all 4 outputs "
                           "otherwise) + MSE(IoU head, true IoU)",
                   "prompt_kinds_seen": kinds},
        "training": {
            "steps_taken": steps_taken,
            "best_step": best_step,
            "stopped": stopped,
            "seconds": round(train_s, 1),
            "embeddings_computed": n_embedded,
            "device": _device_info(dev),
            "mixed_precision": None if amp_dtype is None else str(amp_dtype).split(".")[-1],
            "history": history,
        },
        "box_decoder": box_decoder,
        "validation": {"before": before, "after": after,
                       "after_tuned_decoder": after_tuned,
                       "box_decoder_rule": BOX_RULE,
                       "protocol": "app.core.prompts.mode_prompts mode 1 (farthest point) and "
                                   "mode 3 (tight box of the largest component), IoU against "
                                   "the whole mask at the original resolution"},
        "samscope_version": app.__version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report("done", steps_taken, cfg.steps, loss=float(np.mean(losses[-cfg.val_every:]))
           if losses else None, val_point_iou=vp, val_box_iou=vb,
           message=f"stopped: {stopped}")
    return FinetuneResult(model=routed, manifest=manifest, history=history, stopped=stopped)


#: how :func:`choose_box_decoder` decides (recorded in manifests)
BOX_RULE = ("box-only prompts use the base decoder when the fine-tuned one lost more than "
            "0.02 mean IoU on mode-3 boxes of the validation split, overall or on any task")


def choose_box_decoder(before: dict[str, Any], after: dict[str, Any],
                       tolerance: float = 0.02) -> str:
    """``"base"`` when fine-tuning made box prompts worse on validation, else ``"tuned"``.

    Parameters
    ----------
    before, after : dict
        :func:`evaluate_modes` results of the base and the fine-tuned decoder.
    tolerance : float
        IoU drop (mode 3, first candidate) tolerated per task before keeping the base decoder.
    """
    for task, a in after.items():
        b = before.get(task, {})
        if "mode3_first" in a and "mode3_first" in b and (
                a["mode3_first"] < b["mode3_first"] - tolerance):
            return "base"
    return "tuned"


def _decoder_state(net) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in _decoder_items(net)}


def _decoder_items(net):
    for prefix in ("prompt_encoder", "mask_decoder"):
        for k, v in getattr(net, prefix).state_dict().items():
            yield f"{prefix}.{k}", v


def _load_decoder_state(net, state: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        own = dict(_decoder_items(net))
        for k, v in state.items():
            own[k].copy_(v)


def _base_sha(base: str) -> str:
    from app.core.models.registry import get_spec

    try:
        return get_spec(base).checkpoint.sha256
    except ValueError:
        return ""

