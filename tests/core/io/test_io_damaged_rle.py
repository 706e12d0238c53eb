"""A damaged RLE DICOM: one-line error or an image, never a Rust panic on stderr (issue 14)."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]


def _damaged_rle(path: Path) -> Path:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_frames

    src = get_testdata_file("MR_small_RLE.dcm")
    if src is None:
        pytest.skip("pydicom's MR_small_RLE.dcm is not installed")
    ds = pydicom.dcmread(src)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    rng = random.Random(3)
    for _ in range(20):  # these flips made pylibjpeg-rle panic (index out of bounds)
        frame[rng.randrange(64, len(frame))] = rng.randrange(256)
    assert struct.unpack("<I", frame[:4])[0] == 2
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(path)
    return path


def test_damaged_rle_prints_no_panic(tmp_path):
    bad = _damaged_rle(tmp_path / "bad_rle.dcm")
    code = ("import sys\nfrom app.core.io import read_image\nfrom app.core.errors import "
            "ReadError\ntry:\n    v = read_image(sys.argv[1])\n    print('read', v.shape)\n"
            "except ReadError as e:\n    print('refused', str(e).splitlines()[0])\n")
    env = {**os.environ, "RUST_BACKTRACE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(bad)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "panicked" not in done.stderr and "backtrace" not in done.stderr, done.stderr[:500]
    assert done.stdout.startswith(("read", "refused"))


def test_intact_rle_still_reads_exactly():
    import pydicom
    from pydicom.data import get_testdata_file

    from app.core.io import read_image

    src = get_testdata_file("MR_small_RLE.dcm")
    plain = get_testdata_file("MR_small.dcm")
    if src is None or plain is None:
        pytest.skip("pydicom test files not installed")
    a = read_image(src).pixels
    b = read_image(plain).pixels
    assert a.shape == b.shape and np.array_equal(a, b)
    assert pydicom.dcmread(src).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
