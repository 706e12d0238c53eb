"""NIfTI-1/2 (``.nii``, ``.nii.gz``) and NRRD (``.nrrd``, ``.nhdr``) volumes in; NIfTI label maps out.

The RAS ``(i, j, k)`` ↔ LPS ``(z, y, x)`` conversion lives in :mod:`app.core.io._geometry`.
A volume read from NIfTI keeps its header in ``meta["nifti_header"]`` (and its affine in
``meta["nifti_affine"]``) so that a label map written for it carries the *same* qform, sform
and codes, bit for bit.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from app.core.errors import ReadError, WriteError
from app.core.image import Volume, Window
from app.core.io._atomic import describe_os_error
from app.core.io._geometry import (
    LPS_TO_RAS,
    ZYX_FROM_IJK,
    decompose_affine_lps,
    ijk_to_zyx,
    lps_zyx_to_ras_ijk,
    ras_ijk_to_lps_zyx,
    zyx_to_ijk,
)
from app.core.io._validate import check_label_values

log = logging.getLogger("samscope.io")

__all__ = [
    "read_nifti",
    "read_nifti_labels",
    "read_nrrd",
    "write_nifti_labels",
    "write_nifti_image",
    "write_nrrd_image",
    "label_dtype",
]


def _load_nifti(path: Path):
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(str(path))
    except ImageFileError as exc:
        raise ReadError(f"{path}: not a NIfTI file ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - nibabel raises HeaderDataError, OverflowError, ...
        raise ReadError(f"{path}: damaged or unreadable NIfTI file ({exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ReadError(f"{path}: expected NIfTI, nibabel read it as {type(img).__name__}")
    return img


#: refuse headers that claim more pixel bytes than this (damaged dims would exhaust memory)
MAX_PIXEL_BYTES = 4 * 2**30


def _check_size(img, path: Path) -> None:
    hdr = img.header
    try:
        shape = tuple(int(n) for n in hdr.get_data_shape())
        itemsize = hdr.get_data_dtype().itemsize
        offset = int(hdr.get_data_offset())
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for damaged headers
        raise ReadError(f"{path}: damaged NIfTI header ({exc})") from exc
    need = int(np.prod(shape, dtype=np.float64)) * itemsize
    if need > MAX_PIXEL_BYTES:
        raise ReadError(
            f"{path}: the header claims {shape} voxels ({need / 2**30:.1f} GiB); damaged header?"
        )
    if not str(path).lower().endswith(".gz"):
        size = path.stat().st_size
        if offset + need > size:
            raise ReadError(
                f"{path}: the header needs {offset + need} bytes, the file has {size}: truncated?"
            )


def _load_data(img, path: Path, *, scaled: bool) -> np.ndarray:
    _check_size(img, path)
    try:
        if scaled:
            data = np.asanyarray(img.dataobj)
        else:
            data = np.asanyarray(img.dataobj.get_unscaled())
    except Exception as exc:  # noqa: BLE001 - memmap OverflowError, HeaderDataError, zlib, ...
        raise ReadError(f"{path}: the NIfTI pixel data is damaged or truncated ({exc})") from exc
    if data.dtype.fields:  # RGB24 / RGBA32 structured voxels
        names = [n for n in ("R", "G", "B") if n in data.dtype.fields]
        if len(names) != 3:
            raise ReadError(f"{path}: unsupported NIfTI voxel type {data.dtype}")
        data = np.stack([data[n] for n in names], axis=-1)
    return np.asarray(data)


def _select_volume(data: np.ndarray, path: Path, index: int | None) -> tuple[np.ndarray, int, bool]:
    """Reduce ``(I, J, K, T[, C])`` data to ``(I, J, K)`` or ``(I, J, K, 3)`` RGB."""
    rgb = False
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vectors live on the 5th axis
        data = data[:, :, :, 0, :]
    while data.ndim > 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    n_volumes = 1
    if data.ndim == 4:
        if data.shape[3] == 3 and data.dtype == np.uint8 and index is None:
            rgb = True
        else:
            n_volumes = int(data.shape[3])
            k = 0 if index is None else int(index)
            if not -n_volumes <= k < n_volumes:
                raise ReadError(f"{path}: volume index {k} is outside 0..{n_volumes - 1}")
            data = data[:, :, :, k]
    elif data.ndim != 3:
        raise ReadError(f"{path}: unsupported NIfTI array shape {data.shape}")
    elif index not in (None, 0):
        raise ReadError(f"{path}: a 3D NIfTI has one volume, index {index} was asked for")
    if 0 in data.shape:
        raise ReadError(f"{path}: the NIfTI holds no voxels (shape {data.shape})")
    return data, n_volumes, rgb


def _affine_ok(affine: np.ndarray) -> bool:
    return bool(np.isfinite(affine).all()) and abs(np.linalg.det(affine[:3, :3])) > 1e-12


def read_nifti(path: str | os.PathLike[str], *, index: int | None = None) -> Volume:
    """Read a NIfTI volume (scl_slope/inter applied) as a :class:`Volume`.

    Parameters
    ----------
    path : path to ``.nii`` or ``.nii.gz``
    index : int or None
        For 4D files, which volume (default 0); ``meta["n_volumes"]`` says how many there are.

    Returns
    -------
    Volume
        ``pixels`` ``(Z, Y, X)`` = the file's ``(k, j, i)``; geometry from ``img.affine``
        (sform if set, else qform) converted to LPS.
    """
    path = Path(path)
    img = _load_nifti(path)
    data = _load_data(img, path, scaled=True)
    data, n_volumes, rgb = _select_volume(data, path, index)
    if data.dtype.kind == "f" and not np.isfinite(data).any():
        raise ReadError(f"{path}: every voxel is NaN or infinite; nothing to show")
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    affine = np.asarray(img.affine, float)
    spacing_known = _affine_ok(affine)
    if not spacing_known:
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    spacing, origin, direction = decompose_affine_lps(ras_ijk_to_lps_zyx(affine))
    hdr = img.header
    window = None
    try:
        cal_min, cal_max = float(hdr["cal_min"]), float(hdr["cal_max"])
        if np.isfinite([cal_min, cal_max]).all() and cal_max > cal_min:
            window = Window((cal_min + cal_max) / 2.0, cal_max - cal_min, "file")
    except (KeyError, TypeError, ValueError):
        pass
    return Volume(
        pixels=np.ascontiguousarray(ijk_to_zyx(data)),
        spacing_mm=spacing,
        origin_mm=origin,
        direction=direction,
        modality="",
        window=window,
        source=str(path),
        is_2d=False,
        spacing_known=spacing_known,
        meta={
            "format": "nifti",
            "nifti_affine": affine,
            "nifti_header": hdr.copy(),
            "n_volumes": n_volumes,
            "volume_index": 0 if index is None else int(index),
            "is_rgb_file": rgb,
        },
    )


def read_nifti_labels(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI label map without scaling.

    Returns
    -------
    labels : ndarray, shape (Z, Y, X), uint8 or uint16
    affine_lps : ndarray, shape (4, 4)
        LPS affine over ``(z, y, x)``.
    """
    path = Path(path)
    img = _load_nifti(path)
    data = _load_data(img, path, scaled=False)
    data, _, _ = _select_volume(data, path, None)
    check_label_values(data, path, "label map")
    hi = int(data.max(initial=0))
    if hi > 65535:
        raise ReadError(f"{path}: label values up to {hi} do not fit 16 bits")
    labels = np.ascontiguousarray(ijk_to_zyx(data)).astype(label_dtype(hi))
    return labels, ras_ijk_to_lps_zyx(np.asarray(img.affine, float))


