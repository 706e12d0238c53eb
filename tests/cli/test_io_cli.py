"""``samscope info`` and ``samscope convert`` through the real dispatcher."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from app.cli import main
from app.core.io import read_image, read_labels


def test_info_json_dicom_series(shared_data, capsys):
    assert main(["info", str(shared_data / "dicom/ct_3slice/ct"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["shape"] == [3, 512, 512] and d["modality"] == "CT"
    assert d["spacing_mm"] == pytest.approx([1.0, 0.810547, 0.810547], abs=1e-5)
    assert d["window"] == {"center": 40.0, "width": 400.0}
    assert len(d["series"]) == 1 and d["series"][0]["n_frames"] == 3


def test_info_text_2d_uses_y_x(shared_data, capsys):
    assert main(["info", str(shared_data / "png_pairs/fetal_head_us/images/006_HC.png")]) == 0
    out = capsys.readouterr().out
    assert "(540, 800)  (y, x)" in out and "(unknown)" in out


def _bad(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "missing.nii.gz"
    if kind == "random":
        (tmp_path / "r.dcm").write_bytes(bytes(range(256)) * 4)
        return tmp_path / "r.dcm"
    if kind == "text":
        (tmp_path / "t.nii.gz").write_text("hello")
        return tmp_path / "t.nii.gz"
    return tmp_path  # empty folder


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("missing", "no such file"),
        ("random", "not a DICOM"),
        ("text", "NIfTI"),
        ("empty", "no DICOM images"),
    ],
)
def test_info_bad_input_one_line_exit_2(tmp_path, capsys, kind, expected):
    path = _bad(tmp_path, kind)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err and expected in err


def test_convert_dicom_to_nifti_keeps_geometry(shared_data, tmp_path, capsys):
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", str(shared_data / "dicom/ct_3slice/ct"), str(out)]) == 0
    ours, ref = nib.load(out), nib.load(shared_data / "dicom/ct_3slice/nifti/ct.nii.gz")
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(ours.dataobj), np.asanyarray(ref.dataobj))
    assert ours.get_data_dtype() == np.int16
    # a second run does not clobber without --overwrite
    assert main(["convert", str(shared_data / "dicom/ct_3slice/ct"), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(shared_data / "dicom/ct_3slice/ct"), str(out), "--overwrite"]) == 0


def test_convert_nifti_to_nrrd_and_back(shared_data, tmp_path):
    src = shared_data / "msd_like/imagesTr/breast1.nii.gz"
    assert main(["convert", str(src), str(tmp_path / "b.nrrd")]) == 0
    a, b = read_image(src), read_image(tmp_path / "b.nrrd")
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_allclose(a.affine_lps, b.affine_lps, atol=1e-5)


def test_convert_seg_to_nifti_with_reference(shared_data, tmp_path):
    out = tmp_path / "liver.nii.gz"
    rc = main(
        [
            "convert",
            str(shared_data / "dicom/ct_3slice/seg/liver.dcm"),
            str(out),
            "--reference",
            str(shared_data / "dicom/ct_3slice/ct"),
        ]
    )
    assert rc == 0
    ct = read_image(shared_data / "dicom/ct_3slice/ct")
    np.testing.assert_array_equal(
        read_labels(out, ct), read_labels(shared_data / "dicom/ct_3slice/nifti/liver.nii.gz", ct)
    )
