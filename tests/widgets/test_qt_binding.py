"""The Qt binding the application runs on must not lose references to None.

PySide6 6.12.0 drops one reference to None on every ``QTableWidget.setItem`` and
``QListWidget.addItem``; the objects panel, the Benchmark dock's summary and the method list
make such items on every refresh, so after some thousands the interpreter aborts with
"Fatal Python error: none_dealloc: deallocating None" and the window is gone. This checks the
installed binding the way the docks use it (pyproject.toml keeps the 6.12 series out).
"""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("qtpy")


def test_table_and_list_items_keep_none_alive(qtbot):
    from qtpy.QtWidgets import QListWidget, QListWidgetItem, QTableWidget, QTableWidgetItem

    table = QTableWidget(50, 10)
    listing = QListWidget()
    qtbot.addWidget(table)
    qtbot.addWidget(listing)
    before = sys.getrefcount(None)
    for i in range(2000):
        table.setItem(i // 10 % 50, i % 10, QTableWidgetItem(f"{i}"))
        listing.addItem(QListWidgetItem(f"{i}"))
    lost = before - sys.getrefcount(None)
    # a leaking binding loses one per call (4000 here); others hold a few more, not fewer
    assert lost < 100, (f"the Qt binding lost {lost} references to None in 4000 item calls: "
                        "it would abort the interpreter after a few thousand table refreshes")
