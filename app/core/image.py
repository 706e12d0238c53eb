"""The one type that carries pixels and geometry from readers to models to writers.

Conventions (the README's architecture section repeats them):

* Arrays are indexed ``(z, y, x)`` for volumes, with an optional trailing colour axis
  ``(z, y, x, 3)`` for RGB. A 2D image is a volume with ``z == 1`` and ``is_2d=True``.
* The world frame is DICOM patient coordinates, **LPS**, in millimetres.
  ``direction[:, i]`` is the unit LPS vector along array axis ``i`` (z, y, x), ``spacing_mm[i]``
  the step along it and ``origin_mm`` the LPS position of voxel ``(0, 0, 0)``.
  So ``affine_lps @ [z, y, x, 1]`` is a voxel's centre in LPS mm.
* ``pixels`` are in physical units when the modality has them (CT in Hounsfield units after
  rescale slope/intercept); otherwise the stored values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "Image2D",
    "Volume",
    "Window",
    "WINDOW_PRESETS",
    "auto_window",
    "to_unit_range",
]


@dataclass(frozen=True)
class Window:
    """A display window: ``center`` and ``width`` in the pixels' units (HU for CT)."""

    center: float
    width: float
    name: str = ""

    @property
    def low(self) -> float:
        return self.center - self.width / 2.0

    @property
    def high(self) -> float:
        return self.center + self.width / 2.0


#: Radiology presets (centre/width in HU), used when a CT file carries no window of its own.
WINDOW_PRESETS: dict[str, Window] = {
    w.name: w
    for w in (
        Window(40, 80, "brain"),
        Window(75, 215, "subdural"),
        Window(40, 40, "stroke"),
        Window(-600, 1500, "lung"),
        Window(50, 350, "mediastinum"),
        Window(50, 400, "abdomen"),
        Window(60, 160, "liver"),
        Window(400, 1800, "bone"),
    )
}


def _robust_window(pixels: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> Window:
    finite = pixels[np.isfinite(pixels)] if pixels.dtype.kind == "f" else pixels.ravel()
    if finite.size == 0:
        return Window(0.5, 1.0, "percentile")
    # Subsample big volumes: percentiles of a million voxels are stable enough.
    if finite.size > 1_000_000:
        finite = finite.ravel()[:: finite.size // 1_000_000 + 1]
    lo, hi = np.percentile(finite, [low_pct, high_pct])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + 1.0
    return Window((float(lo) + float(hi)) / 2.0, float(hi) - float(lo), "percentile")


def auto_window(pixels: np.ndarray, modality: str = "", file_window: Window | None = None) -> Window:
    """Choose a display window: the file's own first, a CT preset second, percentiles last.

    Parameters
    ----------
    pixels : ndarray, any shape
        Values in physical units (HU for CT).
    modality : str
        DICOM modality code (``"CT"``, ``"MR"``, ``"US"``, ...); ``""`` when unknown.
    file_window : Window or None
        The window stored in the file, if any.
    """
    if file_window is not None and file_window.width > 0:
        return file_window
    if modality.upper() == "CT":
        return WINDOW_PRESETS["abdomen"]
    return _robust_window(np.asarray(pixels))


def to_unit_range(pixels: np.ndarray, window: Window) -> np.ndarray:
    """Map ``pixels`` through ``window`` to float32 in [0, 1] (NaN becomes 0).

    Works for any integer or float dtype without overflow.
    """
    out = (np.asarray(pixels, dtype=np.float32) - np.float32(window.low)) / np.float32(
        max(window.width, 1e-6)
    )
    np.clip(out, 0.0, 1.0, out=out)
    return np.nan_to_num(out, nan=0.0, copy=False)


@dataclass(frozen=True, eq=False)
class Image2D:
    """One 2D image as a model sees it: a slice of a volume or a plain picture.

    Parameters
    ----------
    pixels : ndarray, shape (H, W) or (H, W, 3)
        Physical units (HU for CT) or stored values; any numeric dtype.
    window : Window
        How to map ``pixels`` to [0, 1] for the model (ignored for uint8 RGB pictures).
    modality : str
    spacing_mm : tuple (row, col)
    """

    pixels: np.ndarray
    window: Window
    modality: str = ""
    spacing_mm: tuple[float, float] = (1.0, 1.0)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def is_rgb(self) -> bool:
        return self.pixels.ndim == 3

    def unit_range(self) -> np.ndarray:
        """float32 in [0, 1], shape (H, W) or (H, W, 3).

        uint8 RGB (photographs of films, ultrasound) is scaled by 255, not windowed: a window
        only makes sense for a single physical channel.
        """
        if self.is_rgb and self.pixels.dtype == np.uint8:
            return self.pixels.astype(np.float32) / 255.0
        return to_unit_range(self.pixels, self.window)

    @classmethod
    def from_array(cls, pixels: np.ndarray, modality: str = "") -> Image2D:
        """Wrap a bare array with an automatic window (convenience for scripts and tests)."""
        pixels = np.asarray(pixels)
        if pixels.ndim == 3 and pixels.shape[-1] == 4:
            pixels = pixels[..., :3]
        if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] != 3):
            raise ValueError(f"expected an (H, W) or (H, W, 3) array, got shape {pixels.shape}")
        if pixels.dtype == np.uint8:
            window = Window(127.5, 255.0, "full")
        else:
            window = auto_window(pixels, modality)
        return cls(pixels=pixels, window=window, modality=modality)


