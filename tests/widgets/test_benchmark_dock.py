"""The Benchmark dock runs a small real dataset (fetal-head ultrasound pairs from the shared
data) with the real LiteMedSAM, shows its tables and figures, opens a case in the viewer, and
leaves a resumable folder when cancelled."""

from __future__ import annotations

import json
import shutil

import pytest
from qtpy.QtCore import QPoint, Qt

pytestmark = pytest.mark.gui


def _pairs(shared_data, tmp_path, stems):
    """An images/ + masks/ dataset of a few real pairs (copied into the test's tmp folder)."""
    src = shared_data / "png_pairs" / "fetal_head_us"
    root = tmp_path / "us"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        for s in stems:
            shutil.copy(src / sub / f"{s}.png", root / sub / f"{s}.png")
    return root


@pytest.fixture
def bench(make_napari_viewer):
    from app.widgets.benchmark_dock import BenchmarkDock

    viewer = make_napari_viewer()
    dock = BenchmarkDock(viewer)
    viewer.window.add_dock_widget(dock, name="Benchmark")
    yield dock
    dock.cancel()


def _plan_controls(dock, modes):
    for i, c in enumerate(dock.mode_checks):
        c.setChecked(i + 1 in modes)


def _only_method(dock, name):

    for i in range(dock.methods_list.count()):
        item = dock.methods_list.item(i)
        item.setCheckState(Qt.CheckState.Checked if item.data(Qt.ItemDataRole.UserRole) == name
                           else Qt.CheckState.Unchecked)


def test_run_to_the_end_shows_table_figures_and_opens_a_case(bench, qtbot, shared_data,
                                                             tmp_path):
    data = _pairs(shared_data, tmp_path, ["006_HC", "033_HC"])
    bench.set_dataset(data)
    qtbot.waitUntil(lambda: bench.suite is not None, timeout=30_000)
    assert "pairs_2d" in bench.data_info.text() and "2 cases" in bench.data_info.text()
    _plan_controls(bench, {3, 5})
    bench.out_edit.setText(str(tmp_path / "run"))
    assert bench.run()
    qtbot.waitUntil(lambda: not bench.running and not bench.loading, timeout=240_000)
    assert bench.status == "done", bench.log_label.text()
    df = bench.results
    assert set(df["protocol"]) == {"mode3", "mode5"} and set(df["case"]) == {"006_HC", "033_HC"}
    # a tight box on a single-component head: LiteMedSAM's real IoU (0.69 on 006_HC)
    assert df["iou"].mean() > 0.6
    assert bench.summary_table.rowCount() == len(bench.summary) >= 2
    view, model = bench.cases_table, bench.cases_model
    assert model.rowCount() == len(df)
    assert "IoU per mode" in bench.figure_tabs
    assert (tmp_path / "run" / "report.html").is_file()
    # the Cases tab, sortable by IoU: a click on the column's header, as the user sorts
    bench.viewer.window.show()
    bench.tabs.setCurrentWidget(view)
    qtbot.waitUntil(view.isVisible, timeout=5_000)
    col = model.columns.index("iou")
    header = view.horizontalHeader()
    qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton,
                     pos=QPoint(header.sectionViewportPosition(col) + 5, header.height() // 2))
    shown = [float(model.data(model.index(r, col))) for r in range(len(df))]
    assert shown == sorted(shown) or shown == sorted(shown, reverse=True)
    assert sorted(shown) == sorted(round(v, 3) for v in df["iou"])
    # double-click on the first row → image, truth, prediction and the box as layers
    n_before = len(bench.viewer.layers)
    at = view.visualRect(model.index(0, 0)).center()
    # a double-click is a press and release, then a second press that Qt reports as double
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=at)
    qtbot.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton, pos=at)
    assert str(model.value(0, "case")) in bench.log_label.text()
    names = [layer.name for layer in bench.viewer.layers][n_before:]
    assert any(n.endswith(": image") for n in names)
    assert any(n.endswith(": truth") for n in names)
    assert any(n.endswith(": prediction") for n in names)
    assert any(n.endswith(": boxes") for n in names)


def test_cancel_leaves_a_resumable_folder(bench, qtbot, shared_data, tmp_path):
    stems = ["006_HC", "033_HC", "060_HC", "088_HC"]
    src = shared_data / "png_pairs" / "fetal_head_us" / "images"
    stems = [s for s in stems if (src / f"{s}.png").is_file()] or sorted(
        p.stem for p in src.glob("*.png"))[:4]
    data = _pairs(shared_data, tmp_path, stems)
    bench.set_dataset(data)
    qtbot.waitUntil(lambda: bench.suite is not None, timeout=30_000)
    _plan_controls(bench, {5})
    _only_method(bench, "litemedsam")  # one row per case
    out = tmp_path / "run"
    bench.out_edit.setText(str(out))
    assert bench.run()
    qtbot.waitUntil(lambda: (out / "results.csv").is_file() and
                    len((out / "results.csv").read_text().splitlines()) >= 2, timeout=120_000)
    bench.cancel()
    qtbot.waitUntil(lambda: not bench.running and not bench.loading, timeout=120_000)
    assert bench.status == "cancelled"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    done_before = (out / "results.csv").read_text().splitlines()
    assert 2 <= len(done_before) < 1 + len(stems)
    assert bench.resume_button.isEnabled()
    # reopened later, as a user does with Open run…, it still offers Resume
    assert bench.open_run(out)
    qtbot.waitUntil(lambda: not bench.loading, timeout=60_000)
    assert bench.status == "interrupted" and bench.resume_button.isEnabled()
    assert bench.resume()
    qtbot.waitUntil(lambda: not bench.running and not bench.loading, timeout=240_000)
    assert bench.status == "done"
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[: len(done_before)] == done_before  # resume changes nothing that was done
    assert len(lines) == 1 + len(stems)
    assert set(bench.results["case"]) == set(stems)


