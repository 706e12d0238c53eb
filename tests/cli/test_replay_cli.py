"""``samscope replay``: a session recorded by the controller, re-run from the command line."""

from __future__ import annotations

import json

import numpy as np

from app.cli import main
from app.core import coords


def test_replay_rebuilds_the_label_map_and_reports_effort(lite_engine, tmp_path, capsys):
    from app.core.annotate import AnnotationController
    from app.core.io import read_labels
    from app.core.io.samples import load_sample

    volume, truth = load_sample("ultrasound")
    c = AnnotationController(engine=lite_engine, log_dir=tmp_path)
    c.open(volume)
    c.set_box(coords.mask_to_box_xyxy(truth[0] > 0))
    c.accept()
    expected = c.labels.copy()
    log = c.log_path
    c.shutdown()

    out = tmp_path / "rebuilt.png"
    assert main(["replay", str(log), "--output", str(out)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["label"] == 1 and lines[0]["boxes"] == 1 and lines[0]["clicks"] == 0
    summary = lines[-1]
    assert summary["identical_to_log"] and summary["model"] == "litemedsam"
    np.testing.assert_array_equal(read_labels(out, volume)[0] > 0, expected[0] > 0)
    # without a model: from the recorded masks
    assert main(["replay", str(log), "--recorded"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["objects"] == 1
    # a file that is not a log: one line naming it, exit 2
    bad = tmp_path / "notes.jsonl"
    bad.write_text("hello\n")
    assert main(["replay", str(bad)]) == 2
    assert "notes.jsonl" in capsys.readouterr().err
