"""``samscope benchmark``: refusals at the edge, failed starts, the rebuild flag (issue 14)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from app.cli import main


@pytest.fixture
def pairs(tmp_path):
    root = tmp_path / "data" / "blobs"
    rng = np.random.default_rng(1)
    for i in range(3):
        m = np.zeros((60, 80), np.uint8)
        m[10 + i : 40 + i, 15:50 + 2 * i] = 255
        img = (np.where(m > 0, 170, 60) + rng.normal(0, 8, m.shape)).clip(0, 255)
        for sub, arr in (("images", img.astype(np.uint8)), ("masks", m)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / sub / f"case{i}.png")
    return root


def _args(pairs, out, *extra):
    return ["benchmark", str(pairs), "--methods", "region_growing", "--modes", "3,5",
            "--protocol", "paper", "--clicks", "2", "--out", str(out), "--no-report", "-q",
            *extra]


@pytest.mark.parametrize(("flag", "value"), [
    ("--nsd-tolerance-mm", "nan"), ("--nsd-tolerance-mm", "-2"), ("--nsd-tolerance-mm", "0"),
    ("--target-iou", "5"), ("--target-iou", "nan"), ("--jitter", "inf"), ("--clicks", "0"),
    ("--repeats", "-1"), ("--max-cases", "0"),
])
def test_bad_numbers_are_refused_before_anything_runs(pairs, tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main([*_args(pairs, out), flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()


def test_failed_start_then_the_corrected_command_runs(pairs, tmp_path, capsys):
    out = tmp_path / "run"
    bad = _args(pairs, out)
    bad[bad.index("region_growing")] = "regon_growing"
    assert main(bad) == 2
    assert "regon_growing" in capsys.readouterr().err
    assert main(_args(pairs, out)) == 0, capsys.readouterr().err
    assert len(pd.read_csv(out / "results.csv")) == 3 * (2 + 2)


def test_out_pointing_at_a_file_is_named(pairs, tmp_path, capsys):
    target = tmp_path / "afile.txt"
    target.write_text("x")
    assert main(_args(pairs, target)) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "existing file" in err and "Errno" not in err


def test_missing_manifest_needs_the_rebuild_flag(pairs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(pairs, out)) == 0
    before = pd.read_csv(out / "results.csv")
    (out / "manifest.json").unlink()
    capsys.readouterr()
    assert main([*_args(pairs, out), "--resume", "--seed", "2"]) == 2
    assert "manifest.json: missing" in capsys.readouterr().err
    assert main([*_args(pairs, out), "--resume"]) == 2
    assert "--rebuild-manifest" in capsys.readouterr().err
    assert main([*_args(pairs, out), "--resume", "--rebuild-manifest"]) == 0
    assert (out / "manifest.json").is_file()
    pd.testing.assert_frame_equal(before, pd.read_csv(out / "results.csv"))
