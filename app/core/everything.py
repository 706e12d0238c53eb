"""Segment everything: SAM's automatic mask generator over any :class:`PromptableModel`.

A regular grid of single positive points (``grid`` points per side, at pixel centres of the
model-input image) is decoded on one embedding; each point gives K candidate masks, which are
kept when confident (predicted IoU >= ``pred_iou_thresh``), stable (``stability_score`` >=
``stability_score_thresh``: the IoU of the mask thresholded at logit ``+offset`` and at
``-offset``) and large enough (``min_mask_region_area`` pixels); duplicates are removed by box
non-maximum suppression (``box_nms_thresh``, boxes scored by predicted IoU). The algorithm is
segment-anything's ``SamAutomaticMaskGenerator`` (Kirillov et al. 2023) without crops.

Differences from the reference, on purpose: the stability score is computed on the decoder's
low-resolution logits (cropped to the image content), before upsampling, so only the masks
that pass both filters are upsampled to the image; ``min_mask_region_area`` removes islands
and fills holes smaller than that many pixels (as the reference's post-processing) *before*
the one box NMS, and drops masks left empty. Masks come back sorted by predicted IoU.

The defaults of the filters are written once, in :data:`DEFAULT_OPTIONS` (SAM's published
ones: SAM ViT-B/L/H, MedSAM and MobileSAM use them), and, for a model whose scores are on
another scale, in :data:`MODEL_OPTIONS` (measured with ``bench/everything_filters.py``);
:func:`options_for` gives a model's effective set, explicit options overriding both.

.. code-block:: python

    emb = engine.embed(image)
    result = generate_masks(engine.model, emb, grid=32)
    labels = label_map(result)          # (H, W) uint16, 0 = background, 1 = most confident
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_OPTIONS",
    "GRIDS",
    "MODEL_OPTIONS",
    "EverythingResult",
    "check_options",
    "generate_masks",
    "grid_points",
    "label_map",
    "options_for",
    "stability_score",
]

#: points per side allowed for a grid (Mazurowski et al. Fig. 9 use 2^5, 2^6, 2^7)
GRIDS = (16, 32, 64, 128)

#: SAM's automatic-mask-generator filters (segment-anything's defaults but min area)
DEFAULT_OPTIONS: dict[str, float | int] = {
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "min_mask_region_area": 0,
    "points_per_batch": 64,
}

#: per-model defaults that differ from :data:`DEFAULT_OPTIONS`, measured on real images
#: (``bench/everything_filters.py``, 2 fetal_head_us + 2 cxr_lungs images, grid 32).
#: Our click-tuned LiteMedSAM decoder predicts IoUs below 0.88 and softer logits than SAM.
#: v3 decoder (re-swept): SAM's 0.88 / 0.95 keeps no mask on any image (match Dice 0, 0/4
#: objects found); 0.88 / 0.7: Dice 0.36, 1/4 found, 2 images empty; 0.5-0.7 / 0.7: Dice
#: 0.84, 4/4 found, 8.0 masks per image (x / 0.6: 0.83, 4/4, about 10 masks; x / 0.8: 0.79,
#: 3/4). The v2 decoder gave the same choice (0.6 / 0.7: Dice 0.86, 4/4).
MODEL_OPTIONS: dict[str, dict[str, float | int]] = {
    "litemedsam_points": {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.7},
}


def options_for(model_name: str,
                options: Mapping[str, Any] | None = None) -> dict[str, float | int]:
    """The effective filters for the model (registry name) ``model_name``:
    :data:`DEFAULT_OPTIONS`, then the model's :data:`MODEL_OPTIONS`, then ``options``.

    Raises
    ------
    ValueError
        As :func:`check_options`.
    """
    return check_options({**MODEL_OPTIONS.get(model_name, {}), **dict(options or {})})


def check_options(options: Mapping[str, Any] | None) -> dict[str, float | int]:
    """``DEFAULT_OPTIONS`` updated with ``options``, checked.

    Raises
    ------
    ValueError
        An unknown key (the known ones listed) or a value out of range.
    """
    out = dict(DEFAULT_OPTIONS)
    for key, value in dict(options or {}).items():
        if key not in DEFAULT_OPTIONS:
            raise ValueError(f"unknown everything-mode option {key!r}; known: "
                             f"{', '.join(DEFAULT_OPTIONS)}")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"everything-mode option {key}: expected a number, "
                             f"got {value!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"everything-mode option {key}: expected a finite number, "
                             f"got {value!r}")
        if key in ("min_mask_region_area", "points_per_batch"):
            if v != int(v) or v < (1 if key == "points_per_batch" else 0):
                raise ValueError(f"everything-mode option {key}: expected a whole number "
                                 f">= {1 if key == 'points_per_batch' else 0}, got {value!r}")
            out[key] = int(v)
        else:
            if key == "stability_score_offset" and v < 0:
                raise ValueError(f"everything-mode option {key}: must be >= 0, got {value!r}")
            if key != "stability_score_offset" and not 0 <= v <= 1:
                raise ValueError(f"everything-mode option {key}: must be in [0, 1], "
                                 f"got {value!r}")
            out[key] = v
    return out


@dataclass(frozen=True, eq=False)
class EverythingResult:
    """The masks segment-everything kept on one image.

    Attributes
    ----------
    masks : ndarray of bool, shape (M, H, W)
        Original image resolution, by descending predicted IoU.
    scores : ndarray of float32, shape (M,)
        Predicted IoU.
    stability : ndarray of float32, shape (M,)
    boxes_xyxy : ndarray of int, shape (M, 4)
        Inclusive ``[x0, y0, x1, y1]`` of each mask.
    points_xy : ndarray of float32, shape (M, 2)
        The grid point that produced each mask.
    grid : int
        Points per side.
    n_prompts : int
        Points decoded (``grid ** 2``).
    n_candidates : dict
        Masks left after each filter: ``decoded``, ``pred_iou``, ``stability``, ``area``,
        ``nms``.
    seconds : float
        Decoding and filtering (the embedding not included).
    """

    masks: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    boxes_xyxy: np.ndarray
    points_xy: np.ndarray
    grid: int
    n_prompts: int
    n_candidates: dict[str, int]
    seconds: float

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def grid_points(grid: int, shape_hw: tuple[int, int]) -> np.ndarray:
    """A regular ``grid`` x ``grid`` lattice of points over an image, as SAM's
    ``build_point_grid``: cell centres ``(i + 0.5) / grid`` of the width and height.

    Returns
    -------
    ndarray of float32, shape (grid ** 2, 2)
        ``(x, y)`` pixel coordinates (pixel centres at integers), row by row.
    """
    h, w = (int(s) for s in shape_hw)
    if grid < 1:
        raise ValueError(f"grid must be >= 1 point per side, got {grid}")
    frac = (np.arange(grid) + 0.5) / grid
    xs = np.clip(frac * w - 0.5, 0, w - 1)
    ys = np.clip(frac * h - 0.5, 0, h - 1)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def stability_score(logits: np.ndarray, offset: float, threshold: float = 0.0) -> np.ndarray:
    """IoU of each mask thresholded at ``threshold + offset`` with it at ``threshold - offset``.

    Parameters
    ----------
    logits : ndarray of float, shape (N, h, w)
    offset : float

    Returns
    -------
    ndarray of float32, shape (N,)
        In [0, 1]; 0 where even the lower threshold gives an empty mask.
    """
    lg = np.asarray(logits, np.float32).reshape(len(logits), -1)
    inter = (lg > threshold + offset).sum(axis=1)
    union = (lg > threshold - offset).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float32)


def _boxes_of(masks: np.ndarray) -> np.ndarray:
    """Inclusive ``[x0, y0, x1, y1]`` of each non-empty (H, W) mask, (M, 4) int64."""
    out = np.zeros((len(masks), 4), np.int64)
    for i, m in enumerate(masks):
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        out[i] = (cols[0], rows[0], cols[-1], rows[-1])
    return out


def _remove_small_regions(mask: np.ndarray, min_area: int) -> np.ndarray:
    """``mask`` without islands, and with its holes filled, smaller than ``min_area`` px."""
    import cv2

    out = mask.copy()
    for fill in (False, True):  # islands of the mask, then islands of the background (holes)
        work = (~out if fill else out).astype(np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(work, connectivity=8)
        small = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] < min_area]
        if small:
            hit = np.isin(lab, small)
            out = out | hit if fill else out & ~hit
    return out


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by box non-maximum suppression (torchvision's), by descending score."""
    import torch
    from torchvision.ops import batched_nms

    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    keep = batched_nms(torch.as_tensor(boxes, dtype=torch.float32),
                       torch.as_tensor(scores, dtype=torch.float32),
                       torch.zeros(len(boxes), dtype=torch.int64), float(iou_threshold))
    return keep.numpy().astype(np.int64)


