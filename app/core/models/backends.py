"""Inference backends for SAM-family models: torch, or exported graphs in ONNX Runtime / OpenVINO.

>>> model = load_model("litemedsam", backend="auto")    # exported graphs on CPU  # doctest: +SKIP
>>> set_backend(model, "torch")                         # switch back in place    # doctest: +SKIP

The exported backends export the image encoder and the prompt encoder + mask decoder from the
weights in memory on first use (seconds, once per weights digest, into ``<user cache>/exports``;
see :mod:`app.core.models._onnx`). Masks, scores and candidate order equal torch's within float
rounding (tests/core/models/test_backends.py).

* ``"onnx"``: every graph in ONNX Runtime.
* ``"openvino"``: every graph in OpenVINO (fp32).
* ``"openvino+onnx"``: the encoder in OpenVINO, the per-click graphs in ONNX Runtime -- on
  these 2-core CPUs the faster runtime for each part (bench/engine.py).
* ``"auto"``: on the CPU ``"openvino+onnx"`` when both packages are installed, else ``"onnx"``
  when onnxruntime is, else torch; falling back (with a status message) from OpenVINO to ONNX
  Runtime and from ONNX Runtime to torch if an export or a load fails. Torch on GPUs.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

__all__ = ["BACKENDS", "BACKEND_ENV", "backend_title", "resolve_backend", "set_backend",
           "model_backend"]

BACKENDS = ("auto", "torch", "onnx", "openvino", "openvino+onnx")
#: overrides the default backend (``auto``) of :func:`~app.core.models.registry.load_model`
BACKEND_ENV = "SAMSCOPE_BACKEND"


#: how a backend is named to a user
_TITLES = {"auto": "automatic", "torch": "PyTorch", "onnx": "ONNX Runtime",
           "openvino": "OpenVINO", "openvino+onnx": "OpenVINO encoder + ONNX Runtime"}


def backend_title(backend: str) -> str:
    """The name a user reads for ``backend`` (e.g. ``"ONNX Runtime"``)."""
    return _TITLES.get(backend, backend)


def resolve_backend(backend: str | None, device: str) -> str:
    """The concrete backend for ``backend`` on ``device`` (any of :data:`BACKENDS` but auto).

    ``None`` means ``$SAMSCOPE_BACKEND`` or ``"auto"``. ``"auto"`` on the CPU:
    ``"openvino+onnx"`` when openvino and onnxruntime are installed, ``"onnx"`` when only
    onnxruntime is, else ``"torch"``; on GPUs and MPS ``"torch"``.

    Raises
    ------
    ValueError
        An unknown name, or an exported-graph backend asked for a non-CPU device.
    """
    if backend is None:
        backend = os.environ.get(BACKEND_ENV) or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    on_cpu = str(device) == "cpu"
    if backend == "auto":
        if not on_cpu or not importlib.util.find_spec("onnxruntime"):
            return "torch"
        return "openvino+onnx" if importlib.util.find_spec("openvino") else "onnx"
    if backend != "torch" and not on_cpu:
        raise ValueError(f"the {backend} backend runs on the CPU; the model is on {device!r}")
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
    backend : one of :data:`BACKENDS`, or None
    on_status : callable (str), optional
        Receives one-line messages (export started / finished, fallback to torch).

    Returns
    -------
    str
        The backend now set (``"auto"`` resolved).
    """
    from app.core.models._onnx import RUNTIMES

    requested = backend
    backend = resolve_backend(backend, str(getattr(model, "device", "cpu")))
    for m in _sam_models(model):
        if not hasattr(m, "_decode_net"):
            if backend != "torch":
                raise ValueError(f"{type(m).__name__} has no exported-graph backend")
            continue
        m._runtime = None if backend == "torch" else RUNTIMES[backend](
            on_status=on_status, strict=requested not in (None, "auto"))
        m.__dict__.pop("_pe_stamp", None)
    return backend


def model_backend(model) -> str:
    """The backend ``model`` runs on now (``"torch"`` after a fallback)."""
    return str(getattr(_sam_models(model)[0], "backend", "torch"))
