"""Image embeddings kept on disk, so that a reopened scan or a re-run benchmark skips the encoder.

One file per (image digest x model token) in ``<user cache>/embeddings``, bounded in bytes
with least-recently-used eviction (a read refreshes the file's mtime). Each file carries its
full key and the SHA-256 of its payload: a corrupt, truncated or foreign file (another image,
model, weights or preprocessing) is detected on read, deleted and recomputed, never trusted.

File layout: ``MAGIC``, an 8-byte little-endian header length, a JSON header (``key``,
``model_name``, ``original_size``, ``input_size``, ``shape``, ``sha256``), float32 payload.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from app.core.models.base import Embedding

__all__ = ["EmbeddingStore", "DEFAULT_STORE_BYTES", "STORE_BYTES_ENV", "STORE_ENV",
           "store_key", "default_store"]

MAGIC = b"SAMSCOPE-EMB1\n"
#: default bound: ~500 LiteMedSAM / SAM embeddings (4 MiB each)
DEFAULT_STORE_BYTES = 2 * 1024**3
#: size bound in bytes for the default store
STORE_BYTES_ENV = "SAMSCOPE_EMBEDDING_STORE_BYTES"
#: "1" turns the default store on for every Engine made without ``store=``; a path also moves it
STORE_ENV = "SAMSCOPE_EMBEDDING_STORE"
_SUFFIX = ".emb"


def store_key(model, image_digest: str) -> str:
    """The on-disk key: the image digest plus what makes the model's embedding what it is
    (name, preprocessing, precision, backend and the image encoder's weights digest)."""
    token = getattr(model, "cache_token", None)
    part = token() if callable(token) else str(getattr(model, "name", "model"))
    digest = getattr(model, "weights_digest", None)
    weights = digest("encoder") if callable(digest) else ""
    return f"{image_digest}|{part}|{weights}"


class EmbeddingStore:
    """A folder of embeddings, LRU-bounded in bytes.

    Parameters
    ----------
    folder : path, optional
        Default ``<user cache>/embeddings`` (``$SAMSCOPE_CACHE_DIR`` moves the cache).
    max_bytes : int, optional
        Bound on the folder's total size; default ``$SAMSCOPE_EMBEDDING_STORE_BYTES`` or 2 GiB.

    Notes
    -----
    Several processes may share a folder: files are written to a temporary name and renamed,
    so a reader sees a whole file or none.
    """

    def __init__(self, folder: str | os.PathLike | None = None, *,
                 max_bytes: int | None = None) -> None:
        if folder is None:
            from app.core.models._onnx import user_cache_root

            folder = user_cache_root() / "embeddings"
        self.folder = Path(folder)
        if max_bytes is None:
            max_bytes = int(os.environ.get(STORE_BYTES_ENV) or DEFAULT_STORE_BYTES)
        self.max_bytes = int(max_bytes)
        self.rejected = 0  # corrupt or foreign files found and deleted

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.folder)!r}, max_bytes={self.max_bytes})"

    def path_for(self, key: str) -> Path:
        return self.folder / (hashlib.sha256(key.encode()).hexdigest()[:40] + _SUFFIX)

    def __contains__(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def get(self, key: str) -> Embedding | None:
        """The stored embedding for ``key`` (features as a float32 ndarray), or ``None``."""
        path = self.path_for(key)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        emb = self._parse(raw, key)
        if emb is None:
            self.rejected += 1
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # least recently used = oldest mtime
        except OSError:
            pass
        return emb

    @staticmethod
    def _parse(raw: bytes, key: str) -> Embedding | None:
        n = len(MAGIC)
        if len(raw) < n + 8 or raw[:n] != MAGIC:
            return None
        (hlen,) = struct.unpack("<Q", raw[n:n + 8])
        try:
            head = json.loads(raw[n + 8:n + 8 + hlen])
            payload = memoryview(raw)[n + 8 + hlen:]
            if head["key"] != key or hashlib.sha256(payload).hexdigest() != head["sha256"]:
                return None
            features = np.frombuffer(payload, np.float32).reshape(head["shape"]).copy()
            return Embedding(features=features, original_size=tuple(head["original_size"]),
                             input_size=tuple(head["input_size"]),
                             model_name=head["model_name"], key=head.get("engine_key", ""))
        except (ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, emb: Embedding) -> Path | None:
        """Write ``emb`` under ``key`` (atomically), then evict down to ``max_bytes``.

        Returns the file, or ``None`` when it could not be written (a full disk is not an
        error here: the embedding simply is not kept).
        """
        f = emb.features
        arr = (np.asarray(f, np.float32) if isinstance(f, np.ndarray)
               else f.detach().float().cpu().numpy())
        arr = np.ascontiguousarray(arr, np.float32)
        payload = arr.tobytes()
        head = json.dumps({
            "key": key, "engine_key": emb.key, "model_name": emb.model_name,
            "original_size": list(emb.original_size), "input_size": list(emb.input_size),
            "shape": list(arr.shape), "sha256": hashlib.sha256(payload).hexdigest(),
        }).encode()
        if len(payload) > self.max_bytes:
            return None
        path = self.path_for(key)
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.folder)
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC + struct.pack("<Q", len(head)) + head)
                fh.write(payload)
            os.replace(tmp, path)
            tmp = None
        except OSError:
            return None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self.evict(keep=path)
        return path

    def entries(self) -> list[tuple[Path, int, float]]:
        """(file, bytes, mtime) of every entry, least recently used first."""
        out = []
        try:
            for p in self.folder.glob("*" + _SUFFIX):
                try:
                    st = p.stat()
                except OSError:
                    continue
                out.append((p, st.st_size, st.st_mtime))
        except OSError:
            return []
        return sorted(out, key=lambda e: e[2])

    @property
    def total_bytes(self) -> int:
        return sum(e[1] for e in self.entries())

    def evict(self, keep: Path | None = None) -> int:
        """Delete least recently used entries until the folder fits ``max_bytes``."""
        entries = self.entries()
        total = sum(e[1] for e in entries)
        removed = 0
        for p, size, _ in entries:
            if total <= self.max_bytes:
                break
            if keep is not None and p == keep:
                continue
            try:
                p.unlink()
            except OSError:
                continue
            total -= size
            removed += 1
        return removed

    def clear(self) -> None:
        for p, _, _ in self.entries():
            p.unlink(missing_ok=True)


def default_store() -> EmbeddingStore | None:
    """The store an :class:`~app.core.engine.Engine` uses without ``store=``: the user cache's
    when ``$SAMSCOPE_EMBEDDING_STORE`` is ``1`` (or a folder), else none."""
    env = os.environ.get(STORE_ENV, "")
    if env in ("", "0", "false", "no"):
        return None
    return EmbeddingStore(None if env in ("1", "true", "yes") else env)
