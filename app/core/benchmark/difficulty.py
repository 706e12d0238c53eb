"""What makes an object hard: factors of a ground-truth mask (and the image around it).

COSMOS (Huang et al. 2023) relates SAM's accuracy to boundary complexity, intensity contrast
and size; Mazurowski et al. 2023 to size (Fig. 8). Every results row carries these, computed
from the ground truth and from the image in the display window the model saw
(:meth:`app.core.image.Image2D.unit_range`):

* ``size_fraction`` -- object pixels / image pixels (:func:`app.core.metrics.size_fraction`).
* ``boundary_complexity`` -- isoperimetric ratio P^2 / (4 pi A) over all components (Crofton
  perimeter, :func:`skimage.measure.perimeter_crofton`, 4 directions, which measures a digital
  disc within 1-7 % of 2 pi r where the pixel-edge perimeter is 9-11 % long; area in pixels):
  1 for a disc, larger for a more complex outline; k equal discs give k. Axis-aligned edges
  come out short: a 50 px square measures 1.13 (ideal 4/pi = 1.27), a 5-armed star 2.6; the
  rank correlations only use the order.
* ``curvature`` -- mean absolute curvature (1/px) along the outer contour of the largest
  component, resampled at 1 px steps and smoothed with a Gaussian of ``sigma`` 5 px (periodic;
  less left the pixel staircase in: a disc of radius 160 measured 0.014 instead of 0.006):
  about 1/r for a disc of radius r, larger for a wiggly or spiky outline.
* ``contrast`` -- |mean inside - mean in a ring around the object| / pooled standard
  deviation (the ring: :func:`app.core.prompts.outer_ring`), in the model's window; for RGB,
  the mean of the channels.
* ``n_components`` -- 8-connected components of the mask.
"""

from __future__ import annotations

import math

import numpy as np

from app.core.metrics import size_fraction

__all__ = ["FACTORS", "boundary_complexity", "contour_curvature", "contrast", "n_components",
           "difficulty_factors"]

#: the columns :func:`difficulty_factors` fills
FACTORS = ("size_fraction", "boundary_complexity", "curvature", "contrast", "n_components")


def boundary_complexity(mask: np.ndarray) -> float:
    """Isoperimetric ratio P^2 / (4 pi A) of a binary mask (H, W); NaN when empty."""
    from skimage.measure import perimeter_crofton

    m = np.asarray(mask, bool)
    area = int(m.sum())
    if area == 0:
        return math.nan
    p = float(perimeter_crofton(np.pad(m, 1), directions=4))
    return p * p / (4 * math.pi * area)


def _largest_contour(mask: np.ndarray) -> np.ndarray | None:
    import cv2

    contours, _ = cv2.findContours(np.pad(np.asarray(mask, np.uint8), 1), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)
    return c[:, 0, :].astype(np.float64)


def contour_curvature(mask: np.ndarray, sigma: float = 5.0) -> float:
    """Mean absolute curvature (1/px) of the largest component's outer contour (NaN when
    the mask is empty or its contour has fewer than 8 points)."""
    from scipy.ndimage import gaussian_filter1d

    c = _largest_contour(mask)
    if c is None or len(c) < 8:
        return math.nan
    # resample at unit arc length, so sigma is in pixels and diagonal steps weigh as much
    closed = np.vstack([c, c[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(8, int(round(s[-1])))
    t = np.linspace(0, s[-1], n, endpoint=False)
    x = np.interp(t, s, closed[:, 0])
    y = np.interp(t, s, closed[:, 1])
    step = s[-1] / n
    x = gaussian_filter1d(x, sigma / step, mode="wrap")
    y = gaussian_filter1d(y, sigma / step, mode="wrap")

    def d(v):
        return (np.roll(v, -1) - np.roll(v, 1)) / (2 * step)

    dx, dy = d(x), d(y)
    ddx, ddy = d(dx), d(dy)
    speed = np.maximum(np.hypot(dx, dy), 1e-9)
    k = np.abs(dx * ddy - dy * ddx) / speed ** 3
    return float(np.mean(k))


def contrast(image_unit: np.ndarray, mask: np.ndarray, ring: np.ndarray | None = None) -> float:
    """|mean inside - mean of the ring| / pooled sd (NaN when either region is empty;
    inf when both are constant and differ, 0 when they are constant and equal).

    Parameters
    ----------
    image_unit : ndarray of float, shape (H, W) or (H, W, C)
        The image in the model's window, in [0, 1].
    mask : ndarray of bool, shape (H, W)
    ring : ndarray of bool, shape (H, W), optional
        Default :func:`app.core.prompts.outer_ring` of ``mask``.
    """
    from app.core.prompts import outer_ring

    img = np.asarray(image_unit, np.float64)
    if img.ndim == 3:
        img = img.mean(axis=2)
    m = np.asarray(mask, bool)
    r = outer_ring(m) if ring is None else np.asarray(ring, bool)
    a, b = img[m], img[r]
    if a.size == 0 or b.size == 0:
        return math.nan
    diff = abs(float(a.mean()) - float(b.mean()))
    dof = a.size + b.size - 2
    pooled = math.sqrt((a.var(ddof=1) * (a.size - 1) if a.size > 1 else 0.0)
                       + (b.var(ddof=1) * (b.size - 1) if b.size > 1 else 0.0)) / math.sqrt(
        max(dof, 1))
    if pooled <= 1e-9:  # both regions constant (up to rounding)
        return 0.0 if diff <= 1e-9 else math.inf
    return diff / pooled


def n_components(mask: np.ndarray) -> int:
    """Number of 8-connected components."""
    import cv2

    n, _ = cv2.connectedComponents(np.asarray(mask, np.uint8), connectivity=8)
    return int(n - 1)


def difficulty_factors(mask: np.ndarray, image_unit: np.ndarray | None = None
                       ) -> dict[str, float]:
    """All :data:`FACTORS` of one ground-truth object (``contrast`` NaN without an image)."""
    return {
        "size_fraction": size_fraction(mask),
        "boundary_complexity": boundary_complexity(mask),
        "curvature": contour_curvature(mask),
        "contrast": math.nan if image_unit is None else contrast(image_unit, mask),
        "n_components": n_components(mask),
    }
