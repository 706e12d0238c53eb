"""A read-only, sortable Qt table model over the columns of a pandas DataFrame.

A ``QTableWidget`` holds one item object per cell, built up front: the Benchmark dock's
per-case table of a 10^5-row run was 10^6 items, rebuilt on the GUI thread every refresh.
This model keeps each column as one numpy array and draws only the rows on screen; sorting is
one ``lexsort``. Numbers sort as numbers with empty (NaN) values last, text as text; ties keep
the order shown (sort by IoU, then by method: methods grouped, each by IoU).
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QModelIndex, Qt

__all__ = ["FrameModel"]

#: the role that returns a row's label in the DataFrame (its index value)
ROW_KEY_ROLE = Qt.ItemDataRole.UserRole


class FrameModel(QAbstractTableModel):
    """``set_frame(df, columns)`` shows those of ``columns`` that ``df`` has, in that order."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._columns: list[str] = []
        self._arrays: list[np.ndarray] = []
        self._keys = np.zeros(0, dtype=object)
        self._order = np.zeros(0, dtype=np.int64)
        self._sort: tuple[int, Qt.SortOrder] | None = None

    # --- data ----------------------------------------------------------------------------
    def set_frame(self, df, columns) -> None:
        self.beginResetModel()
        self._columns = [c for c in columns if c in df.columns]
        self._arrays = [df[c].to_numpy() for c in self._columns]
        self._keys = df.index.to_numpy()
        self._order = np.arange(len(df), dtype=np.int64)
        self.endResetModel()
        if self._sort is not None and self._sort[0] < len(self._columns):
            self.sort(*self._sort)

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def row_key(self, row: int):
        """The DataFrame index label of the row shown at ``row``."""
        return self._keys[self._order[row]]

    def value(self, row: int, column: str):
        """The value shown at ``row`` in ``column`` (as stored, not as text)."""
        return self._arrays[self._columns.index(column)][self._order[row]]

    # --- QAbstractTableModel ----------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802, B008 - Qt's names
        return 0 if parent.isValid() else len(self._order)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._columns)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        if role == ROW_KEY_ROLE:
            return self.row_key(index.row())
        if role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            return None
        return _text(self._arrays[index.column()][self._order[index.row()]])

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return self._columns[section] if section < len(self._columns) else None
        return str(section + 1)

    def sort(self, column: int, order=Qt.SortOrder.AscendingOrder) -> None:
        if not 0 <= column < len(self._arrays):
            return
        self._sort = (column, order)
        self.layoutAboutToBeChanged.emit()
        key = self._arrays[column]
        descending = order == Qt.SortOrder.DescendingOrder
        if key.dtype.kind in "biuf":
            values = key.astype(float)
            missing = np.isnan(values)
            primary = np.where(missing, 0.0, -values if descending else values)
        else:  # text: the codes of the sorted distinct texts
            text = np.array([_text(v) for v in key], dtype=str)
            missing = np.zeros(len(text), dtype=bool)
            codes = np.unique(text, return_inverse=True)[1].ravel()
            primary = -codes if descending else codes
        # empty last, then by value; equal values keep the order they are shown in, so that
        # sorting by one column and then another groups by the second, ordered by the first
        cur = self._order
        step = np.lexsort((np.arange(len(cur)), primary[cur], missing[cur]))
        self._order = cur[step].astype(np.int64)
        self.layoutChanged.emit()


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float | np.floating):
        return "" if np.isnan(v) else f"{float(v):.3f}"
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)
