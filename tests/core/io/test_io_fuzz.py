"""Property: damaged real files give a clean SamScopeError or a valid read, never a crash.

Bounded for CI (a few dozen examples per format); ``bench/fuzz_io.py`` runs the long version.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.errors import SamScopeError
from app.core.image import Volume
from app.core.io import read_image, read_labels

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


@pytest.fixture(scope="module")
def seeds(shared_data, tmp_path_factory) -> dict[str, bytes]:
    """Small real files of every format, as bytes (uncompressed NIfTI so mutations reach it)."""
    d = tmp_path_factory.mktemp("seeds")
    nii = d / "breast1.nii"
    nii.write_bytes(
        gzip.decompress((shared_data / "msd_like/imagesTr/breast1.nii.gz").read_bytes())
    )
    out = {
        "ct.dcm": (shared_data / "dicom/ct_3slice/ct/01.dcm").read_bytes(),
        "mr_rle.dcm": (PYDICOM_FILES / "MR_small_RLE.dcm").read_bytes(),
        "mr_jls.dcm": (PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm").read_bytes(),
        "seg.dcm": (shared_data / "dicom/ct_3slice/seg/liver.dcm").read_bytes(),
        "enhanced.dcm": (shared_data / "dicom/unlabelled/eCT_Supplemental.dcm").read_bytes(),
        "breast1.nii": nii.read_bytes(),
        "mask.png": (shared_data / "png_pairs/fetal_head_us/masks/006_HC.png").read_bytes(),
        "xray.jpg": next((shared_data / "png_pairs/cxr_lungs/images").glob("*.jpg")).read_bytes(),
    }
    shutil.rmtree(d)
    return out


def mutations():
    return st.tuples(
        st.lists(
            st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
            min_size=1,
            max_size=8,
        ),
        st.one_of(st.none(), st.floats(0.01, 1.0)),
    )


def _mutate(data: bytes, edits, keep) -> bytes:
    buf = bytearray(data)
    # bias half the edits into the first 2 KiB, where headers live
    for k, (where, value) in enumerate(edits):
        limit = min(len(buf), 2048) if k % 2 == 0 else len(buf)
        buf[int(where * limit)] = value
    if keep is not None:
        buf = buf[: max(1, int(len(buf) * keep))]
    return bytes(buf)


def _check(path: Path, ct_reference: Volume | None) -> None:
    try:
        if path.name.startswith("seg"):
            labels = read_labels(path, ct_reference)
            assert labels.ndim == 3 and labels.dtype.kind == "u"
            return
        vol = read_image(path)
    except SamScopeError as exc:
        assert str(exc)  # a message for the user
        return
    assert isinstance(vol, Volume) and vol.pixels.size > 0
    assert np.isfinite(vol.spacing_mm).all() and np.isfinite(vol.affine_lps).all()


@pytest.mark.parametrize(
    "name",
    [
        "ct.dcm",
        "mr_rle.dcm",
        "mr_jls.dcm",
        "seg.dcm",
        "enhanced.dcm",
        "breast1.nii",
        "mask.png",
        "xray.jpg",
    ],
)
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutation=mutations())
def test_mutated_file_reads_or_fails_cleanly(seeds, shared_data, tmp_path, name, mutation):
    path = tmp_path / name
    path.write_bytes(_mutate(seeds[name], *mutation))
    reference = read_image(shared_data / "dicom/ct_3slice/ct") if name == "seg.dcm" else None
    _check(path, reference)
