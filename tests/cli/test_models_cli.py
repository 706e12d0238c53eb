"""``samscope models``: the registry as a table and as JSON."""

from __future__ import annotations

import json

from app.cli import main

NAMES = ["litemedsam", "litemedsam_points", "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b", "mobilesam_vit_t"]


def test_models_json_lists_every_model_with_status(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSCOPE_CACHE_DIR", str(tmp_path))
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"x")  # present in the cache
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows] == NAMES
    assert by_name["litemedsam"]["status"] == "bundled"
    assert by_name["sam_vit_b"]["status"] == "cached"
    assert by_name["sam_vit_h"]["status"] == "not downloaded"
    assert by_name["sam_vit_h"]["checkpoint"] == str(tmp_path / "sam_vit_h_4b8939.pth")
    assert by_name["sam_vit_h"]["url"].startswith("https://dl.fbaipublicfiles.com/")
    assert by_name["litemedsam"]["points"] is False
    assert by_name["litemedsam"]["meaningful_multimask"] is False
    assert by_name["sam_vit_b"]["points"] is True


def test_models_table(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSCOPE_CACHE_DIR", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "MODEL", "STATUS"]
    lite = next(line for line in lines if line.startswith("litemedsam"))
    assert "bundled" in lite and "256 px" in lite
    assert str(tmp_path) in out


def test_download_offline_is_one_clear_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSCOPE_CACHE_DIR", str(tmp_path))
    from app.core.models import registry

    spec = registry.get_spec("mobilesam_vit_t")
    offline = spec.checkpoint.__class__(spec.checkpoint.filename, url="http://127.0.0.1:9/m.pt")
    monkeypatch.setitem(registry._BY_NAME, "mobilesam_vit_t",
                        registry.ModelSpec(**{**spec.__dict__, "checkpoint": offline}))
    assert main(["models", "--download", "mobilesam_vit_t"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "download failed" in err[0]
    assert str(tmp_path / "mobile_sam.pt") in err[0]
