"""DICOM RT Structure Set export (contours per object), for radiotherapy planning systems.

Built with rt-utils (optional: ``pip install --no-deps rt-utils``; SAMScope already depends on
``opencv-python-headless``, whose ``cv2`` rt-utils uses, and must not pull in ``opencv-python``
with its own Qt). Each object becomes one ROI named after it, drawn in its colour, with the
contours of its mask on every slice it has; the structure set references the source series.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from app.core.errors import WriteError
from app.core.image import Volume

__all__ = ["write_rtstruct", "read_rtstruct_masks", "rtstruct_available"]


def rtstruct_available() -> bool:
    try:
        import rt_utils  # noqa: F401
    except ImportError:
        return False
    return True


def _series_order(datasets) -> list[int]:
    """Indices of ``datasets`` in rt-utils' slice order (ascending along the slice normal)."""
    from rt_utils.image_helper import get_slice_position

    return sorted(range(len(datasets)), key=lambda i: get_slice_position(datasets[i]))


def write_rtstruct(path: str | os.PathLike, labels: np.ndarray, reference: Volume, *,
                   names: Mapping[int, str] | None = None,
                   colours: Sequence[tuple[int, int, int]] = ((230, 25, 75),),
                   overwrite: bool = True) -> Path:
    """Write ``labels`` (Z, Y, X) on the DICOM series ``reference`` as an RTSTRUCT file.

    Raises
    ------
    WriteError
        rt-utils missing, a reference that is not a DICOM series, nothing to write, or the file
        cannot be written (naming it).
    """
    out = Path(path)
    if not rtstruct_available():
        raise WriteError(f"{out}: RTSTRUCT export needs rt-utils: pip install --no-deps rt-utils")
    datasets = list(reference.meta.get("dicom_datasets") or [])
    if not datasets or len(datasets) != labels.shape[0]:
        raise WriteError(f"{out}: RTSTRUCT needs a DICOM series source with one file per slice; "
                         f"{reference.source or 'this image'} is not one")
    if out.exists() and not overwrite:
        raise WriteError(f"{out} already exists")
    values = [int(v) for v in np.unique(labels) if v]
    if not values:
        raise WriteError(f"{out}: there are no objects to write")
    from rt_utils import RTStruct, ds_helper

    order = _series_order(datasets)
    series = [datasets[i] for i in order]
    rt = RTStruct(series, ds_helper.create_rtstruct_dataset(series))
    names = dict(names or {})
    for v in values:
        mask = np.stack([labels[i] == v for i in order], axis=-1)  # (rows, cols, slices)
        rt.add_roi(mask=mask, color=list(colours[(v - 1) % len(colours)]),
                   name=str(names.get(v, f"Object {v}"))[:64])
    import io

    from app.core.io._atomic import write_bytes_atomic

    buf = io.BytesIO()
    rt.ds.save_as(buf, enforce_file_format=True)
    return write_bytes_atomic(out, buf.getvalue())


def read_rtstruct_masks(path: str | os.PathLike, reference: Volume) -> dict[str, np.ndarray]:
    """``{roi name: bool (Z, Y, X)}`` on ``reference``'s grid, read back with rt-utils."""
    import pydicom
    from rt_utils import RTStruct

    datasets = list(reference.meta.get("dicom_datasets") or [])
    order = _series_order(datasets)
    rt = RTStruct([datasets[i] for i in order], pydicom.dcmread(str(path)))
    out = {}
    for name in rt.get_roi_names():
        m = rt.get_roi_mask_by_name(name)  # (rows, cols, slices) in series order
        vol = np.zeros((len(datasets), *m.shape[:2]), bool)
        for k, i in enumerate(order):
            vol[i] = m[..., k]
        out[name] = vol
    return out
