"""DICOM SEG in and out, aligned slice for slice with the source series."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from app.core.errors import ReadError, WriteError
from app.core.io import read_image, read_labels, write_labels
from app.core.io.seg import read_seg_segments


@pytest.fixture(scope="module")
def ct(shared_data):
    return read_image(shared_data / "dicom/ct_3slice/ct")


def test_liver_seg_lines_up_with_the_series(shared_data, ct):
    seg_labels = read_labels(shared_data / "dicom/ct_3slice/seg/liver.dcm", ct)
    nifti_labels = read_labels(shared_data / "dicom/ct_3slice/nifti/liver.nii.gz", ct)
    assert seg_labels.shape == ct.shape and seg_labels.sum() > 10_000
    # the SEG stores its frames inferior-first and the CT files run superior-first:
    # only a reader that maps frames by referenced UID gets every slice right
    np.testing.assert_array_equal(seg_labels, nifti_labels)
    assert all(seg_labels[z].any() for z in range(3))


def test_seg_reference_is_by_uid(shared_data, ct):
    ds = pydicom.dcmread(shared_data / "dicom/ct_3slice/seg/liver.dcm")
    labels = read_labels(shared_data / "dicom/ct_3slice/seg/liver.dcm", ct)
    for frame, item in zip(ds.pixel_array, ds.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z = ct.meta["sop_instance_uids"].index(uid)
        np.testing.assert_array_equal(labels[z] > 0, frame > 0)


def test_multisegment_overlaps(shared_data, ct):
    path = shared_data / "dicom/ct_3slice/seg_synthetic/partial_overlaps.dcm"
    segments = read_seg_segments(path, ct)
    assert sorted(segments) == [1, 2, 3, 4, 5]
    labels = read_labels(path, ct)
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4, 5}
    overlap = segments[1] & segments[2]
    assert overlap.any()  # the file's overlaps exist ...
    assert (labels[overlap] >= 2).all()  # ... and the higher segment number wins them
    union = np.any(np.stack(list(segments.values())), axis=0)
    np.testing.assert_array_equal(labels > 0, union)
    # a segment that is on all three slices
    assert any(all(m[z].any() for z in range(3)) for m in segments.values())
    # without a reference the SEG's own positions order the slices the same way
    np.testing.assert_array_equal(read_labels(path), labels)


def test_write_seg_round_trip_with_highdicom(shared_data, ct, tmp_path):
    liver = read_labels(shared_data / "dicom/ct_3slice/nifti/liver.nii.gz", ct)
    spine = read_labels(shared_data / "dicom/ct_3slice/nifti/spine.nii.gz", ct)
    labels = liver.copy()
    labels[spine > 0] = 2
    out = write_labels(
        tmp_path / "seg.dcm", labels, ct, segment_names=["Liver", "Spine"], algorithm="LiteMedSAM"
    )
    seg = hd.seg.segread(out)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.meta["series_instance_uid"]
    descr = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert descr[1].SegmentLabel == "Liver" and descr[2].SegmentLabel == "Spine"
    assert {s.SegmentAlgorithmType for s in descr.values()} == {"SEMIAUTOMATIC"}
    assert {s.SegmentAlgorithmName for s in descr.values()} == {"LiteMedSAM"}
    assert all("RecommendedDisplayCIELabValue" in s for s in descr.values())
    by_hd = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=ct.meta["sop_instance_uids"], combine_segments=True
    )
    np.testing.assert_array_equal(by_hd, labels)
    np.testing.assert_array_equal(read_labels(out, ct), labels)


def test_write_seg_for_enhanced_multiframe(shared_data, tmp_path):
    vol = read_image(shared_data / "dicom/unlabelled/eCT_Supplemental.dcm")
    labels = np.zeros(vol.shape, np.uint8)
    labels[0, 100:150, 200:260] = 1
    labels[1, 10:20, 10:20] = 1
    out = write_labels(tmp_path / "e.dcm", labels, vol)
    np.testing.assert_array_equal(read_labels(out, vol), labels)


def test_write_seg_needs_dicom_source(shared_data, tmp_path):
    vol = read_image(shared_data / "dicom/ct_3slice/nifti/ct.nii.gz")
    labels = np.zeros(vol.shape, np.uint8)
    labels[0, 0, 0] = 1
    with pytest.raises(WriteError, match=r"DICOM SEG needs a DICOM source.*\.nii\.gz"):
        write_labels(tmp_path / "x.dcm", labels, vol)
    assert not list(tmp_path.iterdir())


def test_seg_of_another_size_is_refused(shared_data):
    small = read_image(shared_data / "dicom/unlabelled/emri_small.dcm")
    with pytest.raises(ReadError, match=r"512x512.*64x64"):
        read_labels(shared_data / "dicom/ct_3slice/seg/liver.dcm", small)


def test_image_passed_as_labels(shared_data, ct):
    with pytest.raises(ReadError, match="not a DICOM SEG"):
        read_labels(shared_data / "dicom/ct_3slice/ct/01.dcm", ct)


def test_seg_passed_as_image(shared_data):
    with pytest.raises(ReadError, match="read_labels"):
        read_image(shared_data / "dicom/ct_3slice/seg/liver.dcm")
