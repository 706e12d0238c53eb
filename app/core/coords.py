"""The one place that converts between napari coordinates and prompt coordinates.

Conventions
-----------
* napari data coordinates are ``(row, col)`` (or ``(z, row, col)`` for volumes) with pixel
  ``(r, c)`` centred on the integer position ``(r, c)``: it covers ``[r - 0.5, r + 0.5]``.
* :class:`~app.core.models.base.Prompt` coordinates are ``(x, y)`` = ``(col, row)`` pixel
  indices of the original image, boxes ``[x0, y0, x1, y1]`` with **inclusive** corners.

So a click maps to a point by swapping axes only; a drawn rectangle becomes the inclusive box of
the pixels whose centres it contains. Model-input coordinates (resize, pad) are made elsewhere,
in :mod:`app.core.models._preprocess`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "rowcol_to_xy",
    "xy_to_rowcol",
    "split_slice",
    "rectangle_to_box_xyxy",
    "box_xyxy_to_rectangle",
    "clip_box_xyxy",
    "mask_to_box_xyxy",
]


def rowcol_to_xy(points_rc: np.ndarray) -> np.ndarray:
    """napari ``(row, col)`` points to prompt ``(x, y)`` points.

    Parameters
    ----------
    points_rc : array_like, shape (N, 2) or (2,)
        Data coordinates after ``layer.world_to_data``; only the last two axes if 3D.

    Returns
    -------
    ndarray of float32, shape (N, 2)
        ``(x, y)`` = ``(col, row)``.
    """
    pts = np.asarray(points_rc, np.float32).reshape(-1, 2)
    return pts[:, ::-1].copy()


def xy_to_rowcol(points_xy: np.ndarray) -> np.ndarray:
    """Prompt ``(x, y)`` points to napari ``(row, col)`` points; shape (N, 2) float32."""
    pts = np.asarray(points_xy, np.float32).reshape(-1, 2)
    return pts[:, ::-1].copy()


def split_slice(points_zrc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split 3D napari points ``(z, row, col)`` into slice indices and ``(x, y)``.

    Parameters
    ----------
    points_zrc : array_like, shape (N, 3)

    Returns
    -------
    z : ndarray of int64, shape (N,)
        Nearest slice index of each point.
    points_xy : ndarray of float32, shape (N, 2)
    """
    pts = np.asarray(points_zrc, np.float64).reshape(-1, 3)
    z = np.floor(pts[:, 0] + 0.5).astype(np.int64)
    return z, rowcol_to_xy(pts[:, 1:])


def rectangle_to_box_xyxy(vertices_rc: np.ndarray,
                          shape_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A napari rectangle to the inclusive box of the pixels whose centres lie inside it.

    Parameters
    ----------
    vertices_rc : array_like, shape (4, 2) or (4, 3)
        The rectangle's corners in data coordinates ``(row, col)`` (a leading z is ignored).
    shape_hw : (H, W), optional
        Clip the box to the image.

    Returns
    -------
    ndarray of float32, shape (4,)
        ``[x0, y0, x1, y1]``, integers, inclusive. A rectangle too thin to contain a pixel
        centre along an axis gives the single nearest row/column.
    """
    v = np.asarray(vertices_rc, np.float64)
    if v.ndim != 2 or v.shape[1] not in (2, 3):
        raise ValueError(f"expected rectangle vertices of shape (4, 2) or (4, 3); got {v.shape}")
    rows, cols = v[:, -2], v[:, -1]
    eps = 1e-6  # vertices exactly on a pixel centre include that pixel
    lo_c, hi_c = math.ceil(cols.min() - eps), math.floor(cols.max() + eps)
    lo_r, hi_r = math.ceil(rows.min() - eps), math.floor(rows.max() + eps)
    if hi_c < lo_c:
        lo_c = hi_c = int(np.floor(cols.mean() + 0.5))
    if hi_r < lo_r:
        lo_r = hi_r = int(np.floor(rows.mean() + 0.5))
    box = np.array([lo_c, lo_r, hi_c, hi_r], np.float32)
    return box if shape_hw is None else clip_box_xyxy(box, shape_hw)


def box_xyxy_to_rectangle(box_xyxy: np.ndarray) -> np.ndarray:
    """An inclusive box to the napari rectangle that covers its pixels edge to edge.

    Returns
    -------
    ndarray of float32, shape (4, 2)
        Corners ``(row, col)``: top-left, top-right, bottom-right, bottom-left. Round-trips
        through :func:`rectangle_to_box_xyxy`.
    """
    x0, y0, x1, y1 = np.asarray(box_xyxy, np.float64).reshape(4)
    r0, r1, c0, c1 = y0 - 0.5, y1 + 0.5, x0 - 0.5, x1 + 0.5
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], np.float32)


def clip_box_xyxy(box_xyxy: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Clip an inclusive box to an ``(H, W)`` image; ``ValueError`` when it misses the image."""
    h, w = int(shape_hw[0]), int(shape_hw[1])
    x0, y0, x1, y1 = np.asarray(box_xyxy, np.float64).reshape(4)
    if x1 < 0 or y1 < 0 or x0 > w - 1 or y0 > h - 1:
        raise ValueError(f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] lies outside the {w}x{h} image")
    return np.array([max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)], np.float32)


def mask_to_box_xyxy(mask: np.ndarray) -> np.ndarray:
    """The tight inclusive box of a mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)

    Returns
    -------
    ndarray of float32, shape (4,)
        ``[x0, y0, x1, y1]``: first/last column and row that hold a foreground pixel.
    """
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {m.shape}")
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        raise ValueError("the mask is empty: it has no box")
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)
