"""2D pictures in, PNG masks in and out."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.core.errors import ReadError, WriteError
from app.core.io import read_image, read_labels, write_labels


def _save(tmp_path, name, arr, **kw):
    p = tmp_path / name
    Image.fromarray(arr, **kw).save(p)
    return p


@pytest.mark.parametrize("name", ["g.png", "g.tif", "g.bmp"])
def test_grey8_lossless_formats(tmp_path, name):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    vol = read_image(_save(tmp_path, name, arr))
    assert vol.is_2d and vol.shape == (1, 37, 53) and not vol.spacing_known
    np.testing.assert_array_equal(vol.pixels[0], arr)
    assert vol.pixels.dtype == np.uint8


@pytest.mark.parametrize("name", ["g16.png", "g16.tif"])
def test_grey16_kept(tmp_path, name):
    arr = (np.arange(40 * 30, dtype=np.uint32).reshape(40, 30) * 50).astype(np.uint16)
    vol = read_image(_save(tmp_path, name, arr))
    assert vol.pixels.dtype == np.uint16
    np.testing.assert_array_equal(vol.pixels[0], arr)
    assert vol.window is None  # 16-bit: display by percentiles, not a fixed 8-bit range


def test_rgb_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    vol = read_image(_save(tmp_path, "c.png", arr))
    assert vol.pixels.shape == (1, 20, 30, 3) and vol.is_rgb
    np.testing.assert_array_equal(vol.pixels[0], arr)
    smooth = np.zeros((64, 64, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 64)[None, :]
    jpg = tmp_path / "c.jpg"
    Image.fromarray(smooth).save(jpg, quality=95)
    vj = read_image(jpg)
    assert vj.pixels.shape == (1, 64, 64, 3)
    assert np.abs(vj.pixels[0].astype(int) - smooth).mean() < 4


def test_rgba_drops_alpha(tmp_path):
    arr = np.zeros((10, 12, 4), np.uint8)
    arr[..., 1] = 200
    arr[..., 3] = 17
    vol = read_image(_save(tmp_path, "a.png", arr))
    assert vol.pixels.shape == (1, 10, 12, 3)
    assert (vol.pixels[..., 1] == 200).all()


def test_palette_becomes_rgb(tmp_path):
    idx = np.zeros((8, 9), np.uint8)
    idx[2:5, 3:7] = 1
    img = Image.fromarray(idx).convert("P")
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p = tmp_path / "p.png"
    img.save(p)
    vol = read_image(p)
    assert vol.pixels.shape == (1, 8, 9, 3)
    assert (vol.pixels[0, 3, 4] == [255, 0, 0]).all() and (vol.pixels[0, 0, 0] == 0).all()


def test_real_ultrasound_and_mask(shared_data):
    img = shared_data / "png_pairs/fetal_head_us/images/006_HC.png"
    vol = read_image(img)
    assert vol.shape == (1, 540, 800) and vol.pixels.dtype == np.uint8
    labels = read_labels(shared_data / "png_pairs/fetal_head_us/masks/006_HC.png", vol)
    assert labels.shape == (1, 540, 800) and set(np.unique(labels)) == {0, 1}
    raw = np.asarray(Image.open(shared_data / "png_pairs/fetal_head_us/masks/006_HC.png")) > 127
    assert np.array_equal(labels[0] == 1, raw)


def test_real_rgb_cxr(shared_data):
    vol = read_image(shared_data / "png_pairs/cxr_lungs/images/thnov10p5641g006-c.png")
    assert vol.pixels.shape == (1, 277, 375, 3) and vol.pixels.dtype == np.uint8


def test_png_mask_value_conventions(tmp_path):
    ref = read_image(_save(tmp_path, "img.png", np.zeros((6, 7), np.uint8)))
    m = np.zeros((6, 7), np.uint8)
    m[1:3, 2:5] = 1
    np.testing.assert_array_equal(read_labels(_save(tmp_path, "m01.png", m), ref)[0], m)
    np.testing.assert_array_equal(read_labels(_save(tmp_path, "m255.png", m * 255), ref)[0], m)
    lab = m.copy()
    lab[4, 4] = 7
    np.testing.assert_array_equal(read_labels(_save(tmp_path, "lab.png", lab), ref)[0], lab)


def test_png_mask_shape_mismatch_names_both_shapes(tmp_path):
    ref = read_image(_save(tmp_path, "img.png", np.zeros((6, 7), np.uint8)))
    bad = _save(tmp_path, "m.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(ReadError, match=r"\(1, 6, 8\).*\(1, 6, 7\)"):
        read_labels(bad, ref)


def test_png_write_binary_and_labels_round_trip(tmp_path):
    ref = read_image(_save(tmp_path, "img.png", np.zeros((6, 7), np.uint8)))
    m = np.zeros((1, 6, 7), np.uint8)
    m[0, 1:4, 2:6] = 1
    out = write_labels(tmp_path / "mask.png", m, ref)
    assert set(np.unique(np.asarray(Image.open(out)))) == {0, 255}
    np.testing.assert_array_equal(read_labels(out, ref), m)
    lab = m.astype(np.uint16) * 300
    out16 = write_labels(tmp_path / "lab16.png", lab, ref)
    np.testing.assert_array_equal(read_labels(out16, ref), lab)


def test_png_write_refuses_clobber_and_source(tmp_path):
    src = _save(tmp_path, "img.png", np.full((6, 7), 9, np.uint8))
    ref = read_image(src)
    m = np.ones((1, 6, 7), np.uint8)
    with pytest.raises(WriteError, match="source image"):
        write_labels(src, m, ref, overwrite=True)
    assert np.asarray(Image.open(src))[0, 0] == 9
    out = write_labels(tmp_path / "m.png", m, ref)
    with pytest.raises(WriteError, match="already exists"):
        write_labels(out, m * 0, ref)
    assert (np.asarray(Image.open(out)) == 255).all()
    write_labels(out, m * 0, ref, overwrite=True)
    assert (np.asarray(Image.open(out)) == 0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "m.png"]
