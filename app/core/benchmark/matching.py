"""Match predicted masks (segment everything) to ground-truth objects.

Three rules, all from the same IoU / Dice matrices between every prediction and every
ground-truth object of an image:

* ``match_dice`` -- COSMOS's released evaluation (Huang et al. 2023): for each ground-truth
  object the prediction with the best Dice; a prediction may serve several objects.
* ``match_iou`` -- the same with IoU. For one object, Dice = 2 IoU / (1 + IoU) rises with IoU,
  so both rules pick the same prediction (ties apart); they are kept apart because COSMOS's
  text and code name Dice while other work reports IoU.
* ``hungarian`` -- one-to-one: the assignment maximising the summed IoU
  (``scipy.optimize.linear_sum_assignment``), pairs below IoU 0.5 discarded; an unmatched
  object scores IoU = Dice = 0. Precision = matched / predictions, recall = matched / objects,
  F1 = 2 TP / (2 TP + FP + FN).

Ties go to the earlier prediction (the more confident one when masks are ordered by
predicted IoU, as :func:`app.core.everything.generate_masks` returns them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MATCH_SELECTIONS", "HUNGARIAN_MIN_IOU", "ObjectMatch", "overlap_matrices",
           "match_objects"]

#: the ``selection`` values of everything-mode rows
MATCH_SELECTIONS = ("match_dice", "match_iou", "hungarian")
#: the IoU a one-to-one pair needs to count as a match
HUNGARIAN_MIN_IOU = 0.5


@dataclass(frozen=True)
class ObjectMatch:
    """What one rule gives one ground-truth object.

    Attributes
    ----------
    pred : int or None
        Index of the matched prediction; None when there is none (then ``iou = dice = 0``).
    iou, dice : float
    matched : int
        ``hungarian``: 1 when paired at IoU >= 0.5; other rules: 1 when the chosen prediction
        overlaps the object at all.
    precision, recall, f1 : float or None
        ``hungarian`` only, of the whole image (same on every object); None for the others.
        Precision is NaN when there are no predictions.
    """

    pred: int | None
    iou: float
    dice: float
    matched: int
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None


def overlap_matrices(preds: np.ndarray, objects: Sequence[np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """IoU and Dice of every object (rows) with every prediction (columns).

    Parameters
    ----------
    preds : ndarray of bool, shape (M, H, W)
    objects : sequence of ndarray of bool, shape (H, W)

    Returns
    -------
    iou, dice : ndarray of float64, shape (len(objects), M)
        An empty object against an empty prediction counts 0 (there is nothing to match).
    """
    preds = np.asarray(preds, bool)
    n, m = len(objects), len(preds)
    if n == 0 or m == 0:
        return np.zeros((n, m)), np.zeros((n, m))
    p = preds.reshape(m, -1).astype(np.float32)
    g = np.stack([np.asarray(o, bool).ravel() for o in objects]).astype(np.float32)
    if g.shape[1] != p.shape[1]:
        raise ValueError(f"predictions {preds.shape[1:]} and objects "
                         f"{np.asarray(objects[0]).shape} differ in size")
    inter = g @ p.T
    sp, sg = p.sum(axis=1)[None, :], g.sum(axis=1)[:, None]
    union = sg + sp - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    dice = np.where(sg + sp > 0, 2 * inter / np.maximum(sg + sp, 1), 0.0)
    return iou.astype(np.float64), dice.astype(np.float64)


def match_objects(preds: np.ndarray, objects: Mapping[int, np.ndarray]
                  ) -> dict[str, dict[int, ObjectMatch]]:
    """Match the predictions of one image to its ground-truth objects by every rule.

    Parameters
    ----------
    preds : ndarray of bool, shape (M, H, W)
        M may be 0.
    objects : mapping label -> ndarray of bool, shape (H, W)

    Returns
    -------
    dict
        ``{selection: {label: ObjectMatch}}`` for each of :data:`MATCH_SELECTIONS`.
    """
    labels = list(objects)
    iou_m, dice_m = overlap_matrices(preds, [objects[k] for k in labels])
    n_pred = int(len(preds))
    out: dict[str, dict[int, ObjectMatch]] = {}
    for sel, by in (("match_dice", dice_m), ("match_iou", iou_m)):
        res = {}
        for i, lab in enumerate(labels):
            if n_pred == 0:
                res[lab] = ObjectMatch(None, 0.0, 0.0, 0)
                continue
            j = int(np.argmax(by[i]))  # first maximum: the more confident prediction
            res[lab] = ObjectMatch(j, float(iou_m[i, j]), float(dice_m[i, j]),
                                   int(iou_m[i, j] > 0))
        out[sel] = res
    pairs: dict[int, int] = {}
    if n_pred and labels:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(iou_m, maximize=True)
        pairs = {int(r): int(c) for r, c in zip(rows, cols)
                 if iou_m[r, c] >= HUNGARIAN_MIN_IOU}
    tp = len(pairs)
    precision = tp / n_pred if n_pred else math.nan
    recall = tp / len(labels) if labels else math.nan
    denom = 2 * tp + (n_pred - tp) + (len(labels) - tp)
    f1 = 2 * tp / denom if denom else math.nan
    res = {}
    for i, lab in enumerate(labels):
        if i in pairs:
            j = pairs[i]
            res[lab] = ObjectMatch(j, float(iou_m[i, j]), float(dice_m[i, j]), 1,
                                   precision, recall, f1)
        else:
            res[lab] = ObjectMatch(None, 0.0, 0.0, 0, precision, recall, f1)
    out["hungarian"] = res
    return out
