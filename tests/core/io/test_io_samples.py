"""The bundled samples are found through importlib.resources and carry their ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.io import read_image, read_labels
from app.core.io.samples import list_samples, load_sample, sample_labels_path, sample_path


def test_samples_listed_and_found():
    assert set(list_samples()) == {"ct", "ultrasound"}
    assert sample_path("ct").is_dir()
    assert sample_path("ultrasound").suffix == ".png"
    with pytest.raises(KeyError, match="unknown sample"):
        sample_path("mri")


def test_ct_sample_labels_agree_between_nifti_and_seg():
    vol, labels = load_sample("ct")
    assert vol.modality == "CT" and vol.shape == (3, 512, 512)
    seg = read_labels(sample_labels_path("ct", seg=True), vol)
    np.testing.assert_array_equal(labels, seg)
    assert 100_000 < int(labels.sum()) < 120_000
    # the liver is soft tissue in HU
    assert 0 < float(np.median(vol.pixels[labels > 0])) < 150


def test_ultrasound_sample_spacing_and_mask():
    vol, labels = load_sample("ultrasound")
    assert vol.is_2d and vol.spacing_known
    assert vol.spacing_mm[1] == pytest.approx(0.1109, abs=1e-4)
    assert labels.shape == vol.shape and set(np.unique(labels)) == {0, 1}
    # head circumference from the mask (ellipse by moments) close to HC18's 172.56 mm
    rows, cols = np.nonzero(labels[0])
    cov = np.cov(np.vstack([rows, cols]))
    a, b = 2 * np.sqrt(np.linalg.eigvalsh(cov))  # semi-axes in px
    hc_px = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))
    assert hc_px * vol.spacing_mm[1] == pytest.approx(172.56, rel=0.03)


def test_samples_equal_the_developer_data(shared_data):
    ours = read_image(sample_path("ct"))
    theirs = read_image(shared_data / "dicom/ct_3slice/ct")
    np.testing.assert_array_equal(ours.pixels, theirs.pixels)