def label_dtype(max_value: int) -> np.dtype:
    """The smallest unsigned dtype for labels up to ``max_value`` (uint8 or uint16)."""
    if max_value <= 255:
        return np.dtype(np.uint8)
    if max_value <= 65535:
        return np.dtype(np.uint16)
    raise WriteError(f"label values up to {max_value} do not fit 16 bits")


def _forms_finite(hdr) -> bool:
    """Whether a NIfTI header's qform and sform (where set) are finite."""
    try:
        q = hdr.get_qform(coded=True)[0]
        sf = hdr.get_sform(coded=True)[0]
    except Exception:  # noqa: BLE001 - nibabel raises several types for broken quaternions
        return False
    return all(m is None or bool(np.isfinite(m).all()) for m in (q, sf))


def _nifti_on_grid(data: np.ndarray, reference: Volume):
    """A Nifti1Image of ``data`` (i, j, k order) on ``reference``'s grid.

    A NIfTI source's qform/sform and their codes are copied bit for bit (with its space/time
    units); any other source gets the affine of its LPS geometry as qform and sform, code 1.
    """
    import nibabel as nib

    src_hdr = reference.meta.get("nifti_header")
    if src_hdr is not None and not _forms_finite(src_hdr):
        # a source whose affine is NaN/inf (read as "spacing unknown"): nibabel refuses to
        # write those forms, so the output gets the unit grid the viewer showed, coded
        # "unknown" (0) so that no reader takes it for real geometry
        log.warning("%s: the source's affine is not finite; written with unit spacing and "
                    "no orientation (qform/sform code 0)", reference.source or "image")
        img = nib.Nifti1Image(data, lps_zyx_to_ras_ijk(reference.affine_lps))
        img.set_qform(None, code=0)
        img.set_sform(lps_zyx_to_ras_ijk(reference.affine_lps), code=0)
        return img
    if src_hdr is not None and tuple(src_hdr.get_data_shape()[:3]) == data.shape[:3]:
        img = nib.Nifti1Image(data, None)
        qform, qcode = src_hdr.get_qform(coded=True)
        sform, scode = src_hdr.get_sform(coded=True)
        img.set_qform(qform, code=int(qcode) if qform is not None else 0)
        img.set_sform(sform, code=int(scode) if sform is not None else 0)
        if qform is None and sform is None:
            img.set_sform(np.asarray(reference.meta["nifti_affine"], float), code=1)
        img.header.set_xyzt_units(*src_hdr.get_xyzt_units())
    else:
        affine = lps_zyx_to_ras_ijk(reference.affine_lps)
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
    return img


