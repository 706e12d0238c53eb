"""Inputs refused at the edge, outputs checked before the model runs, valid JSON (issue 14)."""

from __future__ import annotations

import errno
import json
import struct

import numpy as np
import pytest
from PIL import Image

from app.cli import main


@pytest.fixture
def png(tmp_path):
    p = tmp_path / "img.png"
    Image.fromarray(np.full((32, 40), 90, np.uint8)).save(p)
    return p


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the model is loaded: the refusal must come first."""
    import app.core.models.registry as registry

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(registry, "load_model", boom)


@pytest.mark.parametrize("prompt", [
    ["--box", "nan", "0", "10", "10"], ["--box", "0", "0", "inf", "10"],
    ["--point", "nan", "3", "1"], ["--box", "0", "0", "10", "1e999"],
])
def test_non_finite_prompts_are_refused(png, tmp_path, capsys, no_model, prompt):
    out = tmp_path / "m.png"
    assert main(["segment", str(png), *prompt, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "finite" in err and not out.exists()


@pytest.mark.parametrize(("name", "needle"), [
    ("missing_dir/m.png", "does not exist"), ("m.jpg", "unknown mask format"),
    ("m.dcm", "DICOM SEG needs a DICOM source"),
])
def test_output_checked_before_the_model_runs(png, tmp_path, capsys, no_model, name, needle):
    assert main(["segment", str(png), "--box", "2", "2", "20", "20", "-o",
                 str(tmp_path / name)]) == 2
    assert needle in capsys.readouterr().err


def test_segment_refuses_to_overwrite_its_source(png, capsys, no_model):
    assert main(["segment", str(png), "--box", "2", "2", "20", "20", "-o", str(png),
                 "--overwrite"]) == 2
    assert "source" in capsys.readouterr().err


def _nan_affine_nifti(path):
    import nibabel as nib

    img = nib.Nifti1Image(np.arange(2 * 30 * 30, dtype=np.int16).reshape(30, 30, 2),
                          np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header["sform_code"] = 1
    img.to_filename(str(path))
    raw = bytearray(path.read_bytes())
    raw[280:284] = struct.pack("<f", float("nan"))  # srow_x[0]: the affine has a NaN
    path.write_bytes(bytes(raw))
    return path


def test_nan_affine_nifti_converts_and_takes_labels(tmp_path, capsys):
    import nibabel as nib

    from app.core.io import read_image, write_labels

    src = _nan_affine_nifti(tmp_path / "nan.nii")
    out = tmp_path / "out.nii.gz"
    assert main(["convert", str(src), str(out)]) == 0, capsys.readouterr().err
    assert "unit spacing" in capsys.readouterr().err
    written = nib.load(str(out))
    assert np.isfinite(written.affine).all() and int(written.header["sform_code"]) == 0
    vol = read_image(src)
    assert not vol.spacing_known
    labels = np.zeros(vol.shape, np.uint8)
    labels[0, 3:9, 4:12] = 1
    seg = write_labels(tmp_path / "seg.nii.gz", labels, vol)  # segment --output x.nii.gz
    back = np.asarray(nib.load(str(seg)).dataobj)
    assert back.sum() == labels.sum()


def test_info_json_is_valid_json_with_nan_voxels(tmp_path, capsys):
    import nibabel as nib

    data = np.ones((8, 8, 2), np.float32)
    data[0, 0, 0] = np.nan
    nib.Nifti1Image(data, np.eye(4)).to_filename(str(tmp_path / "f.nii.gz"))
    assert main(["info", str(tmp_path / "f.nii.gz"), "--json"]) == 0

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    json.loads(capsys.readouterr().out, parse_constant=no_constants)


def test_full_disk_on_nifti_output_names_the_target(tmp_path, monkeypatch):
    import nibabel as nib

    from app.core.errors import WriteError
    from app.core.image import Volume
    from app.core.io import write_image

    def full(img, filename):
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(nib, "save", full)
    out = tmp_path / "scan.nii.gz"
    with pytest.raises(WriteError) as err:
        write_image(out, Volume(pixels=np.zeros((2, 4, 4), np.int16), spacing_mm=(1, 1, 1)))
    msg = str(err.value)
    assert msg.startswith(str(out)) and "disk full" in msg and ".tmp" not in msg, msg
    assert list(tmp_path.iterdir()) == []
