"""The prompts of the object being annotated, as plain data: clicks and one box per slice.

A :class:`PromptStore` holds, for the object under construction, the clicks ``(x, y, positive)``
and at most one box on each slice, plus the *refine target* (the accepted label being
re-prompted, whose low-resolution logits are fed back). It is the single source of truth for
prompts: napari layers are drawn from it and never read back for a prediction.

Every change returns a :class:`PromptEdit` (an :class:`~app.core.annotate.undo.Edit`), so the
controller can put prompt changes on the same undo stack as label edits.

Coordinates are original-image pixels: ``x`` = column, ``y`` = row; boxes ``[x0, y0, x1, y1]``
with inclusive corners (the :class:`~app.core.models.base.Prompt` conventions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from app.core.models.base import Prompt

__all__ = ["Click", "PromptState", "PromptStore", "PromptEdit"]


@dataclass(frozen=True)
class Click:
    """One click: pixel ``(x, y)`` of the original image, object (True) or background."""

    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class PromptState:
    """An immutable snapshot of a :class:`PromptStore` (what undo puts back)."""

    clicks: tuple[tuple[int, tuple[Click, ...]], ...] = ()
    boxes: tuple[tuple[int, tuple[float, float, float, float]], ...] = ()
    refine_label: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.clicks and not self.boxes and not self.refine_label


@dataclass(eq=False)
class PromptEdit:
    """A prompt change, undoable: the store's state before and after."""

    store: PromptStore
    before: PromptState
    after: PromptState
    description: str = "edit prompts"

    def undo(self) -> None:
        self.store._set_state(self.before)

    def redo(self) -> None:
        self.store._set_state(self.after)

    @property
    def nbytes(self) -> int:
        return 0