def write_nifti_labels(tmp_path: Path, labels: np.ndarray, reference: Volume) -> None:
    """Write a ``(Z, Y, X)`` label map on ``reference``'s grid to ``tmp_path`` (.nii or .nii.gz).

    The dtype is uint8 (uint16 when a label exceeds 255), without scaling. When the reference
    came from NIfTI its qform/sform and codes are copied exactly; otherwise the affine is built
    from the reference's LPS geometry and stored as both qform and sform with code 1 (scanner).
    """
    import nibabel as nib

    labels = np.asarray(labels)
    dtype = label_dtype(int(labels.max(initial=0)))
    data = np.asarray(zyx_to_ijk(labels.astype(dtype, copy=False)))
    img = _nifti_on_grid(data, reference)
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["descrip"] = b"SAMScope label map"
    img.header.set_intent("label")
    try:
        nib.save(img, str(tmp_path))
    except OSError as exc:
        raise WriteError(describe_os_error(tmp_path, exc)) from exc


# --- NRRD ---------------------------------------------------------------------------------

_SPACES = {
    "left-posterior-superior": "LPS",
    "lps": "LPS",
    "right-anterior-superior": "RAS",
    "ras": "RAS",
    "left-anterior-superior": "LAS",
    "las": "LAS",
}


def read_nrrd(path: str | os.PathLike[str], *, index: int | None = None) -> Volume:
    """Read a 2D/3D NRRD (with optional one non-spatial axis) as a :class:`Volume`.

    Geometry comes from ``space``, ``space directions`` and ``space origin``; a file without
    them gets unit spacing and ``spacing_known=False``.
    """
    import nrrd

    path = Path(path)
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as exc:  # noqa: BLE001 - pynrrd raises NRRDError, ValueError, OSError, ...
        raise ReadError(f"{path}: not a readable NRRD file ({exc})") from exc
    data = np.asarray(data)
    dirs = header.get("space directions")
    spatial: list[int] = []
    vectors: list[np.ndarray] = []
    if dirs is not None:
        for ax, d in enumerate(dirs):
            v = np.asarray(d, dtype=float) if d is not None else None
            if v is not None and v.size and np.isfinite(v).all():
                spatial.append(ax)
                vectors.append(v)
    if not spatial:
        spatial = list(range(min(data.ndim, 3)))
    other = [ax for ax in range(data.ndim) if ax not in spatial]
    rgb = False
    if other:
        if len(other) > 1:
            raise ReadError(f"{path}: NRRD with {len(other)} non-spatial axes is not supported")
        ax = other[0]
        data = np.moveaxis(data, ax, -1)
        kinds = [str(k).lower() for k in header.get("kinds", [])]
        kind = kinds[ax] if ax < len(kinds) else ""
        if data.shape[-1] == 3 and ("color" in kind or kind == "vector") and index is None:
            rgb = True
        else:
            k = 0 if index is None else int(index)
            if not -data.shape[-1] <= k < data.shape[-1]:
                raise ReadError(f"{path}: index {k} is outside 0..{data.shape[-1] - 1}")
            data = data[..., k]
    n_spatial = data.ndim - (1 if rgb else 0)
    if n_spatial == 2:
        data = data[:, :, None, ...]
    elif n_spatial != 3:
        raise ReadError(f"{path}: unsupported NRRD array shape {data.shape}")
    space = _SPACES.get(str(header.get("space", "")).lower())
    spacing_known = bool(vectors) and space is not None
    affine = np.eye(4)
    if spacing_known:
        m = np.zeros((3, 3))
        for c, v in enumerate(vectors[:3]):
            m[: v.size, c] = v[:3]
        if len(vectors) == 2:
            m[:, 2] = np.cross(m[:, 0], m[:, 1])
            m[:, 2] /= max(np.linalg.norm(m[:, 2]), 1e-12)
        origin = np.asarray(header.get("space origin", np.zeros(3)), float)[:3]
        affine[:3, :3] = m
        affine[:3, 3] = np.nan_to_num(origin)
        if space == "RAS":
            affine = LPS_TO_RAS @ affine
        elif space == "LAS":
            affine = np.diag([1.0, -1.0, 1.0, 1.0]) @ affine
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            spacing_known = False
            affine = np.eye(4)
    elif "spacings" in header:
        sp = np.asarray(header["spacings"], float)[:3]
        if np.isfinite(sp).all() and (sp > 0).all():
            affine[: sp.size, : sp.size] = np.diag(sp)
    affine_lps = affine @ ZYX_FROM_IJK
    spacing, origin_mm, direction = decompose_affine_lps(affine_lps)
    if data.dtype.kind == "f" and not np.isfinite(data).any():
        raise ReadError(f"{path}: every voxel is NaN or infinite; nothing to show")
    if 0 in data.shape:
        raise ReadError(f"{path}: the NRRD holds no voxels (shape {data.shape})")
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    pixels = np.ascontiguousarray(ijk_to_zyx(data))
    if rgb and pixels.dtype != np.uint8:
        pixels = pixels[..., 0]
    return Volume(
        pixels=pixels,
        spacing_mm=spacing,
        origin_mm=origin_mm,
        direction=direction,
        source=str(path),
        spacing_known=spacing_known,
        meta={"format": "nrrd", "nrrd_header": dict(header)},
    )


