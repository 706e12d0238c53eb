"""napari reader/writer/sample hooks, through npe2 where the manifest matters (no viewer)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from app import napari_io
from app.core.io import read_image, read_labels
from app.core.io.samples import sample_path

MANIFEST = Path(__file__).resolve().parents[1] / "app" / "napari.yaml"


@pytest.fixture
def samscope_pm(npe2pm):
    """A clean npe2 plugin manager with only our manifest registered."""
    with npe2pm.tmp_plugin(manifest=str(MANIFEST)):
        yield npe2pm


def test_reader_accepts_ours_and_declines_others(tmp_path, shared_data):
    assert napari_io.get_reader(str(shared_data / "dicom/ct_3slice/ct")) is not None
    assert napari_io.get_reader(str(shared_data / "msd_like/imagesTr/brain1.nii.gz")) is not None
    assert napari_io.get_reader(str(sample_path("ultrasound"))) is not None
    (tmp_path / "notes.txt").write_text("hello")
    assert napari_io.get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_io.get_reader(str(tmp_path)) is None  # a folder without DICOM (e.g. zarr)
    assert napari_io.get_reader([]) is None


def test_npe2_reads_dicom_folder_with_geometry(samscope_pm, shared_data):
    import npe2

    layers = npe2.read(
        [str(shared_data / "dicom/ct_3slice/ct")], stack=False, plugin_name="samscope"
    )
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image" and data.shape == (3, 512, 512)
    np.testing.assert_allclose(kwargs["scale"], (1.0, 0.810547, 0.810547), rtol=1e-5)
    # translate = origin projected on the array axes (identity direction here)
    np.testing.assert_allclose(kwargs["translate"], (-128.69, -226.8, -235.2), atol=1e-3)
    assert kwargs["contrast_limits"] == (-160.0, 240.0)  # the file's window 40/400
    assert kwargs["metadata"][napari_io.VOLUME_KEY].modality == "CT"


def test_reader_2d_picture_gives_2d_layer(shared_data):
    reader = napari_io.get_reader(
        str(shared_data / "png_pairs/cxr_lungs/images/thnov10p5641g006-c.png")
    )
    ((data, kwargs, kind),) = reader(
        str(shared_data / "png_pairs/cxr_lungs/images/thnov10p5641g006-c.png")
    )
    assert data.shape == (277, 375, 3) and kwargs["rgb"] and len(kwargs["scale"]) == 2


def test_reader_several_dicom_files_as_one_series(shared_data):
    files = sorted(str(p) for p in (shared_data / "dicom/ct_3slice/ct").glob("*.dcm"))
    ((data, kwargs, _),) = napari_io.read_layers(files)
    assert data.shape == (3, 512, 512)
    np.testing.assert_array_equal(data, read_image(shared_data / "dicom/ct_3slice/ct").pixels)


@pytest.mark.parametrize(("key", "shape"), [("ct", (3, 512, 512)), ("ultrasound", (540, 800))])
def test_sample_data_through_npe2(samscope_pm, key, shape):
    contribution = next(s for s in samscope_pm.iter_sample_data() if s[0] == "samscope")[1]
    sample = next(s for s in contribution if s.key == key)
    layers = sample.open()
    (img, img_kw, t1), (lab, lab_kw, t2) = layers
    assert (t1, t2) == ("image", "labels")
    assert img.shape == lab.shape == shape
    assert img_kw["scale"] == lab_kw["scale"] and img_kw["translate"] == lab_kw["translate"]
    assert lab.any() and set(np.unique(lab)) == {0, 1}
    if key == "ultrasound":
        assert img_kw["scale"] == pytest.approx((0.1109, 0.1109), abs=1e-4)


def test_writer_nifti_keeps_geometry(samscope_pm, shared_data, tmp_path):
    (img, img_kw, _), (lab, lab_kw, _) = napari_io.sample_ct()
    out = napari_io.write_labels(str(tmp_path / "liver.nii.gz"), lab, lab_kw)
    assert out == [str(tmp_path / "liver.nii.gz")]
    back = nib.load(out[0])
    src = nib.load(shared_data / "dicom/ct_3slice/nifti/liver.nii.gz")
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.asanyarray(src.dataobj))


def test_writer_dicom_seg_and_png(tmp_path):
    (img, img_kw, _), (lab, lab_kw, _) = napari_io.sample_ct()
    (seg_path,) = napari_io.write_labels(str(tmp_path / "liver.dcm"), lab, lab_kw)
    volume = lab_kw["metadata"][napari_io.VOLUME_KEY]
    np.testing.assert_array_equal(read_labels(seg_path, volume), lab)
    (us, us_kw, _), (us_lab, us_lab_kw, _) = napari_io.sample_ultrasound()
    (png,) = napari_io.write_labels(str(tmp_path / "head.png"), us_lab, us_lab_kw)
    np.testing.assert_array_equal(read_labels(png)[0], us_lab)


def test_writer_without_source_volume_uses_scale_translate(tmp_path):
    lab = np.zeros((4, 5, 6), np.int32)
    lab[1, 2, 3] = 2
    attrs = {"scale": (2.5, 0.5, 0.75), "translate": (10.0, 20.0, 30.0), "metadata": {}}
    (out,) = napari_io.write_labels(str(tmp_path / "x.nii.gz"), lab, attrs)
    vol = read_image(out)
    assert vol.spacing_mm == pytest.approx((2.5, 0.5, 0.75))
    assert vol.origin_mm == pytest.approx((10.0, 20.0, 30.0))
    np.testing.assert_array_equal(vol.pixels, lab)


def test_writer_npe2_contribution(samscope_pm, tmp_path):
    import npe2

    (img, img_kw, _), (lab, lab_kw, _) = napari_io.sample_ultrasound()
    written = npe2.write(str(tmp_path / "m.png"), [(lab, lab_kw, "labels")], plugin_name="samscope")
    assert [Path(p).name for p in written] == ["m.png"]


@pytest.mark.parametrize("is_2d", [False, True])
def test_volume_from_layer_round_trips_napari_scale_and_translate(is_2d):
    """A layer SAMScope did not open (no Volume in its metadata) gives back the geometry the
    layer was made with: napari's own scale/translate, no axis reversed."""
    from napari.layers import Image, Labels

    from app.core.image import Volume
    from app.napari_io import volume_from_layer, volume_layer_data

    shape = (1, 20, 30) if is_2d else (4, 20, 30)
    spacing = (1.0, 0.7, 0.6) if is_2d else (2.5, 0.7, 0.6)
    origin = (0.0, -12.0, 33.0) if is_2d else (-40.0, -12.0, 33.0)
    vol = Volume(pixels=np.arange(np.prod(shape), dtype=np.int16).reshape(shape),
                 spacing_mm=spacing, origin_mm=origin, is_2d=is_2d)
    data, kwargs, _ = volume_layer_data(vol)
    kwargs["metadata"] = {}  # as if another plugin had opened it
    layer = Image(data, **kwargs)
    attrs = {"scale": layer.scale, "translate": layer.translate, "metadata": layer.metadata,
             "rgb": layer.rgb, "name": layer.name}
    back = volume_from_layer(np.asarray(layer.data), attrs)
    assert back.shape == vol.shape and back.is_2d == is_2d
    np.testing.assert_allclose(back.spacing_mm, spacing)
    np.testing.assert_allclose(back.origin_mm, origin)
    np.testing.assert_allclose(back.affine_lps, vol.affine_lps)
    np.testing.assert_array_equal(back.pixels, vol.pixels)
    # a Labels layer on the same grid (the writer's path) lands on the same geometry
    labels = Labels(np.zeros(data.shape, np.uint8), scale=layer.scale, translate=layer.translate)
    ref = volume_from_layer(labels.data, {"scale": labels.scale, "translate": labels.translate})
    np.testing.assert_allclose(ref.affine_lps, vol.affine_lps)