@dataclass(eq=False)
class PromptStore:
    """Clicks and boxes per slice for the object being annotated.

    Parameters
    ----------
    shape_hw : tuple (H, W)
        The slice size: clicks are clipped into it, boxes must overlap it.
    on_change : callable, optional
        Called with no arguments after every change (including undo/redo of a change).
    """

    shape_hw: tuple[int, int]
    on_change: Callable[[], None] | None = None
    _clicks: dict[int, list[Click]] = field(default_factory=dict, repr=False)
    _boxes: dict[int, tuple[float, float, float, float]] = field(default_factory=dict, repr=False)
    refine_label: int = 0

    # --- reading ---------------------------------------------------------------------------
    def clicks(self, z: int) -> list[Click]:
        """The clicks on slice ``z``, in the order they were made."""
        return list(self._clicks.get(z, ()))

    def box(self, z: int) -> np.ndarray | None:
        """The box ``[x0, y0, x1, y1]`` on slice ``z`` (float32), or None."""
        b = self._boxes.get(z)
        return None if b is None else np.asarray(b, np.float32)

    def slices(self) -> list[int]:
        """Slices that hold a click or a box, ascending."""
        return sorted(set(self._clicks) | set(self._boxes))

    def all_clicks(self) -> list[tuple[int, Click]]:
        """``(z, click)`` for every click, by slice then order: the layers' order."""
        return [(z, c) for z in sorted(self._clicks) for c in self._clicks[z]]

    def all_boxes(self) -> list[tuple[int, np.ndarray]]:
        return [(z, np.asarray(self._boxes[z], np.float32)) for z in sorted(self._boxes)]

    def is_empty(self, z: int | None = None) -> bool:
        if z is None:
            return not self._clicks and not self._boxes
        return not self._clicks.get(z) and z not in self._boxes

    def counts(self) -> tuple[int, int]:
        """``(clicks, boxes)`` over all slices."""
        return sum(len(v) for v in self._clicks.values()), len(self._boxes)

    def to_prompt(self, z: int, mask_logits: np.ndarray | None = None) -> Prompt | None:
        """The model prompt for slice ``z`` (None when the slice has no click and no box).

        ``mask_logits`` (the refine target's low-res logits on this slice) are attached when
        given; the caller looks them up for :attr:`refine_label`.
        """
        clicks = self._clicks.get(z, [])
        box = self._boxes.get(z)
        if not clicks and box is None:
            return None
        pts = np.array([[c.x, c.y] for c in clicks], np.float32).reshape(-1, 2)
        labels = np.array([1 if c.positive else 0 for c in clicks], np.int32)
        return Prompt(points_xy=pts, point_labels=labels,
                      box_xyxy=None if box is None else np.asarray(box, np.float32),
                      mask_logits=mask_logits)

    # --- state -----------------------------------------------------------------------------
    def state(self) -> PromptState:
        return PromptState(
            clicks=tuple((z, tuple(v)) for z, v in sorted(self._clicks.items()) if v),
            boxes=tuple(sorted(self._boxes.items())),
            refine_label=int(self.refine_label),
        )

    def _set_state(self, state: PromptState) -> None:
        self._clicks = {z: list(v) for z, v in state.clicks}
        self._boxes = dict(state.boxes)
        self.refine_label = int(state.refine_label)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _edit(self, mutate: Callable[[], None], description: str) -> PromptEdit | None:
        before = self.state()
        mutate()
        after = self.state()
        if after == before:
            return None
        self._changed()
        return PromptEdit(self, before, after, description)

    # --- changes (each returns the applied edit, or None when nothing changed) -------------
    def add_click(self, z: int, x: float, y: float, positive: bool) -> PromptEdit | None:
        """Add a click on slice ``z``; a position outside the slice is clipped onto its edge."""
        x, y = float(x), float(y)
        if not (np.isfinite(x) and np.isfinite(y)):
            raise ValueError(f"click ({x}, {y}) is not a finite position")
        h, w = self.shape_hw
        click = Click(float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1)), bool(positive))
        return self._edit(lambda: self._clicks.setdefault(int(z), []).append(click),
                          "object click" if positive else "background click")

    def remove_clicks(self, z: int, indices) -> PromptEdit | None:
        """Remove the clicks at ``indices`` (positions in :meth:`clicks`) on slice ``z``."""
        drop = {int(i) for i in indices}

        def mutate():
            kept = [c for i, c in enumerate(self._clicks.get(z, [])) if i not in drop]
            if kept:
                self._clicks[z] = kept
            else:
                self._clicks.pop(z, None)

        return self._edit(mutate, "remove clicks")

    def move_click(self, z: int, index: int, x: float, y: float) -> PromptEdit | None:
        h, w = self.shape_hw

        def mutate():
            old = self._clicks[z][index]
            self._clicks[z][index] = Click(float(np.clip(x, 0, w - 1)),
                                           float(np.clip(y, 0, h - 1)), old.positive)

        return self._edit(mutate, "move click")

    def set_box(self, z: int, box_xyxy) -> PromptEdit | None:
        """Set the one box of slice ``z`` (replacing an older one), clipped to the slice.

        Raises ``ValueError`` for a box with non-finite corners or one outside the slice.
        """
        b = np.asarray(box_xyxy, np.float64).reshape(-1)
        if b.shape != (4,) or not np.isfinite(b).all():
            raise ValueError(f"a box is four finite numbers [x0, y0, x1, y1]; got {box_xyxy!r}")
        x0, x1 = sorted((b[0], b[2]))
        y0, y1 = sorted((b[1], b[3]))
        h, w = self.shape_hw
        if x1 < 0 or y1 < 0 or x0 > w - 1 or y0 > h - 1:
            raise ValueError(f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] lies outside the {w}x{h} "
                             "slice")
        box = (float(max(x0, 0)), float(max(y0, 0)), float(min(x1, w - 1)), float(min(y1, h - 1)))
        return self._edit(lambda: self._boxes.__setitem__(int(z), box), "box")

    def clear_box(self, z: int) -> PromptEdit | None:
        return self._edit(lambda: self._boxes.pop(int(z), None), "remove box")

    def clear(self, z: int | None = None) -> PromptEdit | None:
        """Remove every click and box (of slice ``z`` only, if given) and the refine target."""

        def mutate():
            if z is None:
                self._clicks.clear()
                self._boxes.clear()
                self.refine_label = 0
            else:
                self._clicks.pop(z, None)
                self._boxes.pop(z, None)

        return self._edit(mutate, "clear prompts")

    def set_refine(self, label: int, z: int, box_xyxy) -> PromptEdit | None:
        """Start refining accepted object ``label``: prompts cleared, its box on slice ``z``."""

        def mutate():
            self._clicks.clear()
            self._boxes.clear()
            self.refine_label = int(label)
            if box_xyxy is not None:
                self._boxes[int(z)] = tuple(float(v) for v in box_xyxy)

        return self._edit(mutate, f"refine label {label}")
