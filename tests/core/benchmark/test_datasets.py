"""Dataset layout detection on the shared data and on small layouts built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.core.benchmark.datasets import (
    Dataset,
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


def test_packed_cases_give_the_refs_and_the_natural_order(tmp_path):
    """Discovery's packed case list (issue 12: no object per image) makes exactly the refs
    that were put in, and orders them as natural_key does, ties in input order."""
    import random

    from app.core.benchmark.datasets import CaseList, CaseRef, iter_cases, natural_key

    rng = random.Random(4)
    alphabet = "ab_-.Z09"
    names = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
             for _ in range(3000)] + ["a1", "a01", "a-", "a", "a1b", "a1b2", "case10", "case2",
                                      "x007y", "x7y", "ü1", "ü"]
    refs = [CaseRef("ds", n, tmp_path / "imgs" / f"{n}.png",
                    None if i % 3 == 0 else tmp_path / f"m{i % 2}" / f"{n}_mask.png",
                    (0.5, 0.5) if i % 7 == 0 else None) for i, n in enumerate(names)]
    packed = CaseList("ds", iter(refs))
    assert len(packed) == len(refs) and list(packed) == refs
    assert packed[5] == refs[5] and packed[-1] == refs[-1] and packed[2:6] == refs[2:6]
    assert packed.nbytes() < 60 * len(refs)  # names and offsets only
    expect = sorted(range(len(names)), key=lambda i: natural_key(names[i]))
    assert list(packed.natural_order()) == expect
    ds = Dataset("ds", tmp_path, "pairs_2d", packed)
    assert [r.case for r in iter_cases(ds, 50)] == [names[i] for i in expect[:50]]
    renamed = packed.renamed("other")
    assert renamed[7] == CaseRef("other", *[getattr(refs[7], f) for f in
                                             ("case", "image", "label", "spacing_mm")])


def test_a_second_image_for_one_mask_is_skipped_not_run_twice(tmp_path):
    import cv2

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = np.full((16, 16), 80, np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 4:10] = 255
    for ext in (".png", ".bmp"):
        cv2.imwrite(str(tmp_path / "images" / f"a{ext}"), img)
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), mask)
    ds = open_dataset(tmp_path)
    assert [c.image.name for c in ds.cases] == ["a.bmp"]
    assert [(Path(s.path).name, s.reason) for s in ds.skipped] == [
        ("a.png", "a second image for file stem 'a'")]
