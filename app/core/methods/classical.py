"""Classical interactive segmentation methods that need no weights, behind the SAM prompt API.

All four take the same prompts as a SAM-family model: positive/negative points and one box.
Each works on a greyscale copy of the image whose longest side is at most ``max_side`` pixels
(speed; FIELD_NOTES: random walker ~0.1 s at 256², ~0.3 s at 512²) and returns a single mask
at the original size (``K = 1``, ``scores = NaN``: no predicted IoU).

* :class:`RandomWalkerMethod` (Grady 2006, ``skimage.segmentation.random_walker``, on the image
  smoothed with sigma 1.5 px, beta 5000; smaller beta split the box half-way): object seeds
  at positive points (or, with a box and no positive point, a small ellipse at the box centre);
  background seeds at negative points and everywhere outside the box (no box: the image border).
* :class:`GrabCutMethod` (``cv2.grabCut``, 5 iterations) on three channels, the grey image
  smoothed at sigma 1, 3 and 8 px (plain grey made it label everything background on the
  X-rays and ultrasound here): the box initialises it; clicks are fixed foreground/background
  pixels. Without a box, the whole image is the box (its border is background).
* :class:`RegionGrowingMethod`: flood fill from the clicked pixels (box centre when there is no
  click) of pixels whose smoothed intensity is within a tolerance of the clicked intensity
  (``max(tolerance, 2.5 x the local standard deviation)``), kept inside the box; regions grown
  from negative clicks are removed; holes filled.
* :class:`GeodesicActiveContourMethod` (``morphological_geodesic_active_contour``): a contour
  started at the box that shrinks onto edges (balloon -1); without a box, discs at the positive
  clicks that expand (balloon +1).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from app.core.image import Image2D
from app.core.methods.base import InteractiveMethod
from app.core.models.base import Candidates, Capabilities, Prompt

__all__ = [
    "ClassicalState",
    "RandomWalkerMethod",
    "GrabCutMethod",
    "RegionGrowingMethod",
    "GeodesicActiveContourMethod",
]

_CAPS = Capabilities(
    points=True, boxes=True, mask_input=False, meaningful_multimask=False, input_size=256
)


@dataclass(frozen=True, eq=False)
class ClassicalState:
    """A prepared image: ``grey`` float32 (h, w) in [0, 1] at working size; ``scale`` = h / H."""

    grey: np.ndarray
    original_size: tuple[int, int]
    scale: float


def _to_grey(image: Image2D) -> np.ndarray:
    unit = image.unit_range()
    if unit.ndim == 3:
        unit = unit.mean(axis=2)
    return np.ascontiguousarray(unit, dtype=np.float32)


class _Classical(InteractiveMethod):
    capabilities = _CAPS

    def __init__(self, max_side: int = 256) -> None:
        super().__init__()
        self.max_side = int(max_side)

    def prepare(self, image: Image2D) -> ClassicalState:
        self.images_prepared += 1
        grey = _to_grey(image)
        h, w = grey.shape
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        return ClassicalState(grey=grey, original_size=(h, w), scale=scale)

    def describe(self) -> dict:
        return {**super().describe(), "max_side": self.max_side}

    # --- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _small_points(state: ClassicalState, prompt: Prompt) -> tuple[np.ndarray, np.ndarray]:
        h, w = state.grey.shape
        pts = np.rint(prompt.points_xy * state.scale).astype(int).reshape(-1, 2)
        pts[:, 0] = np.clip(pts[:, 0], 0, w - 1)
        pts[:, 1] = np.clip(pts[:, 1], 0, h - 1)
        return pts, prompt.point_labels

    @staticmethod
    def _small_box(state: ClassicalState, prompt: Prompt) -> tuple[int, int, int, int] | None:
        if prompt.box_xyxy is None:
            return None
        h, w = state.grey.shape
        x0, y0, x1, y1 = (float(v) * state.scale for v in prompt.box_xyxy)
        x0, x1 = int(np.clip(np.floor(x0), 0, w - 1)), int(np.clip(np.ceil(x1), 0, w - 1))
        y0, y1 = int(np.clip(np.floor(y0), 0, h - 1)), int(np.clip(np.ceil(y1), 0, h - 1))
        return x0, y0, x1, y1

    @staticmethod
    def _candidates(state: ClassicalState, prob_small: np.ndarray) -> Candidates:
        h, w = state.original_size
        prob = np.asarray(prob_small, np.float32)
        if prob.shape != (h, w):
            prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
        mask = prob > 0.5
        logits = cv2.resize(prob, (256, 256), interpolation=cv2.INTER_LINEAR) * 8.0 - 4.0
        return Candidates(
            masks=mask[None],
            scores=np.array([np.nan], np.float32),
            low_res_logits=logits[None].astype(np.float32),
            meaningful=False,
        )

    @staticmethod
    def _disc(shape: tuple[int, int], x: int, y: int, radius: int) -> np.ndarray:
        out = np.zeros(shape, np.uint8)
        cv2.circle(out, (int(x), int(y)), int(radius), 1, thickness=-1)
        return out.astype(bool)

    def _check(self, prompt: Prompt) -> None:
        if not prompt.has_points and not prompt.has_box:
            from app.core.models.base import PromptNotSupportedError

            raise PromptNotSupportedError(f"{self.name} needs at least one point or a box")


class RandomWalkerMethod(_Classical):
    """Random walker segmentation seeded by the prompt (see module docstring)."""

    name = "random_walker"

    def __init__(self, max_side: int = 256, beta: float = 5000.0, sigma: float = 1.5) -> None:
        super().__init__(max_side)
        self.beta = float(beta)
        self.sigma = float(sigma)

    def describe(self) -> dict:
        return {**super().describe(), "beta": self.beta, "sigma": self.sigma}

    def predict(self, state: ClassicalState, prompt: Prompt, multimask: bool = True) -> Candidates:
        from scipy.ndimage import gaussian_filter
        from skimage.segmentation import random_walker

        self._check(prompt)
        # speckle and film grain break the walker's edge weights: smooth first
        grey = gaussian_filter(state.grey, self.sigma) if self.sigma > 0 else state.grey
        h, w = grey.shape
        seeds = np.zeros((h, w), np.int32)
        box = self._small_box(state, prompt)
        pts, labels = self._small_points(state, prompt)
        if box is not None:
            x0, y0, x1, y1 = box
            outside = np.ones((h, w), bool)
            outside[y0 : y1 + 1, x0 : x1 + 1] = False
            seeds[outside] = 2
        else:
            seeds[0, :] = seeds[-1, :] = seeds[:, 0] = seeds[:, -1] = 2
        if box is not None and not (labels == 1).any():
            x0, y0, x1, y1 = box
            centre = np.zeros((h, w), np.uint8)
            axes = (max(0, (x1 - x0) // 10), max(0, (y1 - y0) // 10))
            cv2.ellipse(centre, ((x0 + x1) // 2, (y0 + y1) // 2), axes, 0, 0, 360, 1, -1)
            seeds[centre.astype(bool)] = 1
        for (x, y), lab in zip(pts, labels):
            seeds[self._disc((h, w), x, y, 1)] = 1 if lab == 1 else 2
        if not (seeds == 1).any() or not (seeds == 2).any():
            return self._candidates(state, (seeds == 1).astype(np.float32))
        prob = random_walker(grey, seeds, beta=self.beta, mode="bf",
                             return_full_prob=True)
        return self._candidates(state, prob[0])


class GrabCutMethod(_Classical):
    """GrabCut initialised by the box, clicks as fixed foreground/background."""

    name = "grabcut"

    def __init__(
        self, max_side: int = 256, iterations: int = 5, scales: tuple[float, ...] = (1.0, 3.0, 8.0)
    ) -> None:
        super().__init__(max_side)
        self.iterations = int(iterations)
        self.scales = tuple(float(s) for s in scales)

    def describe(self) -> dict:
        return {**super().describe(), "iterations": self.iterations, "scales": list(self.scales)}

    def predict(self, state: ClassicalState, prompt: Prompt, multimask: bool = True) -> Candidates:
        from scipy.ndimage import gaussian_filter

        self._check(prompt)
        grey = state.grey
        h, w = grey.shape
        # GrabCut models colour; a grey image gives it one channel to separate on and it often
        # gives up (everything background). Three smoothing scales act as texture channels.
        chans = [gaussian_filter(grey, s) for s in self.scales]
        img = (np.stack(chans, axis=-1) * 255).round().clip(0, 255).astype(np.uint8)
        mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
        box = self._small_box(state, prompt)
        pts, labels = self._small_points(state, prompt)
        if box is not None:
            x0, y0, x1, y1 = box
            mask[:] = cv2.GC_BGD
            mask[y0 : y1 + 1, x0 : x1 + 1] = cv2.GC_PR_FGD
        else:
            # no box: the whole image is the box (its 1-px border is background)
            mask[:] = cv2.GC_PR_FGD
            mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = cv2.GC_BGD
        for (x, y), lab in zip(pts, labels):
            mask[self._disc((h, w), x, y, 1)] = cv2.GC_FGD if lab == 1 else cv2.GC_BGD
        fg_like = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
        if not fg_like.any() or fg_like.all():
            return self._candidates(state, fg_like.astype(np.float32))
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(img, mask, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            # degenerate colour models (e.g. a flat box): keep the initial labelling
            pass
        out = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
        return self._candidates(state, out)


class RegionGrowingMethod(_Classical):
    """Region growing from the clicked intensity (flood fill with a tolerance)."""

    name = "region_growing"

    def __init__(self, max_side: int = 256, tolerance: float = 0.08, sigma: float = 1.0) -> None:
        super().__init__(max_side)
        self.tolerance = float(tolerance)
        self.sigma = float(sigma)

    def describe(self) -> dict:
        return {**super().describe(), "tolerance": self.tolerance, "sigma": self.sigma}

    def _grow(self, smooth: np.ndarray, x: int, y: int) -> np.ndarray:
        from skimage.segmentation import flood

        h, w = smooth.shape
        patch = smooth[max(0, y - 3) : y + 4, max(0, x - 3) : x + 4]
        tol = max(self.tolerance, 2.5 * float(patch.std()))
        # grow from the local mean so that a noisy seed pixel does not decide alone
        work = smooth.copy()
        work[y, x] = float(patch.mean())
        return flood(work, (int(y), int(x)), tolerance=tol)

    def predict(self, state: ClassicalState, prompt: Prompt, multimask: bool = True) -> Candidates:
        from scipy.ndimage import binary_fill_holes, gaussian_filter

        self._check(prompt)
        smooth = gaussian_filter(state.grey, self.sigma) if self.sigma > 0 else state.grey
        h, w = smooth.shape
        box = self._small_box(state, prompt)
        pts, labels = self._small_points(state, prompt)
        seeds = [(x, y) for (x, y), lab in zip(pts, labels) if lab == 1]
        if not seeds and box is not None:
            seeds = [((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)]
        region = np.zeros((h, w), bool)
        for x, y in seeds:
            region |= self._grow(smooth, x, y)
        for (x, y), lab in zip(pts, labels):
            if lab == 0:
                region &= ~self._grow(smooth, x, y)
        if box is not None:
            inside = np.zeros((h, w), bool)
            inside[box[1] : box[3] + 1, box[0] : box[2] + 1] = True
            region &= inside
        region = binary_fill_holes(region)
        return self._candidates(state, region.astype(np.float32))


class GeodesicActiveContourMethod(_Classical):
    """Morphological geodesic active contour started from the box (or discs at the clicks)."""

    name = "geodesic_active_contour"

    def __init__(self, max_side: int = 256, iterations: int = 150, smoothing: int = 1) -> None:
        super().__init__(max_side)
        self.iterations = int(iterations)
        self.smoothing = int(smoothing)

    def describe(self) -> dict:
        return {**super().describe(), "iterations": self.iterations, "smoothing": self.smoothing}

    def predict(self, state: ClassicalState, prompt: Prompt, multimask: bool = True) -> Candidates:
        from skimage.segmentation import (
            inverse_gaussian_gradient,
            morphological_geodesic_active_contour,
        )

        self._check(prompt)
        grey = state.grey
        h, w = grey.shape
        gimage = inverse_gaussian_gradient(grey, alpha=100.0, sigma=2.0)
        box = self._small_box(state, prompt)
        pts, labels = self._small_points(state, prompt)
        init = np.zeros((h, w), np.int8)
        if box is not None:
            init[box[1] : box[3] + 1, box[0] : box[2] + 1] = 1
            balloon = -1
        else:
            radius = max(2, min(h, w) // 40)
            for (x, y), lab in zip(pts, labels):
                if lab == 1:
                    init[self._disc((h, w), x, y, radius)] = 1
            balloon = 1
        if not init.any():
            return self._candidates(state, init.astype(np.float32))
        ls = morphological_geodesic_active_contour(
            gimage, self.iterations, init_level_set=init, smoothing=self.smoothing,
            threshold="auto", balloon=balloon,
        )
        ls = ls.astype(bool)
        if box is not None:
            for (x, y), lab in zip(pts, labels):
                ls[self._disc((h, w), x, y, 1)] = lab == 1
        return self._candidates(state, ls.astype(np.float32))