def _default_direction() -> np.ndarray:
    return np.eye(3)


@dataclass(frozen=True, eq=False)
class Volume:
    """Pixels plus geometry, from any reader to any writer.

    Parameters
    ----------
    pixels : ndarray, shape (Z, Y, X) or (Z, Y, X, 3)
        Physical units where the modality defines them (CT: HU).
    spacing_mm : tuple (z, y, x)
        Voxel step along each array axis, in mm. ``1.0`` where unknown (see ``spacing_known``).
    origin_mm : tuple (3,)
        LPS position of voxel (0, 0, 0), in mm.
    direction : ndarray, shape (3, 3)
        Column ``i`` is the LPS unit vector along array axis ``i`` (z, y, x).
    modality : str
        DICOM modality code, ``""`` when unknown.
    window : Window or None
        The window stored in the file; ``None`` when it had none (see :meth:`display_window`).
    source : str
        Where the pixels came from (path), for messages and provenance.
    is_2d : bool
        ``True`` for plain pictures and single X-ray/ultrasound frames (then ``Z == 1``).
    spacing_known : bool
        ``False`` when the file gave no (or a zero) pixel spacing.
    meta : dict
        Reader-specific extras, e.g. ``{"dicom_datasets": [...]}`` that the DICOM SEG writer needs,
        ``{"nifti_affine": ...}`` for exact NIfTI round trips, series description, etc.
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=_default_direction)
    modality: str = ""
    window: Window | None = None
    source: str = ""
    is_2d: bool = False
    spacing_known: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = self.pixels
        if p.ndim not in (3, 4) or (p.ndim == 4 and p.shape[-1] != 3):
            raise ValueError(f"Volume pixels must be (Z, Y, X) or (Z, Y, X, 3); got {p.shape}")
        if self.is_2d and p.shape[0] != 1:
            raise ValueError(f"a 2D image has Z == 1; got shape {p.shape}")

    # --- shape -----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(Z, Y, X)``."""
        return tuple(int(s) for s in self.pixels.shape[:3])  # type: ignore[return-value]

    @property
    def is_rgb(self) -> bool:
        return self.pixels.ndim == 4

    @property
    def n_slices(self) -> int:
        return int(self.pixels.shape[0])

    # --- geometry --------------------------------------------------------------------------
    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping ``(z, y, x, 1)`` voxel indices to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = np.asarray(self.direction, float) * np.asarray(self.spacing_mm, float)[None, :]
        a[:3, 3] = self.origin_mm
        return a

    def display_window(self) -> Window:
        """The file's window, else a modality preset, else robust percentiles."""
        return auto_window(self.pixels, self.modality, self.window)

    # --- views -----------------------------------------------------------------------------
    def slice(self, z: int) -> Image2D:
        """The axial slice ``z`` as a model input, windowed with :meth:`display_window`."""
        if not 0 <= z < self.n_slices:
            raise IndexError(f"slice {z} is outside 0..{self.n_slices - 1} of {self.source or 'volume'}")
        return Image2D(
            pixels=self.pixels[z],
            window=self.display_window(),
            modality=self.modality,
            spacing_mm=(float(self.spacing_mm[1]), float(self.spacing_mm[2])),
        )

    def with_pixels(self, pixels: np.ndarray, **changes: Any) -> Volume:
        """Same geometry, other pixels (e.g. a label map for this volume)."""
        return replace(self, pixels=pixels, **changes)

    def napari_kwargs(self) -> dict[str, Any]:
        """``scale``/``translate`` for a napari layer of this volume (axis-aligned part only).

        For 2D images the leading z axis is dropped by the caller; these are for (z, y, x).
        """
        return {
            "scale": tuple(float(s) for s in self.spacing_mm),
            "translate": tuple(float(o) for o in self._axis_aligned_origin()),
        }

    def _axis_aligned_origin(self) -> np.ndarray:
        # napari has no rotations in scale/translate: project the LPS origin onto the array
        # axes so that distances and 3D rendering are in mm and neighbouring layers agree.
        d = np.asarray(self.direction, float)
        return d.T @ np.asarray(self.origin_mm, float)
