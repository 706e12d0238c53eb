"""DICOM reading: series geometry, HU, multi-frame, compressed syntaxes, colour, DICOMDIR."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from app.core.errors import ReadError, SeriesGeometryError
from app.core.io import list_series, read_image

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def _testfile(name: str) -> Path:
    path = PYDICOM_FILES / name
    if not path.exists():
        found = get_testdata_file(name)
        if found is None:
            pytest.skip(f"pydicom test file {name} not available offline")
        path = Path(found)
    return path


def test_ct_series_matches_its_nifti(shared_data):
    ct = read_image(shared_data / "dicom/ct_3slice/ct")
    nii = read_image(shared_data / "dicom/ct_3slice/nifti/ct.nii.gz")
    assert ct.modality == "CT" and ct.shape == nii.shape == (3, 512, 512)
    np.testing.assert_array_equal(ct.pixels, nii.pixels)  # same HU, same slice order
    np.testing.assert_allclose(ct.affine_lps, nii.affine_lps, atol=1e-3)
    assert ct.spacing_mm[0] == pytest.approx(
        1.0, abs=1e-4
    )  # from positions, not SliceThickness 1.25
    assert ct.window is not None and (ct.window.center, ct.window.width) == (40.0, 400.0)
    # inferior first: sorted along +S, whatever the InstanceNumber order
    assert ct.origin_mm[2] == pytest.approx(-128.69, abs=1e-3)
    assert [Path(p).name for p in ct.meta["slice_paths"]] == ["03.dcm", "02.dcm", "01.dcm"]
    assert ct.pixels.min() < -900  # HU after rescale intercept -1024 (air)


def test_series_sort_ignores_file_names(shared_data, tmp_path):
    src = shared_data / "dicom/ct_3slice/ct"
    for name, new in (("01.dcm", "c"), ("02.dcm", "a"), ("03.dcm", "sub/b")):
        (tmp_path / new).parent.mkdir(exist_ok=True)
        shutil.copy(src / name, tmp_path / new)
    (tmp_path / "notes.txt").write_text("not DICOM")
    vol = read_image(tmp_path)
    ref = read_image(src)
    np.testing.assert_array_equal(vol.pixels, ref.pixels)
    np.testing.assert_allclose(vol.affine_lps, ref.affine_lps)


def test_single_file_of_series(shared_data):
    vol = read_image(shared_data / "dicom/ct_3slice/ct/02.dcm")
    assert vol.shape == (1, 512, 512) and vol.is_2d
    assert vol.origin_mm[2] == pytest.approx(-127.69, abs=1e-3)


def test_irregular_series_is_refused_with_gaps():
    folder = _testfile("dicomdirtests/77654033/CT2")
    with pytest.raises(SeriesGeometryError, match=r"irregular slice spacing.*202\.500.*1\.250"):
        read_image(folder)


def test_mixed_orientation_is_refused():
    folder = _testfile("dicomdirtests/98892003/MR700")
    with pytest.raises(SeriesGeometryError, match="orientations"):
        read_image(folder)


def test_dicomdir_lists_series_and_chooses(tmp_path):
    dicomdir = _testfile("dicomdirtests/DICOMDIR")
    infos = list_series(dicomdir)
    assert len(infos) >= 10 and len({s.uid for s in infos}) == len(infos)
    assert infos[0].n_frames >= infos[-1].n_frames
    # default: the largest series that is a regular volume; the refused one is reported
    vol = read_image(dicomdir)
    assert vol.shape[0] == 5
    assert any("orientations" in s["error"] for s in vol.meta["series_skipped"])
    chosen = next(s for s in infos if s.description == "Cervical LAT")
    cr = read_image(dicomdir, series=chosen.uid)
    assert cr.meta["series_instance_uid"] == chosen.uid and cr.modality == "CR" and cr.is_2d
    with pytest.raises(ReadError, match="no series"):
        read_image(dicomdir, series="1.2.3.4")


def test_rtdose_multiframe_grid_offsets():
    vol = read_image(_testfile("rtdose.dcm"))
    ds = pydicom.dcmread(_testfile("rtdose.dcm"))
    assert vol.shape == (15, 10, 10) and vol.modality == "RTDOSE"
    assert vol.spacing_mm == pytest.approx((5.0, 10.0, 10.0))
    np.testing.assert_allclose(vol.pixels, ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)


def test_enhanced_ct_functional_groups(shared_data):
    path = shared_data / "dicom/unlabelled/eCT_Supplemental.dcm"
    vol = read_image(path)
    ds = pydicom.dcmread(path)
    assert vol.shape == (2, 512, 512) and vol.modality == "CT"
    # orientation only in the functional groups: rows run along -x (patient right)
    np.testing.assert_allclose(vol.direction[:, 2], [-1, 0, 0], atol=1e-6)
    px = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert vol.spacing_mm[1:] == pytest.approx((float(px[0]), float(px[1])))
    assert vol.window is not None and vol.window.name == "file"
    fg = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    positions = [
        float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    first = int(np.argmin(positions)) if vol.direction[2, 0] > 0 else int(np.argmax(positions))
    expected = ds.pixel_array[first] * float(fg.RescaleSlope) + float(fg.RescaleIntercept)
    np.testing.assert_array_equal(vol.pixels[0], expected)


def test_ultrasound_cine_ybr_jpeg(shared_data):
    vol = read_image(shared_data / "dicom/unlabelled/color3d_jpeg_baseline.dcm")
    assert vol.pixels.shape == (120, 480, 640, 3) and vol.pixels.dtype == np.uint8
    assert vol.meta["frame_time_ms"] == pytest.approx(33.333, abs=1e-3)
    frame = read_image(shared_data / "dicom/unlabelled/color3d_jpeg_baseline.dcm", index=7)
    assert frame.is_2d and frame.pixels.shape == (1, 480, 640, 3)
    np.testing.assert_array_equal(frame.pixels[0], vol.pixels[7])


def test_palette_rle_ultrasound(shared_data):
    path = shared_data / "dicom/unlabelled/OBXXXX1A_rle_2frame.dcm"
    vol = read_image(path)
    assert vol.pixels.shape == (2, 600, 800, 3) and vol.pixels.dtype == np.uint8
    ds = pydicom.dcmread(path)
    lut = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(vol.pixels, (lut >> 8).astype(np.uint8))
    assert len(np.unique(vol.pixels.reshape(-1, 3), axis=0)) > 10  # real colours, not one grey


def test_cr_monochrome1_inverted_and_spacing_unknown(shared_data):
    path = shared_data / "dicom/unlabelled/RG1_J2KI.dcm"
    vol = read_image(path)
    ds = pydicom.dcmread(path)
    assert vol.is_2d and vol.shape == (1, 1955, 1841) and vol.modality == "CR"
    assert not vol.spacing_known  # PixelSpacing 0\0
    assert vol.meta["monochrome1_inverted"]
    hi = 2**ds.BitsStored - 1
    np.testing.assert_array_equal(vol.pixels[0], hi - ds.pixel_array.astype(np.int32))
    assert vol.window.center == pytest.approx(hi - 15000) and vol.window.width == 30000


@pytest.mark.parametrize(
    ("name", "modality"),
    [
        ("MR2_J2KI.dcm", "MR"),
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", "US"),
        ("emri_small.dcm", "MR"),
    ],
)
def test_every_unlabelled_file_reads(shared_data, name, modality):
    path = shared_data / "dicom/unlabelled" / name
    vol = read_image(path)
    ds = pydicom.dcmread(path)
    assert vol.modality == modality
    n = int(ds.get("NumberOfFrames", 1) or 1)
    assert vol.shape == (n, ds.Rows, ds.Columns)
    raw = ds.pixel_array.reshape(n, ds.Rows, ds.Columns)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    np.testing.assert_allclose(vol.pixels, raw * slope + intercept, rtol=1e-5, atol=1e-4)


def test_mr_j2k_geometry(shared_data):
    vol = read_image(shared_data / "dicom/unlabelled/MR2_J2KI.dcm")
    assert vol.spacing_mm[1:] == pytest.approx((0.195313, 0.195313))
    assert vol.window.center == 1000 and vol.window.width == 2000


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_compressed_syntaxes_decode_to_the_same_pixels(name):
    ref = read_image(_testfile("MR_small.dcm"))
    vol = read_image(_testfile(name))
    np.testing.assert_array_equal(vol.pixels, ref.pixels)
    np.testing.assert_allclose(vol.affine_lps, ref.affine_lps)


def test_rgb_secondary_capture_16bit_rle():
    vol = read_image(_testfile("SC_rgb_rle_16bit.dcm"))
    assert vol.pixels.shape == (1, 100, 100, 3) and vol.pixels.dtype == np.uint8
    assert vol.pixels.max() == 255


def test_headers_kept_for_the_seg_writer(shared_data):
    vol = read_image(shared_data / "dicom/ct_3slice/ct")
    dss = vol.meta["dicom_datasets"]
    assert len(dss) == 3 and all("PixelData" not in ds for ds in dss)
    assert [ds.SOPInstanceUID for ds in dss] == vol.meta["sop_instance_uids"]
    z = [float(ds.ImagePositionPatient[2]) for ds in dss]
    assert z == sorted(z)


def test_folder_with_two_series_default_largest_and_choice(shared_data, tmp_path):
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        shutil.copy(shared_data / "dicom/ct_3slice/ct" / name, tmp_path / f"ct_{name}")
    (tmp_path / "mr").mkdir()
    shutil.copy(_testfile("MR_small.dcm"), tmp_path / "mr" / "mr.dcm")
    infos = list_series(tmp_path)
    assert [s.modality for s in infos] == ["CT", "MR"] and infos[0].n_files == 3
    assert read_image(tmp_path).modality == "CT"
    mr = read_image(tmp_path, series=1)
    assert mr.modality == "MR" and mr.shape == (1, 64, 64)
    assert read_image(tmp_path, series=infos[1].uid).meta["series_instance_uid"] == infos[1].uid
    with pytest.raises(ReadError, match="series 5 is outside"):
        read_image(tmp_path, series=5)
