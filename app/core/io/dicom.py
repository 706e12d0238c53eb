"""DICOM in: files, folders (recursive), DICOMDIR; single- and multi-frame; compressed syntaxes.

Geometry follows the standard, not the file order: slices are sorted by their position along
the slice normal (``cross(row, col)`` of ImageOrientationPatient), z spacing comes from those
positions (never from SliceThickness), and a series that is not a regular grid raises
:class:`SeriesGeometryError` with the evidence instead of being resampled silently.

Pixel values: the modality LUT (rescale slope/intercept, DoseGridScaling for RT dose) is
applied, so CT is in HU. MONOCHROME1 images are inverted so that bright means dense like
MONOCHROME2 (``meta["monochrome1_inverted"]``). Palette and YBR colour become RGB uint8.

The decoded datasets' headers (pixel data dropped) stay in ``Volume.meta["dicom_datasets"]``
in slice order, for the DICOM SEG writer.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import ReadError, SeriesGeometryError
from app.core.image import Volume, Window

__all__ = ["SeriesInfo", "list_series", "read_dicom", "read_dicom_files", "NON_IMAGE_MODALITIES"]

#: modalities that carry no image of their own
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "ECG", "AU", "DOC", "FID"}
)
_SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}
#: largest tolerated deviation of one slice gap from the median gap (mm, or fraction of the gap)
GAP_TOLERANCE_MM = 0.01
GAP_TOLERANCE_REL = 0.01
_ORIENT_TOL = 1e-3
#: refuse files whose header claims more pixel bytes than this (a damaged Rows/NumberOfFrames
#: would otherwise ask the decoder for tens of GiB)
MAX_PIXEL_BYTES = 4 * 2**30


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM image series found by :func:`list_series`."""

    uid: str
    modality: str
    description: str
    number: int | None
    n_files: int
    n_frames: int
    rows: int
    columns: int
    paths: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without the file list)."""
        return {
            "uid": self.uid,
            "modality": self.modality,
            "description": self.description,
            "number": self.number,
            "n_files": self.n_files,
            "n_frames": self.n_frames,
            "rows": self.rows,
            "columns": self.columns,
        }


# --- reading files --------------------------------------------------------------------------


def _dcmread(path: Path, *, header_only: bool, force: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=header_only, force=force)
    except InvalidDicomError as exc:
        raise ReadError(f"{path}: not a DICOM file ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged input
        raise ReadError(f"{path}: damaged DICOM file ({type(exc).__name__}: {exc})") from exc


def _dcmread_file(path: Path, *, header_only: bool):
    """Read a file the user named as DICOM; files without the preamble are accepted only when
    they parse into something DICOM-like (random bytes named .dcm are refused)."""
    try:
        return _dcmread(path, header_only=header_only)
    except ReadError as first:
        if "not a DICOM file" not in str(first):
            raise
        try:
            ds = _dcmread(path, header_only=header_only, force=True)
            looks_like = (
                _get(ds, "SOPClassUID") is not None
                or (_get(ds, "Rows") is not None and _get(ds, "Columns") is not None)
                or "DirectoryRecordSequence" in ds
            )
        except Exception:  # noqa: BLE001 - garbage parsed leniently can fail anywhere
            looks_like = False
        if not looks_like:
            raise ReadError(
                f"{path}: not a DICOM file (no DICM marker and no DICOM image attributes)"
            ) from first
        return ds


def _get(ds, keyword: str, default=None):
    """``ds.keyword`` that never raises on a damaged element."""
    try:
        value = ds.get(keyword, default)
    except Exception:  # noqa: BLE001 - a damaged element read lazily can raise anything
        return default
    return default if value is None or value == "" else value


def _int(ds, keyword: str, default: int) -> int:
    """An integer attribute; ``default`` when missing, empty, multi-valued or not a number."""
    value = _get(ds, keyword, default)
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return default


def _is_dicomdir(ds) -> bool:
    return "DirectoryRecordSequence" in ds


def _dicomdir_paths(path: Path, ds) -> list[Path]:
    from pydicom.fileset import FileSet

    try:
        fs = FileSet(ds)
        return [Path(inst.path) for inst in fs]
    except Exception as exc:  # noqa: BLE001
        raise ReadError(f"{path}: damaged DICOMDIR ({exc})") from exc


def _iter_candidate_files(path: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            yield Path(root) / name


def _header(path: Path):
    """Header of a DICOM file, or None when it is not DICOM (folders hold other files too)."""
    try:
        return _dcmread(path, header_only=True)
    except ReadError:
        # files written without the 128-byte preamble: accept only if they look like images
        if path.suffix.lower() not in ("", ".dcm", ".ima", ".dicom"):
            return None
        try:
            ds = _dcmread(path, header_only=True, force=True)
        except ReadError:
            return None
        if _get(ds, "SOPClassUID") is None or _get(ds, "Rows") is None:
            return None
        return ds


def _is_image_header(ds) -> bool:
    if _get(ds, "Rows") is None or _get(ds, "Columns") is None:
        return False
    if str(_get(ds, "Modality", "")).upper() in NON_IMAGE_MODALITIES:
        return False
    return str(_get(ds, "SOPClassUID", "")) not in _SEG_SOP_CLASSES


def _scan(path: Path) -> tuple[dict[str, list[tuple[Path, Any]]], int, int]:
    """Group image headers by SeriesInstanceUID. Returns (groups, n_files_seen, n_dicom)."""
    if path.is_dir():
        files = list(_iter_candidate_files(path))
        dicomdir = next((p for p in path.iterdir() if p.name.upper() == "DICOMDIR"), None)
        if not files and dicomdir is not None:
            files = _dicomdir_paths(dicomdir, _dcmread(dicomdir, header_only=True))
    else:
        ds = _dcmread_file(path, header_only=True)
        files = _dicomdir_paths(path, ds) if _is_dicomdir(ds) else [path]
    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    n_dicom = 0
    for f in files:
        ds = _header(f)
        if ds is None:
            continue
        n_dicom += 1
        if _is_image_header(ds):
            uid = str(_get(ds, "SeriesInstanceUID", "") or f"(no series UID) {f.parent}")
            groups[uid].append((f, ds))
    return groups, len(files), n_dicom


def _n_frames(ds) -> int:
    try:
        return max(_int(ds, "NumberOfFrames", 1), 1)
    except (TypeError, ValueError):
        return 1


def _series_infos(groups: dict[str, list[tuple[Path, Any]]]) -> list[SeriesInfo]:
    infos = []
    for uid, items in groups.items():
        ds0 = items[0][1]
        number = _get(ds0, "SeriesNumber")
        try:
            number = int(number) if number is not None else None
        except (TypeError, ValueError):
            number = None
        infos.append(
            SeriesInfo(
                uid=uid,
                modality=str(_get(ds0, "Modality", "")),
                description=str(_get(ds0, "SeriesDescription", "")),
                number=number,
                n_files=len(items),
                n_frames=sum(_n_frames(ds) for _, ds in items),
                rows=_int(ds0, "Rows", 0),
                columns=_int(ds0, "Columns", 0),
                paths=tuple(str(p) for p, _ in items),
            )
        )
    infos.sort(key=lambda s: (-s.n_frames * s.rows * s.columns, s.number or 0, s.uid))
    return infos


def list_series(path: str | os.PathLike[str]) -> list[SeriesInfo]:
    """DICOM image series under ``path``, largest (most pixels) first. See :mod:`app.core.io`."""
    path = Path(path)
    groups, _, _ = _scan(path)
    return _series_infos(groups)


# --- pixel values ---------------------------------------------------------------------------


def _decode(ds, path: Path, frame: int | None = None) -> np.ndarray:
    """Decoded pixels of the whole file, or of one 0-based ``frame`` only (cheap for cines)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = getattr(_get(ds, "SOPClassUID"), "name", _get(ds, "SOPClassUID", "?"))
        hint = ""
        try:
            need = (
                _int(ds, "Rows", 0)
                * _int(ds, "Columns", 0)
                * _int(ds, "SamplesPerPixel", 1)
                * _n_frames(ds)
                * _int(ds, "BitsAllocated", 8)
                // 8
            )
            size = path.stat().st_size
            if need and size < need:
                hint = f"; the file has {size} bytes where its pixels need {need}: truncated?"
            elif not need and "Image" in str(sop):
                hint = f"; the header ends after {size} bytes without Rows/Columns: truncated?"
        except (OSError, TypeError, ValueError):
            pass
        raise ReadError(f"{path}: DICOM file has no pixel data ({sop}){hint}")
    try:
        need = (
            _int(ds, "Rows", 0)
            * _int(ds, "Columns", 0)
            * _int(ds, "SamplesPerPixel", 1)
            * _n_frames(ds)
            * max(_int(ds, "BitsAllocated", 8), 8)
            // 8
        )
    except (TypeError, ValueError):
        need = 0
    if need > MAX_PIXEL_BYTES:
        raise ReadError(
            f"{path}: the header claims {need / 2**30:.1f} GiB of pixels "
            f"({_get(ds, 'Rows')}x{_get(ds, 'Columns')}, {_n_frames(ds)} frames); damaged header?"
        )
    ts_uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    # RLE Lossless goes to pydicom's own decoder: the Rust one (pylibjpeg-rle) panics on
    # damaged data and its panic hook prints a long backtrace on stderr (RUST_BACKTRACE=1)
    # before Python sees the error
    plugin = {"decoding_plugin": "pydicom"} if str(ts_uid) == _RLE_LOSSLESS else {}
    try:
        if frame is None and not plugin:
            arr = ds.pixel_array
        else:
            from pydicom.pixels import pixel_array

            arr = pixel_array(ds, index=frame, **plugin)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise many types; the Rust RLE
        # decoder (pylibjpeg-rle) even raises pyo3's PanicException, a BaseException
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts))
        raise ReadError(
            f"{path}: cannot decode the pixel data ({ts_name}): {type(exc).__name__}: {exc}"
        ) from exc
    arr = np.asarray(arr)
    if arr.size == 0:
        raise ReadError(f"{path}: the DICOM pixel data is empty")
    return arr


