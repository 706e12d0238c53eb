"""Adapt a SAM-family model to labelled data: train its prompt encoder and mask decoder.

The image encoder stays frozen, so every training image (and each augmented copy) is embedded
**once** (through the engine's cache, optionally an on-disk embedding store so recipe variants
skip the encoder) and each training step only runs the small prompt encoder + mask decoder
(LiteMedSAM: 4 M parameters, ~0.3-0.6 s per prompt forward + backward on one busy CPU core).

Prompts are drawn with the benchmark's own simulator (:mod:`app.core.prompts`): points at the
farthest-from-boundary pixel and at random inside the object, negative clicks near it, tight
and jittered boxes, and **click sequences** of the benchmark's two iterative protocols (the
paper's farthest-error click with every click re-sent, and the standard protocol's click with
the previous low-res logits fed back, as the GUI's refine does), simulated on the model's own
answers. Objects are drawn by size (small ones oversampled), training images are augmented
(flips, intensity, crops that the model rescales). Prompt coordinates go through the model's
own :class:`~app.core.models._preprocess.Preprocessing`, exactly as at inference.

Loss, as SAM was trained: a single click is ambiguous, so its binary cross-entropy + Dice is
taken on the **best** of the three multimask outputs; any other prompt is unambiguous and every
output is trained on it. The IoU head learns the true IoU of each trained output (MSE). The
last click of a sequence also pays a hinge when it is worse than the previous click's answer
(so each click is trained to help), and box prompts are distilled toward the base decoder's
own box answer (so boxes keep what the base model does well).

Validation, the before/after table and the box routing use the benchmark runner's own code
(:mod:`app.core.benchmark.evaluate`), so they are numbers ``samscope benchmark`` reproduces.

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
    "folds_by_case",
    "sample_prompt",
    "evaluate_modes",
    "benchmark_rows",
    "augment_sample",
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
    origin : ImageSample, optional
        The benchmark's image this sample was made from (its reference, case id and slice
        seed the benchmark's prompts: evaluation through :mod:`app.core.benchmark.evaluate`
        then gives exactly ``samscope benchmark``'s rows).
    label : int
        The label value of ``mask`` in ``origin``.
    """

    image: Image2D
    mask: np.ndarray
    case: str
    task: str
    source: str = ""
    dataset: str = ""
    origin: Any = None
    label: int = 1

    def as_image_sample(self):
        """This sample as a benchmark :class:`~app.core.benchmark.datasets.ImageSample` with
        one label (``origin``'s reference when known)."""
        from app.core.benchmark.datasets import CaseRef, ImageSample

        if self.origin is not None:
            o = self.origin
            return ImageSample(o.ref, o.slice_index, o.image, {self.label: self.mask},
                               o.spacing_mm, o.case_id)
        dataset = self.dataset or self.task.split("/")[0]
        case = self.case.split("/", 1)[-1]
        z = int(self.source.rsplit("#z=", 1)[1]) if "#z=" in self.source else 0
        ref = CaseRef(dataset, case, Path(self.source.split("#")[0] or case))
        case_id = f"{case}:z{z}" if "#z=" in self.source else case
        return ImageSample(ref, z, self.image, {self.label: self.mask}, None, case_id)


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
                        origin=im, label=int(value),
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


