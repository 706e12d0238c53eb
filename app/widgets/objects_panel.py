"""The Objects panel: every accepted object with its colour, name, size and ground-truth IoU.

A view of :meth:`AnnotationController.objects`: ticking hides or shows an object, double-click
names it, the pick list names it with a SNOMED CT term (:mod:`app.core.terminology`), and the
chosen row is the object Refine, Delete and Propagate act on (``select_object``).
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ObjectsPanel"]


class ObjectsPanel(QWidget):
    """The objects table and the naming list, kept in step with ``controller``."""

    def __init__(self, controller, parent=None):
        super().__init__(parent)
        self.controller = controller
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["", "#", "name", "size", "vs GT"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                           | QAbstractItemView.EditTrigger.EditKeyPressed
                                           | QAbstractItemView.EditTrigger.SelectedClicked)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(90)
        self.table.setToolTip("Tick to show or hide an object; double-click a name to "
                                      "type one; pick a structure below to name it with its "
                                      "SNOMED CT code. The chosen row is what Refine, Delete "
                                      "and Propagate act on.")
        self.table.itemSelectionChanged.connect(self._on_selected)
        self.table.itemChanged.connect(self._on_item_changed)
        lay.addWidget(self.table)
        self.name_combo = QComboBox()
        self.name_combo.setEditable(False)
        self.name_combo.addItem("Name the chosen object…", "")
        from app.core.terminology import TERMS

        for term in TERMS():
            self.name_combo.addItem(f"{term.name}  (SNOMED CT {term.code})", term.name)
        self.name_combo.activated.connect(self._on_term_picked)
        lay.addWidget(self.name_combo)
        self._filling = False
        controller.events.objects_changed.connect(self.fill)

    def fill(self) -> None:
        from qtpy.QtGui import QColor

        c = self.controller
        objs = c.objects()
        self._filling = True
        try:
            table = self.table
            table.setRowCount(len(objs))
            for r, o in enumerate(objs):
                swatch = QTableWidgetItem()
                swatch.setBackground(QColor(*o.colour))
                swatch.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled
                                | Qt.ItemFlag.ItemIsSelectable)
                swatch.setCheckState(Qt.CheckState.Checked if o.visible
                                     else Qt.CheckState.Unchecked)
                swatch.setData(Qt.ItemDataRole.UserRole, o.label)
                swatch.setToolTip("Shown" if o.visible else "Hidden")
                num = QTableWidgetItem(str(o.label))
                num.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                name = QTableWidgetItem(o.name)
                name.setToolTip(f"SNOMED CT {o.snomed}" if o.snomed else "Double-click to name")
                decimals = 2 if o.size_unit == "mL" else 0
                size = QTableWidgetItem(f"{o.size:.{decimals}f} {o.size_unit}")
                size.setToolTip(f"{o.n_voxels} voxels")
                size.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                gt = QTableWidgetItem("" if o.truth_iou is None else f"IoU {o.truth_iou:.3f}")
                gt.setToolTip("IoU with the ground-truth label this object overlaps most, "
                              "on the slices the object has")
                gt.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                for col, item in enumerate((swatch, num, name, size, gt)):
                    table.setItem(r, col, item)
                if o.label == c.selected_label:
                    table.selectRow(r)
        finally:
            self._filling = False

    def _row_label(self, row: int) -> int:
        item = self.table.item(row, 0)
        return int(item.data(Qt.ItemDataRole.UserRole)) if item is not None else 0

    def _on_selected(self) -> None:
        if self._filling:
            return
        rows = {i.row() for i in self.table.selectedItems()}
        if rows:
            self.controller.select_object(self._row_label(min(rows)))

    def _on_item_changed(self, item) -> None:
        if self._filling:
            return
        label = self._row_label(item.row())
        if item.column() == 0:
            self.controller.set_visible(label, item.checkState() == Qt.CheckState.Checked)
        elif item.column() == 2:
            self.controller.set_name(label, item.text())

    def _on_term_picked(self, index: int) -> None:
        name = self.name_combo.itemData(index)
        label = self.controller.selected_label
        if name and label in self.controller.object_labels():
            self.controller.set_name(label, name)
        self.name_combo.setCurrentIndex(0)

