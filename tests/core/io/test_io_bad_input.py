"""Bad input gets a specific, readable error; failed writes leave nothing behind."""

from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from app.core.errors import ReadError, SamScopeError, WriteError
from app.core.image import Volume
from app.core.io import read_image, read_labels, write_image, write_labels


@pytest.fixture(scope="module")
def ct(shared_data):
    return read_image(shared_data / "dicom/ct_3slice/ct")


def test_random_bytes_named_dcm(tmp_path):
    p = tmp_path / "noise.dcm"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ReadError, match=r"noise\.dcm: not a DICOM file"):
        read_image(p)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_dicom_in_pixel_data(shared_data, tmp_path, keep):
    data = (shared_data / "dicom/ct_3slice/ct/01.dcm").read_bytes()
    p = tmp_path / "cut.dcm"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(
        ReadError, match=r"cut\.dcm: cannot decode the pixel data.*less than expected"
    ):
        read_image(p)


def test_truncated_dicom_in_header(shared_data, tmp_path):
    data = (shared_data / "dicom/ct_3slice/ct/01.dcm").read_bytes()
    p = tmp_path / "cut.dcm"
    p.write_bytes(data[:1000])
    with pytest.raises(ReadError, match=r"cut\.dcm: DICOM file has no pixel data.*truncated\?"):
        read_image(p)


def test_dicom_without_pixel_data(shared_data, tmp_path):
    ds = pydicom.dcmread(shared_data / "dicom/ct_3slice/ct/01.dcm")
    del ds.PixelData
    p = tmp_path / "header_only.dcm"
    ds.save_as(p)
    with pytest.raises(
        ReadError, match=r"header_only\.dcm: DICOM file has no pixel data \(CT Image"
    ):
        read_image(p)


def test_empty_folder_and_folder_without_images(tmp_path):
    with pytest.raises(ReadError, match="no DICOM images found \\(no files\\)"):
        read_image(tmp_path)
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ReadError, match="1 files, 0 of them DICOM"):
        read_image(tmp_path)


def test_folder_with_only_a_seg(shared_data, tmp_path):
    shutil.copy(shared_data / "dicom/ct_3slice/seg/liver.dcm", tmp_path)
    with pytest.raises(ReadError, match="1 of them DICOM, none an image"):
        read_image(tmp_path)


def test_text_named_nifti(tmp_path):
    p = tmp_path / "scan.nii.gz"
    p.write_text("this is not a volume\n")
    with pytest.raises(ReadError, match=r"scan\.nii\.gz: .*NIfTI"):
        read_image(p)
    with pytest.raises(ReadError, match=r"scan\.nii\.gz"):
        read_labels(p)


def test_truncated_nifti(shared_data, tmp_path):
    data = (shared_data / "msd_like/imagesTr/breast1.nii.gz").read_bytes()
    p = tmp_path / "cut.nii.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError, match=r"cut\.nii\.gz: .*(damaged|truncated)"):
        read_image(p)


def test_nan_nifti(tmp_path):
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 2), np.nan, np.float32), np.eye(4)), p)
    with pytest.raises(ReadError, match=r"nan\.nii\.gz: every voxel is NaN"):
        read_image(p)
    with pytest.raises(ReadError, match="NaN"):
        read_labels(p)


def test_partly_nan_nifti_reads(tmp_path):
    data = np.ones((4, 4, 2), np.float32)
    data[0, 0, 0] = np.nan
    p = tmp_path / "some_nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), p)
    vol = read_image(p)
    assert np.isnan(vol.pixels).sum() == 1
    assert np.isfinite(vol.slice(0).unit_range()).all()


def test_mask_shape_mismatch_nifti(ct, tmp_path):
    p = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 3), np.uint8), np.eye(4)), p)
    with pytest.raises(ReadError, match=r"small\.nii\.gz.*\(3, 10, 10\).*\(3, 512, 512\)"):
        read_labels(p, ct)


def test_missing_paths(tmp_path):
    for call in (read_image, read_labels):
        with pytest.raises(ReadError, match=r"nothing_here\.nii\.gz: no such file"):
            call(tmp_path / "nothing_here.nii.gz")