def folds_by_case(samples: Sequence[TrainingSample], k: int,
                  seed: int) -> list[tuple[list[TrainingSample], list[TrainingSample]]]:
    """``k`` (train, validation) splits by case in which every case of a dataset with two
    cases or more is validated exactly once (cross-validation), reproducibly.

    Per dataset the cases are shuffled (seeded by ``seed`` and the dataset) and dealt to the
    folds in turn, so each fold holds about ``1 / k`` of every dataset; a dataset with fewer
    cases than folds validates in its first folds only, and a dataset of one case trains in
    every fold. Slices of a volume never straddle a fold's split. Models trained on the
    folds, each scored on its own validation cases, together score every such case once
    (``bench/click_model_variants.py`` pools them to rank recipes on all the data).

    Raises
    ------
    ValueError
        ``k`` below 2.
    """
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds; got {k}")
    from app.core.prompts import derive_rng

    by_ds: dict[str, list[str]] = {}
    for s in samples:
        cases = by_ds.setdefault(s.dataset or s.task.split("/")[0], [])
        if s.case not in cases:
            cases.append(s.case)
    fold_of: dict[str, int] = {}
    for ds, cases in sorted(by_ds.items()):
        if len(cases) < 2:
            continue
        order = derive_rng(seed, "folds", ds).permutation(len(cases))
        for j, i in enumerate(order):
            fold_of[sorted(cases)[i]] = j % k
    return [([s for s in samples if fold_of.get(s.case) != f],
             [s for s in samples if fold_of.get(s.case) == f]) for f in range(k)]


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
    """Training recipe. Defaults are the recipe ``litemedsam_points`` was trained with, from
    the base decoder (the Adapt dock and ``samscope finetune`` use them; the recipe variants
    it won against are in the model card).

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
    augment_copies : int
        Augmented copies of each training image (flips, gamma / contrast / brightness, a crop
        around the object rescaled to the model's input so small objects are seen large),
        each embedded once like the originals.
    size_balance : float
        Objects are drawn with weight ``size_fraction ** -size_balance`` (0: uniform; 0.5:
        a 1 % lesion is drawn 10x as often as a whole-image organ).
    p_iterative : float
        Share of point prompts trained as a click sequence: 1..``max_clicks`` clicks of the
        benchmark's iterative protocols (the paper's farthest-error click, or the standard
        protocol's click with the previous low-res logits fed back, ``p_feedback``), each
        simulated on the model's own answer; the loss is taken on the last click.
    max_clicks : int
        Longest click sequence simulated.
    p_feedback : float
        Share of click sequences that feed the previous logits back (the GUI's refine).
    monotone_weight : float
        Weight of a hinge that penalises the last click's (soft) IoU falling below the
        previous click's, so each extra click is trained to help.
    distill_weight : float
        Box prompts: weight of a distillation loss (BCE) toward the base decoder's own box
        logits, which keeps the base model's good box answers (0 = off).
    every_click_loss : bool
        Click sequences: take the loss (and the monotone hinge against the click before) at
        every click of the sequence, not only the last; each click's forward pass keeps its
        gradient, the answer fed to the next click is detached (SAM's iterative training).
    distill_dice : bool
        Box distillation also pulls a soft Dice toward the base decoder's answer (so a small
        lesion's box answer counts as much as an organ's), weighted by the base answer's IoU
        with the ground truth (a wrong base answer is not copied).
    first_weight : float
        A single (ambiguous) click: weight of an extra BCE + Dice on the first candidate, the
        one the benchmark's "first" scores and a user sees first, so that it is the whole
        object more often (0 = SAM's loss: the best of three only).
    init : str or None
        Start from this fine-tuned model's decoder (registry name or folder) instead of the
        base model's; the base (and distillation teacher) stays ``base``.
    """

    steps: int = 300
    minutes: float | None = None
    batch_size: int = 0
    lr: float = 1e-4
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
    augment_copies: int = 1
    size_balance: float = 0.0
    p_iterative: float = 0.5
    max_clicks: int = 9
    p_feedback: float = 0.5
    monotone_weight: float = 1.0
    distill_weight: float = 1.0
    every_click_loss: bool = True
    distill_dice: bool = True
    first_weight: float = 0.5
    init: str | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1; got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be positive; got {self.minutes}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0; got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr}")
        if self.augment_copies < 0 or self.max_clicks < 1:
            raise ValueError("augment_copies must be >= 0 and max_clicks >= 1; got "
                             f"{self.augment_copies}, {self.max_clicks}")
        for name in ("p_box", "p_negative", "p_farthest", "p_correction", "p_whole_target",
                     "p_iterative", "p_feedback"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {v}")

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


def augment_sample(sample: TrainingSample, rng: np.random.Generator) -> TrainingSample:
    """A randomly transformed copy of ``sample`` for training (never for validation).

    Horizontal flip (p 0.5), vertical flip (p 0.2); gamma in [0.7, 1.5], contrast in
    [0.75, 1.3] and brightness in [-0.1, 0.1] on the model's [0, 1] intensities; with
    probability 0.6 a crop around one object (1.3-4x its size, at least 32 px) that the model
    then rescales to its input, so a small lesion is seen at several sizes. The mask follows
    every geometric step; the copy keeps ``case``/``task`` (it never crosses the split).

    Returns
    -------
    TrainingSample
        Pixels float32 in [0, 1] with an identity window, shape (h, w) or (h, w, 3).
    """
    from app.core.image import Window
    from app.core.prompts import components_by_size, tight_box

    px = sample.image.unit_range()
    mask = np.asarray(sample.mask, bool)
    if rng.random() < 0.6:
        comps = components_by_size(mask)
        obj = mask if (len(comps) == 1 or rng.random() < 0.5) else comps[
            int(rng.integers(0, len(comps)))]
        x0, y0, x1, y1 = tight_box(obj)
        h, w = mask.shape
        f = float(rng.uniform(1.3, 4.0))
        cw = int(min(w, max(32, round((x1 - x0 + 1) * f))))
        ch = int(min(h, max(32, round((y1 - y0 + 1) * f))))
        lo_x, hi_x = max(0, x1 + 1 - cw), min(x0, w - cw)
        lo_y, hi_y = max(0, y1 + 1 - ch), min(y0, h - ch)
        cx = int(rng.integers(lo_x, hi_x + 1)) if hi_x >= lo_x else max(0, min(x0, w - cw))
        cy = int(rng.integers(lo_y, hi_y + 1)) if hi_y >= lo_y else max(0, min(y0, h - ch))
        cropped = mask[cy:cy + ch, cx:cx + cw]
        if cropped.any():
            px, mask = px[cy:cy + ch, cx:cx + cw], cropped
    if rng.random() < 0.5:
        px, mask = px[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.2:
        px, mask = px[::-1], mask[::-1]
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.5))))
    contrast, bright = float(rng.uniform(0.75, 1.3)), float(rng.uniform(-0.1, 0.1))
    px = np.clip((np.power(np.clip(px, 0, 1), gamma) - 0.5) * contrast + 0.5 + bright, 0, 1)
    image = Image2D(np.ascontiguousarray(px, np.float32), Window(0.5, 1.0, "unit"),
                    sample.image.modality, sample.image.spacing_mm)
    return replace(sample, image=image, mask=np.ascontiguousarray(mask),
                   source=f"{sample.source}@aug", origin=None)


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
# evaluation: the benchmark's own path (app.core.benchmark.evaluate)
# --------------------------------------------------------------------------------------------
def _image_samples(samples: Sequence[TrainingSample]):
    return [s.as_image_sample() for s in samples]


