"""The on-disk embedding store: reuse across engines, corrupt/foreign entries, LRU bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.core.engine import Engine
from app.core.image import Image2D
from app.core.models._preprocess import SAM_1024
from app.core.models._sam_family import SamFamilyModel
from app.core.models.base import Prompt
from app.core.models.embedding_store import EmbeddingStore, store_key
from app.core.models.sam import SAM_CAPABILITIES, build_tiny_sam_net

ONE = 256 * 64 * 64 * 4  # payload bytes of one embedding


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SamFamilyModel(build_tiny_sam_net(), name="tiny_sam", preprocessing=SAM_1024,
                          capabilities=SAM_CAPABILITIES, device="cpu")


def _img(seed: int) -> Image2D:
    rng = np.random.default_rng(seed)
    return Image2D.from_array(rng.integers(0, 255, (80, 120), dtype=np.uint8))


def test_a_second_engine_reads_the_embedding_from_disk(tiny, tmp_path):
    image = _img(0)
    first = Engine(tiny, store=EmbeddingStore(tmp_path))
    a = first.embed(image)
    assert first.stats.embeddings_computed == 1 and len(list(tmp_path.glob("*.emb"))) == 1
    second = Engine(tiny, store=EmbeddingStore(tmp_path))  # e.g. after a restart
    assert second.is_cached(image)
    b = second.embed(image)
    s = second.stats
    assert (s.embeddings_computed, s.embeddings_loaded) == (0, 1)
    assert isinstance(b.features, torch.Tensor)  # the torch backend gets a tensor back
    np.testing.assert_array_equal(b.features.numpy(), a.features.numpy())
    assert (b.original_size, b.input_size, b.model_name) == (a.original_size, a.input_size,
                                                             a.model_name)
    p = Prompt.from_box([10, 10, 70, 60])
    np.testing.assert_array_equal(first.predict(a, p).masks, second.predict(b, p).masks)
    assert second.embed(image) is second.embed(image)  # then served from memory


def test_corrupt_and_foreign_entries_are_recomputed(tiny, tmp_path):
    store = EmbeddingStore(tmp_path)
    img0, img1 = _img(0), _img(1)
    Engine(tiny, store=store).embed(img0)
    Engine(tiny, store=store).embed(img1)
    key0 = store_key(tiny, Engine(tiny, store=False).embedding_key(img0).split("|")[0])
    key1 = store_key(tiny, Engine(tiny, store=False).embedding_key(img1).split("|")[0])
    path0, path1 = store.path_for(key0), store.path_for(key1)
    # a flipped byte in the payload
    raw = bytearray(path0.read_bytes())
    raw[-100] ^= 0xFF
    path0.write_bytes(bytes(raw))
    engine = Engine(tiny, store=store)
    engine.embed(img0)
    assert engine.stats.embeddings_computed == 1 and store.rejected == 1
    # another image's entry under this image's name (a foreign file)
    path0.write_bytes(path1.read_bytes())
    engine = Engine(tiny, store=store)
    e = engine.embed(img0)
    assert engine.stats.embeddings_computed == 1 and store.rejected == 2
    np.testing.assert_array_equal(e.features.numpy(), tiny.embed(img0).features.numpy())
    # truncated
    path0.write_bytes(path0.read_bytes()[:1000])
    assert store.get(key0) is None and not path0.exists()


def test_store_is_lru_bounded(tiny, tmp_path):
    import os
    import time

    store = EmbeddingStore(tmp_path, max_bytes=int(2.5 * ONE))
    engine = Engine(tiny, store=store, cache_bytes=0)
    imgs = [_img(i) for i in range(3)]
    engine.embed(imgs[0])
    engine.embed(imgs[1])
    # make image 0 the most recently used (a read refreshes the mtime)
    old = time.time() - 100
    for p, _, _ in store.entries():
        os.utime(p, (old, old))
    assert Engine(tiny, store=store, cache_bytes=0).embed(imgs[0]) is not None
    engine.embed(imgs[2])  # over the bound: evicts image 1, the least recently used
    assert store.total_bytes <= store.max_bytes and len(store.entries()) == 2
    probe = Engine(tiny, store=store, cache_bytes=0)
    assert probe.is_cached(imgs[0]) and probe.is_cached(imgs[2])
    assert not probe.is_cached(imgs[1])


def test_the_key_changes_with_the_weights(tiny):
    torch.manual_seed(1)
    other = SamFamilyModel(build_tiny_sam_net(), name="tiny_sam", preprocessing=SAM_1024,
                           capabilities=SAM_CAPABILITIES, device="cpu")
    assert store_key(tiny, "x") != store_key(other, "x")
