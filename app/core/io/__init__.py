"""Medical image input/output: DICOM, NIfTI, NRRD and 2D pictures in; NIfTI, DICOM SEG, PNG out.

Public API
----------
read_image(path, *, series=None, index=None) -> Volume
list_series(path) -> list[SeriesInfo]
read_labels(path, reference=None) -> ndarray (Z, Y, X) uint8/uint16
write_labels(path, labels, reference, *, overwrite=False, segment_names=None,
             algorithm="SAMScope") -> Path
write_image(path, volume, *, overwrite=False) -> Path
guess_format(path) -> str | None

Geometry: every reader returns a :class:`app.core.image.Volume` indexed ``(z, y, x)`` in LPS
millimetres. NIfTI's RAS ``(i, j, k)`` is converted in :mod:`app.core.io._geometry` only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from app.core.errors import ReadError, WriteError
from app.core.image import Volume
from app.core.io._atomic import atomic_output, full_suffix

__all__ = [
    "SeriesInfo",
    "guess_format",
    "list_series",
    "read_image",
    "read_labels",
    "write_labels",
    "write_image",
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
]

#: file extensions :func:`read_image` recognises (folders and DICOMDIR are recognised too)
IMAGE_SUFFIXES = (
    ".dcm",
    ".ima",
    ".nii",
    ".nii.gz",
    ".nrrd",
    ".nhdr",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
)
#: file extensions :func:`write_labels` writes
LABEL_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".png")

_RASTER = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_MAGIC = (
    (0, b"\x89PNG\r\n\x1a\n", "raster"),
    (0, b"\xff\xd8\xff", "raster"),
    (0, b"BM", "raster"),
    (0, b"II*\x00", "raster"),
    (0, b"MM\x00*", "raster"),
    (0, b"NRRD", "nrrd"),
    (128, b"DICM", "dicom"),
    (344, b"n+1\x00", "nifti"),
    (344, b"ni1\x00", "nifti"),
    (4, b"n+2\x00", "nifti"),
)


def __getattr__(name: str):
    # SeriesInfo lives with the DICOM reader, which imports pydicom: load it on first use.
    if name == "SeriesInfo":
        from app.core.io.dicom import SeriesInfo

        return SeriesInfo
    raise AttributeError(name)


def _missing(path: Path) -> ReadError:
    return ReadError(f"{path}: no such file or folder")


def guess_format(path: str | os.PathLike[str]) -> str | None:
    """Which reader handles ``path``: ``"dicom"``, ``"nifti"``, ``"nrrd"``, ``"raster"`` or None.

    Folders and DICOMDIR files are ``"dicom"``. Extensions decide first; files without a known
    extension are sniffed by their first bytes. Never raises for a missing/unreadable path
    (returns None).
    """
    p = Path(path)
    if p.is_dir():
        return "dicom"
    suffix = full_suffix(p)
    if suffix in (".nii", ".nii.gz"):
        return "nifti"
    if suffix in (".nrrd", ".nhdr"):
        return "nrrd"
    if suffix in _RASTER:
        return "raster"
    if suffix in (".dcm", ".ima", ".dicom") or p.name.upper() == "DICOMDIR":
        return "dicom"
    try:
        with open(p, "rb") as fh:
            head = fh.read(352)
    except OSError:
        return None
    for offset, magic, kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return kind
    if head[:2] == b"\x1f\x8b" and p.name.lower().endswith(".gz"):
        return "nifti"
    # DICOM files without the 128-byte preamble (old ACR-NEMA style): group 0x0008 first
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00"):
        return "dicom"
    return None


def list_series(path: str | os.PathLike[str]) -> list:
    """DICOM image series under ``path`` (file, folder searched recursively, or DICOMDIR).

    Returns
    -------
    list of SeriesInfo
        Largest first (by number of frames); each has ``uid``, ``modality``, ``description``,
        ``n_files``, ``n_frames``, ``rows``, ``columns``, ``paths``.
    """
    from app.core.io.dicom import list_series as _list

    p = Path(path)
    if not p.exists():
        raise _missing(p)
    return _list(p)


def read_image(
    path: str | os.PathLike[str], *, series: str | int | None = None, index: int | None = None
) -> Volume:
    """Read a scan or picture into a :class:`Volume`.

    Parameters
    ----------
    path : str or Path
        A DICOM file, folder (searched recursively) or DICOMDIR; ``.nii``/``.nii.gz``;
        ``.nrrd``/``.nhdr``; or a PNG/JPEG/TIFF/BMP picture.
    series : str, int or None
        DICOM only: a SeriesInstanceUID, or a position in :func:`list_series`'s order.
        Default: the largest image series.
    index : int or None
        Which volume of a 4D NIfTI/NRRD, or which frame of a multi-frame DICOM cine
        (then ``is_2d=True``). Default: the first volume / all frames.

    Returns
    -------
    Volume
        ``pixels`` ``(Z, Y, X)`` or ``(Z, Y, X, 3)``; 2D pictures have ``Z == 1`` and
        ``is_2d=True``.

    Raises
    ------
    ReadError
        Missing path, unknown or damaged file, no images in a folder, ...
    SeriesGeometryError
        A DICOM series that is not a regular volume (irregular spacing, mixed orientations).
    """
    p = Path(path)
    if not p.exists():
        raise _missing(p)
    kind = guess_format(p)
    if kind == "nifti":
        from app.core.io.nifti import read_nifti

        return read_nifti(p, index=index)
    if kind == "nrrd":
        from app.core.io.nifti import read_nrrd

        return read_nrrd(p, index=index)
    if kind == "raster":
        from app.core.io.raster import read_raster

        return read_raster(p)
    if kind == "dicom":
        from app.core.io.dicom import read_dicom

        return read_dicom(p, series=series, index=index)
    raise ReadError(
        f"{p}: unrecognised file type (expected DICOM, NIfTI, NRRD, PNG, JPEG, TIFF or BMP)"
    )


def read_labels(path: str | os.PathLike[str], reference: Volume | None = None) -> np.ndarray:
    """Read a ground-truth mask or label map, aligned to ``reference`` when given.

    Parameters
    ----------
    path : str or Path
        PNG/TIFF/BMP mask (``{0, 255}`` becomes ``{0, 1}``; other values are labels), NIfTI or
        NRRD label map, or DICOM SEG (segment numbers become label values; where segments
        overlap, the higher segment number wins).
    reference : Volume or None
        The image the labels belong to. NIfTI/NRRD labels on a flipped or permuted copy of the
        reference grid are reoriented to it; DICOM SEG frames are placed on the reference's
        slices by referenced SOP Instance UID, else by position.

    Returns
    -------
    ndarray, shape (Z, Y, X), uint8 or uint16

    Raises
    ------
    ReadError
        Unreadable file, or labels whose shape/grid differ from the reference's (the message
        names both shapes).
    """
    p = Path(path)
    if not p.exists():
        raise _missing(p)
    kind = guess_format(p)
    affine_lps = None
    if kind == "raster":
        from app.core.io.raster import read_raster_labels

        labels = read_raster_labels(p)
    elif kind == "nifti":
        from app.core.io.nifti import read_nifti_labels

        labels, affine_lps = read_nifti_labels(p)
    elif kind == "nrrd":
        from app.core.io.nifti import label_dtype, read_nrrd

        vol = read_nrrd(p)
        px = vol.pixels
        if px.ndim != 3 or px.dtype.kind not in "iub" or (px.size and px.min() < 0):
            raise ReadError(f"{p}: not an integer label map ({px.dtype}, shape {px.shape})")
        labels = px.astype(label_dtype(int(px.max(initial=0))))
        affine_lps = vol.affine_lps if vol.spacing_known else None
    elif kind == "dicom":
        from app.core.io.seg import read_seg_labels

        return read_seg_labels(p, reference)
    else:
        raise ReadError(
            f"{p}: unrecognised label file type (expected PNG, NIfTI, NRRD or DICOM SEG)"
        )
    if reference is None:
        return labels
    return _align_to_reference(labels, affine_lps, reference, p)


def _align_to_reference(
    labels: np.ndarray, affine_lps: np.ndarray | None, reference: Volume, path: Path
) -> np.ndarray:
    ref_shape = reference.shape
    if affine_lps is None or not reference.spacing_known:
        if labels.shape != ref_shape:
            raise ReadError(
                f"{path}: mask shape {labels.shape} differs from image shape {ref_shape}"
                f" ({reference.source or 'reference'})"
            )
        return labels
    # index transform label voxel -> reference voxel
    t = np.linalg.inv(reference.affine_lps) @ np.asarray(affine_lps, float)
    rot = np.round(t[:3, :3])
    # headers written by different tools disagree in the last float digits: accept a grid that
    # matches to 1 % in direction/scale and 0.1 voxel in position, refuse anything coarser
    tol = 1e-2
    is_perm = (
        np.allclose(t[:3, :3], rot, atol=tol)
        and (np.abs(rot).sum(axis=0) == 1).all()
        and (np.abs(rot).sum(axis=1) == 1).all()
    )
    if not is_perm or not np.allclose(t[:3, 3], np.round(t[:3, 3]), atol=0.1):
        raise ReadError(
            f"{path}: the label grid does not match the image grid of "
            f"{reference.source or 'the reference'} (shapes {labels.shape} vs {ref_shape}; "
            f"label→image voxel transform {np.round(t[:3], 4).tolist()})"
        )
    out = labels
    order = [int(np.flatnonzero(rot[a])[0]) for a in range(3)]
    out = np.transpose(out, order)
    for a in range(3):
        sign = rot[a, order[a]]
        shift = int(round(t[a, 3]))
        if sign < 0:
            if shift != out.shape[a] - 1:
                break
            out = np.flip(out, axis=a)
        elif shift != 0:
            break
    else:
        if out.shape == ref_shape:
            return np.ascontiguousarray(out)
    raise ReadError(
        f"{path}: mask shape {labels.shape} differs from image shape {ref_shape}"
        f" ({reference.source or 'reference'}) or is offset from its grid"
    )


def write_labels(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    reference: Volume,
    *,
    overwrite: bool = False,
    segment_names: dict[int, str] | list[str] | None = None,
    algorithm: str = "SAMScope",
) -> Path:
    """Write a label map for ``reference``, chosen by the output's extension, atomically.

    Parameters
    ----------
    path : str or Path
        ``.nii.gz``/``.nii`` (NIfTI with the reference's exact affine, uint8/uint16),
        ``.dcm`` (DICOM SEG referencing the source series; DICOM references only) or ``.png``
        (one slice; binary masks as 0/255, label maps as values).
    labels : ndarray, shape (Z, Y, X) (or (Y, X) for a 2D reference), integer or bool
        0 is background.
    reference : Volume
        The image the labels were drawn on; supplies the geometry.
    overwrite : bool
        Replace an existing output. A source file of ``reference`` is never replaced.
    segment_names : dict {label: name} or list (names of labels 1, 2, ...), optional
        DICOM SEG segment labels (default "Segment 1", ...).
    algorithm : str
        DICOM SEG algorithm name (the model), with algorithm type SEMIAUTOMATIC.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    WriteError
        Exists without ``overwrite``, is a source file, folder missing/unwritable, labels not
        matching the reference's shape, format not possible for this reference.
    """
    out = Path(path)
    labels = np.asarray(labels)
    if labels.ndim == 2 and reference.shape[0] == 1:
        labels = labels[None]
    if labels.shape != reference.shape:
        raise WriteError(
            f"{out}: labels shape {labels.shape} differs from image shape {reference.shape}"
        )
    if labels.dtype.kind not in "biu":
        if (
            labels.dtype.kind == "f"
            and np.isfinite(labels).all()
            and np.array_equal(labels, np.round(labels))
        ):
            labels = labels.astype(np.int64)
        else:
            raise WriteError(f"{out}: labels must be integers or bool, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise WriteError(f"{out}: labels must be >= 0 (min {labels.min()})")
    suffix = full_suffix(out)
    protected = [reference.source, *reference.meta.get("source_paths", ())]
    if suffix in (".nii", ".nii.gz"):
        from app.core.io.nifti import write_nifti_labels

        with atomic_output(out, overwrite=overwrite, protected=protected) as tmp:
            write_nifti_labels(tmp, labels, reference)
    elif suffix == ".png":
        from app.core.io.raster import write_png_labels

        if labels.shape[0] != 1:
            raise WriteError(
                f"{out}: a PNG holds one slice, the labels have {labels.shape[0]} "
                "(write .nii.gz or .dcm instead)"
            )
        with atomic_output(out, overwrite=overwrite, protected=protected) as tmp:
            write_png_labels(tmp, labels)
    elif suffix == ".dcm":
        from app.core.io.seg import build_seg

        seg = build_seg(
            labels, reference, segment_names=segment_names, algorithm=algorithm, path=out
        )
        with atomic_output(out, overwrite=overwrite, protected=protected) as tmp:
            seg.save_as(str(tmp))
    else:
        raise WriteError(
            f"{out}: unknown label format {suffix or '(no extension)'}; use .nii.gz, .nii, .dcm or .png"
        )
    return out


#: file extensions :func:`write_image` writes
IMAGE_OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".png")


def write_image(path: str | os.PathLike[str], volume: Volume, *, overwrite: bool = False) -> Path:
    """Write an image volume (conversion), chosen by the output's extension, atomically.

    Parameters
    ----------
    path : str or Path
        ``.nii.gz``/``.nii`` (pixels and dtype kept, the source's exact affine, RGB as RGB24),
        ``.nrrd`` (LPS space, gzip) or ``.png`` (one slice; uint8/uint16/RGB kept, other
        dtypes windowed to 8 bits).
    volume : Volume
    overwrite : bool
        Replace an existing output; a source file of ``volume`` is never replaced.

    Returns
    -------
    Path
    """
    out = Path(path)
    suffix = full_suffix(out)
    protected = [volume.source, *volume.meta.get("source_paths", ())]
    if suffix in (".nii", ".nii.gz"):
        from app.core.io.nifti import write_nifti_image as writer
    elif suffix == ".nrrd":
        from app.core.io.nifti import write_nrrd_image as writer
    elif suffix == ".png":
        from app.core.io.raster import write_png_image as writer

        if volume.shape[0] != 1:
            raise WriteError(
                f"{out}: a PNG holds one slice, the volume has {volume.shape[0]} "
                "(choose one with index=, or write .nii.gz)"
            )
    else:
        raise WriteError(
            f"{out}: unknown image format {suffix or '(no extension)'}; "
            "use .nii.gz, .nii, .nrrd or .png"
        )
    with atomic_output(out, overwrite=overwrite, protected=protected) as tmp:
        writer(tmp, volume)
    return out