def benchmark_rows(models: dict[str, Any], samples: Sequence[TrainingSample],
                   embeddings: Sequence[Embedding] | None = None, *,
                   modes: Sequence[int] = (1, 3, 5), protocols: Sequence[str] = (),
                   clicks: int | None = None, selections: Sequence[str] | None = None,
                   seed: int = 0, target_iou: float = 0.9,
                   cancel: threading.Event | None = None) -> list[dict[str, Any]]:
    """Benchmark rows of ``models`` (name -> model) on ``samples``, through the runner's own
    prompt simulation, candidate selection and metrics (:func:`app.core.benchmark.evaluate.
    evaluate`); ``embeddings`` (one per sample, from any model sharing the image encoder)
    skip the image encoder."""
    from app.core.benchmark.evaluate import PrecomputedMethod, evaluate

    by_image = {} if embeddings is None else {
        id(s.image if s.origin is None else s.origin.image): e
        for s, e in zip(samples, embeddings)}
    methods = {n: PrecomputedMethod(m, by_image, name=n) for n, m in models.items()}
    tasks = {(s.dataset or s.task.split("/")[0], s.label): s.task for s in samples}

    def task_name(sample, label):
        return tasks.get((sample.ref.dataset, label), sample.ref.dataset)

    return evaluate(methods, _image_samples(samples), modes=modes, protocols=protocols,
                    clicks=clicks, selections=selections, seed=seed, target_iou=target_iou,
                    task_name=task_name, cancel=cancel)


def evaluate_modes(model, samples: Sequence[TrainingSample], *, modes: Sequence[int] = (1, 3),
                   seed: int = 0, engine=None, embeddings: Sequence[Embedding] | None = None,
                   cancel: threading.Event | None = None) -> dict[str, dict[str, float]]:
    """Mean IoU per task and mode: a thin summary of the benchmark's rows
    (:func:`benchmark_rows`, selections first / best_score / oracle).

    Returns
    -------
    dict
        ``{task: {"mode1_first": ..., "mode1_best_score": ..., "mode1_oracle": ..., "n": ...}}``
        plus an ``"all"`` entry averaged over images.
    """
    from app.core.benchmark.evaluate import task_table

    if embeddings is None and engine is not None:
        embeddings = [engine.embed(s.image) for s in samples]
    rows = benchmark_rows({model.name: model}, samples, embeddings, modes=modes, seed=seed,
                          selections=("first", "best_score", "oracle"), cancel=cancel)
    return task_table(rows)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
