"""Dataset layout detection on the shared data and on small layouts built here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from app.core.benchmark.datasets import (
    detect_layout,
    discover,
    iter_images,
    load_case,
    open_dataset,
)
from app.core.errors import DatasetError


def test_msd_on_shared_data(shared_data):
    ds = open_dataset(shared_data / "msd_like")
    assert ds.layout == "msd" and len(ds.cases) == 3
    assert [(t.label, t.name) for t in ds.tasks] == [(1, "tumour")]
    brain2 = next(c for c in ds.cases if c.case == "brain2")
    vol, labels = load_case(brain2)
    samples = list(iter_images(brain2, [1]))
    # README: brain2 has its label on 3 slices, 453 voxels
    assert len(samples) == 3
    assert sum(int(s.masks[1].sum()) for s in samples) == 453 == int((labels == 1).sum())
    assert all(s.case_id.startswith("brain2:z") for s in samples)
    assert samples[0].spacing_mm == pytest.approx((0.78125, 0.78125))


def test_slice_subsampling_is_reproducible(shared_data):
    ds = open_dataset(shared_data / "msd_like")
    brain1 = next(c for c in ds.cases if c.case == "brain1")
    loaded = load_case(brain1)
    a = [s.slice_index for s in iter_images(brain1, [1], max_slices=3, seed=1, loaded=loaded)]
    b = [s.slice_index for s in iter_images(brain1, [1], max_slices=3, seed=1, loaded=loaded)]
    every = [s.slice_index for s in iter_images(brain1, [1], loaded=loaded)]
    assert a == b and len(a) == 3 and set(a) <= set(every) and len(every) == 7


def test_png_pairs_with_spacing_from_cases_csv(shared_data):
    ds = open_dataset(shared_data / "png_pairs" / "fetal_head_us")
    assert ds.layout == "pairs_2d" and len(ds.cases) == 30 and not ds.skipped
    assert [t.name for t in ds.tasks] == ["fetal_head_us"]
    case = next(c for c in ds.cases if c.case == "033_HC")
    assert case.spacing_mm == pytest.approx((0.09716505, 0.09716505))
    (sample,) = list(iter_images(case, [1]))
    assert sample.masks[1].sum() == 48868  # cases.csv mask_pixels
    cxr = open_dataset(shared_data / "png_pairs" / "cxr_lungs")
    assert len(cxr.cases) == 30 and cxr.cases[0].spacing_mm is None


def test_suite_of_shared_data(shared_data):
    suite = discover(shared_data)
    names = {d.name: d.layout for d in suite.datasets}
    assert names == {"msd_like": "msd", "cxr_lungs": "pairs_2d", "fetal_head_us": "pairs_2d"}


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_pairs_suffixes_mismatches_and_integer_labels(tmp_path):
    root = tmp_path / "pairs"
    img = np.zeros((16, 20), np.uint8)
    m = np.zeros((16, 20), np.uint8)
    m[2:6, 3:9] = 1
    m[10:13, 10:15] = 2
    _png(root / "imgs" / "a.png", img)
    _png(root / "labels" / "a_seg.png", m)
    _png(root / "imgs" / "b.png", img)
    _png(root / "labels" / "b_mask.png", m)
    _png(root / "imgs" / "orphan.png", img)  # no mask
    _png(root / "labels" / "lonely_mask.png", m)  # no image
    ds = open_dataset(root)
    assert detect_layout(root) == "pairs_2d"
    assert sorted(c.case for c in ds.cases) == ["a", "b"]
    assert {s.reason for s in ds.skipped} == {
        "no mask with the same file stem", "no image with the same file stem"}
    assert [t.label for t in ds.tasks] == [1, 2]
    (s,) = list(iter_images(ds.cases[0], [1, 2]))
    assert s.masks[1].sum() == 24 and s.masks[2].sum() == 15 and s.spacing_mm is None


def test_nnunet_v2_raw(tmp_path):
    nib = pytest.importorskip("nibabel")
    root = tmp_path / "Dataset001_Toy"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    for case in ("toy_001", "toy_002"):
        img = np.random.default_rng(0).integers(-100, 200, (12, 10, 4)).astype(np.int16)
        lab = np.zeros((12, 10, 4), np.uint8)
        lab[2:8, 3:7, 1] = 1
        lab[4:6, 4:6, 2] = 2
        nib.save(nib.Nifti1Image(img, affine), root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), root / "labelsTr" / f"{case}.nii.gz")
    nib.save(nib.Nifti1Image(lab, affine), root / "labelsTr" / "toy_003.nii.gz")  # no image
    ds = open_dataset(root)
    assert ds.layout == "nnunet_v2" and [c.case for c in ds.cases] == ["toy_001", "toy_002"]
    assert [(t.label, t.name) for t in ds.tasks] == [(1, "liver"), (2, "tumour")]
    assert len(ds.skipped) == 1 and "toy_003" in ds.skipped[0].path
    samples = list(iter_images(ds.cases[0], [1, 2]))
    assert [sorted(s.masks) for s in samples] == [[1], [2]]
    assert samples[0].masks[1].sum() == 24 and samples[1].masks[2].sum() == 4
    assert samples[0].spacing_mm is not None


def test_medsam_npz(tmp_path):
    root = tmp_path / "npz"
    root.mkdir()
    imgs = np.zeros((3, 8, 9), np.int16)
    gts = np.zeros((3, 8, 9), np.uint8)
    gts[1, 2:5, 2:6] = 3
    np.savez_compressed(root / "CT_case1.npz", imgs=imgs, gts=gts, spacing=np.array([2.5, 0.8, 0.8]))
    np.savez_compressed(root / "broken.npz", something=np.zeros(3))
    ds = open_dataset(root)
    assert ds.layout == "medsam_npz" and [c.case for c in ds.cases] == ["CT_case1"]
    assert [t.label for t in ds.tasks] == [3] and len(ds.skipped) == 1
    (s,) = list(iter_images(ds.cases[0], [3]))
    assert s.slice_index == 1 and s.masks[3].sum() == 12
    assert s.spacing_mm == pytest.approx((0.8, 0.8))
    # a single .npz file is a dataset too
    assert open_dataset(root / "CT_case1.npz").layout == "medsam_npz"


def test_not_a_dataset(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DatasetError, match="no dataset"):
        discover(tmp_path)
    with pytest.raises(DatasetError, match="not a dataset"):
        open_dataset(tmp_path)
