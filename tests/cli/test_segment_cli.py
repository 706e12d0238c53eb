"""``samscope segment`` end to end on real images, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import main
from app.core.coords import mask_to_box_xyxy

US = "png_pairs/fetal_head_us"


def _iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _box_args(mask: np.ndarray) -> list[str]:
    return [str(int(v)) for v in mask_to_box_xyxy(mask)]


@pytest.fixture
def us_case(shared_data):
    image = shared_data / US / "images" / "307_HC.png"
    gt = np.asarray(Image.open(shared_data / US / "masks" / "307_HC.png")) > 127
    return image, gt


def test_segment_png_writes_0_255_mask_and_json_lines(us_case, tmp_path, capsys):
    image, gt = us_case
    out = tmp_path / "head.png"
    assert main(["segment", str(image), "--box", *_box_args(gt), "--output", str(out)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 1  # LiteMedSAM: one (trained) candidate
    assert set(lines[0]) >= {"index", "predicted_iou", "area_px", "selected"}
    written = np.asarray(Image.open(out))
    assert written.shape == gt.shape and set(np.unique(written)) <= {0, 255}
    assert lines[0]["area_px"] == int((written == 255).sum())
    assert _iou(written == 255, gt) > 0.9  # measured 0.949


def test_segment_16bit_png(us_case, tmp_path, capsys):
    image, gt = us_case
    pixels16 = np.asarray(Image.open(image)).astype(np.uint16) * 257 + 3
    src = tmp_path / "us16.png"
    Image.fromarray(pixels16).save(src)
    assert np.asarray(Image.open(src)).dtype.itemsize == 2 or Image.open(src).mode.startswith("I")
    out = tmp_path / "m.png"
    assert main(["segment", str(src), "--box", *_box_args(gt), "-o", str(out)]) == 0
    assert _iou(np.asarray(Image.open(out)) == 255, gt) > 0.85


def test_segment_volume_slice_to_nifti(shared_data, tmp_path, capsys):
    from app.core.io import read_image, read_labels

    ct = shared_data / "dicom/ct_3slice/ct"
    volume = read_image(ct)
    spine = read_labels(shared_data / "dicom/ct_3slice/nifti/spine.nii.gz", reference=volume)
    out = tmp_path / "spine.nii.gz"
    argv = ["segment", str(ct), "--slice", "1", "--box", *_box_args(spine[1] > 0), "-o", str(out)]
    assert main(argv) == 0
    written = read_labels(out, reference=volume)
    assert written[0].sum() == 0 and written[2].sum() == 0  # only the chosen slice
    assert _iou(written[1] > 0, spine[1] > 0) > 0.7  # measured 0.81 (window 40/400 from file)


def test_volume_without_slice_is_an_error(shared_data, tmp_path, capsys):
    ct = shared_data / "dicom/ct_3slice/ct"
    assert main(["segment", str(ct), "--box", "1", "1", "5", "5", "-o",
                 str(tmp_path / "x.png")]) == 2
    assert "--slice K (0..2)" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--box", "255", "95", "900", "372"], "outside the 800x540 image"),
    (["--box", "300", "95", "200", "372"], "X0 <= X1"),
    (["--point", "10", "10", "2"], "labels must be 1"),
    ([], "at least one --box"),
    (["--box", "1", "1", "5", "5", "--model", "nope"], "unknown model 'nope'"),
])
def test_bad_prompts_fail_on_one_line(us_case, tmp_path, capsys, args, message):
    image, _ = us_case
    assert main(["segment", str(image), *args, "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_missing_checkpoint_says_where_to_put_it(us_case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAMSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    image, _ = us_case
    rc = main(["segment", str(image), "--model", "sam_vit_b", "--box", "1", "1", "50", "50",
               "-o", str(tmp_path / "x.png")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "sam_vit_b_01ec64.pth" in err and str(tmp_path / "cache" / "sam_vit_b_01ec64.pth") in err
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in err


def test_refused_checkpoint_is_not_executed(us_case, tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "p": Payload()}, evil)
    image, _ = us_case
    rc = main(["segment", str(image), "--checkpoint", str(evil), "--box", "1", "1", "50", "50",
               "-o", str(tmp_path / "x.png")])
    assert rc == 2 and not marker.exists()
    assert "refused" in capsys.readouterr().err


def test_errors_have_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "app", "segment", str(tmp_path / "missing.png"), "--box", "1",
         "1", "2", "2", "-o", str(tmp_path / "o.png")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "missing.png" in proc.stderr


def test_several_boxes_write_the_union(shared_data, tmp_path, capsys):
    from scipy import ndimage

    cxr = shared_data / "png_pairs/cxr_lungs"
    gt = np.asarray(Image.open(cxr / "masks" / "333932bd.png")) > 127
    lab, n = ndimage.label(gt)
    assert n == 2
    argv = ["segment", str(cxr / "images" / "333932bd.jpg"), "-o", str(tmp_path / "lungs.png")]
    for i in (1, 2):
        argv += ["--box", *_box_args(lab == i)]
    assert main(argv) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["index"] for x in lines] == [0, 1] and all(x["selected"] for x in lines)
    assert all("box_xyxy" in x for x in lines)
    written = np.asarray(Image.open(tmp_path / "lungs.png")) == 255
    assert _iou(written, gt) > 0.65  # measured 0.771 with one box per lung