def write_nifti_image(tmp_path: Path, volume: Volume) -> None:
    """Write ``volume``'s pixels (dtype kept; RGB as RGB24) as NIfTI with its exact affine."""
    import nibabel as nib

    pixels = np.asarray(volume.pixels)
    if volume.is_rgb:
        if pixels.dtype != np.uint8:
            raise WriteError(f"{tmp_path}: RGB NIfTI needs uint8 samples, got {pixels.dtype}")
        rgb = np.empty(pixels.shape[:3], dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        for i, c in enumerate("RGB"):
            rgb[c] = pixels[..., i]
        pixels = rgb
    elif pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8)
    data = np.asarray(zyx_to_ijk(pixels))
    img = _nifti_on_grid(data, volume)
    img.header.set_xyzt_units("mm")
    if volume.window is not None and not volume.is_rgb:
        img.header["cal_min"], img.header["cal_max"] = volume.window.low, volume.window.high
    try:
        nib.save(img, str(tmp_path))
    except OSError as exc:
        raise WriteError(describe_os_error(tmp_path, exc)) from exc


def write_nrrd_image(tmp_path: Path, volume: Volume) -> None:
    """Write ``volume`` as NRRD in LPS space (``space directions`` = affine columns)."""
    import nrrd

    if volume.is_rgb:
        raise WriteError(f"{tmp_path}: RGB volumes are not written to NRRD; use .nii.gz")
    affine_ijk = volume.affine_lps @ ZYX_FROM_IJK
    header = {
        "space": "left-posterior-superior",
        "space directions": affine_ijk[:3, :3].T,
        "space origin": affine_ijk[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    data = np.asarray(zyx_to_ijk(volume.pixels))
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    try:
        nrrd.write(str(tmp_path), np.ascontiguousarray(data), header, index_order="F")
    except OSError as exc:
        raise WriteError(describe_os_error(tmp_path, exc)) from exc
