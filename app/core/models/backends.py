"""Inference backends for SAM-family models: torch, or exported graphs in ONNX Runtime.

>>> model = load_model("litemedsam", backend="auto")    # onnx on CPU, torch on CUDA  # doctest: +SKIP
>>> set_backend(model, "torch")                         # switch back in place        # doctest: +SKIP

``"onnx"`` exports the image encoder and the prompt encoder + mask decoder from the weights in
memory on first use (seconds, once per weights digest, into ``<user cache>/exports``) and runs
them in ONNX Runtime. Masks, scores and candidate order equal torch's within float rounding
(tests/core/models/test_backends.py). On these 2-core CPUs the encoder is ~2x and a click ~3x
faster (bench/engine.py). ``"auto"`` is ``"onnx"`` on the CPU when onnxruntime is installed,
falling back to torch (with a status message) if an export fails; torch on GPUs.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

__all__ = ["BACKENDS", "BACKEND_ENV", "resolve_backend", "set_backend", "model_backend"]

BACKENDS = ("auto", "torch", "onnx")
#: overrides the default backend (``auto``) of :func:`~app.core.models.registry.load_model`
BACKEND_ENV = "SAMSCOPE_BACKEND"


def resolve_backend(backend: str | None, device: str) -> str:
    """The concrete backend for ``backend`` on ``device``: ``"torch"`` or ``"onnx"``.

    ``None`` means ``$SAMSCOPE_BACKEND`` or ``"auto"``. ``"auto"``: ``"onnx"`` on the CPU when
    onnxruntime is installed, else ``"torch"`` (GPUs, MPS: torch).

    Raises
    ------
    ValueError
        An unknown name, or ``"onnx"`` asked for a non-CPU device.
    """
    if backend is None:
        backend = os.environ.get(BACKEND_ENV) or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    on_cpu = str(device) == "cpu"
    if backend == "auto":
        return "onnx" if on_cpu and importlib.util.find_spec("onnxruntime") else "torch"
    if backend == "onnx" and not on_cpu:
        raise ValueError(f"the onnx backend runs on the CPU; the model is on {device!r}")
    return backend


def _sam_models(model):
    """The SamFamilyModel(s) inside ``model`` (a fine-tuned model holds two decoders)."""
    inner = [m for m in (model.__dict__.get("tuned"), model.__dict__.get("base"))
             if m is not None]
    return inner or [model]


def set_backend(model, backend: str | None = "auto", *,
                on_status: Callable[[str], None] | None = None) -> str:
    """Run ``model`` (a registry model, fine-tuned or not) on ``backend``, in place.

    Nothing is exported here: graphs are exported (or found) on the first embed / predict.

    Parameters
    ----------
    model : SamFamilyModel or FinetunedModel
    backend : {"auto", "torch", "onnx"} or None
    on_status : callable (str), optional
        Receives one-line messages (export started / finished, fallback to torch).

    Returns
    -------
    str
        The backend now set, ``"torch"`` or ``"onnx"``.
    """
    from app.core.models._onnx import OnnxRuntime

    requested = backend
    backend = resolve_backend(backend, str(getattr(model, "device", "cpu")))
    for m in _sam_models(model):
        if not hasattr(m, "_decode_net"):
            if backend != "torch":
                raise ValueError(f"{type(m).__name__} has no exported-graph backend")
            continue
        m._runtime = None if backend == "torch" else OnnxRuntime(
            on_status=on_status, strict=requested == "onnx")
        m.__dict__.pop("_pe_stamp", None)
    return backend


def model_backend(model) -> str:
    """The backend ``model`` runs on now (``"torch"`` after a fallback)."""
    return str(getattr(_sam_models(model)[0], "backend", "torch"))
