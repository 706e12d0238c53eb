"""2D pictures: PNG, JPEG, TIFF, BMP in; PNG label masks in and out.

Pixels keep their stored values and order (no EXIF rotation: masks drawn on the raw pixel
grid must stay aligned). Greyscale stays one channel (8 or 16 bit); RGB(A), CMYK, YCbCr and
non-grey palettes become RGB uint8; grey palettes become one channel.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np

from app.core.errors import ReadError, WriteError
from app.core.image import Volume, Window
from app.core.io._validate import check_label_values

__all__ = [
    "RASTER_SUFFIXES",
    "read_raster",
    "read_raster_labels",
    "write_png_labels",
    "write_png_image",
]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _open_pil(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()
        return img
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise ReadError(f"{path}: not a readable PNG/JPEG/TIFF/BMP image ({exc})") from exc
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError) as exc:
        raise ReadError(f"{path}: damaged or unsupported image file ({exc})") from exc


def _pil_to_array(img, path: Path) -> np.ndarray:
    """PIL image → ``(H, W)`` (grey, any depth) or ``(H, W, 3)`` uint8 RGB."""
    mode = img.mode
    if mode == "P" or mode == "PA":
        rgb = img.convert("RGB")
        arr = np.asarray(rgb)
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            return np.ascontiguousarray(arr[..., 0])
        return arr
    if mode == "1":
        return np.asarray(img, dtype=np.uint8) * np.uint8(255)
    if mode in ("L", "LA"):
        return np.asarray(img.convert("L") if mode == "LA" else img)
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16, copy=False)
    if mode == "I":
        arr = np.asarray(img)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)
        return arr.astype(np.int32, copy=False)
    if mode == "F":
        return np.asarray(img, dtype=np.float32)
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "RGBa", "La"):
        return np.asarray(img.convert("RGB"))
    try:
        return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ReadError(f"{path}: unsupported image mode {mode!r}") from exc


def _read_tiff_fallback(path: Path) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(path)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types for damaged files
        raise ReadError(f"{path}: not a readable TIFF image ({exc})") from exc
    return np.asarray(arr)


def read_raster(path: str | os.PathLike[str]) -> Volume:
    """Read a 2D picture as a :class:`Volume` with ``Z == 1`` and ``is_2d=True``.

    Returns
    -------
    Volume
        ``pixels`` shape ``(1, H, W)`` (uint8, uint16, int32 or float32) or ``(1, H, W, 3)``
        uint8 RGB. Spacing is unknown (``spacing_known=False``, 1 mm). ``window`` is the full
        8-bit range for uint8 images, ``None`` otherwise (percentiles are used for display).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        img = _open_pil(path)
        arr = _pil_to_array(img, path)
        n_frames = int(getattr(img, "n_frames", 1) or 1)
    except ReadError:
        if suffix not in (".tif", ".tiff"):
            raise
        arr = _read_tiff_fallback(path)
        n_frames = 1
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
        arr = arr[..., :3]
        if arr.dtype != np.uint8:
            raise ReadError(f"{path}: RGB with {arr.dtype} samples is not supported (8-bit only)")
    elif arr.ndim != 2:
        raise ReadError(f"{path}: expected a single 2D image, got an array of shape {arr.shape}")
    if arr.size == 0:
        raise ReadError(f"{path}: the image is empty ({arr.shape})")
    if arr.dtype.kind == "f" and not np.isfinite(arr).any():
        raise ReadError(f"{path}: the image holds no finite values")
    window = Window(127.5, 255.0, "full") if arr.dtype == np.uint8 else None
    return Volume(
        pixels=np.ascontiguousarray(arr[None]),
        modality="",
        window=window,
        source=str(path),
        is_2d=True,
        spacing_known=False,
        meta={"format": suffix.lstrip(".") or "image", "n_frames_in_file": n_frames},
    )


