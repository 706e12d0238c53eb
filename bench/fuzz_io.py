"""Longer fuzz run of the readers: mutate bytes of real files, count clean errors and crashes.

Every input must either read into a valid Volume / label map or raise a SamScopeError; any
other exception (or a result with non-finite geometry) is a crash, saved for replay.

    python bench/fuzz_io.py --seconds 300 [--data ../shared/data] [--out fuzz_crashes/]

Prints how many inputs were tried per format and overall, and the crash count (exit 1 if any).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.core.errors import SamScopeError  # noqa: E402
from app.core.io import read_image, read_labels  # noqa: E402


def seed_files(data: Path) -> dict[str, bytes]:
    import pydicom

    pyd = Path(pydicom.data.__file__).parent / "test_files"
    seeds = {
        "ct.dcm": data / "dicom/ct_3slice/ct/01.dcm",
        "seg.dcm": data / "dicom/ct_3slice/seg/liver.dcm",
        "overlaps_seg.dcm": data / "dicom/ct_3slice/seg_synthetic/partial_overlaps.dcm",
        "enhanced.dcm": data / "dicom/unlabelled/eCT_Supplemental.dcm",
        "palette_rle.dcm": data / "dicom/unlabelled/OBXXXX1A_rle_2frame.dcm",
        "emri.dcm": data / "dicom/unlabelled/emri_small.dcm",
        "mr_rle.dcm": pyd / "MR_small_RLE.dcm",
        "mr_jls.dcm": pyd / "MR_small_jpeg_ls_lossless.dcm",
        "mr_j2k.dcm": pyd / "MR_small_jp2klossless.dcm",
        "rtdose.dcm": pyd / "rtdose.dcm",
        "mask.png": data / "png_pairs/fetal_head_us/masks/006_HC.png",
        "us.png": data / "png_pairs/fetal_head_us/images/006_HC.png",
        "xray.jpg": next((data / "png_pairs/cxr_lungs/images").glob("*.jpg")),
    }
    out = {name: p.read_bytes() for name, p in seeds.items() if p.exists()}
    for case in ("breast1", "brain2"):
        gz = data / f"msd_like/imagesTr/{case}.nii.gz"
        if gz.exists():
            out[f"{case}.nii"] = gzip.decompress(gz.read_bytes())
            out[f"{case}.nii.gz"] = gz.read_bytes()
    return out


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    n = int(rng.integers(1, 9))
    for _ in range(n):
        limit = min(len(buf), 2048) if rng.random() < 0.6 else len(buf)
        kind = rng.random()
        pos = int(rng.integers(0, limit))
        if kind < 0.6:
            buf[pos] = int(rng.integers(0, 256))
        elif kind < 0.8:
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind < 0.9:  # interesting values for sizes and counts
            buf[pos : pos + 2] = bytes(
                rng.choice([b"\x00\x00", b"\xff\xff", b"\x00\x80", b"\x01\x00"])
            )
        else:
            del buf[pos : pos + int(rng.integers(1, 64))]
    if rng.random() < 0.15:
        buf = buf[: max(1, int(len(buf) * rng.random()))]
    return bytes(buf)


def check(path: Path, reference) -> str:
    try:
        if "seg" in path.name:
            labels = read_labels(path, reference)
            if labels.ndim != 3:
                raise AssertionError(f"labels of shape {labels.shape}")
            return "read"
        vol = read_image(path)
        if not (np.isfinite(vol.spacing_mm).all() and np.isfinite(vol.affine_lps).all()):
            raise AssertionError(f"non-finite geometry {vol.spacing_mm} {vol.origin_mm}")
        return "read"
    except SamScopeError:
        return "clean error"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--max-inputs", type=int, default=0, help="stop after this many (0: no limit)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "fuzz_crashes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    # damaged files make pydicom/nibabel warn on every other input; outcomes are what count
    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    logging.getLogger("nibabel").setLevel(logging.CRITICAL)
    seeds = seed_files(args.data)
    if not seeds:
        print(f"no seed files under {args.data}", file=sys.stderr)
        return 2
    reference = read_image(args.data / "dicom/ct_3slice/ct")
    rng = np.random.default_rng(args.seed)
    names = sorted(seeds)
    tried: Counter[str] = Counter()
    outcome: Counter[str] = Counter()
    crashes = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        while time.perf_counter() - t0 < args.seconds:
            if args.max_inputs and sum(tried.values()) >= args.max_inputs:
                break
            name = names[int(rng.integers(0, len(names)))]
            data = mutate(seeds[name], rng)
            path = Path(tmp) / name
            path.write_bytes(data)
            tried[name] += 1
            try:
                outcome[check(path, reference)] += 1
            except KeyboardInterrupt:
                break
            except BaseException:  # noqa: BLE001 - a crash is what we are looking for
                crashes += 1
                outcome["CRASH"] += 1
                args.out.mkdir(parents=True, exist_ok=True)
                keep = args.out / f"crash_{crashes:04d}_{name}"
                keep.write_bytes(data)
                print(f"CRASH on {name} (saved {keep}):\n{traceback.format_exc(limit=3)}")
    elapsed = time.perf_counter() - t0
    total = sum(tried.values())
    print(f"fuzz_io: {total} inputs in {elapsed:.0f} s ({total / max(elapsed, 1e-9):.1f}/s)")
    for name in names:
        print(f"  {name:<18} {tried[name]:>6} tried")
    print(
        "  outcomes: "
        + ", ".join(f"{k} {v} ({100 * v / max(total, 1):.1f} %)" for k, v in outcome.most_common())
    )
    print(f"  crashes: {crashes}")
    return 1 if crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
