"""``samscope benchmark`` from the command line (classical methods: no model weights needed)."""

from __future__ import annotations

from pathlib import Path

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
            Image.fromarray(arr).save(root / sub / f"case{i}{'_mask' if sub == 'masks' else ''}.png")
    return root


def test_run_writes_results_report_and_resumes(pairs, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["benchmark", str(pairs), "--methods", "region_growing,grabcut", "--modes", "1,3,5",
            "--protocol", "paper", "--clicks", "2", "--seed", "5", "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "3/3 cases" in err and "complete" in err and "report:" in err
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 3 * 2 * (3 + 2)
    assert {"dataset", "task", "case", "method", "protocol", "click", "selection", "iou",
            "dice", "points", "boxes", "size_fraction", "seconds"} <= set(df.columns)
    box = df[(df["protocol"] == "mode5") & (df["method"] == "region_growing")]
    assert box["iou"].min() > 0.8  # measured 0.88: smoothing costs the 1-px rim
    for name in ("summary.csv", "noc.csv", "report.html", "manifest.json", "results.parquet"):
        assert (out / name).is_file(), name
    # again without --resume: refused, nothing overwritten
    before = (out / "results.csv").read_bytes()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert (out / "results.csv").read_bytes() == before


def test_list_and_bad_input(pairs, tmp_path, capsys):
    assert main(["benchmark", str(pairs.parent), "--list"]) == 0
    assert "blobs\tpairs_2d\t3 cases" in capsys.readouterr().out
    assert main(["benchmark", str(pairs), "--modes", "7", "--out", str(tmp_path / "x")]) == 2
    assert "mode" in capsys.readouterr().err
    assert main(["benchmark", str(tmp_path / "nope"), "--out", str(tmp_path / "y")]) == 2
    assert main(["benchmark", str(pairs), "--methods", "nonsense", "--out",
                 str(tmp_path / "z")]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "many"
    rng = np.random.default_rng(2)
    for i in range(16):
        m = np.zeros((100, 120), np.uint8)
        m[20 + i : 70 + i // 2, 30:90] = 255
        img = (np.where(m > 0, 160, 70) + rng.normal(0, 10, m.shape)).clip(0, 255)
        for sub, arr in (("images", img.astype(np.uint8)), ("masks", m)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / sub / f"c{i:02d}.png")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "app", "benchmark", str(root), "--methods", "random_walker",
           "--modes", "1,2,3,4,5", "--protocol", "paper", "--clicks", "4", "--out", str(out),
           "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    results = out / "results.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if results.is_file() and results.read_text().count("\n") > 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    n_before = len(pd.read_csv(results))
    assert 0 < n_before < 16 * 9
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    df = pd.read_csv(results)
    assert len(df) == 16 * 9  # 5 modes + 4 clicks per case, nothing lost or doubled
    assert not df.duplicated(["case", "protocol", "click", "selection"]).any()


def test_everything_mode_and_cosmos_strategies_end_to_end(shared_data, tmp_path, capsys):
    """The issue's command on one real ultrasound with the click model: everything mode at a
    16 x 16 grid (the model's own filter defaults: with SAM's 0.88 / 0.95 it keeps no mask),
    modes 1 and 3, two COSMOS strategies jittered 5 times."""
    import json

    from PIL import Image as PILImage

    if not (shared_data / "png_pairs" / "fetal_head_us").is_dir():
        pytest.skip("fetal_head_us missing")
    out = tmp_path / "run"
    args = ["benchmark", str(shared_data), "--datasets", "fetal_head_us", "--max-cases", "1",
            "--methods", "litemedsam_points", "--modes", "everything,1,3", "--grid", "16",
            "--protocols", "cosmos-centroid,cosmos-5pos5neg", "--jitter", "0.1",
            "--repeats", "5", "--no-report", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    df = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=["", "nan"])
    assert len(df) == 3 + 2 * 5 * 2 + 2 * 5 * 2
    ev = df[df["protocol"] == "everything16"].set_index("selection")
    assert sorted(ev.index) == ["hungarian", "match_dice", "match_iou"]
    assert (ev["click"] == 0).all() and (ev["n_pred"] >= 1).all() and ev["note"].isna().all()
    assert ev.loc["match_dice", "dice"] > 0.85  # measured 0.891 on 006_HC (v2 decoder)
    from app.core.everything import options_for

    options = json.loads((out / "manifest.json").read_text())["options"]
    assert options["everything_options"] == {}
    assert options["everything_effective"] == {"litemedsam_points":
                                               options_for("litemedsam_points")}
    h = ev.loc["hungarian"]
    assert h["matched"] == 1 and h["recall"] == 1.0
    assert h["precision"] == pytest.approx(1 / h["n_pred"])
    assert np.isnan(ev.loc["match_dice", "precision"])
    labels = np.asarray(PILImage.open(out / ev.loc["hungarian", "mask_file"]))
    assert labels.dtype == np.uint16 and labels.max() == h["n_pred"]
    cos = df[df["protocol"].str.startswith("cosmos-")]
    assert (cos["click"] == 0).all() and set(cos["repeat"]) == set(range(5))
    neg = cos[cos["protocol"] == "cosmos-5pos5neg"]
    pts = [json.loads(p) for p in neg["points"]]
    assert all([q[2] for q in p] == [1] * 5 + [0] * 5 for p in pts)
    centroids = {tuple(json.loads(p)[0][:2]) for p in
                 cos[(cos["protocol"] == "cosmos-centroid") & (cos["selection"] == "first")][
                     "points"]}
    assert len(centroids) == 5  # the randomness test moved the centroid each repeat
    for _, row in cos.iterrows():
        assert len(json.loads(row["candidate_scores"])) == 3
        files = json.loads(row["candidates_file"])
        assert len(files) == 3 and all((out / f).is_file() for f in files)
    for col in ("size_fraction", "boundary_complexity", "curvature", "contrast",
                "n_components"):
        assert df[col].notna().all(), col
    assert df["n_components"].eq(1).all() and df["boundary_complexity"].between(1, 1.3).all()
    # the same command again resumes to the same table
    before = (out / "results.csv").read_bytes()
    assert main([*args, "--resume"]) == 0
    assert (out / "results.csv").read_bytes() == before


def test_explicit_filters_override_the_models_and_an_empty_image_says_why(shared_data,
                                                                          tmp_path):
    """SAM's filters asked for explicitly on the click model: no mask kept, and each row
    says which filters left nothing (the report and the dock show the note)."""
    import json

    if not (shared_data / "png_pairs" / "fetal_head_us").is_dir():
        pytest.skip("fetal_head_us missing")
    out = tmp_path / "run"
    assert main(["benchmark", str(shared_data), "--datasets", "fetal_head_us", "--max-cases",
                 "1", "--methods", "litemedsam_points", "--modes", "everything", "--grid", "16",
                 "--everything-option", "pred_iou_thresh=0.88", "--everything-option",
                 "stability_score_thresh=0.95", "--no-report", "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=["", "nan"])
    assert len(df) == 3 and (df["n_pred"] == 0).all() and (df["dice"] == 0).all()
    assert df["note"].str.startswith("no mask passed the filters: pred_iou_thresh=0.88, "
                                     "stability_score_thresh=0.95 (768 masks decoded").all()
    options = json.loads((out / "manifest.json").read_text())["options"]
    assert options["everything_options"] == {"pred_iou_thresh": 0.88,
                                             "stability_score_thresh": 0.95}
    eff = options["everything_effective"]["litemedsam_points"]
    assert (eff["pred_iou_thresh"], eff["stability_score_thresh"]) == (0.88, 0.95)


def test_everything_options_are_checked(pairs, tmp_path, capsys):
    base = ["benchmark", str(pairs), "--methods", "region_growing", "--out", str(tmp_path / "x")]
    assert main([*base, "--modes", "everything", "--grid", "20"]) == 2
    assert "16, 32, 64, 128" in capsys.readouterr().err
    assert main([*base, "--modes", "everything", "--everything-option", "nms=1"]) == 2
    assert "unknown everything-mode option" in capsys.readouterr().err
    assert main([*base, "--modes", "1", "--grid", "16"]) == 2
    assert "--modes everything" in capsys.readouterr().err
    assert main([*base, "--protocols", "cosmos-30pos"]) == 2
    assert "1..20" in capsys.readouterr().err


def test_everything_mode_skips_a_method_without_an_embedding(pairs, tmp_path):
    out = tmp_path / "run"
    assert main(["benchmark", str(pairs), "--methods", "region_growing", "--modes",
                 "everything", "--grid", "16", "--no-report", "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=["", "nan"])
    assert len(df) == 3 * 3 and df["iou"].isna().all()
    assert df["note"].str.contains("not a SAM-family model").all()
    assert (df["prompt_supported"].astype(str).str.lower() == "false").all()


def test_a_case_list_or_a_models_validation_split_limits_the_run(pairs, tmp_path, capsys):
    """``--cases``: a text file of dataset/case lines, or a fine-tuned model's folder (its
    validation cases): only those cases are run, and the run resumes with the same list."""
    import json

    listed = tmp_path / "cases.txt"
    listed.write_text("# the model card's cases\nblobs/case2\n\nblobs/case0  # first\n")
    out = tmp_path / "run"
    args = ["benchmark", str(pairs), "--methods", "region_growing", "--modes", "3",
            "--cases", str(listed), "--out", str(out)]
    assert main(args) == 0
    assert "2/2 cases" in capsys.readouterr().err
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["case"]) == ["case0", "case2"]
    assert main([*args, "--resume"]) == 0
    assert len(pd.read_csv(out / "results.csv")) == 2
    # a model folder: the cases its manifest validated on
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps({"data": {"val_cases": ["blobs/case1"]}}))
    out2 = tmp_path / "run2"
    assert main([*args[:-4], "--cases", str(model), "--out", str(out2)]) == 0
    assert list(pd.read_csv(out2 / "results.csv")["case"]) == ["case1"]
    # a name that matches nothing is named, and nothing runs
    listed.write_text("blobs/case0\nblobs/case9\n")
    assert main([*args[:-2], "--out", str(tmp_path / "run3")]) == 2
    err = capsys.readouterr().err
    assert "blobs/case9" in err and "match no case" in err
    assert not (tmp_path / "run3" / "results.csv").exists()
    listed.write_text("case0\n")
    assert main([*args[:-2], "--out", str(tmp_path / "run4")]) == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "not dataset/case" in err
