"""Carry an accepted object through a volume, slice by slice, prompted by its own box."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from app.core.annotate.session import box_from_mask, choose_candidate
from app.core.metrics import iou
from app.core.models.base import Candidates, Prompt

__all__ = ["PropagationStep", "propagate_object"]


@dataclass(frozen=True)
class PropagationStep:
    """One slice of a propagation: where it went, what it found, why it stopped (if it did)."""

    z: int
    mask: np.ndarray | None  # bool (Y, X); None when the object ended here
    done: int  # slices visited so far
    total: int  # upper bound on slices to visit
    stopped_because: str = ""


def propagate_object(
    labels: np.ndarray,
    predict: Callable[[int, Prompt], Candidates],
    z0: int,
    label: int,
    *,
    margin_px: int = 2,
    min_area_px: int = 10,
    min_overlap: float = 0.2,
    max_growth: float = 3.0,
    should_cancel: Callable[[], bool] | None = None,
) -> Iterator[PropagationStep]:
    """Carry object ``label`` from slice ``z0`` up and down the volume, one slice at a time.

    Each next slice is prompted with the box around the previous slice's mask (grown by
    ``margin_px``). The run in one direction stops where the object ends: the new mask is
    smaller than ``min_area_px``, overlaps the previous one with IoU below ``min_overlap``, or
    grows more than ``max_growth`` times (the model has jumped to something else). Slices that
    already hold the label are kept as they are and serve as the next prompt.

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
        The label map (read only; the caller applies the result).
    predict : callable (z, Prompt) -> Candidates
        Decodes a prompt on slice ``z`` (the caller's engine, on the engine's thread).

    Yields
    ------
    PropagationStep
        One per visited slice; the caller collects the masks and applies them as one step
        (:meth:`~app.core.annotate.session.SegmentSession.apply_slices`). Stops early when ``should_cancel()`` is true.
    """
    start = labels[z0] == label
    if not start.any():
        raise ValueError(f"label {label} is empty on slice {z0}: accept an object there first")
    n = labels.shape[0]
    total = n - 1
    done = 0
    for step in (+1, -1):
        prev = start
        z = z0 + step
        while 0 <= z < n:
            if should_cancel is not None and should_cancel():
                return
            done += 1
            existing = labels[z] == label
            if existing.any():
                prev = existing
                yield PropagationStep(z, None, done, total, "already labelled")
                z += step
                continue
            box = box_from_mask(prev, margin_px)  # same box as coords.mask_to_box_xyxy, grown
            cands = predict(z, Prompt(box_xyxy=box))
            mask = cands.masks[choose_candidate(cands)]
            area, prev_area = int(mask.sum()), int(prev.sum())
            reason = ""
            if area < min_area_px:
                reason = f"object ended (mask of {area} px)"
            elif iou(mask, prev) < min_overlap:
                reason = f"object ended (overlap {iou(mask, prev):.2f} with the previous slice)"
            elif area > max_growth * max(prev_area, 1):
                reason = f"stopped: mask grew {area / max(prev_area, 1):.1f}x"
            if reason:
                yield PropagationStep(z, None, done, total, reason)
                break
            yield PropagationStep(z, mask, done, total)
            prev = mask
            z += step