def test_default_plan_output_and_rows_a_method_cannot_answer(bench, qtbot, shared_data,
                                                             tmp_path, monkeypatch):
    """The default output used to sit beside the (read-only) dataset, modes were bare
    numbers, and a box model's point rows showed as IoU 0.000 failures."""
    import platformdirs
    from qtpy.QtCore import Qt

    monkeypatch.setattr(platformdirs, "user_documents_dir", lambda: str(tmp_path / "Documents"))
    data = _pairs(shared_data, tmp_path, ["307_HC"])
    bench.set_dataset(data)
    qtbot.waitUntil(lambda: bench.suite is not None, timeout=30_000)
    out = bench.out_edit.text()
    assert out.startswith(str(tmp_path / "Documents" / "SAMScope runs" / "us-"))
    assert [c.text() for c in bench.mode_checks][0] == "1: 1 point, largest part"
    checked = {bench.methods_list.item(i).data(Qt.ItemDataRole.UserRole)
               for i in range(bench.methods_list.count())
               if bench.methods_list.item(i).checkState() == Qt.CheckState.Checked}
    assert checked == {"litemedsam", "litemedsam_points"}  # every default row means something
    # a run folder inside the dataset is refused with the reason
    bench.out_edit.setText(str(data / "run"))
    assert not bench.run()
    assert "inside the dataset" in bench.log_label.text()
    # the box model alone on a point mode: its row says so instead of 0.000
    _only_method(bench, "litemedsam")
    _plan_controls(bench, {1, 3})
    bench.out_edit.setText(out)
    assert bench.run()
    qtbot.waitUntil(lambda: not bench.running and not bench.loading, timeout=240_000)
    assert bench.status == "done", bench.log_label.text()
    table = bench.summary_table
    header = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    assert header[:3] == ["method", "protocol", "iou_mean"]
    rows = {table.item(r, 1).text(): table.item(r, 2).text() for r in range(table.rowCount())}
    assert rows["mode1"].startswith("n/a")
    assert float(rows["mode3"]) > 0.85  # a real box IoU on 307_HC (measured 0.949)


def test_plan_controls_for_everything_mode_cosmos_and_the_randomness_test(bench, qtbot,
                                                                         shared_data, tmp_path):
    data = _pairs(shared_data, tmp_path, ["006_HC"])
    bench.set_dataset(data)
    qtbot.waitUntil(lambda: bench.suite is not None, timeout=30_000)
    bench.out_edit.setText(str(tmp_path / "run"))
    _plan_controls(bench, {1, 3})
    # nothing new chosen: the plan is the paper's as before
    plan = bench.plan()
    assert tuple(plan.grids) == () and tuple(plan.protocols) == ()
    assert plan.jitter == 0 and plan.repeats == 1 and plan.clicks is None
    bench.grid_checks[16].setChecked(True)
    bench.grid_checks[64].setChecked(True)
    bench.cosmos_checks["centroid"].setChecked(True)
    bench.cosmos_checks["posneg"].setChecked(True)
    bench.cosmos_n_spin.setValue(3)
    bench.jitter_spin.setValue(0.1)
    bench.repeats_spin.setValue(5)
    bench.protocol_combo.setCurrentIndex(bench.protocol_combo.findText("paper"))
    plan = bench.plan()
    assert tuple(plan.grids) == (16, 64)
    assert tuple(plan.protocols) == ("paper", "cosmos-centroid", "cosmos-3pos3neg")
    assert plan.jitter == pytest.approx(0.1) and plan.repeats == 5 and plan.clicks == 5
    # the plan is one the runner accepts: its options name the new fields
    opts = plan.options()
    assert opts["grids"] == [16, 64] and opts["repeats"] == 5


def test_figure_tabs_for_iterative_ambiguity_everything_and_difficulty(bench, qtbot, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "core" / "benchmark" / "analysis_run.py"
    spec = importlib.util.spec_from_file_location("samscope_tests_analysis_run", path)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    if not run.available():
        pytest.skip("shared/data/png_pairs/fetal_head_us is missing")
    out = run.build_run(tmp_path / "run")
    assert bench.open_run(out)
    qtbot.waitUntil(lambda: not bench.loading, timeout=60_000)
    # a complete run reads as finished: nothing to resume, the progress bar full
    assert bench.status == "done" and not bench.resume_button.isEnabled()
    assert bench.progress.value() == bench.progress.maximum()
    for name in ("Clicks (Fig. 6)", "Ambiguity (Fig. 7)", "Everything (Fig. 9)", "Difficulty"):
        assert name in bench.figure_tabs, (name, list(bench.figure_tabs))
    fig9 = bench.figure_tabs["Everything (Fig. 9)"].figure
    assert "everything mode" in fig9.get_suptitle()
