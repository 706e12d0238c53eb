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
from functools import lru_cache

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


    def logits_to_masks(self, low_res_logits: np.ndarray, resized_hw: tuple[int, int],
                        original_hw: tuple[int, int]) -> np.ndarray:
        """Masks at the original resolution: the same bilinear upsampling as
        :meth:`logits_to_original`, thresholded at 0, computed only where it can be positive.

        Bilinear interpolation is a convex combination, so an output pixel whose source
        pixels are all <= 0 is <= 0: only the rows and columns whose support meets the
        bounding box of the positive low-res logits are computed (two small matrix products
        per mask). The pixels computed are exactly those of the full product.

        Parameters
        ----------
        low_res_logits : ndarray of float32, shape (K, 256, 256)
        resized_hw : (h, w) of the content in the model input
        original_hw : (H, W)

        Returns
        -------
        ndarray of bool, shape (K, H, W)
        """
        lg = np.asarray(low_res_logits, np.float32)
        if lg.ndim == 2:
            lg = lg[None]
        H, W = (int(s) for s in original_hw)
        out = np.zeros((lg.shape[0], H, W), bool)
        my, lo_y, hi_y = self._axis_matrix(lg.shape[-2], int(resized_hw[0]), H)
        mx, lo_x, hi_x = self._axis_matrix(lg.shape[-1], int(resized_hw[1]), W)
        for k in range(lg.shape[0]):
            pos = lg[k] > 0
            rows = np.flatnonzero(pos.any(axis=1))
            if len(rows) == 0:
                continue
            cols = np.flatnonzero(pos.any(axis=0))
            # output rows whose source support [lo, hi] meets [rows[0], rows[-1]]
            y0 = int(np.searchsorted(hi_y, rows[0], side="left"))
            y1 = int(np.searchsorted(lo_y, rows[-1], side="right"))
            x0 = int(np.searchsorted(hi_x, cols[0], side="left"))
            x1 = int(np.searchsorted(lo_x, cols[-1], side="right"))
            if y1 <= y0 or x1 <= x0:
                continue
            r0, r1 = int(lo_y[y0]), int(hi_y[y1 - 1]) + 1
            c0, c1 = int(lo_x[x0]), int(hi_x[x1 - 1]) + 1
            crop = my[y0:y1, r0:r1] @ lg[k, r0:r1, c0:c1] @ mx[x0:x1, c0:c1].T
            out[k, y0:y1, x0:x1] = crop > 0
        return out

    def _axis_matrix(self, n_low: int, n_resized: int, n_out: int):
        # keep_aspect: the logits are first upsampled to the padded input, then cropped to the
        # content; otherwise (stretched input) they go straight to the original size
        if self.keep_aspect:
            return _interp_matrix(n_low, self.input_size, n_resized, n_out)
        return _interp_matrix(n_low, n_low, n_low, n_out)


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix of 1-D bilinear resizing, ``align_corners=False`` (torch)."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    l1 = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1.0 - l1)
    np.add.at(m, (np.arange(n_out), i1), l1)
    return m


@lru_cache(maxsize=64)
def _interp_matrix(n_low: int, n_stage: int, n_content: int, n_out: int):
    """Low-res axis -> original axis as one matrix, with each output's source support.

    Returns
    -------
    m : ndarray of float32, shape (n_out, n_low)
    lo, hi : ndarray of int, shape (n_out,)
        First and last low-res index with a non-zero weight (both non-decreasing).
    """
    first = _bilinear_weights(n_low, n_stage) if n_stage != n_low else np.eye(n_low)
    m = _bilinear_weights(n_content, n_out) @ first[:n_content]
    nz = m > 0
    lo = nz.argmax(axis=1)
    hi = n_low - 1 - nz[:, ::-1].argmax(axis=1)
    m = m.astype(np.float32)
    m.setflags(write=False)
    return m, lo, hi


#: LiteMedSAM: longest side 256, pad, min-max to [0, 1] (CVPR 2024 MedSAM-on-laptop recipe)
LITEMEDSAM_256 = Preprocessing("litemedsam", 256, keep_aspect=True, normalise="minmax")
#: SAM ViT-B/L/H and MobileSAM: longest side 1024, pad, SAM pixel mean/std on 0..255
SAM_1024 = Preprocessing("sam", 1024, keep_aspect=True, normalise="sam_mean_std")
#: MedSAM ViT-B: stretched to 1024 x 1024, min-max to [0, 1]
MEDSAM_1024 = Preprocessing("medsam", 1024, keep_aspect=False, normalise="minmax")
