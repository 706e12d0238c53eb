"""The label map being built for one image, with its undo history (no Qt, no threads).

A :class:`SegmentSession` owns one :class:`~app.core.image.Volume`, the label map being built
for it, the undo history, the display/model window and the low-resolution logits of accepted
objects (fed back when refining). The
:class:`~app.core.annotate.controller.AnnotationController` owns one session per open image;
model calls happen elsewhere (the controller's scheduler), so a session never touches an engine.

Conventions: label maps are ``(Z, Y, X)`` ``uint16`` (0 = background); a 2D image is a volume
with ``Z == 1``. Prompts are in original-image pixels (:class:`~app.core.models.base.Prompt`).
"""

from __future__ import annotations

import numpy as np

from app.core.annotate.undo import CompoundEdit, LabelEdit, UndoStack
from app.core.image import Image2D, Volume, Window
from app.core.models.base import Candidates, Prompt

__all__ = [
    "SegmentSession",
    "box_from_mask",
    "choose_candidate",
    "LABEL_DTYPE",
]

LABEL_DTYPE = np.uint16


def box_from_mask(mask: np.ndarray, margin_px: int = 0) -> np.ndarray | None:
    """Tight inclusive ``[x0, y0, x1, y1]`` box around ``mask`` (bool, (H, W)), grown by a margin.

    Returns None for an empty mask.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    return np.array(
        [
            max(int(cols[0]) - margin_px, 0),
            max(int(rows[0]) - margin_px, 0),
            min(int(cols[-1]) + margin_px, w - 1),
            min(int(rows[-1]) + margin_px, h - 1),
        ],
        dtype=np.float32,
    )


def choose_candidate(candidates: Candidates) -> int:
    """The candidate to preselect: the highest predicted IoU when the outputs can be ranked,
    else output 0 (LiteMedSAM's extra outputs are near-copies on another score scale)."""
    if len(candidates) == 1 or not candidates.meaningful:
        return 0
    return candidates.best_index


class SegmentSession:
    """Image + label map + undo history for one open image.

    Parameters
    ----------
    volume : Volume
        The image being segmented; 2D pictures have ``Z == 1``.
    labels : ndarray, shape (Z, Y, X), optional
        An existing label map to continue (e.g. restored after a crash); copied.
    """

    def __init__(self, volume: Volume, labels: np.ndarray | None = None):
        self.volume = volume
        z, y, x = volume.shape
        self.labels = np.zeros((z, y, x), dtype=LABEL_DTYPE)
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != self.labels.shape:
                raise ValueError(
                    f"label map shape {labels.shape} does not match the image {self.labels.shape}"
                )
            self.labels[...] = labels
        self.undo_stack = UndoStack()
        self.window: Window = volume.display_window()
        #: low-res logits of accepted objects, by (z, label), fed back when refining
        self.object_logits: dict[tuple[int, int], np.ndarray] = {}

    # --- model input -----------------------------------------------------------------------
    def image(self, z: int) -> Image2D:
        """Slice ``z`` as the model sees it, through the session's current window.

        Built directly (``Volume.slice`` would work out the volume's default window again,
        percentiles over every voxel, on every click)."""
        if not 0 <= z < self.volume.n_slices:
            raise IndexError(f"slice {z} is outside 0..{self.volume.n_slices - 1}")
        sp = self.volume.spacing_mm
        return Image2D(pixels=self.volume.pixels[z], window=self.window,
                       modality=self.volume.modality, spacing_mm=(float(sp[1]), float(sp[2])))

    def unit_image(self, z: int):
        """Slice ``z`` mapped to [0, 1] through the window (for previews), cached per window."""
        key = (z, self.window)
        cache = self.__dict__.setdefault("_unit_cache", {})
        if key not in cache:
            if len(cache) > 8:
                cache.clear()
            cache[key] = self.image(z).unit_range()
        return cache[key]

    # --- edits -----------------------------------------------------------------------------
    def accept(
        self,
        z: int,
        mask: np.ndarray,
        label: int,
        *,
        replace: bool = False,
        logits: np.ndarray | None = None,
        extra_edits: list | None = None,
        description: str | None = None,
    ):
        """Write ``mask`` (bool, (Y, X)) into slice ``z`` as ``label``; one undoable step.

        With ``replace`` the label's previous pixels on that slice are cleared first (refining
        an object). Other labels' pixels are overwritten: the latest accept wins, as in painting.
        ``extra_edits`` (already applied, e.g. clearing the prompts) join the same step.
        Returns the edit, or None when nothing changed and there were no extra edits.
        """
        if label <= 0:
            raise ValueError(f"label must be positive, got {label}")
        mask = np.asarray(mask, bool)
        if mask.shape != self.labels.shape[1:]:
            raise ValueError(f"mask shape {mask.shape} does not match the slice {self.labels.shape[1:]}")
        new = self.labels[z].copy()
        if replace:
            new[new == label] = 0
        new[mask] = label
        edits = list(extra_edits or [])
        edit = self._slice_edit(z, new, "accept")
        if edit is not None:
            edits.insert(0, edit)
        if logits is not None:
            self.object_logits[(z, label)] = np.asarray(logits, np.float32)
        if not edits:
            return None
        step = CompoundEdit(edits, description or f"accept label {label} on slice {z}")
        self.undo_stack.push(step)
        return step

    def delete_label(self, label: int, z: int | None = None):
        """Clear ``label`` everywhere (or on slice ``z`` only); one undoable step."""
        region = self.labels if z is None else self.labels[z : z + 1]
        hit = region == label
        if not hit.any():
            return None
        offset = 0 if z is None else z
        edits = []
        for dz in np.flatnonzero(hit.any(axis=(1, 2))):
            zz = int(dz) + offset
            new = self.labels[zz].copy()
            new[new == label] = 0
            edits.append(self._slice_edit(zz, new, "clear"))
        step = CompoundEdit([e for e in edits if e is not None], f"clear label {label}")
        self.undo_stack.push(step)
        return step

    def clear_all(self):
        """Clear the whole label map; one undoable step."""
        edits = [self._slice_edit(int(z), np.zeros_like(self.labels[0]), "clear")
                 for z in np.flatnonzero(self.labels.any(axis=(1, 2)))]
        if not edits:
            return None
        step = CompoundEdit(edits, "clear all labels")
        self.undo_stack.push(step)
        return step

    def apply_slices(self, masks: dict[int, np.ndarray], label: int, description: str,
                     *, overwrite_other_labels: bool = False):
        """Write several slices' masks as ``label`` in one undoable step (e.g. a propagation).

        By default pixels that already belong to another label are left alone.
        """
        edits = []
        for z, mask in sorted(masks.items()):
            new = self.labels[z].copy()
            where = mask if overwrite_other_labels else mask & ((new == 0) | (new == label))
            new[where] = label
            edits.append(self._slice_edit(int(z), new, description))
        return self._push_edits(edits, description)

    def replace_labels(self, new_labels: np.ndarray, description: str = "replace labels"):
        """Set the whole label map (e.g. restored after a crash); one undoable step."""
        new_labels = np.asarray(new_labels)
        if new_labels.shape != self.labels.shape:
            raise ValueError(f"label map shape {new_labels.shape} does not match {self.labels.shape}")
        edits = [self._slice_edit(z, new_labels[z].astype(self.labels.dtype), description)
                 for z in range(self.labels.shape[0])]
        return self._push_edits(edits, description)

    def _push_edits(self, edits: list, description: str):
        """Push the non-empty slice edits as one undoable step (None when nothing changed)."""
        edits = [e for e in edits if e is not None]
        if not edits:
            return None
        step = CompoundEdit(edits, description)
        self.undo_stack.push(step)
        return step

    def _slice_edit(self, z: int, new_slice: np.ndarray, description: str) -> LabelEdit | None:
        old = self.labels[z]
        diff = new_slice != old
        rows = np.flatnonzero(diff.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(diff.any(axis=0))
        box = (slice(z, z + 1), slice(int(rows[0]), int(rows[-1]) + 1),
               slice(int(cols[0]), int(cols[-1]) + 1))
        edit = LabelEdit(self.labels, box, self.labels[box].copy(),
                         new_slice[None][:, box[1], box[2]].astype(self.labels.dtype), description)
        edit.redo()
        return edit

    def undo(self) -> str | None:
        return self.undo_stack.undo()

    def redo(self) -> str | None:
        return self.undo_stack.redo()

    def next_free_label(self) -> int:
        """The smallest label value not used anywhere yet (>= 1)."""
        used = set(np.unique(self.labels).tolist())
        label = 1
        while label in used:
            label += 1
        return label

    def refine_prompt(self, z: int, label: int) -> Prompt | None:
        """A prompt that re-segments object ``label`` on slice ``z``: its box plus, when the
        accept recorded them, the logits of the accepted mask (fed back to the model)."""
        mask = self.labels[z] == label
        box = box_from_mask(mask)
        if box is None:
            return None
        return Prompt(box_xyxy=box, mask_logits=self.object_logits.get((z, label)))
