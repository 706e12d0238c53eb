"""Dataset tables validated where they enter (issue 14): spacing, labels, degenerate images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from app.core.benchmark.datasets import open_dataset
from app.core.benchmark.report import write_report
from app.core.benchmark.results import load_results
from app.core.benchmark.runner import BenchmarkPlan, run_benchmark
from app.core.errors import DatasetError


def _pairs(root, n=2, shape=(40, 50), values=(255,)):
    rng = np.random.default_rng(0)
    for i in range(n):
        m = np.zeros(shape, np.uint8)
        for k, v in enumerate(values):
            m[5 + 8 * k : 12 + 8 * k, 5:30] = v
        img = (np.where(m > 0, 170, 60) + rng.normal(0, 5, shape)).clip(0, 255).astype(np.uint8)
        for sub, arr in (("images", img), ("masks", m)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / sub / f"c{i}.png")
    return root


@pytest.mark.parametrize("bad", ["0", "nan", "abc", "-0.5", "inf"])
def test_bad_spacing_in_cases_csv_is_refused_with_file_row_and_value(tmp_path, bad):
    root = _pairs(tmp_path / "d")
    (root / "cases.csv").write_text(f"image,pixel_size_mm\nimages/c0.png,0.1\n"
                                    f"images/c1.png,{bad}\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        open_dataset(root)
    msg = str(err.value)
    assert "cases.csv" in msg and "row 3" in msg and repr(bad) in msg and "c1.png" in msg


def test_spacing_of_real_cases_csv_and_empty_values(tmp_path, shared_data):
    ds = open_dataset(shared_data / "png_pairs" / "fetal_head_us")
    assert all(c.spacing_mm is not None and c.spacing_mm[0] > 0 for c in ds.cases)
    root = _pairs(tmp_path / "d")
    (root / "cases.csv").write_text("image,pixel_size_mm\nimages/c0.png,0.2\nimages/c1.png,\n",
                                    encoding="utf-8")
    spacing = {c.case: c.spacing_mm for c in open_dataset(root).cases}
    assert spacing == {"c0": (0.2, 0.2), "c1": None}  # empty: unknown, not an error


def test_zero_spacing_no_longer_gives_perfect_surface_metrics(tmp_path):
    root = _pairs(tmp_path / "d")
    (root / "cases.csv").write_text("image,pixel_size_mm\nimages/c0.png,0\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="pixel_size_mm '0'"):
        run_benchmark(BenchmarkPlan(data=root, out_dir=tmp_path / "o",
                                    methods=("region_growing",), modes=(5,)))
    assert not (tmp_path / "o" / "results.csv").exists()


@pytest.mark.parametrize(("labels", "needle"), [
    ({"0": "background", "liver": "1"}, "'liver'"),
    ({"0": "background", "1.5": "x"}, "'1.5'"),
    ([0, 1], "'labels' must be an object"),
])
def test_bad_dataset_json_labels_name_the_file(tmp_path, labels, needle):
    root = tmp_path / "msd"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "training": []}))
    with pytest.raises(DatasetError) as err:
        open_dataset(root)
    assert "dataset.json" in str(err.value) and needle in str(err.value)
    assert "invalid literal" not in str(err.value)


def test_invalid_dataset_json_names_the_file(tmp_path):
    from app.core.benchmark.datasets import discover

    root = tmp_path / "msd"
    root.mkdir()
    (root / "dataset.json").write_text('{"labels": {"0": "bg"}, "training": [', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"dataset.json: not valid JSON"):
        discover(root)


def test_mask_values_outside_the_usual_are_reported(tmp_path):
    root = _pairs(tmp_path / "d", n=1, values=(7, 255))
    ds = open_dataset(root)
    reasons = [s.reason for s in ds.skipped]
    assert any("[7, 255]" in r for r in reasons), reasons


def test_declared_labels_missing_a_mask_value_are_reported(tmp_path):
    from app.core.image import Volume
    from app.core.io import write_image

    root = tmp_path / "msd"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    img = np.full((1, 30, 30), 50, np.int16)
    img[0, 5:20, 5:20] = 200
    lab = np.zeros((1, 30, 30), np.uint8)
    lab[0, 5:20, 5:20] = 1
    lab[0, 25:28, 25:28] = 7  # not declared
    write_image(root / "imagesTr" / "a.nii.gz", Volume(pixels=img, spacing_mm=(1.0, 1.0, 1.0)))
    write_image(root / "labelsTr" / "a.nii.gz", Volume(pixels=lab, spacing_mm=(1.0, 1.0, 1.0)))
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "organ"},
        "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]}))
    out = tmp_path / "o"
    run_benchmark(BenchmarkPlan(data=root, out_dir=out, methods=("region_growing",), modes=(5,)))
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["reason"].str.contains(r"label values \[7\]").any()
    assert set(load_results(out)["task"]) == {"organ"}


def test_a_1x1_image_is_skipped_with_a_reason_and_the_report_is_written(tmp_path):
    root = _pairs(tmp_path / "d", n=2)
    Image.fromarray(np.array([[200]], np.uint8)).save(root / "images" / "tiny.png")
    Image.fromarray(np.array([[255]], np.uint8)).save(root / "masks" / "tiny.png")
    out = tmp_path / "o"
    run_benchmark(BenchmarkPlan(data=root, out_dir=out, methods=("region_growing",),
                                modes=(1, 5), protocols=("paper",), clicks=2))
    assert "tiny" not in set(load_results(out)["case"])
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["reason"].str.contains("1x1").any()
    assert write_report(out).is_file()
    # and again on resume
    run_benchmark(BenchmarkPlan(data=root, out_dir=out, methods=("region_growing",),
                                modes=(1, 5), protocols=("paper",), clicks=2, resume=True))
    assert write_report(out).is_file()
