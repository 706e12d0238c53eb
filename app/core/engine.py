"""The engine: one model, an LRU cache of image embeddings, and prediction from prompts.

>>> engine = Engine(load_model("litemedsam"))                       # doctest: +SKIP
>>> cands = engine.predict(image, Prompt.from_box([40, 30, 200, 180]))  # doctest: +SKIP
>>> mask = cands.masks[cands.best_index]                              # (H, W) bool

Thread-safety: an :class:`Engine` is **not** thread-safe. The GUI owns one engine per session
and calls it from a single worker thread; the benchmark runs it in its own thread or process.
Computing an embedding twice is harmless but wasteful, so do not share one engine between
concurrent threads.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from app.core.image import Image2D
from app.core.models.base import Candidates, Embedding, Prompt, PromptableModel

__all__ = ["Engine", "EngineStats", "select_device", "configure_torch_threads"]

#: default bound of the embedding cache: ~64 LiteMedSAM / SAM embeddings (4 MiB each)
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


def select_device(preferred: str | None = None) -> str:
    """Pick the torch device: ``preferred`` if given, else CUDA, then MPS, then CPU.

    Parameters
    ----------
    preferred : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"``/``None``.

    Raises
    ------
    ValueError
        When ``preferred`` names a device this machine does not have.
    """
    import torch

    if preferred not in (None, "", "auto"):
        dev = str(preferred)
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {dev!r} requested but CUDA is not available")
        if dev == "mps" and not (getattr(torch.backends, "mps", None)
                                 and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' requested but MPS is not available")
        if not (dev == "cpu" or dev == "mps" or dev.startswith("cuda")):
            raise ValueError(f"unknown device {dev!r}; use cpu, cuda, cuda:N or mps")
        return dev
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def configure_torch_threads(n_threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads; by default one fewer than the cores (min 1).

    One core stays free for the Qt event loop: on a busy 2-core machine, two torch threads
    made the decoder ~10x slower than one. ``$SAMSCOPE_TORCH_THREADS`` overrides the default.

    Returns
    -------
    int
        The number of threads now set.
    """
    import torch

    if n_threads is None:
        env = os.environ.get("SAMSCOPE_TORCH_THREADS")
        if env:
            n_threads = int(env)
        else:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
                os.cpu_count() or 1)
            n_threads = max(1, cores - 1)
    n_threads = max(1, int(n_threads))
    if torch.get_num_threads() != n_threads:
        torch.set_num_threads(n_threads)
    _THREADS_CONFIGURED[0] = True
    return n_threads


# torch's thread count is process-wide; remember whether someone chose it already, so that a
# later Engine(...) without n_threads does not undo an explicit choice
_THREADS_CONFIGURED = [False]


@dataclass(frozen=True)
class EngineStats:
    """Counters of an :class:`Engine` since it was made.

    Attributes
    ----------
    embeddings_computed : int
        Image-encoder runs.
    embeddings_reused : int
        Embeddings served from the memory cache.
    embeddings_loaded : int
        Embeddings read from the on-disk :class:`EmbeddingStore` (counted apart from both).
    predictions : int
        Decoder runs.
    cache_entries, cache_bytes, cache_limit_bytes : int
    """

    embeddings_computed: int
    embeddings_reused: int
    predictions: int
    cache_entries: int
    cache_bytes: int
    cache_limit_bytes: int
    embeddings_loaded: int = 0  # served from the on-disk store (the encoder did not run)

    @property
    def hit_rate(self) -> float:
        """Reused / requested embeddings, 0.0 before any request."""
        total = self.embeddings_computed + self.embeddings_reused
        return self.embeddings_reused / total if total else 0.0


def _embedding_nbytes(emb: Embedding) -> int:
    f = emb.features
    if hasattr(f, "element_size"):
        return int(f.element_size() * f.nelement())
    return int(getattr(f, "nbytes", 0))


