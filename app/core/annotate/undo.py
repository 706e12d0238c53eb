"""Multi-level undo/redo for label maps, with memory bounded by storing only changed boxes.

An :class:`Edit` knows how to undo and redo itself. :class:`LabelEdit` records the bounding box of
the voxels an operation changed, with the values before and after, so a one-object accept on a
512x512x300 volume costs the object's box, not the volume. :class:`CompoundEdit` groups edits into
one step (an accept that also clears the prompts; a propagation over many slices).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

__all__ = ["Edit", "LabelEdit", "CallbackEdit", "CompoundEdit", "UndoStack", "apply_label_change"]


class Edit(Protocol):
    """One undoable step."""

    description: str

    def undo(self) -> None: ...

    def redo(self) -> None: ...

    @property
    def nbytes(self) -> int: ...


@dataclass(eq=False)
class LabelEdit:
    """The change of a label map inside a box.

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
        The label map the edit applies to (modified in place by undo/redo).
    box : tuple of slice
        The region ``labels[box]`` that changed.
    before, after : ndarray
        ``labels[box]`` before and after the change.
    description : str
    """

    labels: np.ndarray
    box: tuple[slice, ...]
    before: np.ndarray
    after: np.ndarray
    description: str = "edit labels"

    def undo(self) -> None:
        self.labels[self.box] = self.before

    def redo(self) -> None:
        self.labels[self.box] = self.after

    @property
    def nbytes(self) -> int:
        return int(self.before.nbytes + self.after.nbytes)


@dataclass(eq=False)
class CallbackEdit:
    """An edit of state outside the label map (e.g. prompt layers), given as two callables."""

    undo_fn: Callable[[], None]
    redo_fn: Callable[[], None]
    description: str = "edit"

    def undo(self) -> None:
        self.undo_fn()

    def redo(self) -> None:
        self.redo_fn()

    @property
    def nbytes(self) -> int:
        return 0


@dataclass(eq=False)
class CompoundEdit:
    """Several edits undone and redone as one step (undo runs them in reverse order)."""

    edits: list = field(default_factory=list)
    description: str = "edit"

    def undo(self) -> None:
        for e in reversed(self.edits):
            e.undo()

    def redo(self) -> None:
        for e in self.edits:
            e.redo()

    @property
    def nbytes(self) -> int:
        return int(sum(e.nbytes for e in self.edits))


def _bounding_box(changed: np.ndarray) -> tuple[slice, ...] | None:
    if not changed.any():
        return None
    box = []
    for axis in range(changed.ndim):
        other = tuple(a for a in range(changed.ndim) if a != axis)
        idx = np.flatnonzero(changed.any(axis=other))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def apply_label_change(
    labels: np.ndarray, new_labels: np.ndarray, description: str = "edit labels"
) -> LabelEdit | None:
    """Write ``new_labels`` into ``labels`` in place and return the edit (None if nothing changed).

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
        Modified in place.
    new_labels : ndarray, same shape
        The desired result.
    """
    if new_labels.shape != labels.shape:
        raise ValueError(f"label shapes differ: {new_labels.shape} vs {labels.shape}")
    box = _bounding_box(new_labels != labels)
    if box is None:
        return None
    before = labels[box].copy()
    after = np.asarray(new_labels[box], dtype=labels.dtype).copy()
    labels[box] = after
    return LabelEdit(labels, box, before, after, description)


class UndoStack:
    """A linear history with a redo branch that is dropped by any new edit.

    Parameters
    ----------
    max_bytes : int
        The oldest steps are forgotten when the history holds more than this.
    on_change : callable or None
        Called with no arguments after every push, undo and redo (e.g. to refresh a layer).
    """

    def __init__(self, max_bytes: int = 512 * 2**20, on_change: Callable[[], None] | None = None):
        self._done: list = []
        self._undone: list = []
        self.max_bytes = int(max_bytes)
        self.on_change = on_change

    def push(self, edit) -> None:
        """Record an edit that has already been applied."""
        if edit is None:
            return
        self._done.append(edit)
        self._undone.clear()
        while len(self._done) > 1 and self.nbytes > self.max_bytes:
            self._done.pop(0)
        self._changed()

    def undo(self) -> str | None:
        """Undo the last step; return its description, or None when there is nothing to undo."""
        if not self._done:
            return None
        edit = self._done.pop()
        edit.undo()
        self._undone.append(edit)
        self._changed()
        return edit.description

    def redo(self) -> str | None:
        """Redo the last undone step; return its description, or None."""
        if not self._undone:
            return None
        edit = self._undone.pop()
        edit.redo()
        self._done.append(edit)
        self._changed()
        return edit.description

    def clear(self) -> None:
        self._done.clear()
        self._undone.clear()
        self._changed()

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    @property
    def descriptions(self) -> Sequence[str]:
        """Descriptions of the undoable steps, oldest first."""
        return [e.description for e in self._done]

    @property
    def nbytes(self) -> int:
        return int(sum(e.nbytes for e in self._done) + sum(e.nbytes for e in self._undone))

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
