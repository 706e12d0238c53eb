"""``samscope finetune``: input errors are one line and exit 2; a short real run writes a model."""

from __future__ import annotations

import json
import shutil

import pytest

from app.cli import main


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("samscope finetune: error:")
    return err[0]


def test_missing_dataset_is_one_line(capsys, tmp_path):
    assert main(["finetune", str(tmp_path / "nope"), "--out", str(tmp_path / "m")]) == 2
    assert "does not exist" in _one_line_error(capsys)


def test_folder_without_a_dataset_is_one_line(capsys, tmp_path):
    (tmp_path / "stuff").mkdir()
    assert main(["finetune", str(tmp_path / "stuff"), "--out", str(tmp_path / "m"),
                 "--minutes", "1"]) == 2
    assert "holds no dataset" in _one_line_error(capsys)


def test_existing_output_is_not_overwritten(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["finetune", str(tmp_path / "data"), "--out", str(out)]) == 2
    assert "already exists" in _one_line_error(capsys)
    assert main(["finetune", str(tmp_path / "data"), "--out", str(out), "--overwrite"]) == 2
    assert "not a fine-tuned model folder" in _one_line_error(capsys)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args, message", [
    (["--minutes", "0"], "minutes must be positive"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--base", "no_such_model"], "unknown model"),
    (["--steps", "0"], "steps must be at least 1"),
])
def test_bad_options_are_one_line(capsys, tmp_path, shared_data, args, message):
    data = shared_data / "png_pairs" / "fetal_head_us"
    assert main(["finetune", str(data), "--out", str(tmp_path / "m"), *args]) == 2
    assert message in _one_line_error(capsys)


def test_short_run_writes_a_loadable_model(capsys, tmp_path, shared_data):
    src = shared_data / "png_pairs" / "fetal_head_us"
    data = tmp_path / "mine"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
        for stem in ("006_HC", "033_HC", "060_HC"):
            shutil.copy(src / sub / f"{stem}.png", data / sub / f"{stem}.png")
    out = tmp_path / "my_model"
    # the budget is an upper bound (three steps end the run well before it); it leaves room
    # for the augmented copies' embeddings and the benchmark's validation on a busy machine
    assert main(["finetune", str(data), "--out", str(out), "--steps", "3", "--minutes", "8",
                 "--val-fraction", "0.34", "--quiet", "--device", "cpu"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["name"] == "my_model" and line["steps"] == 3 and line["base"] == "litemedsam"
    assert line["val_click_iou_before"] is not None and line["val_click_iou_after"] is not None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["n_train_images"] == 2 and manifest["data"]["n_val_images"] == 1

    from app.core.models.registry import load_model

    model = load_model(str(out), device="cpu")  # a model folder loads like a registry name
    assert model.name == "my_model" and model.capabilities.points