class Engine:
    """A promptable model plus an LRU cache of its image embeddings.

    Parameters
    ----------
    model : PromptableModel
        From :func:`app.core.models.registry.load_model`.
    cache_bytes : int
        Upper bound on the memory held by cached embeddings (LRU eviction); 0 disables caching.
    n_threads : int or None
        torch CPU threads for a CPU model (see :func:`configure_torch_threads`); ignored on GPUs.
        torch's thread count is process-wide: ``None`` sets the default (cores - 1) only if
        nothing in this process has configured it yet.
    store : EmbeddingStore, True, False or None
        Embeddings on disk (:mod:`app.core.models.embedding_store`): checked after the memory
        cache, filled after each encoder run. ``True``: the user cache's store; ``None``: that
        store only when ``$SAMSCOPE_EMBEDDING_STORE=1``; ``False``: none.

    Notes
    -----
    Not thread-safe; see the module docstring.
    """

    def __init__(self, model: PromptableModel, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 n_threads: int | None = None, store=None) -> None:
        from app.core.models.embedding_store import EmbeddingStore, default_store

        self.model = model
        self.store: EmbeddingStore | None = (
            EmbeddingStore() if store is True else None if store is False
            else default_store() if store is None else store)
        self._loaded = 0
        self.cache_limit_bytes = int(cache_bytes)
        self._cache: OrderedDict[str, tuple[Embedding, int]] = OrderedDict()
        self._cache_bytes = 0
        self._computed = 0
        self._reused = 0
        self._predictions = 0
        if str(getattr(model, "device", "cpu")) == "cpu" and (
                n_threads is not None or not _THREADS_CONFIGURED[0]):
            configure_torch_threads(n_threads)

    # --- cache ----------------------------------------------------------------------------
    def embedding_key(self, image: Image2D) -> str:
        """Cache key: image content hash + model/weights + preprocessing."""
        from app.core.models._sam_family import image_key

        token = getattr(self.model, "cache_token", None)
        model_part = token() if callable(token) else str(getattr(self.model, "name", "model"))
        return f"{image_key(image)}|{model_part}"

    def embed(self, image: Image2D) -> Embedding:
        """The embedding of ``image``, from the cache when this image was seen before.

        Parameters
        ----------
        image : Image2D
            (H, W) or (H, W, 3), any dtype; intensities reach the model through its window.
        """
        key = self.embedding_key(image)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self._reused += 1
            return hit[0]
        disk_key = None
        if self.store is not None:
            from app.core.models.embedding_store import store_key

            disk_key = store_key(self.model, key.split("|", 1)[0])
            emb = self.store.get(disk_key)
            if emb is not None and emb.model_name == getattr(self.model, "name", None) and \
                    tuple(emb.original_size) == tuple(image.shape):
                emb = replace(emb, key=key, features=self._features_for_model(emb.features))
                self._loaded += 1
                self._store(key, emb)
                return emb
        emb = self.model.embed(image)
        if emb.key != key:
            emb = replace(emb, key=key)
        self._computed += 1
        self._store(key, emb)
        if disk_key is not None:
            self.store.put(disk_key, emb)
        return emb

    def _features_for_model(self, features: np.ndarray):
        # a stored embedding is an ndarray; the torch backend wants a tensor on its device
        from app.core.models.backends import model_backend

        if model_backend(self.model) != "torch":
            return features
        import torch

        return torch.from_numpy(features).to(str(getattr(self.model, "device", "cpu")))

    def _store(self, key: str, emb: Embedding) -> None:
        nbytes = _embedding_nbytes(emb)
        if nbytes > self.cache_limit_bytes:
            return
        self._cache[key] = (emb, nbytes)
        self._cache_bytes += nbytes
        while self._cache_bytes > self.cache_limit_bytes and self._cache:
            _, (_, old) = self._cache.popitem(last=False)
            self._cache_bytes -= old

    def clear_cache(self) -> None:
        """Drop every cached embedding (counters are kept)."""
        self._cache.clear()
        self._cache_bytes = 0

    def is_cached(self, image: Image2D) -> bool:
        """Whether ``image``'s embedding is in the memory cache or the on-disk store (does
        not count as a use; a stored one takes milliseconds to load)."""
        key = self.embedding_key(image)
        if key in self._cache:
            return True
        if self.store is None:
            return False
        from app.core.models.embedding_store import store_key

        return store_key(self.model, key.split("|", 1)[0]) in self.store

    @property
    def stats(self) -> EngineStats:
        return EngineStats(
            embeddings_computed=self._computed,
            embeddings_reused=self._reused,
            predictions=self._predictions,
            cache_entries=len(self._cache),
            cache_bytes=self._cache_bytes,
            cache_limit_bytes=self.cache_limit_bytes,
            embeddings_loaded=self._loaded,
        )

    # --- prediction -----------------------------------------------------------------------
    def predict(self, image_or_embedding: Image2D | Embedding, prompt: Prompt,
                multimask: bool = True) -> Candidates:
        """Masks for ``prompt`` on an image (embedded on demand, cached) or an embedding.

        Parameters
        ----------
        image_or_embedding : Image2D or Embedding
        prompt : Prompt
            Original-image pixels: points ``(x, y)``, inclusive box ``[x0, y0, x1, y1]``,
            optional previous ``mask_logits`` (256, 256) of the same model.
        multimask : bool
            SAM: three candidates. Models whose outputs cannot be ranked return one.

        Returns
        -------
        Candidates
            masks (K, H, W) bool at the original resolution, scores (K,), low-res logits.
        """
        emb = self._as_embedding(image_or_embedding)
        out = self.model.predict(emb, prompt, multimask=multimask)
        self._predictions += 1
        return out

    def predict_boxes(self, image_or_embedding: Image2D | Embedding,
                      boxes_xyxy: np.ndarray) -> Candidates:
        """One mask per box (several objects at once), single-mask output.

        Parameters
        ----------
        boxes_xyxy : ndarray, shape (N, 4)
            Inclusive corners in original pixels.

        Returns
        -------
        Candidates
            ``masks[i]`` answers ``boxes_xyxy[i]``; ``meaningful`` is False (not alternatives).
        """
        emb = self._as_embedding(image_or_embedding)
        fn = getattr(self.model, "predict_boxes", None)
        if fn is not None:
            out = fn(emb, boxes_xyxy)
        else:  # a model without batched boxes: one call per box
            parts = [self.model.predict(emb, Prompt.from_box(b), multimask=False)
                     for b in np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)]
            out = Candidates(np.concatenate([p.masks for p in parts]),
                             np.concatenate([p.scores for p in parts]),
                             np.concatenate([p.low_res_logits for p in parts]), meaningful=False)
        self._predictions += 1
        return out

    def embed_volume(self, volume, slices=None, *,
                     on_progress: Callable[[int, int], None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> list[Embedding]:
        """Embed several slices of a volume (e.g. before propagating a mask), through the cache.

        Parameters
        ----------
        volume : Volume
            Pixels (Z, Y, X) or (Z, Y, X, 3).
        slices : iterable of int, optional
            Slice indices along z; default all.
        on_progress : callable (done, total), optional
            Called after each slice.
        should_stop : callable returning bool, optional
            Checked before each slice; when it returns True the embeddings so far are returned.

        Returns
        -------
        list of Embedding
            In the order of ``slices``. Keep ``cache_bytes`` above ``len(slices)`` embeddings
            (4 MiB each) if they should stay cached.
        """
        order = list(range(volume.n_slices) if slices is None else slices)
        out: list[Embedding] = []
        for i, z in enumerate(order):
            if should_stop is not None and should_stop():
                break
            out.append(self.embed(volume.slice(int(z))))
            if on_progress is not None:
                on_progress(i + 1, len(order))
        return out

    def _as_embedding(self, image_or_embedding: Image2D | Embedding) -> Embedding:
        if isinstance(image_or_embedding, Embedding):
            return image_or_embedding
        if isinstance(image_or_embedding, Image2D):
            return self.embed(image_or_embedding)
        raise TypeError(
            f"expected an Image2D or an Embedding, got {type(image_or_embedding).__name__}")