def test_unknown_extension(tmp_path):
    p = tmp_path / "table.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ReadError, match=r"table\.csv: unrecognised file type"):
        read_image(p)


def _ref(tmp_path) -> tuple[Volume, np.ndarray]:
    vol = Volume(pixels=np.zeros((2, 5, 6), np.int16), spacing_mm=(2.0, 1.0, 1.0))
    labels = np.zeros((2, 5, 6), np.uint8)
    labels[1, 2, 3] = 1
    return vol, labels


def test_output_folder_missing_or_a_file(tmp_path):
    vol, labels = _ref(tmp_path)
    with pytest.raises(WriteError, match=r"no_such_dir.*does not exist"):
        write_labels(tmp_path / "no_such_dir" / "m.nii.gz", labels, vol)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(WriteError, match="afile"):
        write_labels(tmp_path / "afile" / "m.nii.gz", labels, vol)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_output_folder_unwritable(tmp_path):
    vol, labels = _ref(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(WriteError, match=r"locked.*not writable"):
            write_labels(locked / "m.nii.gz", labels, vol)
    finally:
        locked.chmod(0o700)


def test_output_on_read_only_filesystem(tmp_path):
    vol, labels = _ref(tmp_path)
    target = "/proc/samscope_labels.nii.gz"  # /proc accepts no new files, even for root
    with pytest.raises(WriteError, match="samscope_labels"):
        write_labels(target, labels, vol)
    assert not os.path.exists(target)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    vol, labels = _ref(tmp_path)

    def half_then_fail(tmp, labels, reference):
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("app.core.io.nifti.write_nifti_labels", half_then_fail)
    with pytest.raises(WriteError, match=r"m\.nii\.gz.*No space left"):
        write_labels(tmp_path / "m.nii.gz", labels, vol)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_output(tmp_path, monkeypatch):
    vol, labels = _ref(tmp_path)
    out = write_labels(tmp_path / "m.nii.gz", labels, vol)
    before = out.read_bytes()

    def boom(tmp, labels, reference):
        raise ValueError("encoder exploded")

    monkeypatch.setattr("app.core.io.nifti.write_nifti_labels", boom)
    with pytest.raises(ValueError, match="exploded"):
        write_labels(out, labels, vol, overwrite=True)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"]


def test_labels_shape_and_values_checked_before_writing(tmp_path):
    vol, labels = _ref(tmp_path)
    with pytest.raises(WriteError, match=r"\(2, 5, 7\).*\(2, 5, 6\)"):
        write_labels(tmp_path / "m.nii.gz", np.zeros((2, 5, 7), np.uint8), vol)
    with pytest.raises(WriteError, match=">= 0"):
        write_labels(tmp_path / "m.nii.gz", labels.astype(np.int8) - 1, vol)
    with pytest.raises(WriteError, match="unknown label format"):
        write_labels(tmp_path / "m.jpg", labels, vol)
    with pytest.raises(WriteError, match="one slice"):
        write_labels(tmp_path / "m.png", labels, vol)
    assert list(tmp_path.iterdir()) == []


def test_never_overwrites_a_dicom_source(shared_data, tmp_path):
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        shutil.copy(shared_data / "dicom/ct_3slice/ct" / name, tmp_path)
    vol = read_image(tmp_path)
    labels = np.zeros(vol.shape, np.uint8)
    labels[0, 5, 5] = 1
    before = (tmp_path / "02.dcm").read_bytes()
    with pytest.raises(WriteError, match="source image"):
        write_labels(tmp_path / "02.dcm", labels, vol, overwrite=True)
    assert (tmp_path / "02.dcm").read_bytes() == before
    nifti = tmp_path / "ct.nii.gz"
    shutil.copy(shared_data / "dicom/ct_3slice/nifti/ct.nii.gz", nifti)
    before = nifti.read_bytes()
    with pytest.raises(WriteError, match="source image"):
        write_image(nifti, read_image(nifti), overwrite=True)
    assert nifti.read_bytes() == before


def test_every_error_is_a_samscope_error():
    assert issubclass(ReadError, SamScopeError) and issubclass(WriteError, SamScopeError)
