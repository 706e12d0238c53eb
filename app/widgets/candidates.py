"""Small previews of a prediction's candidate masks, with predicted and (optionally) true quality.

:class:`CandidatesWidget` shows up to three tiles side by side. Each tile is a crop of the image
around the candidates with that candidate's mask overlaid, its predicted IoU and, when a ground
truth mask is given, its IoU and Dice against it. Clicking a tile (or keys 1/2/3, bound by the
dock) selects it; the dock accepts the selected one.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QFrame, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

__all__ = ["CandidatesWidget", "render_preview"]

_COLOURS = np.array([[255, 200, 0], [0, 200, 255], [255, 80, 200]], np.float32)


def _crop_box(masks: np.ndarray, shape: tuple[int, int], extra: float = 0.35) -> tuple[slice, slice]:
    union = masks.any(axis=0)
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    h, w = shape
    if rows.size == 0:
        return slice(0, h), slice(0, w)
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(r1 - r0, c1 - c0)
    side = int(side * (1 + 2 * extra)) + 8
    rc, cc = (r0 + r1) // 2, (c0 + c1) // 2
    r0, c0 = max(rc - side // 2, 0), max(cc - side // 2, 0)
    return slice(r0, min(r0 + side, h)), slice(c0, min(c0 + side, w))


def render_preview(image_unit: np.ndarray, mask: np.ndarray, crop: tuple[slice, slice],
                   colour=(255, 200, 0), size_px: int = 104) -> np.ndarray:
    """An RGB uint8 thumbnail (size_px, size_px, 3) of ``image_unit`` with ``mask`` overlaid.

    Parameters
    ----------
    image_unit : ndarray of float, shape (H, W) or (H, W, 3), values in [0, 1]
    mask : ndarray of bool, shape (H, W)
    crop : (slice, slice)
        Region of the image to show.
    """
    img = image_unit[crop]
    m = mask[crop]
    h, w = m.shape
    # nearest-neighbour resample onto a square canvas, keeping the aspect ratio
    scale = size_px / max(h, w, 1)
    oh, ow = max(int(h * scale), 1), max(int(w * scale), 1)
    ri = np.minimum((np.arange(oh) / scale).astype(int), h - 1)
    ci = np.minimum((np.arange(ow) / scale).astype(int), w - 1)
    img = img[ri][:, ci]
    m = m[ri][:, ci]
    rgb = img[..., None].repeat(3, axis=2) if img.ndim == 2 else img[..., :3]
    rgb = rgb.astype(np.float32) * 255.0
    col = np.asarray(colour, np.float32)
    rgb[m] = 0.55 * rgb[m] + 0.45 * col
    # contour: mask pixels with a background 4-neighbour
    edge = m.copy()
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    edge &= ~inner
    rgb[edge] = col
    out = np.zeros((size_px, size_px, 3), np.uint8)
    oy, ox = (size_px - oh) // 2, (size_px - ow) // 2
    out[oy : oy + oh, ox : ox + ow] = np.clip(rgb, 0, 255).astype(np.uint8)
    return out


class _Tile(QFrame):
    clicked = Signal(int)

    def __init__(self, index: int, parent=None):
        super().__init__(parent)
        self.index = index
        self.setFrameShape(QFrame.Shape.Box)
        self.setLineWidth(2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(3, 3, 3, 3)
        lay.setSpacing(1)
        self.setMinimumHeight(170)
        self.picture = QLabel()
        self.picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.picture.setMinimumSize(106, 106)
        self.caption = QLabel()
        self.caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.truth = QLabel()
        self.truth.setAlignment(Qt.AlignmentFlag.AlignCenter)
        for label in (self.caption, self.truth):
            # the figures wrap inside the tile instead of widening it past the dock
            label.setWordWrap(True)
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        for w in (self.picture, self.caption, self.truth):
            lay.addWidget(w)
        self.setToolTip(f"Candidate {index + 1}: click or press {index + 1} to choose it")
        self._pixels = None  # keep the buffer alive while the QImage uses it

    def mousePressEvent(self, event):  # noqa: N802 - Qt override
        self.clicked.emit(self.index)
        super().mousePressEvent(event)

    def set_selected(self, selected: bool) -> None:
        self.setStyleSheet(
            "QFrame { border: 3px solid #ffc800; border-radius: 4px; }" if selected
            else "QFrame { border: 1px solid #555; border-radius: 4px; }"
        )
        for w in (self.picture, self.caption, self.truth):
            w.setStyleSheet("border: none;")

    def show_rgb(self, rgb: np.ndarray) -> None:
        self._pixels = np.ascontiguousarray(rgb)
        h, w, _ = self._pixels.shape
        qimg = QImage(self._pixels.data, w, h, 3 * w, QImage.Format.Format_RGB888)
        self.picture.setPixmap(QPixmap.fromImage(qimg))


class CandidatesWidget(QWidget):
    """Three candidate previews; emits ``selected(index)`` when the user picks one.

    Call :meth:`show_candidates` with the image slice (in [0, 1]), the candidate masks and their
    predicted IoUs; :meth:`set_scores` with their (IoU, Dice) against the ground truth, as the
    controller computes them (:meth:`AnnotationController.truth_scores`), or None.
    """

    selected = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.tiles = [_Tile(i) for i in range(3)]
        for t in self.tiles:
            t.clicked.connect(self.select)
            row.addWidget(t)
        outer.addLayout(row)
        self.note = QLabel()
        self.note.setWordWrap(True)
        outer.addWidget(self.note)
        self.masks: np.ndarray | None = None
        self.scores: np.ndarray | None = None
        self.scores_vs_truth: list[tuple[float, float]] | None = None
        self.current = -1
        self._image = None
        self.clear("Draw a box (or click) on the object to see candidates here.")

    # --- state -----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return 0 if self.masks is None else len(self.masks)

    def truth_scores(self) -> list[tuple[float, float]]:
        """``(IoU, Dice)`` of each shown candidate against the ground truth ([] if none)."""
        return list(self.scores_vs_truth or [])

    def clear(self, note: str = "") -> None:
        self.masks = self.scores = self.scores_vs_truth = None
        self.current = -1
        for t in self.tiles:
            t.picture.clear()
            t.picture.setText("—")
            t.caption.setText("")
            t.truth.setText("")
            t.set_selected(False)
            t.setVisible(True)
        self.note.setText(note)

    def show_candidates(self, image_unit: np.ndarray, masks: np.ndarray, scores: np.ndarray,
                        selected: int = 0, note: str = "") -> None:
        """Show candidate ``masks`` (bool, (K, H, W)) with predicted IoUs ``scores`` (K,)."""
        self._image = image_unit
        self.scores_vs_truth = None  # the view's owner sets the new masks' scores
        self.masks = np.asarray(masks, bool)
        self.scores = np.asarray(scores, float)
        crop = _crop_box(self.masks, self.masks.shape[1:])
        for i, tile in enumerate(self.tiles):
            tile.setVisible(i < len(self.masks))
            if i >= len(self.masks):
                continue
            tile.show_rgb(render_preview(image_unit, self.masks[i], crop, tuple(_COLOURS[i])))
            tile.caption.setText(f"<b>{i + 1}</b> · predicted IoU {self.scores[i]:.2f}")
            tile.caption.setToolTip("The model's own estimate of this mask's IoU")
        self.note.setText(note)
        self._update_truth()
        self.select(selected)

    def set_scores(self, scores: list[tuple[float, float]] | None) -> None:
        """(IoU, Dice) against the ground truth for each shown candidate, or None to hide."""
        self.scores_vs_truth = None if scores is None else [tuple(v) for v in scores]
        self._update_truth()

    def select(self, index: int) -> None:
        if self.masks is None or not 0 <= index < len(self.masks):
            return
        self.current = index
        for i, t in enumerate(self.tiles):
            t.set_selected(i == index)
        self.selected.emit(index)

    def _update_truth(self) -> None:
        scores = self.truth_scores()
        for i, t in enumerate(self.tiles):
            if i < len(scores):
                iou, dice = scores[i]
                t.truth.setText(f"vs GT: IoU {iou:.3f}<br>Dice {dice:.3f}")
            else:
                t.truth.setText("")