class _Trainer:
    """Differentiable prompt encoder + mask decoder on cached embeddings (one model)."""

    def __init__(self, model, device: str, amp_dtype):
        self.model = model
        self.net = model.net
        self.device = device
        self.amp_dtype = amp_dtype

    def params(self):
        return [*self.net.prompt_encoder.parameters(), *self.net.mask_decoder.parameters()]

    def forward(self, emb: Embedding, prompt: Prompt):
        """All four decoder outputs: logits (4, 256, 256) and predicted IoU (4,), through the
        inference path's own code (``model_prompt`` + ``decoder_outputs``), with gradients."""
        import torch

        boxes = None if prompt.box_xyxy is None else prompt.box_xyxy[None]
        coords, labels, box_m, mask = self.model.model_prompt(prompt, boxes, emb.original_size)
        ctx = (torch.autocast(device_type="cuda", dtype=self.amp_dtype)
               if self.amp_dtype is not None else _null())
        with ctx:
            low_res, iou_pred = self.model.decoder_outputs(emb.features, coords, labels,
                                                           box_m, mask)
        return low_res[0].float(), iou_pred[0].float()

    def target_lowres(self, emb: Embedding, target: np.ndarray):
        """Ground truth in model-input space: (h, w) content of the 256 x 256 output."""
        import cv2
        import torch

        h, w = emb.input_size
        t = cv2.resize(target.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(t).to(self.device)

    def loss(self, logits, iou_pred, target, ambiguous: bool, *, teacher_prob=None,
             distill_weight: float = 0.0, prev_iou: float | None = None,
             monotone_weight: float = 0.0, distill_dice: bool = False,
             first_weight: float = 0.0):
        """BCE + Dice (best output if ambiguous, else all four) + MSE on the IoU head.

        ``teacher_prob`` (h, w): the base decoder's box answer, distilled by BCE with weight
        ``distill_weight`` into every trained output. ``prev_iou``: the previous click's IoU;
        ``monotone_weight`` x max(0, prev_iou - soft IoU of the first candidate) asks the new
        click to improve on it. ``first_weight``: an ambiguous prompt's first candidate also
        pays its own BCE + Dice with this weight.
        """
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
        total = seg_loss + iou_loss
        if ambiguous and first_weight > 0:
            total = total + first_weight * seg[0]
        if teacher_prob is not None and distill_weight > 0:
            tp = teacher_prob[:h, :w][None].expand_as(lg)
            if distill_dice:
                # size-normalised, and only as far as the base answer is right
                with torch.no_grad():
                    th, tt = tp[0] > 0.5, tgt[0] > 0.5
                    u = (th | tt).sum()
                    t_iou = float((th & tt).sum() / u) if u > 0 else 1.0
                t_inter = (prob * tp).sum(dim=(1, 2))
                t_dice = 1 - (2 * t_inter + 1) / (prob.sum(dim=(1, 2)) + tp.sum(dim=(1, 2)) + 1)
                total = total + distill_weight * t_iou * (
                    F.binary_cross_entropy_with_logits(lg, tp) + t_dice.mean())
            else:
                total = total + distill_weight * F.binary_cross_entropy_with_logits(lg, tp)
        if prev_iou is not None and monotone_weight > 0:
            p1, t1 = prob[0 if ambiguous else 1], tgt[0]
            i1 = (p1 * t1).sum()
            soft = i1 / (p1.sum() + t1.sum() - i1).clamp(min=1e-6)
            total = total + monotone_weight * torch.relu(prev_iou - soft)
        return total, true_iou

    def lowres_to_mask(self, emb: Embedding, logits_256) -> np.ndarray:
        # the inference path's post-processing (Preprocessing.logits_to_masks), not a copy
        low = logits_256.detach().float().cpu().numpy()[None]
        return self.model.logits_to_masks(emb, low)[0]


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _lowres_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _sequence_target(trainer: _Trainer, emb: Embedding, target: np.ndarray):
    """The ground truth at the model's output resolution, as a tensor and as a never-empty
    boolean mask (a lesion smaller than one output pixel keeps its brightest pixel)."""
    tgt_t = trainer.target_lowres(emb, target)
    tgt_low = tgt_t.cpu().numpy() > 0.5
    if not tgt_low.any():
        h, w = tgt_low.shape
        H, W = emb.original_size
        r, c = np.unravel_index(int(np.argmax(target)), target.shape)
        tgt_low[min(h - 1, r * h // H), min(w - 1, c * w // W)] = True
    return tgt_t, tgt_low


def _next_sequence_click(tgt_low: np.ndarray, pred, not_clicked: np.ndarray, feed_back: bool,
                         target: np.ndarray, original_size, rng: np.random.Generator):
    """The next click of an iterative protocol, placed in model-input space (the error region
    of the 256-px answer against the resized ground truth) and mapped to original pixels;
    its label comes from the original mask. ``feed_back``: the standard protocol (largest
    error, ``not_clicked`` updated), otherwise the paper's (farthest pixel of the error)."""
    from app.core.prompts import paper_next_click, standard_next_click

    h, w = tgt_low.shape
    H, W = original_size
    if feed_back:
        x, y, _ = standard_next_click(tgt_low, pred, not_clicked)
        not_clicked[y, x] = False
    else:
        x, y, _ = paper_next_click(tgt_low, pred, rng)
    xo = int(min(W - 1, max(0, round((x + 0.5) * W / w - 0.5))))
    yo = int(min(H - 1, max(0, round((y + 0.5) * H / h - 0.5))))
    return xo, yo, int(target[yo, xo])


def _pick_candidate(logits, tgt_low: np.ndarray, rng: np.random.Generator):
    """The answer the next click corrects: the first multimask candidate or the best one
    (the benchmark's "first" and "oracle"), half the time each. Returns its mask, IoU and
    low-res logits (detached)."""
    h, w = tgt_low.shape
    lg = logits.detach()
    cand = (lg[1:4, :h, :w] > 0).cpu().numpy()
    ious = [_lowres_iou(c, tgt_low) for c in cand]
    k = 0 if rng.random() < 0.5 else int(np.argmax(ious))
    return cand[k], ious[k], lg[1 + k].cpu().numpy()


def _simulate_sequence(emb: Embedding, target: np.ndarray, tgt_low: np.ndarray, n_clicks: int,
                       feed_back: bool, rng: np.random.Generator, answer):
    """Run an iterative-protocol click sequence on the model's own answers (``tgt_low``: the
    ground truth at output resolution, from :func:`_sequence_target`).

    ``answer(r, prompt, prev_iou)`` is called at click ``r`` (0-based) and returns the four
    low-res logits the next click corrects (``None`` at the last click). Returns the last
    prompt and the previous click's IoU."""
    not_clicked = np.ones(tgt_low.shape, bool)
    points: list[list[float]] = []
    labels: list[int] = []
    pred = prev_logits = prev_iou = prompt = None
    for r in range(n_clicks):
        xo, yo, lab = _next_sequence_click(tgt_low, pred, not_clicked, feed_back, target,
                                           emb.original_size, rng)
        points.append([xo, yo])
        labels.append(lab)
        prompt = Prompt(points_xy=np.array(points, np.float32),
                        point_labels=np.array(labels, np.int32),
                        mask_logits=prev_logits if feed_back else None)
        lg = answer(r, prompt, prev_iou)
        if r == n_clicks - 1:
            break
        pred, prev_iou, prev_logits = _pick_candidate(lg, tgt_low, rng)
    return prompt, prev_iou


def _click_sequence_step(trainer: _Trainer, emb: Embedding, target: np.ndarray,
                         n_clicks: int, feed_back: bool, rng: np.random.Generator):
    """Simulate ``n_clicks - 1`` clicks of an iterative protocol on the model's own answers
    (no gradient) and return the last click's prompt and the previous click's IoU
    (:func:`_next_sequence_click` places each click)."""
    import torch

    def answer(r, prompt, _prev_iou):
        if r == n_clicks - 1:
            return None
        with torch.no_grad():
            return trainer.forward(emb, prompt)[0]

    _, tgt_low = _sequence_target(trainer, emb, target)
    return _simulate_sequence(emb, target, tgt_low, n_clicks, feed_back, rng, answer)


def _click_sequence_loss(trainer: _Trainer, emb: Embedding, target: np.ndarray,
                         n_clicks: int, feed_back: bool, rng: np.random.Generator,
                         monotone_weight: float, scale: float,
                         first_weight: float = 0.0) -> float:
    """Train on every click of a simulated iterative-protocol sequence (``every_click_loss``).

    The clicks are placed as in :func:`_click_sequence_step`; each click's forward pass keeps
    its gradient and is back-propagated at once (``loss * scale / n_clicks``), the answer fed
    to the next click is detached. The first click is ambiguous (best of three); every later
    one is also asked, by the monotone hinge, to beat the IoU of the click before.

    Returns
    -------
    float
        The sequence's mean loss.
    """
    tgt_t, tgt_low = _sequence_target(trainer, emb, target)
    total = 0.0

    def answer(r, prompt, prev_iou):
        nonlocal total
        lg, ip = trainer.forward(emb, prompt)
        loss, _ = trainer.loss(lg, ip, tgt_t, r == 0, prev_iou=prev_iou,
                               monotone_weight=monotone_weight, first_weight=first_weight)
        (loss * (scale / n_clicks)).backward()
        total += float(loss.detach()) / n_clicks
        return lg

    _simulate_sequence(emb, target, tgt_low, n_clicks, feed_back, rng, answer)
    return total


def _validate(model, val: Sequence[TrainingSample], embs: Sequence[Embedding],
              seed: int) -> dict[str, float]:
    """The benchmark on the validation split, mean over tasks (first candidate): ``point``
    (mode 1, one farthest click), ``box`` (mode 3, tight box) and ``clicks`` (the paper's
    iterative protocol, mean IoU over clicks 1..5)."""
    if not val:
        return {"point": float("nan"), "box": float("nan"), "clicks": float("nan")}
    rows = benchmark_rows({"model": model}, val, embs, modes=(1, 3), protocols=("paper",),
                          clicks=5, selections=("first",), seed=seed)
    by: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        key = {"mode1": "point", "mode3": "box", "paper": "clicks"}[r["protocol"]]
        by.setdefault(key, {}).setdefault(r["task"], []).append(float(r["iou"] or 0.0))
    return {k: float(np.mean([np.mean(v) for v in tasks.values()])) for k, tasks in by.items()}


def _validate_as_saved(model, val: Sequence[TrainingSample], embs: Sequence[Embedding],
                       seed: int, half_weights: bool) -> dict[str, float]:
    """:func:`_validate` on the weights as they would be saved: rounded to float16 first when
    ``half_weights`` (so the kept step's figures are exactly the saved model's; rounding moved
    them by about 1e-5 on real images), the training weights restored after."""
    if not half_weights:
        return _validate(model, val, embs, seed)
    state = _decoder_state(model.net)
    try:
        _round_decoder_half_(model.net)
        return _validate(model, val, embs, seed)
    finally:
        _load_decoder_state(model.net, state)


def _round_decoder_half_(net) -> None:
    """Round the trained modules (prompt encoder, mask decoder) to float16 values in place."""
    import torch

    with torch.no_grad():
        for k, t in _decoder_items(net):
            if t.is_floating_point() and "positional_encoding" not in k:
                t.copy_(t.half().float())


def _device_info(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


#: what the loss is (recorded in manifests)
LOSS_TEXT = ("BCE + Dice (best of 3 outputs for a single click, all 4 outputs otherwise) + "
             "MSE(IoU head, true IoU); click sequences: loss on the last click plus "
             "monotone_weight x max(0, previous click's IoU - soft IoU of the first candidate); "
             "boxes: plus distill_weight x BCE toward the base decoder's box probabilities; "
             "every_click_loss: loss and hinge at every click of a sequence; distill_dice: "
             "the box distillation plus a soft Dice toward the base answer, both weighted by "
             "the base answer's IoU with the ground truth; first_weight: a single click's "
             "first candidate also pays its BCE + Dice with this weight")


def finetune(train: Sequence[TrainingSample], val: Sequence[TrainingSample] = (), *,
             base: str = "litemedsam", name: str = "finetuned", config: FinetuneConfig | None = None,
             device: str | None = None, on_progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None, evaluate: bool = True,
             data_description: dict[str, Any] | None = None,
             store: Any = None) -> FinetuneResult:
    """Fine-tune the prompt encoder + mask decoder of registry model ``base``.

    Parameters
    ----------
    train, val : sequence of TrainingSample
        Split them by case first (:func:`split_by_case`); ``val`` may be empty (then no early
        stopping and the last weights are kept).
    base : str
        Registry name of the model to adapt (any SAM-family entry); the box-distillation
        teacher and the decoder box prompts may be routed to.
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
        Score the base and the fine-tuned model on ``val`` through the benchmark (modes 1, 3
        and 5; :func:`benchmark_rows`) and route box prompts by that evidence
        (:func:`choose_box_decoder`).
    data_description : dict, optional
        Extra provenance for the manifest (dataset paths, licences).
    store : EmbeddingStore, optional
        Keep the (frozen encoder's) embeddings on disk, so another run on the same images
        (a recipe variant) skips the encoder.

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

    teacher = load_model(base, device=device, precision="fp32", backend="torch")
    teacher = getattr(teacher, "tuned", teacher)
    dev = str(teacher.device)
    if cfg.init:
        start = load_model(cfg.init, device=dev, precision="fp32", backend="torch")
        model = getattr(start, "tuned", start)
        # one frozen image encoder in memory: the starting decoder reads the base's embeddings
        model.net.image_encoder = teacher.net.image_encoder
    else:
        model = load_model(base, device=dev, precision="fp32", backend="torch")
        model = getattr(model, "tuned", model)
    # validated as it will answer once saved: three ranked candidates for a click (a box-trained
    # base answers with its single output, so validating with its capabilities would score
    # an output the saved model never shows)
    model.capabilities = POINT_CAPABILITIES
    amp_dtype = None
    if dev.startswith("cuda"):
        # bf16 needs no loss scaling; older GPUs without it train in fp32
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    batch = cfg.batch_size or (16 if dev.startswith("cuda") else 4)
    engine = Engine(teacher, cache_bytes=1 << 40, n_threads=cfg.threads,
                    store=store if store is not None else False)

    # 1. embeddings, once (validation first: without it there is no early stopping), then
    #    the augmented copies of the training images
    aug_rng = derive_rng(cfg.seed, "augment")
    copies = [(i, augment_sample(s, aug_rng)) for j in range(cfg.augment_copies)
              for i, s in enumerate(train)]
    items = [*val, *train, *(c for _, c in copies)]
    embs: list[Embedding] = []
    for i, s in enumerate(items):
        if cancelled():
            break
        if deadline is not None and i >= len(val) + min(8, len(train)) and (
                time.perf_counter() - t0) > (0.5 if i < len(val) + len(train) else 0.25) * (
                deadline - t0):
            # keep half the budget for training (three quarters once the originals are in):
            # train on what is embedded
            break
        embs.append(engine.embed(s.image))
        report("embedding", i + 1, len(items), message=f"embedded {s.source}")
    val_pairs = list(zip(val, embs[: len(val)]))
    train_pairs = list(zip(train, embs[len(val): len(val) + len(train)]))
    if not train_pairs and not cancelled():
        raise DatasetError("the time budget ran out before any training image was embedded")
    # variants[i]: the original and its embedded augmented copies
    variants: list[list[tuple[TrainingSample, Embedding]]] = [[p] for p in train_pairs]
    for (i, c), e in zip(copies, embs[len(val) + len(train):]):
        variants[i].append((c, e))
    n_embedded = engine.stats.embeddings_computed
    sizes = np.array([max(float(np.mean(s.mask)), 1e-4) for s, _ in train_pairs])
    weights = sizes ** -float(cfg.size_balance)
    weights /= weights.sum()

    val_samples, val_embs = [s for s, _ in val_pairs], [e for _, e in val_pairs]
    before_rows: list[dict[str, Any]] = []
    if evaluate and val_pairs and not cancelled():
        report("validating", 0, cfg.steps, message=f"scoring {base} on the validation split")
        before_rows = benchmark_rows({"base": teacher}, val_samples, val_embs,
                                     modes=(1, 3, 5), seed=cfg.seed, cancel=cancel)

    # 2. training
    for p in model.net.image_encoder.parameters():
        p.requires_grad_(False)
    trainer = _Trainer(model, dev, amp_dtype)
    teach = _Trainer(teacher, dev, amp_dtype)
    for p in teacher.net.parameters():
        p.requires_grad_(False)
    params = trainer.params()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    tv0 = time.perf_counter()
    v = _validate_as_saved(model, val_samples, val_embs, cfg.seed, cfg.half_weights)
    val_s = time.perf_counter() - tv0
    history = [{"step": 0, "loss": None, "val_point_iou": v["point"], "val_box_iou": v["box"],
                "val_clicks_iou": v["clicks"], "elapsed_s": time.perf_counter() - t0}]
    report("validating", 0, cfg.steps, val_point_iou=v["point"], val_box_iou=v["box"])
    best_score = float(np.mean(list(v.values()))) if val_pairs else -math.inf
    best_state = _decoder_state(model.net)
    best_step = 0
    since_best = 0
    stopped = "steps"
    losses: list[float] = []
    rng = derive_rng(cfg.seed, "train")
    step_s = 0.0
    step = 0
    kinds = {"points": 0, "box": 0, "correction": 0, "clicks": 0}
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
            options = variants[int(rng.choice(len(variants), p=weights))]
            s, emb = options[int(rng.integers(0, len(options)))]
            tp = sample_prompt(s.mask, rng, cfg)
            prompt, target, ambiguous, kind = tp.prompt, tp.target, tp.ambiguous, tp.kind
            teacher_prob = None
            prev_iou = None
            if kind == "box" and cfg.distill_weight > 0:
                with torch.no_grad():
                    tl, _ = teach.forward(emb, prompt)
                teacher_prob = torch.sigmoid(tl[0])
            elif kind == "points" and cfg.max_clicks > 1 and rng.random() < cfg.p_iterative:
                n_clicks = int(rng.integers(2, cfg.max_clicks + 1))
                if cfg.every_click_loss:
                    kinds["clicks"] += 1
                    total += _click_sequence_loss(
                        trainer, emb, target, n_clicks, bool(rng.random() < cfg.p_feedback),
                        rng, cfg.monotone_weight, 1.0 / batch, cfg.first_weight) / batch
                    continue
                prompt, prev_iou = _click_sequence_step(
                    trainer, emb, target, n_clicks, bool(rng.random() < cfg.p_feedback), rng)
                ambiguous, kind = False, "clicks"
            elif kind == "points" and rng.random() < cfg.p_correction:
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
            loss, _ = trainer.loss(logits, iou_pred, trainer.target_lowres(emb, target),
                                   ambiguous, teacher_prob=teacher_prob,
                                   distill_weight=cfg.distill_weight, prev_iou=prev_iou,
                                   monotone_weight=cfg.monotone_weight,
                                   distill_dice=cfg.distill_dice, first_weight=cfg.first_weight)
            (loss / batch).backward()
            total += float(loss.detach()) / batch
        opt.step()
        losses.append(total)
        step_s = time.perf_counter() - ts
        report("training", step, cfg.steps, loss=float(np.mean(losses[-cfg.val_every:])))
        if val_pairs and (step % cfg.val_every == 0 or step == cfg.steps):
            tv0 = time.perf_counter()
            v = _validate_as_saved(model, val_samples, val_embs, cfg.seed, cfg.half_weights)
            val_s = time.perf_counter() - tv0
            mean_loss = float(np.mean(losses[-cfg.val_every:]))
            history.append({"step": step, "loss": mean_loss, "val_point_iou": v["point"],
                            "val_box_iou": v["box"], "val_clicks_iou": v["clicks"],
                            "elapsed_s": time.perf_counter() - t0})
            report("validating", step, cfg.steps, loss=mean_loss, val_point_iou=v["point"],
                   val_box_iou=v["box"])
            score = float(np.mean(list(v.values())))
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
        _round_decoder_half_(model.net)
    train_s = time.perf_counter() - t0

    # 3. the adapted model: same object, new name; boxes routed by evidence
    model.name = name  # its capabilities are the point model's since before step 0
    model.checkpoint_path = f"{getattr(model, 'checkpoint_path', '')}+{name}@{best_step}"
    after_rows: list[dict[str, Any]] = []
    routing: dict[str, Any] = {"decoder": "tuned", "reason": "not evaluated"}
    if evaluate and val_pairs and not cancelled():
        report("validating", steps_taken, cfg.steps,
               message=f"scoring {name} on the validation split")
        after_rows = benchmark_rows({"tuned": model}, val_samples, val_embs, modes=(1, 3, 5),
                                    seed=cfg.seed, cancel=cancel)
        routing = choose_box_decoder([*before_rows, *after_rows], tuned="tuned", base="base")
    box_decoder = routing["decoder"]
    routed = FinetunedModel(
        model, load_model(base, device=dev, precision="fp32", backend="torch")
        if box_decoder == "base" else None,
        box_decoder=box_decoder)

    import app
    from app.core.benchmark.evaluate import task_table

    before = task_table(before_rows) if before_rows else {}
    after_tuned = task_table(after_rows) if after_rows else {}
    if box_decoder == "base" and after_rows:
        # the routed model answers boxes with the base decoder: its box rows are the base's
        after = task_table([*[r for r in after_rows if r["protocol"] == "mode1"],
                            *[r for r in before_rows if r["protocol"] != "mode1"]])
    else:
        after = after_tuned
    manifest = {
        "format": "samscope-finetuned/1",
        "name": name,
        "base_model": getattr(teacher, "name", base),
        "base_checkpoint_sha256": _base_sha(getattr(teacher, "name", base)),
        "trained_modules": ["prompt_encoder", "mask_decoder"],
        "capabilities": asdict(POINT_CAPABILITIES),
        "data": {
            "n_train_images": len(train_pairs),
            "n_augmented_images": sum(len(vs) - 1 for vs in variants),
            "n_val_images": len(val_pairs),
            "train_cases": sorted({s.case for s, _ in train_pairs}),
            "val_cases": sorted({s.case for s, _ in val_pairs}),
            "tasks": sorted({s.task for s in [*train, *val]}),
            "train_sha256": samples_digest(s for s, _ in train_pairs),
            "val_sha256": samples_digest(val),
            **(data_description or {}),
        },
        "recipe": {**cfg.recipe(), "batch_size": batch, "loss": LOSS_TEXT,
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
                       "box_routing": routing,
                       "box_decoder_rule": BOX_RULE,
                       "protocol": "app.core.benchmark.evaluate (the runner's prompts, "
                                   "selection and metrics), modes 1, 3 and 5, seed "
                                   f"{cfg.seed}"},
        "samscope_version": app.__version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report("done", steps_taken, cfg.steps, loss=float(np.mean(losses[-cfg.val_every:]))
           if losses else None, val_point_iou=v["point"], val_box_iou=v["box"],
           message=f"stopped: {stopped}")
    return FinetuneResult(model=routed, manifest=manifest, history=history, stopped=stopped)


#: how :func:`choose_box_decoder` decides (recorded in manifests)
BOX_RULE = ("one decoder for every prompt when the fine-tuned decoder's box IoU (modes 3 and "
            "5, first candidate) is higher than the base decoder's on the mean over validation "
            "tasks and no task is significantly worse (95 % bootstrap interval of the paired "
            "difference entirely below 0; the bootstrap resamples a task's cases, or, for a "
            "task of one case, its images); otherwise box-only prompts go to the base decoder")


def choose_box_decoder(rows: Sequence[dict[str, Any]], *, tuned: str = "tuned",
                       base: str = "base", modes: Sequence[int] = (3, 5)) -> dict[str, Any]:
    """Route box-only prompts by evidence (:data:`BOX_RULE`).

    Parameters
    ----------
    rows : sequence of dict
        Benchmark rows of both methods on the same validation images.
    tuned, base : str
        Their ``method`` names in ``rows``.

    Returns
    -------
    dict
        ``decoder`` (``"tuned"`` or ``"base"``), ``reason`` (a sentence), ``mean_of_tasks_diff``
        and ``per_task`` (``{"mode3": {task: paired_difference dict}, ...}``).
    """
    from app.core.benchmark.evaluate import task_differences

    per_task: dict[str, dict[str, dict[str, Any]]] = {}
    diffs = []
    worse = []
    for mode in modes:
        d = task_differences(rows, tuned, base, f"mode{mode}")
        per_task[f"mode{mode}"] = d
        for task, r in d.items():
            diffs.append(r["mean_diff"])
            if r["high"] < 0:
                unit = ("" if r["noise"] == "cases" else
                        f"; 1 case, its {r['n_rows']} images resampled")
                worse.append(f"{task} (mode {mode}: {r['mean_diff']:+.3f}, 95 % CI "
                             f"{r['low']:+.3f} to {r['high']:+.3f}{unit})")
    if not diffs:
        return {"decoder": "tuned", "reason": "no box rows to compare", "per_task": per_task,
                "mean_of_tasks_diff": None}
    mean = float(np.mean(diffs))
    if mean > 0 and not worse:
        decoder = "tuned"
        reason = (f"the fine-tuned decoder answers boxes: {mean:+.3f} box IoU over the base "
                  "decoder on the mean of tasks, no task significantly worse")
    else:
        decoder = "base"
        reason = (f"box-only prompts go to the base decoder: mean-of-task difference "
                  f"{mean:+.3f}" + (f"; significantly worse on {', '.join(worse)}"
                                    if worse else ""))
    return {"decoder": decoder, "reason": reason, "per_task": per_task,
            "mean_of_tasks_diff": mean}


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

