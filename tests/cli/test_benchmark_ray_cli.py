"""``samscope benchmark --ray``: the options are checked before anything starts (no Ray needed)."""

from __future__ import annotations

import sys

import pytest

from app.cli import main


def test_ray_options_are_checked(shared_data, tmp_path, capsys):
    data = str(shared_data / "png_pairs" / "fetal_head_us")
    out = str(tmp_path / "run")
    assert main(["benchmark", data, "--out", out, "--workers", "2"]) == 2
    assert "--ray" in capsys.readouterr().err
    for bad in (["--gpus-per-worker", "nan"], ["--gpus-per-worker", "-1"], ["--workers", "0"]):
        with pytest.raises(SystemExit) as exc:  # argparse refuses it
            main(["benchmark", data, "--out", out, "--ray", "auto", *bad])
        assert exc.value.code == 2
        assert bad[0] in capsys.readouterr().err
    assert not (tmp_path / "run" / "results.csv").exists()


def test_missing_ray_names_the_extra(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc = main(["benchmark", str(shared_data / "png_pairs" / "fetal_head_us"), "--out",
               str(tmp_path / "run"), "--methods", "region_growing", "--max-cases", "1",
               "--ray", "auto", "--no-report"])
    assert rc == 2
    assert 'pip install "samscope[cluster]"' in capsys.readouterr().err


def test_prebuilt_methods_cannot_go_to_a_cluster(tmp_path):
    from app.core.benchmark.runner import BenchmarkPlan
    from app.core.errors import InputValueError

    plan = BenchmarkPlan(data=tmp_path, out_dir=tmp_path / "o", ray="auto",
                         prebuilt_methods={"litemedsam": object()})
    with pytest.raises(InputValueError, match="prebuilt"):
        plan.validate()