def _content_hw(model: Any, embedding: Any, low_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the image content inside the low-res logits (the rest is padding)."""
    pre = getattr(model, "preprocessing", None)
    if pre is None or not getattr(pre, "keep_aspect", False):
        return low_hw
    size = float(pre.input_size)
    h, w = embedding.input_size
    return (max(1, int(np.ceil(h / size * low_hw[0]))), max(1, int(np.ceil(w / size * low_hw[1]))))


def _decode_batch(model: Any, embedding: Any, pts: np.ndarray):
    """(low_res (n*K, h, w), scores (n*K,), point index (n*K,), masks or None)."""
    fn = getattr(model, "decode_points", None)
    if fn is not None:
        low, scores = fn(embedding, pts, multimask=True)
        k = low.shape[1]
        return (low.reshape(-1, *low.shape[-2:]), scores.reshape(-1),
                np.repeat(np.arange(len(pts)), k), None)
    from app.core.models.base import Prompt

    lows, scs, idx, masks = [], [], [], []
    for i, p in enumerate(pts):
        c = model.predict(embedding, Prompt.from_points([p], [1]), multimask=True)
        lows.append(c.low_res_logits)
        scs.append(np.asarray(c.scores, np.float32))
        masks.append(c.masks)
        idx.extend([i] * len(c))
    return np.concatenate(lows), np.concatenate(scs), np.asarray(idx), np.concatenate(masks)


def generate_masks(model: Any, embedding: Any, grid: int = 32,
                   options: Mapping[str, Any] | None = None, *,
                   on_progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> EverythingResult:
    """Segment everything on one embedded image.

    Parameters
    ----------
    model : PromptableModel
        A SAM-family model; its ``decode_points`` (batched single points) is used when it has
        one, else one :meth:`predict` per point.
    embedding : Embedding
        ``model``'s embedding of the image.
    grid : int
        Points per side (16, 32, 64, 128 in the benchmark).
    options : mapping, optional
        Overrides of :data:`DEFAULT_OPTIONS`.
    on_progress : callable (points done, points total), optional
    should_stop : callable returning bool, optional
        Checked between batches; when True the masks so far are filtered and returned.

    Returns
    -------
    EverythingResult
    """
    opts = check_options(options)
    t0 = time.perf_counter()
    hw = tuple(int(s) for s in embedding.original_size)
    pts = grid_points(grid, hw)
    batch = int(opts["points_per_batch"])
    offset = float(opts["stability_score_offset"])
    counts = dict.fromkeys(("decoded", "pred_iou", "stability", "area", "nms"), 0)
    kept_masks: list[np.ndarray] = []
    kept_scores: list[float] = []
    kept_stab: list[float] = []
    kept_pts: list[np.ndarray] = []
    min_area = int(opts["min_mask_region_area"])
    for start in range(0, len(pts), batch):
        if should_stop is not None and should_stop():
            break
        chunk = pts[start:start + batch]
        low, scores, idx, masks = _decode_batch(model, embedding, chunk)
        counts["decoded"] += len(scores)
        ok = np.nan_to_num(scores, nan=-np.inf) > float(opts["pred_iou_thresh"])
        counts["pred_iou"] += int(ok.sum())
        if ok.any():
            ch, cw = _content_hw(model, embedding, low.shape[-2:])
            stab = stability_score(low[ok][:, :ch, :cw], offset)
            sel = np.flatnonzero(ok)[stab >= float(opts["stability_score_thresh"])]
            stab = stab[stab >= float(opts["stability_score_thresh"])]
            counts["stability"] += len(sel)
            if len(sel):
                if masks is None:
                    full = model.logits_to_masks(embedding, low[sel])
                else:
                    full = masks[sel]
                for j, m in enumerate(full):
                    if min_area > 0:
                        m = _remove_small_regions(m, min_area)
                    if not m.any():
                        continue
                    kept_masks.append(m)
                    kept_scores.append(float(scores[sel[j]]))
                    kept_stab.append(float(stab[j]))
                    kept_pts.append(chunk[idx[sel[j]]])
        if on_progress is not None:
            on_progress(min(start + batch, len(pts)), len(pts))
    counts["area"] = len(kept_masks)
    if kept_masks:
        masks_arr = np.stack(kept_masks)
        boxes = _boxes_of(masks_arr)
        keep = _nms(boxes, np.asarray(kept_scores, np.float32), float(opts["box_nms_thresh"]))
    else:
        masks_arr = np.zeros((0, *hw), bool)
        boxes = np.zeros((0, 4), np.int64)
        keep = np.zeros(0, np.int64)
    counts["nms"] = len(keep)
    sc = np.asarray(kept_scores, np.float32)[keep] if len(keep) else np.zeros(0, np.float32)
    order = keep[np.argsort(-sc, kind="stable")] if len(keep) else keep
    return EverythingResult(
        masks=masks_arr[order],
        scores=np.asarray(kept_scores, np.float32)[order] if len(order) else sc,
        stability=np.asarray(kept_stab, np.float32)[order] if len(order) else sc.copy(),
        boxes_xyxy=boxes[order],
        points_xy=(np.asarray(kept_pts, np.float32)[order] if len(order)
                   else np.zeros((0, 2), np.float32)),
        grid=int(grid), n_prompts=len(pts), n_candidates=counts,
        seconds=time.perf_counter() - t0,
    )


def label_map(result: EverythingResult | np.ndarray) -> np.ndarray:
    """The kept masks as one label image: mask ``i`` (0-based, most confident first) is label
    ``i + 1``; a pixel keeps the first mask that covers it (later ones do not overwrite).

    Returns
    -------
    ndarray of uint16, shape (H, W)
    """
    masks = result.masks if isinstance(result, EverythingResult) else np.asarray(result, bool)
    if len(masks) > 65535:
        raise ValueError(f"{len(masks)} masks do not fit a 16-bit label map")
    out = np.zeros(masks.shape[1:], np.uint16)
    for i in range(len(masks) - 1, -1, -1):  # paint the least confident first
        out[masks[i]] = i + 1
    return out
