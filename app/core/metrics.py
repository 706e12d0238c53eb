"""Segmentation metrics on binary 2D masks: IoU, Dice, HD95 and normalised surface Dice.

Surface metrics use the border pixels of each mask (the mask minus its 4-connected erosion) and
Euclidean distances in millimetres from ``scipy.ndimage.distance_transform_edt`` with the pixel
spacing. ``hd95`` follows medpy/MONAI: the 95th percentile of both directed surface distance sets
pooled together. ``nsd`` (normalised surface Dice, Nikolov et al. 2021, pixel-counting variant)
is the fraction of border pixels of either mask lying within ``tolerance_mm`` of the other's
border.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["iou", "dice", "hd95", "nsd", "surface_distances", "size_fraction"]


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, bool)
    g = np.asarray(gt, bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {g.shape}")
    return p, g


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape (both empty: 1.0)."""
    p, g = _pair(pred, gt)
    union = np.count_nonzero(p | g)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(p & g) / union)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) (both empty: 1.0)."""
    p, g = _pair(pred, gt)
    total = np.count_nonzero(p) + np.count_nonzero(g)
    if total == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(p & g) / total)


def size_fraction(gt: np.ndarray) -> float:
    """Object size relative to the image: foreground pixels / all pixels."""
    g = np.asarray(gt, bool)
    return float(np.count_nonzero(g) / g.size)


def _border(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, border_value=0)


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing_mm: Sequence[float] = (1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each border pixel of ``a`` to ``b``'s border, and back.

    Parameters
    ----------
    a, b : ndarray of bool, shape (H, W), both non-empty
    spacing_mm : (row, col)

    Returns
    -------
    d_ab, d_ba : ndarray of float64, shapes (n_border_a,), (n_border_b,)
    """
    a, b = _pair(a, b)
    ba, bb = _border(a), _border(b)
    return _edt(~bb, spacing_mm)[ba], _edt(~ba, spacing_mm)[bb]


def _edt(background: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    # Exact Euclidean distance to the nearest False pixel. OpenCV's precise transform is ~10x
    # faster than scipy's on large images but isotropic only.
    sy, sx = (float(s) for s in spacing_mm)
    if sy == sx:
        import cv2

        dist = cv2.distanceTransform(
            background.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
        )
        return dist.astype(np.float64) * sy
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(background, sampling=(sy, sx))


def hd95(pred: np.ndarray, gt: np.ndarray, spacing_mm: Sequence[float] = (1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance in mm.

    Both empty: 0.0. Exactly one empty: NaN (undefined; the IoU of 0 records the failure).
    """
    p, g = _pair(pred, gt)
    if not p.any() and not g.any():
        return 0.0
    if not p.any() or not g.any():
        return float("nan")
    d_pg, d_gp = surface_distances(p, g, spacing_mm)
    return float(np.percentile(np.hstack((d_pg, d_gp)), 95))


def nsd(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_mm: Sequence[float] = (1.0, 1.0),
    tolerance_mm: float = 2.0,
) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (both empty: 1.0, one empty: 0.0)."""
    p, g = _pair(pred, gt)
    if not p.any() and not g.any():
        return 1.0
    if not p.any() or not g.any():
        return 0.0
    d_pg, d_gp = surface_distances(p, g, spacing_mm)
    close = np.count_nonzero(d_pg <= tolerance_mm) + np.count_nonzero(d_gp <= tolerance_mm)
    return float(close / (d_pg.size + d_gp.size))