def read_raster_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG/TIFF/BMP mask as labels, shape ``(1, H, W)``, uint8 or uint16.

    ``{0, 255}`` masks become ``{0, 1}``; other greyscale values are label values as stored.
    A colour mask whose channels are equal is treated as grey; other colour masks get one label
    per distinct colour (black = 0), numbered in order of the sorted colours.
    """
    path = Path(path)
    img = _open_pil(path) if path.suffix.lower() not in (".tif", ".tiff") else None
    if img is not None and img.mode == "P":
        # a palette mask stores the label index itself
        arr = np.asarray(img)
    elif img is not None:
        arr = _pil_to_array(img, path)
    else:
        try:
            arr = _pil_to_array(_open_pil(path), path)
        except ReadError:
            arr = _read_tiff_fallback(path)
    if arr.ndim == 3:
        if arr.shape[-1] in (3, 4):
            arr = arr[..., :3]
            if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(
                arr[..., 0], arr[..., 2]
            ):
                arr = arr[..., 0]
            else:
                colours, inverse = np.unique(arr.reshape(-1, 3), axis=0, return_inverse=True)
                black = np.flatnonzero((colours == 0).all(axis=1))
                order = np.arange(len(colours))
                if black.size:
                    # black first, so it becomes label 0
                    order = np.concatenate([black, np.delete(order, black[0])])
                rank = np.empty_like(order)
                rank[order] = np.arange(len(order))
                arr = rank[inverse.ravel()].reshape(arr.shape[:2])
        else:
            raise ReadError(f"{path}: expected a 2D mask, got shape {arr.shape}")
    check_label_values(arr, path, "mask")
    values = np.unique(arr)
    if values.size <= 2 and values.max(initial=0) == 255:
        arr = arr > 0
    return _as_label_dtype(arr, path)[None]


def _as_label_dtype(arr: np.ndarray, path: Path | str) -> np.ndarray:
    hi = int(arr.max(initial=0))
    if hi <= 255:
        return arr.astype(np.uint8)
    if hi <= 65535:
        return arr.astype(np.uint16)
    raise ReadError(f"{path}: label values up to {hi} do not fit 16 bits")


def write_png_labels(tmp_path: Path, labels: np.ndarray, *, binary_as_255: bool = True) -> None:
    """Write ``labels`` (shape ``(1, H, W)`` or ``(H, W)``) to ``tmp_path`` as a PNG.

    A binary mask is stored 0/255 (visible in any viewer, the convention of our data sets) when
    ``binary_as_255``; label maps keep their values (8-bit, or 16-bit when a value exceeds 255).
    """
    from PIL import Image

    arr = np.asarray(labels)
    if arr.ndim == 3:
        if arr.shape[0] != 1:
            raise WriteError(
                f"{tmp_path}: a PNG holds one slice, the labels have {arr.shape[0]} slices "
                "(write .nii.gz or .dcm instead)"
            )
        arr = arr[0]
    if arr.ndim != 2:
        raise WriteError(f"{tmp_path}: expected (1, H, W) labels, got shape {labels.shape}")
    hi = int(arr.max(initial=0))
    if arr.min(initial=0) < 0:
        raise WriteError(f"{tmp_path}: negative label values cannot be written to PNG")
    if hi <= 1 and binary_as_255:
        out = (arr > 0).astype(np.uint8) * np.uint8(255)
        Image.fromarray(out).save(tmp_path, format="PNG")
    elif hi <= 255:
        Image.fromarray(arr.astype(np.uint8)).save(tmp_path, format="PNG")
    elif hi <= 65535:
        Image.fromarray(arr.astype(np.uint16)).save(tmp_path, format="PNG")
    else:
        raise WriteError(f"{tmp_path}: label values up to {hi} do not fit a 16-bit PNG")


def write_png_image(tmp_path: Path, volume: Volume) -> None:
    """Write a one-slice volume as PNG: uint8/uint16 grey or uint8 RGB, values unchanged.

    Other dtypes (HU, floats) are mapped through the display window to 8 bits, since PNG has
    no signed or float samples.
    """
    from PIL import Image

    from app.core.image import to_unit_range

    if volume.shape[0] != 1:
        raise WriteError(
            f"{tmp_path}: a PNG holds one slice, the volume has {volume.shape[0]} "
            "(choose one with --index, or write .nii.gz)"
        )
    arr = np.asarray(volume.pixels[0])
    if volume.is_rgb:
        arr = arr.astype(np.uint8) if arr.dtype != np.uint8 else arr
    elif arr.dtype not in (np.uint8, np.uint16):
        arr = np.round(to_unit_range(arr, volume.display_window()) * 255).astype(np.uint8)
    Image.fromarray(np.ascontiguousarray(arr)).save(tmp_path, format="PNG")
