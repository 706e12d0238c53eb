"""The data types every promptable model speaks, and the protocol they implement.

Coordinates in :class:`Prompt` are **image pixels of the original image**: ``x`` is the column,
``y`` the row, boxes are ``[x0, y0, x1, y1]`` with *inclusive* corners (``x1`` is the last column
of the object). The model adapters, and nothing else, turn these into model-input coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from app.core.image import Image2D

__all__ = [
    "Prompt",
    "Embedding",
    "Candidates",
    "Capabilities",
    "PromptableModel",
    "PromptNotSupportedError",
]


class PromptNotSupportedError(ValueError):
    """The model cannot take this kind of prompt (e.g. no prompt at all, or several boxes)."""


@dataclass(frozen=True, eq=False)
class Prompt:
    """What the user (or the simulator) asked for, in original-image pixels.

    Parameters
    ----------
    points_xy : ndarray of float, shape (N, 2)
        Click positions ``(x, y)``; ``x`` = column, ``y`` = row.
    point_labels : ndarray of int, shape (N,)
        1 = positive (object), 0 = negative (background).
    box_xyxy : ndarray of float, shape (4,) or None
        One box ``[x0, y0, x1, y1]`` with inclusive corners.
    mask_logits : ndarray of float32, shape (256, 256) or None
        Low-resolution logits of a previous prediction by the *same* model, fed back to refine.
    """

    points_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    box_xyxy: np.ndarray | None = None
    mask_logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        pts = np.asarray(self.points_xy, dtype=np.float32).reshape(-1, 2)
        lab = np.asarray(self.point_labels, dtype=np.int32).reshape(-1)
        if len(pts) != len(lab):
            raise ValueError(f"{len(pts)} points but {len(lab)} labels")
        object.__setattr__(self, "points_xy", pts)
        object.__setattr__(self, "point_labels", lab)
        if self.box_xyxy is not None:
            box = np.asarray(self.box_xyxy, dtype=np.float32).reshape(-1)
            if box.shape != (4,):
                raise ValueError(f"a box is [x0, y0, x1, y1]; got {self.box_xyxy!r}")
            if box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f"box corners are not ordered: {box.tolist()}")
            object.__setattr__(self, "box_xyxy", box)

    @classmethod
    def from_points(cls, points_xy, labels=None, **kw) -> Prompt:
        pts = np.asarray(points_xy, np.float32).reshape(-1, 2)
        lab = np.ones(len(pts), np.int32) if labels is None else labels
        return cls(points_xy=pts, point_labels=lab, **kw)

    @classmethod
    def from_box(cls, box_xyxy, **kw) -> Prompt:
        return cls(box_xyxy=np.asarray(box_xyxy, np.float32), **kw)

    @property
    def has_points(self) -> bool:
        return len(self.points_xy) > 0

    @property
    def has_box(self) -> bool:
        return self.box_xyxy is not None

    @property
    def is_empty(self) -> bool:
        return not self.has_points and not self.has_box and self.mask_logits is None

    def validate_for(self, shape_hw: tuple[int, int]) -> None:
        """Raise ``ValueError`` naming the coordinate when a prompt falls outside the image."""
        h, w = shape_hw
        for (x, y) in self.points_xy:
            if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
                raise ValueError(f"point ({x:g}, {y:g}) is outside the {w}x{h} image")
        if self.box_xyxy is not None:
            x0, y0, x1, y1 = self.box_xyxy
            if x0 < 0 or y0 < 0 or x1 > w - 1 or y1 > h - 1:
                raise ValueError(
                    f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is outside the {w}x{h} image "
                    f"(x in 0..{w - 1}, y in 0..{h - 1})"
                )


@dataclass(frozen=True, eq=False)
class Embedding:
    """An image embedding plus what is needed to map prompts and masks back.

    ``features`` is model-specific (a torch tensor on the model's device); treat it as opaque.
    """

    features: Any
    original_size: tuple[int, int]  # (H, W) of the image given to ``embed``
    input_size: tuple[int, int]  # (h, w) of the resized image inside the padded model input
    model_name: str
    key: str = ""  # content hash of (image, model, preprocessing): the cache key


@dataclass(frozen=True, eq=False)
class Candidates:
    """What one prediction returns.

    Parameters
    ----------
    masks : ndarray of bool, shape (K, H, W)
        At the original image resolution; K = 3 for SAM's multimask output, else 1.
    scores : ndarray of float32, shape (K,)
        The model's predicted IoU for each mask.
    low_res_logits : ndarray of float32, shape (K, 256, 256)
        For feeding back as ``Prompt.mask_logits``.
    meaningful : bool
        False when the K masks are near-copies that cannot be ranked (LiteMedSAM's multimask
        head); the UI then shows a single mask and says why.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    meaningful: bool = True

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def best_index(self) -> int:
        """Index of the mask with the highest predicted IoU."""
        return int(np.argmax(self.scores))


@dataclass(frozen=True)
class Capabilities:
    """What a model can do, for the model picker, the benchmark and hints in the UI."""

    points: bool = True  # gives useful masks from point prompts alone
    boxes: bool = True
    mask_input: bool = True
    meaningful_multimask: bool = True  # are the three outputs distinct, rankable candidates?
    input_size: int = 1024  # longest side of the model input, pixels


@runtime_checkable
class PromptableModel(Protocol):
    """A SAM-family model (or anything that behaves like one)."""

    name: str
    capabilities: Capabilities

    def embed(self, image: Image2D) -> Embedding:
        """Run the image encoder once for ``image``."""
        ...

    def predict(self, embedding: Embedding, prompt: Prompt, multimask: bool = True) -> Candidates:
        """Decode masks for ``prompt`` on a precomputed embedding."""
        ...
