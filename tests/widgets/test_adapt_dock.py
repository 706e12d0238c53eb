"""The Adapt dock: a real (tiny) fine-tuning run from the dock, its tables, save, and errors."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("napari")

from app.widgets.adapt_dock import AdaptDock  # noqa: E402


@pytest.fixture
def dock(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSCOPE_MODELS_DIR", str(tmp_path / "models"))
    viewer = make_napari_viewer()
    d = AdaptDock(viewer)
    viewer.window.add_dock_widget(d, name="Adapt")
    yield d
    if d.running:
        d.cancel()
        qtbot.waitUntil(lambda: not d.running, timeout=60_000)


def test_lists_models_and_defaults_to_litemedsam(dock):
    names = [dock.model_combo.itemData(i) for i in range(dock.model_combo.count())]
    assert "litemedsam" in names
    assert dock.model_combo.currentData() == "litemedsam"


def test_missing_dataset_is_reported_not_raised(dock, tmp_path):
    dock.dataset_edit.setText(str(tmp_path / "nope"))
    dock.start()
    assert not dock.running
    assert "does not exist" in dock.status_label.text()


def test_start_is_offered_only_for_a_labelled_dataset(dock, tmp_path, shared_data):
    """It used to be enabled with no dataset and end in "Error: . holds no dataset" with the
    progress bar at 100 %."""
    assert dock.dataset_edit.text() == "" and not dock.start_button.isEnabled()
    (tmp_path / "empty").mkdir()
    dock.dataset_edit.setText(str(tmp_path / "empty"))  # typed, as a user would
    assert not dock.start_button.isEnabled()
    assert "holds no labelled dataset" in dock.start_button.toolTip()
    dock.dataset_edit.setText(str(shared_data / "png_pairs" / "fetal_head_us"))
    assert dock.start_button.isEnabled()
    dock.dataset_edit.setText(str(shared_data / "png_pairs"))  # its datasets one level down
    assert dock.start_button.isEnabled()


def test_a_short_run_shows_progress_comparison_and_saves(dock, qtbot, tmp_path, shared_data):
    src = shared_data / "png_pairs" / "fetal_head_us"
    data = tmp_path / "mine"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
        for stem in ("088_HC", "115_HC", "142_HC"):
            shutil.copy(src / sub / f"{stem}.png", data / sub / f"{stem}.png")
    dock.dataset_edit.setText(str(data))
    dock.steps_spin.setValue(3)
    dock.minutes_spin.setValue(8.0)  # an upper bound: three steps end the run before it
    dock.val_spin.setValue(0.34)
    dock.name_edit.setText("dock_model")
    dock.start()
    assert dock.running and not dock.start_button.isEnabled()
    qtbot.waitUntil(lambda: not dock.running and (dock.result is not None or dock.error),
                    timeout=480_000)
    assert dock.error is None, dock.error
    assert dock.history_table.rowCount() >= 2  # step 0 and the last step
    tasks = [dock.compare_table.item(r, 0).text() for r in range(dock.compare_table.rowCount())]
    assert tasks == ["mine", "all"]  # tasks are named after the dataset folder
    assert dock.compare_table.item(0, 2).text() and dock.compare_table.item(0, 3).text()
    assert dock.save_button.isEnabled()
    assert dock.start_button.isEnabled()  # ready for another run
    path = dock.save()
    assert path == tmp_path / "models" / "dock_model"
    from app.core.models.finetuned import list_user_models

    assert [m["name"] for m in list_user_models()] == ["dock_model"]
