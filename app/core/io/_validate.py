"""Checks shared by the label readers."""

from __future__ import annotations

import numpy as np

from app.core.errors import ReadError


def check_label_values(data: np.ndarray, path, what: str) -> None:
    """Refuse NaN/infinite, non-integer and negative values in a label map or mask.

    ``what`` names the thing in the message ("label map", "mask").
    """
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise ReadError(f"{path}: the {what} holds NaN or infinite values")
        if not np.array_equal(data, np.round(data)):
            raise ReadError(f"{path}: the {what} holds non-integer values")
    if data.size and data.min() < 0:
        raise ReadError(f"{path}: the {what} holds negative values (min {data.min()})")
