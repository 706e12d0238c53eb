"""NIfTI in and out, geometry in LPS, exact affines on the way back."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from app.core.errors import ReadError
from app.core.image import Volume
from app.core.io import read_image, read_labels, write_labels
from app.core.io._geometry import lps_zyx_to_ras_ijk, ras_ijk_to_lps_zyx

MSD_CASES = ["brain1", "brain2", "breast1"]


def test_affine_conversion_is_an_involution():
    rng = np.random.default_rng(3)
    a = np.eye(4)
    a[:3, :4] = rng.normal(size=(3, 4))
    np.testing.assert_allclose(lps_zyx_to_ras_ijk(ras_ijk_to_lps_zyx(a)), a)


def test_voxel_world_positions_agree_with_nibabel(shared_data):
    path = shared_data / "msd_like/imagesTr/brain1.nii.gz"
    img = nib.load(path)
    vol = read_image(path)
    ijk = np.array([17, 201, 9])
    ras = img.affine @ [*ijk, 1]
    lps = vol.affine_lps @ [ijk[2], ijk[1], ijk[0], 1]
    np.testing.assert_allclose(lps[:3], [-ras[0], -ras[1], ras[2]], atol=1e-4)
    assert vol.pixels[ijk[2], ijk[1], ijk[0]] == np.asanyarray(img.dataobj)[tuple(ijk)]


@pytest.mark.parametrize("case", MSD_CASES)
def test_msd_geometry_matches_header_and_round_trips(shared_data, tmp_path, case):
    img_path = shared_data / f"msd_like/imagesTr/{case}.nii.gz"
    lab_path = shared_data / f"msd_like/labelsTr/{case}.nii.gz"
    hdr = nib.load(img_path)
    vol = read_image(img_path)
    x, y, z = hdr.shape
    assert vol.shape == (z, y, x)
    zooms = hdr.header.get_zooms()
    np.testing.assert_allclose(vol.spacing_mm, (zooms[2], zooms[1], zooms[0]), rtol=1e-5)
    labels = read_labels(lab_path, vol)
    assert labels.dtype == np.uint8 and labels.sum() > 0
    out = write_labels(tmp_path / f"{case}.nii.gz", labels, vol)
    back, src = nib.load(out), nib.load(lab_path)
    np.testing.assert_array_equal(back.affine, src.affine)
    np.testing.assert_array_equal(back.header.get_sform(), src.header.get_sform())
    np.testing.assert_array_equal(back.header.get_qform(), src.header.get_qform())
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.asanyarray(src.dataobj))


def test_written_from_geometry_only_keeps_affine(shared_data, tmp_path):
    vol = read_image(shared_data / "dicom/ct_3slice/nifti/ct.nii.gz")
    bare = Volume(
        pixels=vol.pixels,
        spacing_mm=vol.spacing_mm,
        origin_mm=vol.origin_mm,
        direction=vol.direction,
    )  # no NIfTI header in meta: the affine must come from LPS geometry alone
    labels = np.zeros(vol.shape, np.uint16)
    labels[1, 100:120, 200:230] = 300
    out = write_labels(tmp_path / "l.nii", labels, bare)
    back = nib.load(out)
    np.testing.assert_allclose(
        back.affine, nib.load(shared_data / "dicom/ct_3slice/nifti/ct.nii.gz").affine, atol=1e-4
    )
    assert back.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(read_labels(out, vol), labels)


def test_labels_on_flipped_grid_are_reoriented(shared_data, tmp_path):
    path = shared_data / "msd_like/labelsTr/breast1.nii.gz"
    vol = read_image(shared_data / "msd_like/imagesTr/breast1.nii.gz")
    expected = read_labels(path, vol)
    img = nib.load(path)
    flipped = nib.Nifti1Image(
        np.asanyarray(img.dataobj)[::-1, :, ::-1].copy(),
        img.affine
        @ np.array(
            [[-1, 0, 0, img.shape[0] - 1], [0, 1, 0, 0], [0, 0, -1, img.shape[2] - 1], [0, 0, 0, 1]]
        ),
    )
    p = tmp_path / "flipped.nii.gz"
    nib.save(flipped, p)
    np.testing.assert_array_equal(read_labels(p, vol), expected)


def test_labels_of_another_scan_are_refused(shared_data):
    vol = read_image(shared_data / "msd_like/imagesTr/brain1.nii.gz")
    with pytest.raises(ReadError, match="shape"):
        read_labels(shared_data / "msd_like/labelsTr/breast1.nii.gz", vol)


def test_4d_volume_index(tmp_path):
    data = np.stack([np.full((4, 5, 6), k, np.int16) for k in range(3)], axis=-1)
    p = tmp_path / "t.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0])), p)
    v0 = read_image(p)
    assert v0.shape == (6, 5, 4) and v0.meta["n_volumes"] == 3 and (v0.pixels == 0).all()
    assert (read_image(p, index=2).pixels == 2).all()
    assert v0.spacing_mm == (4.0, 3.0, 2.0)
    with pytest.raises(ReadError, match="index 5"):
        read_image(p, index=5)


def test_scaling_applied(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, -10)
    p = tmp_path / "s.nii"
    nib.save(img, p)
    vol = read_image(p)
    np.testing.assert_allclose(vol.pixels[3, 2, 1], data[1, 2, 3] * 0.5 - 10)


def test_nrrd_ras_and_lps_spaces_agree_with_nifti(tmp_path):
    import nrrd

    rng = np.random.default_rng(5)
    data_ijk = rng.integers(0, 100, (6, 5, 4)).astype(np.int16)
    affine_ras = np.array(
        [[-0.5, 0.0, 0.0, 10.0], [0.0, 0.7, 0.0, -20.0], [0.0, 0.0, 2.0, 30.0], [0, 0, 0, 1]]
    )
    nib.save(nib.Nifti1Image(data_ijk, affine_ras), tmp_path / "ref.nii.gz")
    ref = read_image(tmp_path / "ref.nii.gz")
    for space, flip in (("right-anterior-superior", 1.0), ("left-posterior-superior", -1.0)):
        m = affine_ras.copy()
        m[:2] *= flip  # RAS rows as they are, or turned into LPS
        header = {"space": space, "space directions": m[:3, :3].T, "space origin": m[:3, 3]}
        nrrd.write(str(tmp_path / "v.nrrd"), data_ijk, header, index_order="F")
        vol = read_image(tmp_path / "v.nrrd")
        np.testing.assert_array_equal(vol.pixels, ref.pixels)
        np.testing.assert_allclose(vol.affine_lps, ref.affine_lps, atol=1e-6)
        labels = (data_ijk > 50).astype(np.uint8)
        nrrd.write(str(tmp_path / "l.nrrd"), labels, header, index_order="F")
        np.testing.assert_array_equal(
            read_labels(tmp_path / "l.nrrd", ref), labels.transpose(2, 1, 0)
        )


def test_label_grid_half_voxel_off_is_refused_tiny_float_noise_accepted(shared_data, tmp_path):
    vol = read_image(shared_data / "msd_like/imagesTr/breast1.nii.gz")
    src = nib.load(shared_data / "msd_like/labelsTr/breast1.nii.gz")
    data = np.asanyarray(src.dataobj)
    noisy = src.affine.copy()
    noisy[:3, 3] += 1e-4  # float noise of another writer
    nib.save(nib.Nifti1Image(data, noisy), tmp_path / "noisy.nii.gz")
    np.testing.assert_array_equal(
        read_labels(tmp_path / "noisy.nii.gz", vol), read_labels(src.get_filename(), vol)
    )
    shifted = src.affine.copy()
    shifted[:3, 3] += shifted[:3, :3] @ [0.5, 0, 0]  # half a voxel along i
    nib.save(nib.Nifti1Image(data, shifted), tmp_path / "shifted.nii.gz")
    with pytest.raises(ReadError, match="does not match the image grid"):
        read_labels(tmp_path / "shifted.nii.gz", vol)