#: Transfer Syntax UID of RLE Lossless
_RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def _float(value, default: float) -> float:
    try:
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):
            value = value[0]
        out = float(value)
        return out if np.isfinite(out) else default
    except (TypeError, ValueError, IndexError):
        return default


def _rescale(arr: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Apply slope/intercept keeping integers integer where the result is exact."""
    if slope == 1.0 and intercept == 0.0:
        return arr
    if float(slope).is_integer() and float(intercept).is_integer() and arr.dtype.kind in "iu":
        out = arr.astype(np.int64) * int(slope) + int(intercept)
        lo, hi = (int(out.min()), int(out.max())) if out.size else (0, 0)
        for dt in (np.int16, np.int32):
            if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
                return out.astype(dt)
        return out
    return (arr.astype(np.float64) * slope + intercept).astype(np.float32)


def _stored_range(ds) -> tuple[float, float]:
    bits = _int(ds, "BitsStored", _int(ds, "BitsAllocated", 16))
    bits = min(max(bits, 1), 32)
    if _int(ds, "PixelRepresentation", 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _window_from(item) -> Window | None:
    if item is None:
        return None
    c = _get(item, "WindowCenter")
    w = _get(item, "WindowWidth")
    if c is None or w is None:
        return None
    center, width = _float(c, np.nan), _float(w, np.nan)
    if not np.isfinite([center, width]).all() or width <= 0:
        return None
    return Window(center, width, "file")


def _to_rgb8(arr: np.ndarray, ds) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    bits = _int(ds, "BitsStored", 8)
    if arr.max(initial=0) > 255:
        shift = max(bits - 8, 0) if arr.max() < 2**bits else 8
        return (arr >> shift).astype(np.uint8) if shift else np.clip(arr, 0, 255).astype(np.uint8)
    return arr.astype(np.uint8)


def _colour(arr: np.ndarray, ds, path: Path) -> np.ndarray | None:
    """RGB uint8 for colour images (palette applied), None for greyscale."""
    pi = str(_get(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            rgb = np.asarray(apply_color_lut(arr, ds))
        except Exception as exc:  # noqa: BLE001
            raise ReadError(f"{path}: cannot apply the palette colour table ({exc})") from exc
        if rgb.dtype != np.uint8:
            rgb = (rgb >> 8).astype(np.uint8) if rgb.max(initial=0) > 255 else rgb.astype(np.uint8)
        return rgb
    samples = _int(ds, "SamplesPerPixel", 1)
    if samples == 3 or pi.startswith(("RGB", "YBR")):
        if arr.shape[-1] != 3:
            raise ReadError(f"{path}: colour image with unexpected shape {arr.shape}")
        return _to_rgb8(arr, ds)
    return None


@dataclass
class _Frame:
    """One 2D frame with its geometry, before stacking."""

    pixels: np.ndarray  # (Y, X) or (Y, X, 3)
    position: np.ndarray | None  # LPS IPP
    orientation: np.ndarray | None  # IOP (6,)
    pixel_spacing: tuple[float, float] | None  # (row, col) mm
    window: Window | None
    path: Path
    sop_uid: str
    frame_number: int  # 1-based within its file
    inverted: bool = False


def _vec(value, n: int) -> np.ndarray | None:
    try:
        v = np.asarray([float(x) for x in value], float)
    except (TypeError, ValueError):
        return None
    return v if v.shape == (n,) and np.isfinite(v).all() else None


def _spacing(value) -> tuple[float, float] | None:
    v = _vec(value, 2) if value is not None else None
    if v is None or (v <= 0).any():
        return None
    return float(v[0]), float(v[1])


def _us_region_spacing(ds) -> tuple[float, float] | None:
    regions = _get(ds, "SequenceOfUltrasoundRegions")
    if not regions:
        return None
    for r in regions:
        # units code 3 = cm
        if _get(r, "PhysicalUnitsXDirection") == 3 and _get(r, "PhysicalUnitsYDirection") == 3:
            dx, dy = _float(_get(r, "PhysicalDeltaX"), 0), _float(_get(r, "PhysicalDeltaY"), 0)
            if dx > 0 and dy > 0:
                return abs(dy) * 10.0, abs(dx) * 10.0
    return None


def _grey(
    arr: np.ndarray, ds, slope: float, intercept: float, item_for_lut=None
) -> tuple[np.ndarray, bool]:
    """Modality LUT (+ MONOCHROME1 inversion). Returns (pixels, inverted)."""
    lut_seq = _get(item_for_lut or ds, "ModalityLUTSequence")
    if lut_seq:
        from pydicom.pixels import apply_modality_lut

        try:
            out = np.asarray(apply_modality_lut(arr, item_for_lut or ds))
        except Exception:  # noqa: BLE001 - fall back to the linear rescale
            out = _rescale(arr, slope, intercept)
    else:
        out = _rescale(arr, slope, intercept)
    pi = str(_get(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if pi == "MONOCHROME1":
        lo, hi = _stored_range(ds)
        lo, hi = lo * slope + intercept, hi * slope + intercept
        total = lo + hi
        if out.dtype.kind in "iu":
            out = np.int64(round(total)) - out.astype(np.int64)
            out = (
                out.astype(np.int32)
                if np.abs(out).max(initial=0) >= 2**15
                else out.astype(np.int16)
            )
        else:
            out = (np.float32(total) - out).astype(np.float32)
        return out, True
    return out, False


def _invert_window(window: Window | None, ds, slope: float, intercept: float) -> Window | None:
    if window is None:
        return None
    lo, hi = _stored_range(ds)
    total = lo * slope + intercept + hi * slope + intercept
    return Window(total - window.center, window.width, window.name)


def _frames_single(ds, path: Path) -> list[_Frame]:
    arr = _decode(ds, path)
    colour = _int(ds, "SamplesPerPixel", 1) > 1
    if arr.ndim != (3 if colour else 2):
        raise ReadError(f"{path}: unexpected pixel array shape {arr.shape} for one frame")
    slope = _float(_get(ds, "RescaleSlope"), 1.0)
    intercept = _float(_get(ds, "RescaleIntercept"), 0.0)
    if slope == 0:
        slope = 1.0
    rgb = _colour(arr, ds, path)
    if rgb is not None:
        pixels, inverted = rgb, False
    else:
        pixels, inverted = _grey(arr, ds, slope, intercept)
    window = _window_from(ds)
    if inverted:
        window = _invert_window(window, ds, slope, intercept)
    spacing = _spacing(_get(ds, "PixelSpacing")) or _spacing(_get(ds, "ImagerPixelSpacing"))
    spacing = spacing or _us_region_spacing(ds)
    return [
        _Frame(
            pixels=pixels,
            position=_vec(_get(ds, "ImagePositionPatient"), 3),
            orientation=_vec(_get(ds, "ImageOrientationPatient"), 6),
            pixel_spacing=spacing,
            window=window,
            path=path,
            sop_uid=str(_get(ds, "SOPInstanceUID", "")),
            frame_number=1,
            inverted=inverted,
        )
    ]


def _fg(ds, i: int, seq: str, attr: str):
    """Attribute ``attr`` of functional group ``seq`` for frame ``i`` (per-frame, then shared)."""
    for groups in (
        _get(ds, "PerFrameFunctionalGroupsSequence"),
        _get(ds, "SharedFunctionalGroupsSequence"),
    ):
        if not groups:
            continue
        try:
            item = (
                groups[i] if groups is _get(ds, "PerFrameFunctionalGroupsSequence") else groups[0]
            )
        except IndexError:
            continue
        inner = _get(item, seq)
        if inner:
            value = _get(inner[0], attr)
            if value is not None:
                return value
    return None


def _fg_item(ds, i: int, seq: str):
    for key, idx in (
        ("PerFrameFunctionalGroupsSequence", i),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = _get(ds, key)
        if groups and idx < len(groups):
            inner = _get(groups[idx], seq)
            if inner:
                return inner[0]
    return None


def _frames_multi(ds, path: Path, index: int | None) -> list[_Frame]:
    n = _n_frames(ds)
    colour = _int(ds, "SamplesPerPixel", 1) > 1
    if index is not None:
        if not -n <= index < n:
            raise ReadError(f"{path}: frame index {index} is outside 0..{n - 1}")
        frame_ids: Sequence[int] = [index % n]
        arr = _decode(ds, path, frame=frame_ids[0] if n > 1 else None)
        row_of = {frame_ids[0]: 0}
        if arr.ndim == (3 if colour else 2):
            arr = arr[None]
    else:
        frame_ids = range(n)
        arr = _decode(ds, path)
        if n > 1 and arr.shape[0] != n:
            raise ReadError(
                f"{path}: NumberOfFrames is {n} but the pixel data holds shape {arr.shape}"
            )
        if n == 1 and arr.ndim == (3 if colour else 2):
            arr = arr[None]
        row_of = {i: i for i in frame_ids}
    if arr.ndim != (4 if colour else 3) or (colour and arr.shape[-1] != 3):
        raise ReadError(f"{path}: unexpected pixel array shape {arr.shape} for {n} frame(s)")
    enhanced = (
        _get(ds, "PerFrameFunctionalGroupsSequence") is not None
        or _get(ds, "SharedFunctionalGroupsSequence") is not None
    )
    top_pos = _vec(_get(ds, "ImagePositionPatient"), 3)
    top_iop = _vec(_get(ds, "ImageOrientationPatient"), 6)
    offsets = _get(ds, "GridFrameOffsetVector")
    offsets_v = _vec(offsets, n) if offsets is not None else None
    dose_scale = (
        _float(_get(ds, "DoseGridScaling"), 1.0)
        if _get(ds, "DoseGridScaling") is not None
        else None
    )
    base_spacing = _spacing(_get(ds, "PixelSpacing")) or _spacing(_get(ds, "ImagerPixelSpacing"))
    base_spacing = base_spacing or _us_region_spacing(ds)
    sop = str(_get(ds, "SOPInstanceUID", ""))
    frames = []
    for i in frame_ids:
        raw = arr[row_of[i]]
        if enhanced:
            slope = _float(_fg(ds, i, "PixelValueTransformationSequence", "RescaleSlope"), 1.0)
            intercept = _float(
                _fg(ds, i, "PixelValueTransformationSequence", "RescaleIntercept"), 0.0
            )
            position = _vec(_fg(ds, i, "PlanePositionSequence", "ImagePositionPatient"), 3)
            orientation = _vec(_fg(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
            spacing = _spacing(_fg(ds, i, "PixelMeasuresSequence", "PixelSpacing")) or base_spacing
            window = _window_from(_fg_item(ds, i, "FrameVOILUTSequence"))
        else:
            slope = _float(_get(ds, "RescaleSlope"), 1.0)
            intercept = _float(_get(ds, "RescaleIntercept"), 0.0)
            orientation, spacing, window = top_iop, base_spacing, _window_from(ds)
            position = None
            if top_pos is not None and top_iop is not None and offsets_v is not None:
                normal = np.cross(top_iop[:3], top_iop[3:])
                position = top_pos + (offsets_v[i] - offsets_v[0]) * normal
        if slope == 0:
            slope = 1.0
        rgb = _colour(raw, ds, path)
        inverted = False
        if rgb is not None:
            pixels = rgb
        else:
            pixels, inverted = _grey(raw, ds, slope, intercept)
            if dose_scale is not None:
                pixels = (pixels.astype(np.float64) * dose_scale).astype(np.float32)
            if inverted:
                window = _invert_window(window, ds, slope, intercept)
        frames.append(
            _Frame(pixels, position, orientation, spacing, window, path, sop, i + 1, inverted)
        )
    return frames


# --- geometry -------------------------------------------------------------------------------


def _fmt(v: Iterable[float]) -> str:
    return "[" + ", ".join(f"{x:.4g}" for x in v) + "]"


def _sort_and_check(frames: list[_Frame], source: str) -> tuple[list[_Frame], float, np.ndarray]:
    """Sort frames along the slice normal; return (sorted, z spacing mm, z direction)."""
    iop0 = frames[0].orientation
    distinct = []
    for f in frames:
        if not any(np.allclose(f.orientation, d, atol=_ORIENT_TOL) for d in distinct):
            distinct.append(f.orientation)
    if len(distinct) > 1:
        examples = "; ".join(
            f"{_fmt(d)} e.g. {next(fr.path.name for fr in frames if np.allclose(fr.orientation, d, atol=_ORIENT_TOL))}"
            for d in distinct[:4]
        )
        raise SeriesGeometryError(
            f"{source}: the series mixes {len(distinct)} slice orientations "
            f"(ImageOrientationPatient {examples}); open the slices of one orientation"
        )
    row, col = iop0[:3], iop0[3:]
    normal = np.cross(row, col)
    nn = np.linalg.norm(normal)
    if nn < 1e-6:
        raise SeriesGeometryError(f"{source}: ImageOrientationPatient {_fmt(iop0)} is degenerate")
    normal = normal / nn
    positions = np.array([f.position for f in frames])
    dist = positions @ normal
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    dist = dist[order]
    positions = positions[order]
    if len(frames) == 1:
        return frames, 0.0, normal
    gaps = np.diff(dist)
    if (gaps < 1e-3).any():
        k = int(np.argmin(gaps))
        raise SeriesGeometryError(
            f"{source}: {int((gaps < 1e-3).sum()) + 1} slices share a position "
            f"(e.g. {frames[k].path.name} frame {frames[k].frame_number} and "
            f"{frames[k + 1].path.name} frame {frames[k + 1].frame_number} at {dist[k]:.3f} mm "
            "along the normal): several acquisitions or time points in one series?"
        )
    median = float(np.median(gaps))
    bad = np.abs(gaps - median) > max(GAP_TOLERANCE_MM, GAP_TOLERANCE_REL * median)
    if bad.any():
        shown = ", ".join(f"{g:.3f}" for g in gaps[:12]) + (" ..." if len(gaps) > 12 else "")
        raise SeriesGeometryError(
            f"{source}: irregular slice spacing: gaps between {len(frames)} slice positions are "
            f"[{shown}] mm (median {median:.3f} mm, {int(bad.sum())} off by more than "
            f"{max(GAP_TOLERANCE_MM, GAP_TOLERANCE_REL * median):.3f} mm); missing slices or "
            "several stacks in one series. Not resampled."
        )
    step = positions[-1] - positions[0]
    zdir = step / np.linalg.norm(step)
    if not np.allclose(zdir, normal, atol=1e-3):
        angle = float(np.degrees(np.arccos(np.clip(zdir @ normal, -1, 1))))
        raise SeriesGeometryError(
            f"{source}: the slice positions run {angle:.2f} degrees off the slice normal "
            f"(sheared stack, e.g. gantry tilt: first {_fmt(positions[0])}, last "
            f"{_fmt(positions[-1])}); a sheared grid cannot be a regular volume"
        )
    spacing = float((dist[-1] - dist[0]) / (len(frames) - 1))
    return frames, spacing, normal


def _stack(frames: list[_Frame], source: str) -> np.ndarray:
    shapes = {f.pixels.shape for f in frames}
    if len(shapes) > 1:
        raise SeriesGeometryError(
            f"{source}: the slices differ in size ({sorted(shapes)}); not one volume"
        )
    dtypes = {f.pixels.dtype for f in frames}
    dtype = np.result_type(*dtypes) if len(dtypes) > 1 else frames[0].pixels.dtype
    return np.stack([f.pixels.astype(dtype, copy=False) for f in frames])


def _volume_from_frames(
    frames: list[_Frame], datasets: list, source: str, *, force_2d: bool = False
) -> Volume:
    ds0 = datasets[0]
    geometry = all(f.position is not None and f.orientation is not None for f in frames)
    spacing_known = all(f.pixel_spacing is not None for f in frames)
    if spacing_known and len({f.pixel_spacing for f in frames}) > 1:
        raise SeriesGeometryError(
            f"{source}: the slices have different pixel spacings "
            f"{sorted({f.pixel_spacing for f in frames})}"
        )
    row_mm, col_mm = frames[0].pixel_spacing or (1.0, 1.0)
    direction = np.eye(3)
    origin = np.zeros(3)
    z_mm = 1.0
    if geometry:
        frames, z_step, normal = _sort_and_check(frames, source)
        iop = frames[0].orientation
        direction = np.column_stack(
            [normal, iop[3:] / np.linalg.norm(iop[3:]), iop[:3] / np.linalg.norm(iop[:3])]
        )
        origin = frames[0].position
        if len(frames) > 1:
            z_mm = z_step
        else:
            z_mm = (
                _float(_get(ds0, "SpacingBetweenSlices"), 0)
                or _float(_get(ds0, "SliceThickness"), 0)
                or 1.0
            )
    # without patient geometry (X-ray, ultrasound cine, secondary capture) frames keep their
    # stored order and the z step is unknown: spacing_known then speaks for the in-plane part
    pixels = _stack(frames, source)
    windows = [f.window for f in frames if f.window is not None]
    modality = str(_get(ds0, "Modality", ""))
    by_path: dict[str, Any] = {}
    for ds in datasets:
        by_path.setdefault(str(getattr(ds, "filename", "")), ds)
    frame_time = _float(_get(ds0, "FrameTime"), 0.0)
    meta = {
        "format": "dicom",
        "dicom_datasets": [by_path.get(str(f.path), ds0) for f in frames],
        "source_paths": list(dict.fromkeys(str(f.path) for f in frames)),
        "slice_paths": [str(f.path) for f in frames],
        "sop_instance_uids": [f.sop_uid for f in frames],
        "frame_numbers": [f.frame_number for f in frames],
        "series_instance_uid": str(_get(ds0, "SeriesInstanceUID", "")),
        "study_instance_uid": str(_get(ds0, "StudyInstanceUID", "")),
        "frame_of_reference_uid": str(_get(ds0, "FrameOfReferenceUID", "")),
        "series_description": str(_get(ds0, "SeriesDescription", "")),
        "sop_class_uid": str(_get(ds0, "SOPClassUID", "")),
        "photometric_interpretation": str(_get(ds0, "PhotometricInterpretation", "")),
        "monochrome1_inverted": any(f.inverted for f in frames),
        "has_patient_geometry": geometry,
        "transfer_syntax": str(getattr(getattr(ds0, "file_meta", None), "TransferSyntaxUID", "")),
    }
    if not geometry and len(frames) > 1:
        meta["z_spacing_known"] = False
        if frame_time > 0:
            meta["frame_time_ms"] = frame_time  # the z axis is time (cine)
    return Volume(
        pixels=np.ascontiguousarray(pixels),
        spacing_mm=(float(z_mm), float(row_mm), float(col_mm)),
        origin_mm=tuple(float(x) for x in origin),  # type: ignore[arg-type]
        direction=direction,
        modality=modality,
        window=windows[0] if windows else None,
        source=source,
        is_2d=force_2d or pixels.shape[0] == 1,
        spacing_known=spacing_known,
        meta=meta,
    )


def _drop_pixels(ds):
    for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if kw in ds:
            del ds[kw]
    return ds


def _read_files(paths: list[Path], source: str, index: int | None) -> Volume:
    datasets = []
    frames: list[_Frame] = []
    multi = False
    for p in paths:
        ds = _dcmread_file(p, header_only=False)
        if (
            str(_get(ds, "SOPClassUID", "")) in _SEG_SOP_CLASSES
            or str(_get(ds, "Modality", "")).upper() == "SEG"
        ):
            raise ReadError(
                f"{p}: is a DICOM SEG (a segmentation); read it with read_labels(path, reference)"
            )
        if _is_dicomdir(ds):
            raise ReadError(f"{p}: is a DICOMDIR index without images")
        n = _n_frames(ds)
        if n > 1 or _get(ds, "PerFrameFunctionalGroupsSequence") is not None:
            if len(paths) > 1:
                raise SeriesGeometryError(
                    f"{source}: the series holds {len(paths)} files and {p.name} alone has {n} "
                    "frames; open one multi-frame file at a time"
                )
            multi = True
            frames.extend(_frames_multi(ds, p, index))
        else:
            frames.extend(_frames_single(ds, p))
        datasets.append(_drop_pixels(ds))
    if not frames:
        raise ReadError(f"{source}: no image frames found")
    if index is not None and not multi:
        if not -len(frames) <= index < len(frames):
            raise ReadError(f"{source}: index {index} is outside 0..{len(frames) - 1}")
    vol = _volume_from_frames(frames, datasets, source, force_2d=index is not None and multi)
    if index is not None and not multi:
        z = index % vol.n_slices
        vol = _take_slice(vol, z)
    return vol


def _take_slice(vol: Volume, z: int) -> Volume:
    meta = dict(vol.meta)
    for key in ("dicom_datasets", "slice_paths", "sop_instance_uids", "frame_numbers"):
        meta[key] = [meta[key][z]]
    origin = np.asarray(vol.origin_mm) + z * vol.spacing_mm[0] * np.asarray(vol.direction)[:, 0]
    return vol.with_pixels(
        np.ascontiguousarray(vol.pixels[z : z + 1]),
        origin_mm=tuple(float(x) for x in origin),
        is_2d=True,
        meta=meta,
    )


def read_dicom(
    path: str | os.PathLike[str], *, series: str | int | None = None, index: int | None = None
) -> Volume:
    """Read a DICOM file, folder or DICOMDIR. See :func:`app.core.io.read_image`."""
    path = Path(path)
    if path.is_file():
        head = _dcmread_file(path, header_only=True)
        if not _is_dicomdir(head):
            return _read_files([path], str(path), index)
    groups, n_files, n_dicom = _scan(path)
    infos = _series_infos(groups)
    if not infos:
        what = (
            "no files"
            if n_files == 0
            else f"{n_files} files, {n_dicom} of them DICOM, none an image"
        )
        raise ReadError(f"{path}: no DICOM images found ({what})")
    if series is None:
        return _read_default_series(path, infos, index)
    elif isinstance(series, int) and not isinstance(series, bool):
        if not -len(infos) <= series < len(infos):
            raise ReadError(
                f"{path}: series {series} is outside 0..{len(infos) - 1} ({len(infos)} series)"
            )
        info = infos[series]
    else:
        matches = [s for s in infos if s.uid == str(series)]
        if not matches:
            listing = ", ".join(
                f"{s.uid} ({s.modality} {s.description!r}, {s.n_frames} frames)" for s in infos
            )
            raise ReadError(f"{path}: no series {series!r}; found {listing}")
        info = matches[0]
    paths = [Path(p) for p in info.paths]
    vol = _read_files(paths, str(path), index)
    meta = dict(vol.meta)
    meta["series_found"] = [s.as_dict() for s in infos]
    return _replace_meta(vol, meta)


def read_dicom_files(
    paths: Sequence[str | os.PathLike[str]], *, index: int | None = None
) -> Volume:
    """Read a list of DICOM files (e.g. several selected in a file dialog) as one series.

    Non-image and non-DICOM files among them are ignored; when they hold several series the
    largest regular one is read, as for a folder.
    """
    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for p in map(Path, paths):
        ds = _header(p)
        if ds is not None and _is_image_header(ds):
            groups[str(_get(ds, "SeriesInstanceUID", "") or p.parent)].append((p, ds))
    infos = _series_infos(groups)
    source = str(Path(paths[0]).parent) if paths else ""
    if not infos:
        raise ReadError(f"{source}: none of the {len(paths)} files is a DICOM image")
    return _read_default_series(Path(source), infos, index)


def _read_default_series(path: Path, infos: list[SeriesInfo], index: int | None) -> Volume:
    """The largest series that is a regular volume; the others' problems go into meta."""
    skipped: list[dict[str, str]] = []
    first_error: ReadError | None = None
    for info in infos:
        try:
            vol = _read_files([Path(p) for p in info.paths], str(path), index)
        except ReadError as exc:
            if len(infos) == 1:
                raise
            first_error = first_error or exc
            skipped.append({"uid": info.uid, "description": info.description, "error": str(exc)})
            continue
        meta = dict(vol.meta)
        meta["series_found"] = [s.as_dict() for s in infos]
        meta["series_skipped"] = skipped
        return _replace_meta(vol, meta)
    assert first_error is not None
    raise type(first_error)(
        f"{path}: none of the {len(infos)} series could be read as a volume; the largest: "
        f"{first_error}"
    ) from first_error


def _replace_meta(vol: Volume, meta: dict) -> Volume:
    from dataclasses import replace

    return replace(vol, meta=meta)
