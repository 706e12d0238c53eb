"""Model-input preparation for the SAM family: intensities, resizing, prompt coordinates, masks.

This module is the one place where original-image pixel coordinates become model-input
coordinates and where low-resolution logits become masks at the original resolution.

Coordinate convention
---------------------
Prompts use pixel indices of the original image: pixel ``(x, y)`` covers the continuous square
``[x, x + 1) x [y, y + 1)`` and its centre is ``(x + 0.5, y + 0.5)``. SAM's prompt encoder uses
the same convention in model-input pixels (it adds 0.5 before normalising). A resize by the
per-axis factor ``s = resized / original`` therefore maps pixel centres as
``x_model = (x + 0.5) * s - 0.5``. (segment-anything's own ``ResizeLongestSide`` uses ``x * s``,
which shifts prompts by ``0.5 * (1 - s)`` model pixels: a third of a pixel for LiteMedSAM on a
512-pixel image.) Inclusive box corners are pixel indices too and map the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from app.core.image import Image2D

__all__ = ["Preprocessing", "LITEMEDSAM_256", "SAM_1024", "MEDSAM_1024"]

#: segment-anything's normalisation, on 0..255 RGB
_SAM_PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
_SAM_PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)


def _resize(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, C) float32 image; area averaging when shrinking, bilinear when growing."""
    import cv2

    h, w = size_hw
    if (h, w) == img.shape[:2]:
        return img
    shrinking = h * w < img.shape[0] * img.shape[1]
    out = cv2.resize(
        np.ascontiguousarray(img),
        (w, h),
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )
    if out.ndim == 2:  # cv2 drops a trailing axis of length 1
        out = out[..., None]
    return out


@dataclass(frozen=True)
class Preprocessing:
    """How one model family wants its input image.

    Parameters
    ----------
    name : str
        Identifies the recipe in embedding-cache keys; change it whenever the recipe changes.
    input_size : int
        Side of the square model input, pixels (LiteMedSAM 256, SAM 1024).
    keep_aspect : bool
        True: resize the longest side to ``input_size`` and pad bottom/right with zeros (SAM,
        LiteMedSAM). False: stretch to ``input_size x input_size`` (MedSAM ViT-B).
    normalise : {"minmax", "sam_mean_std"}
        ``"minmax"``: rescale the resized image to [0, 1] (MedSAM, LiteMedSAM).
        ``"sam_mean_std"``: 0..255 RGB minus SAM's pixel mean, divided by its std.
    """

    name: str
    input_size: int
    keep_aspect: bool
    normalise: str

    # --- geometry -------------------------------------------------------------------------
    def resized_size(self, original_hw: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of the image content inside the model input."""
        h, w = int(original_hw[0]), int(original_hw[1])
        if not self.keep_aspect:
            return self.input_size, self.input_size
        scale = self.input_size / max(h, w)
        return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))

    def points_to_model(self, points_xy: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
        """Map ``(x, y)`` pixel indices of the original image to model-input pixels.

        Parameters
        ----------
        points_xy : ndarray, shape (N, 2)
            ``x`` = column, ``y`` = row, original-image pixels.
        original_hw : (H, W)

        Returns
        -------
        ndarray of float32, shape (N, 2)
        """
        pts = np.asarray(points_xy, np.float64).reshape(-1, 2)
        h_in, w_in = self.resized_size(original_hw)
        scale = np.array([w_in / original_hw[1], h_in / original_hw[0]])
        return ((pts + 0.5) * scale - 0.5).astype(np.float32)

    def boxes_to_model(self, boxes_xyxy: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
        """Map inclusive ``[x0, y0, x1, y1]`` boxes (original pixels) to model-input pixels.

        Parameters
        ----------
        boxes_xyxy : ndarray, shape (N, 4) or (4,)

        Returns
        -------
        ndarray of float32, shape (N, 4)
        """
        boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
        corners = self.points_to_model(boxes.reshape(-1, 2), original_hw)
        return corners.reshape(-1, 4)

    # --- pixels ---------------------------------------------------------------------------
    def prepare(self, image: Image2D) -> tuple[np.ndarray, tuple[int, int]]:
        """Turn an image into the model's input tensor (as numpy).

        Intensities go through ``image.unit_range()`` first: CT through its window, MR and
        16-bit/float images through robust percentiles (see :mod:`app.core.image`), uint8 RGB
        scaled by 255. Greyscale is repeated to three channels.

        Returns
        -------
        array : ndarray of float32, shape (3, S, S)
            ``S = input_size``; content in the top-left ``(h, w)``, zeros elsewhere.
        resized_hw : (h, w)
        """
        unit = image.unit_range()
        if unit.ndim == 2:
            unit = np.repeat(unit[..., None], 3, axis=2)
        h_in, w_in = self.resized_size(image.shape)
        resized = _resize(unit.astype(np.float32, copy=False), (h_in, w_in))
        if self.normalise == "minmax":
            lo, hi = float(resized.min()), float(resized.max())
            resized = (resized - lo) / max(hi - lo, 1e-8)
        elif self.normalise == "sam_mean_std":
            resized = (resized * 255.0 - _SAM_PIXEL_MEAN) / _SAM_PIXEL_STD
        else:  # pragma: no cover - a programming error in a registry entry
            raise ValueError(f"unknown normalisation {self.normalise!r}")
        out = np.zeros((3, self.input_size, self.input_size), np.float32)
        out[:, :h_in, :w_in] = resized.transpose(2, 0, 1)
        return out, (h_in, w_in)

    def cache_token(self) -> str:
        """A short string that changes whenever this recipe changes (for cache keys)."""
        text = f"{self.name}|{self.input_size}|{self.keep_aspect}|{self.normalise}|centre-v1"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # --- masks ----------------------------------------------------------------------------
    def logits_to_original(self, low_res_logits, resized_hw: tuple[int, int],
                           original_hw: tuple[int, int]):
        """Upsample low-resolution logits to the original image.

        Parameters
        ----------
        low_res_logits : torch.Tensor, shape (K, 1, 256, 256) or (K, 256, 256), float
        resized_hw : (h, w) of the content in the model input
        original_hw : (H, W)

        Returns
        -------
        torch.Tensor, float32, shape (K, H, W)
            Logits; a mask is ``logits > 0``.
        """
        import torch.nn.functional as F

        x = low_res_logits.float()
        if x.ndim == 3:
            x = x[:, None]
        if self.keep_aspect:
            if x.shape[-1] != self.input_size:
                x = F.interpolate(x, (self.input_size, self.input_size), mode="bilinear",
                                  align_corners=False)
            x = x[..., : resized_hw[0], : resized_hw[1]]
        x = F.interpolate(x, tuple(int(s) for s in original_hw), mode="bilinear",
                          align_corners=False)
        return x[:, 0]


#: LiteMedSAM: longest side 256, pad, min-max to [0, 1] (CVPR 2024 MedSAM-on-laptop recipe)
LITEMEDSAM_256 = Preprocessing("litemedsam", 256, keep_aspect=True, normalise="minmax")
#: SAM ViT-B/L/H and MobileSAM: longest side 1024, pad, SAM pixel mean/std on 0..255
SAM_1024 = Preprocessing("sam", 1024, keep_aspect=True, normalise="sam_mean_std")
#: MedSAM ViT-B: stretched to 1024 x 1024, min-max to [0, 1]
MEDSAM_1024 = Preprocessing("medsam", 1024, keep_aspect=False, normalise="minmax")
