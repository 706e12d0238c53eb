"""A dock's contents in a scroll area, so that a wide form scrolls instead of widening the
right-hand dock area (which the tabbed docks share with the canvas)."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

__all__ = ["scrolling_layout"]


def scrolling_layout(widget: QWidget, vertical_only: bool = False) -> QVBoxLayout:
    """Give ``widget`` one scroll area and return the layout to fill inside it."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    if vertical_only:
        area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    content = QWidget(area)
    area.setWidget(content)
    outer.addWidget(area)
    widget.setMinimumWidth(0)
    return QVBoxLayout(content)
