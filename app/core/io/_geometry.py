"""The one place that converts between our LPS ``(z, y, x)`` geometry and RAS ``(i, j, k)`` files.

Conventions
-----------
* :class:`app.core.image.Volume` indexes arrays ``(z, y, x)`` and its ``affine_lps`` maps
  ``(z, y, x, 1)`` to DICOM patient coordinates (LPS, mm).
* NIfTI (and our NRRD reader, after converting its ``space``) stores arrays ``(i, j, k)`` with
  ``i`` fastest on disk, and an affine mapping ``(i, j, k, 1)`` to RAS mm.
* Array ``(i, j, k)`` is array ``(z, y, x)`` transposed: ``i = x``, ``j = y``, ``k = z``. The world
  frames differ by a sign flip of the first two axes (L→R, P→A).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LPS_TO_RAS",
    "ZYX_FROM_IJK",
    "ras_ijk_to_lps_zyx",
    "lps_zyx_to_ras_ijk",
    "ijk_to_zyx",
    "zyx_to_ijk",
    "decompose_affine_lps",
]

#: diag(-1, -1, 1, 1): the same matrix turns LPS into RAS and back.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: maps homogeneous (z, y, x, 1) to (i, j, k, 1) = (x, y, z, 1)
ZYX_FROM_IJK = np.array(
    [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def ras_ijk_to_lps_zyx(affine_ras: np.ndarray) -> np.ndarray:
    """4x4 RAS affine over ``(i, j, k)`` → 4x4 LPS affine over ``(z, y, x)``."""
    return LPS_TO_RAS @ np.asarray(affine_ras, float) @ ZYX_FROM_IJK


def lps_zyx_to_ras_ijk(affine_lps: np.ndarray) -> np.ndarray:
    """4x4 LPS affine over ``(z, y, x)`` → 4x4 RAS affine over ``(i, j, k)`` (inverse of the above)."""
    # ZYX_FROM_IJK is its own inverse (a swap of axes 0 and 2).
    return LPS_TO_RAS @ np.asarray(affine_lps, float) @ ZYX_FROM_IJK


def ijk_to_zyx(data: np.ndarray) -> np.ndarray:
    """``(I, J, K[, ...])`` → ``(K, J, I[, ...])`` (a view; trailing axes are kept in place)."""
    axes = (2, 1, 0, *range(3, data.ndim))
    return np.transpose(data, axes)


def zyx_to_ijk(data: np.ndarray) -> np.ndarray:
    """``(Z, Y, X[, ...])`` → ``(X, Y, Z[, ...])`` (a view)."""
    return ijk_to_zyx(data)


def decompose_affine_lps(
    affine_lps: np.ndarray,
) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """Split a 4x4 LPS ``(z, y, x)`` affine into ``(spacing_mm, origin_mm, direction)``.

    ``direction`` columns are unit vectors; a zero column (degenerate affine) becomes the
    matching identity column with spacing 1.0.
    """
    a = np.asarray(affine_lps, float)
    m = a[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = np.eye(3)
    for c in range(3):
        if spacing[c] > 1e-12 and np.isfinite(spacing[c]):
            direction[:, c] = m[:, c] / spacing[c]
        else:
            spacing[c] = 1.0
    origin = a[:3, 3]
    return (
        tuple(float(s) for s in spacing),  # type: ignore[return-value]
        tuple(float(o) for o in origin),  # type: ignore[return-value]
        direction,
    )
