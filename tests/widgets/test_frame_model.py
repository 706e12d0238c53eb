"""The Benchmark dock's per-case table model: what a user sees and how a header click sorts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("qtpy")


@pytest.fixture
def view(qtbot):
    from qtpy.QtWidgets import QTableView

    from app.widgets.frame_model import FrameModel

    model = FrameModel()
    table = QTableView()
    table.setModel(model)
    table.setSortingEnabled(True)
    qtbot.addWidget(table)
    return table, model


def _column(model, name):
    col = model.columns.index(name)
    return [model.data(model.index(r, col)) for r in range(model.rowCount())]


def test_shows_the_asked_columns_as_text(view):
    _, model = view
    df = pd.DataFrame({"case": ["b", "a"], "iou": [0.5, np.nan], "click": [1, 2],
                       "hidden": [0, 0]}, index=[10, 11])
    model.set_frame(df, ["case", "iou", "missing", "click"])
    assert model.columns == ["case", "iou", "click"]
    assert model.headerData(1, _horizontal()) == "iou"
    assert {(c, i, k) for c, i, k in zip(_column(model, "case"), _column(model, "iou"),
                                         _column(model, "click"))} == {("b", "0.500", "1"),
                                                                       ("a", "", "2")}


def test_header_click_sorts_numbers_with_empty_last_and_text_stably(view, qtbot):
    from qtpy.QtCore import QPoint, Qt

    table, model = view
    table.show()
    qtbot.waitExposed(table)
    rng = np.random.default_rng(0)
    ious = rng.random(200)
    ious[::17] = np.nan
    df = pd.DataFrame({"method": rng.choice(["b", "a", "c"], 200), "iou": ious})
    model.set_frame(df, ["method", "iou"])
    header = table.horizontalHeader()

    def click(col):
        qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton,
                         pos=QPoint(header.sectionViewportPosition(col) + 5,
                                    header.height() // 2))

    click(1)
    first = [model.value(r, "iou") for r in range(200)]
    click(1)
    second = [model.value(r, "iou") for r in range(200)]
    second_keys = [model.row_key(r) for r in range(200)]
    for shown in (first, second):
        values = np.asarray(shown, float)
        n_nan = int(np.isnan(ious).sum())
        assert np.isnan(values[-n_nan:]).all() and not np.isnan(values[:-n_nan]).any()
        finite = values[:-n_nan]
        assert (np.diff(finite) >= 0).all() or (np.diff(finite) <= 0).all()
    assert first[:5] != second[:5], "a second click reverses the order"
    # text: equal methods keep the order they were shown in (the IoU order of the last sort)
    click(0)
    methods = [model.value(r, "method") for r in range(200)]
    assert methods == sorted(methods) or methods == sorted(methods, reverse=True)
    for m in ("a", "b", "c"):
        within = [model.value(r, "iou") for r in range(200) if methods[r] == m]
        expected = [v for v, k in zip(second, second_keys) if df.loc[k, "method"] == m]
        assert np.array_equal(np.asarray(within, float), np.asarray(expected, float),
                              equal_nan=True), m
    # each row's key is its index in the DataFrame, whatever the order shown
    assert {model.row_key(r) for r in range(200)} == set(df.index)
    assert all(df.loc[model.row_key(r), "method"] == methods[r] for r in range(200))


def test_a_new_frame_keeps_the_users_sort(view):
    from qtpy.QtCore import Qt

    _, model = view
    model.set_frame(pd.DataFrame({"iou": [0.2, 0.9, 0.5]}), ["iou"])
    model.sort(0, Qt.SortOrder.DescendingOrder)
    # the next 2 s refresh of a running benchmark brings more rows
    model.set_frame(pd.DataFrame({"iou": [0.2, 0.9, 0.5, 0.7]}), ["iou"])
    assert [model.value(r, "iou") for r in range(4)] == [0.9, 0.7, 0.5, 0.2]


def _horizontal():
    from qtpy.QtCore import Qt

    return Qt.Orientation.Horizontal
