"""The click model card's recipe-variant table survives run folders that are gone.

A variant's run folder does not outlive the session that trained it; its row, measured when it
was made, is recorded in the shipped manifest. Regenerating the card keeps those rows
(``--variants-from``) and adds the new runs' rows; a variant trained again replaces its row.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "assets" / "models" / "litemedsam_points"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "samscope_tests_train_litemedsam_points", REPO / "scripts" / "train_litemedsam_points.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recorded_rows_are_kept_and_a_retrained_variant_replaces_its_row(script, tmp_path):
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    recorded = manifest["validation"]["variants"]
    assert "L" in [r["name"] for r in recorded]
    again = tmp_path / "L_again"  # a run folder: the shipped model's manifest, trained again
    again.mkdir()
    shutil.copy(SHIPPED / "manifest.json", again / "manifest.json")

    rows = script.card_variants([SHIPPED], [f"L={again}::L trained again"])

    assert rows[:-1] == [r for r in recorded if r["name"] != "L"]  # untouched, in order
    new = rows[-1]
    assert (new["name"], new["what"]) == ("L", "L trained again")
    tr = manifest["training"]
    best = next(h for h in tr["history"] if h["step"] == tr["best_step"])
    assert new["scores"]["mode1_first"] == best["val_point_iou"]
    assert new["steps"] == f"{tr['steps_taken']} ({tr['best_step']})"


def test_a_manifest_without_recorded_rows_is_named(script, tmp_path):
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    del manifest["validation"]["variants"]  # a model whose card was made without variants
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="no recorded variant rows") as err:
        script.card_variants([tmp_path], [])
    assert str(tmp_path) in str(err.value)
