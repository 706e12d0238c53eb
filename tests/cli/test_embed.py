"""``samscope embed DATA`` fills the embedding store; a second run finds every slice."""

from __future__ import annotations

import argparse
import json
import shutil

from app.cli import embed


def _run(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    embed.register(sub)
    args = parser.parse_args(["embed", *argv])
    return args.func(args)


def test_embed_fills_the_store_and_a_second_run_finds_it(shared_data, tmp_path, capsys):
    src = shared_data / "png_pairs" / "fetal_head_us"
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for p in sorted((src / "images").iterdir())[:2]:
        shutil.copy(p, data / "images" / p.name)
        shutil.copy((src / "masks" / p.name).with_suffix(".png"), data / "masks")
    assert [p.parent.name for p in embed.iter_sources([data])] == ["images", "images"]
    store = tmp_path / "store"
    argv = [str(data), "--store", str(store), "--backend", "torch", "--device", "cpu"]
    assert _run(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["images"], first["computed"], first["found"]) == (2, 2, 0)
    assert len(list(store.glob("*.emb"))) == 2
    assert _run(argv) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["computed"], again["found"], again["rejected"]) == (0, 2, 0)
