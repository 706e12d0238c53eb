"""Exported graphs of a SAM-family network, run by ONNX Runtime.

Two graphs per network, exported from the weights in memory on first use (never at import)
into ``<user cache>/exports``, one file per weights digest, so that a second run, and every
model sharing those weights (a fine-tuned decoder keeps its base's image encoder), finds them:

``encoder-<digest>-<S>.onnx``
    image (1, 3, S, S) float32 -> features (1, 256, 64, 64).
``decoder-<digest>-<S>.onnx``
    prompt encoder + mask decoder: features, point_coords (1, P, 2) in model-input pixels,
    point_labels (1, P) (1 object, 0 background, 2/3 box corners, -1 padding), mask_input
    (1, 1, 256, 256), has_mask_input (1,) -> low-res logits (1, 4, 256, 256) and predicted IoU
    (1, 4) for all four outputs; the caller takes output 0 (single mask) or 1..3 (multimask),
    as segment-anything's ``MaskDecoder.forward`` does.

Points and boxes are encoded exactly as segment-anything's ``PromptEncoder`` does (box
corners are points with labels 2 and 3; without a box one padding point is appended).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.core.errors import SamScopeError

__all__ = [
    "BackendUnavailableError",
    "OnnxRuntime",
    "exports_dir",
    "module_digest",
    "module_stamp",
    "ort_threads",
]

#: bump when the exported graphs' inputs/outputs or the wrapper code change
EXPORT_VERSION = 1
#: set $SAMSCOPE_ORT_THREADS to fix ONNX Runtime's intra-op threads for both graphs
ORT_THREADS_ENV = "SAMSCOPE_ORT_THREADS"

_EXPORT_LOCK = threading.Lock()


class BackendUnavailableError(SamScopeError):
    """The requested inference backend cannot run here (package missing, export failed)."""


def user_cache_root() -> Path:
    """The per-user cache folder (``$SAMSCOPE_CACHE_DIR`` overrides it, as for checkpoints)."""
    from app.core.models.checkpoints import CACHE_ENV

    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("samscope", appauthor=False))


def exports_dir() -> Path:
    """Where exported graphs are kept: ``<user cache>/exports``."""
    return user_cache_root() / "exports"


def _tensors(modules):
    for mi, m in enumerate(modules):
        for k, v in m.state_dict(keep_vars=True).items():
            yield f"{mi}.{k}", v


def module_stamp(modules) -> tuple:
    """Cheap identity of the tensors of ``modules``: changes when one is replaced or modified
    in place (torch bumps a tensor's ``_version`` on every in-place write)."""
    return tuple((k, id(v), v._version) for k, v in _tensors(modules))


def module_digest(modules) -> str:
    """SHA-256 (hex) of names, dtypes, shapes and bytes of every tensor of ``modules``."""
    import torch

    h = hashlib.sha256()
    for k, v in _tensors(modules):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def ort_threads(part: str) -> int:
    """ONNX Runtime intra-op threads for ``part``.

    The encoder runs in a background worker while the user waits for the slice: all cores.
    The decoder runs per click while Qt paints: the same count as torch (cores - 1 by default,
    see :func:`app.core.engine.configure_torch_threads`). Threads do not spin when idle.
    ``$SAMSCOPE_ORT_THREADS`` overrides both.
    """
    env = os.environ.get(ORT_THREADS_ENV)
    if env:
        return max(1, int(env))
    if part == "encoder":
        return _cores()
    import torch

    return max(1, torch.get_num_threads())


def _decoder_module(net):
    """prompt encoder + mask decoder as one module with array inputs (see the module doc)."""
    import torch

    class _PromptDecoder(torch.nn.Module):
        def __init__(self, net) -> None:
            super().__init__()
            self.pe = net.prompt_encoder
            self.md = net.mask_decoder
            self.register_buffer("image_pe", net.prompt_encoder.get_dense_pe().detach().clone())
            h, w = net.prompt_encoder.input_image_size
            self.register_buffer("size_wh", torch.tensor([float(w), float(h)]))

        def forward(self, image_embeddings, point_coords, point_labels, mask_input,
                    has_mask_input):
            pe = self.pe
            emb = pe.pe_layer._pe_encoding((point_coords + 0.5) / self.size_wh)
            lab = point_labels.unsqueeze(-1)
            emb = emb * (lab != -1).to(emb.dtype)
            emb = emb + pe.not_a_point_embed.weight * (lab == -1).to(emb.dtype)
            for i in range(pe.num_point_embeddings):
                emb = emb + pe.point_embeddings[i].weight * (lab == i).to(emb.dtype)
            no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
            dense = (has_mask_input * pe.mask_downscaling(mask_input)
                     + (1 - has_mask_input) * no_mask)
            return self.md.predict_masks(
                image_embeddings=image_embeddings, image_pe=self.image_pe,
                sparse_prompt_embeddings=emb, dense_prompt_embeddings=dense)

    return _PromptDecoder(net).eval()


def _decoder_inputs(features, coords, labels, box, mask):
    """Arrays for the decoder graph for one prediction (one box at most)."""
    pts = [] if coords is None else [np.asarray(coords, np.float32).reshape(-1, 2)]
    lab = [] if labels is None else [np.asarray(labels, np.float32).reshape(-1)]
    if box is not None:
        pts.append(np.asarray(box, np.float32).reshape(2, 2))
        lab.append(np.array([2.0, 3.0], np.float32))
    elif coords is not None:  # segment-anything pads point-only prompts with a non-point
        pts.append(np.zeros((1, 2), np.float32))
        lab.append(np.array([-1.0], np.float32))
    p = np.concatenate(pts) if pts else np.zeros((0, 2), np.float32)
    q = np.concatenate(lab) if lab else np.zeros((0,), np.float32)
    return {
        "image_embeddings": features,
        "point_coords": p[None],
        "point_labels": q[None],
        "mask_input": (np.zeros((1, 1, 256, 256), np.float32) if mask is None
                       else np.asarray(mask, np.float32).reshape(1, 1, 256, 256)),
        "has_mask_input": np.array([0.0 if mask is None else 1.0], np.float32),
    }


def _as_numpy(features) -> np.ndarray:
    if isinstance(features, np.ndarray):
        return np.ascontiguousarray(features, np.float32)
    return np.ascontiguousarray(features.detach().float().cpu().numpy())


class OnnxRuntime:
    """Runs a :class:`~app.core.models._sam_family.SamFamilyModel`'s networks as exported
    graphs in ONNX Runtime; exports them on first use (see the module docstring).

    Parameters
    ----------
    on_status : callable (str), optional
        Told when a graph is exported (it takes seconds) and where it was found.
    strict : bool
        ``False`` (backend ``"auto"``): when onnxruntime is missing or an export fails, say so
        through ``on_status`` and run torch instead. ``True``: raise
        :class:`BackendUnavailableError`.
    """

    name = "onnx"

    def __init__(self, *, on_status: Callable[[str], None] | None = None,
                 strict: bool = False) -> None:
        self.on_status = on_status
        self.strict = strict
        self._sessions: dict[str, tuple[tuple, object, str]] = {}
        self.failed: str | None = None
        self.exported: list[str] = []  # graph files this runtime exported (not found)

    def _say(self, msg: str) -> None:
        if self.on_status is not None:
            self.on_status(msg)

    # --- graphs ---------------------------------------------------------------------------
    def graph_path(self, model, part: str) -> Path:
        digest = model.weights_digest(part)
        size = model.preprocessing.input_size
        return exports_dir() / f"{part}-{digest[:24]}-{size}-v{EXPORT_VERSION}.onnx"

    def _session(self, model, part: str):
        from app.core.models._onnx import module_stamp

        stamp = module_stamp(model._parts(part))
        hit = self._sessions.get(part)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise BackendUnavailableError(
                "the onnx backend needs onnxruntime (pip install onnxruntime)") from None
        path = self.graph_path(model, part)
        with _EXPORT_LOCK:
            if not path.is_file():
                self._export(model, part, path)
            so = ort.SessionOptions()
            so.intra_op_num_threads = ort_threads(part)
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            try:
                sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - a damaged file: export it again
                self._say(f"{path.name} could not be loaded ({exc}); exporting it again")
                path.unlink(missing_ok=True)
                self._export(model, part, path)
                sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self._sessions[part] = (stamp, sess, str(path))
        return sess

    def _export(self, model, part: str, path: Path) -> None:
        import warnings

        import torch

        what = "image encoder" if part == "encoder" else "prompt encoder + mask decoder"
        self._say(f"Exporting {model.name} {what} to ONNX (once for these weights)...")
        t0 = time.perf_counter()
        net = model.net
        size = model.preprocessing.input_size
        cpu = next(net.parameters()).device.type == "cpu"
        if part == "encoder":
            module = net.image_encoder
            example = (torch.rand(1, 3, size, size),)
            names_in, names_out = ["image"], ["features"]
            dynamic = None
        else:
            module = _decoder_module(net)
            feats = torch.randn(1, 256, 64, 64)
            # a point, a box and a mask: every input takes part in the trace
            ex = _decoder_inputs(feats.numpy(), np.array([[size * 0.4, size * 0.5]]),
                                 np.array([1]), np.array([size * 0.2, size * 0.3,
                                                          size * 0.7, size * 0.8]),
                                 np.random.default_rng(0).normal(size=(256, 256)))
            example = tuple(torch.from_numpy(np.asarray(v)) for v in ex.values())
            names_in, names_out = list(ex), ["low_res_logits", "iou_predictions"]
            dynamic = {"point_coords": {1: "n_points"}, "point_labels": {1: "n_points"}}
        if not cpu:  # export from a CPU copy: the graph runs on the CPU
            import copy

            module = copy.deepcopy(module).cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx", dir=path.parent)
        os.close(fd)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(module.eval(), example, tmp, dynamo=False, opset_version=17,
                                  input_names=names_in, output_names=names_out,
                                  dynamic_axes=dynamic, do_constant_folding=True)
            self._check(module, example, names_in, tmp)
            os.replace(tmp, path)  # atomic: a concurrent reader sees no half-written file
        except BackendUnavailableError:
            raise
        except Exception as exc:
            raise BackendUnavailableError(
                f"exporting the {what} of {model.name!r} to ONNX failed: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.exported.append(str(path))
        self._say(f"Exported {model.name} {what} in {time.perf_counter() - t0:.1f} s: {path}")

    @staticmethod
    def _check(module, example, names_in, tmp) -> None:
        """The exported graph must reproduce the module on the example (else: refuse it)."""
        import onnxruntime as ort
        import torch

        with torch.inference_mode():
            ref = module(*example)
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = sess.run(None, {n: t.numpy() for n, t in zip(names_in, example)})
        for r, g in zip(ref, got):
            r = r.float().numpy()
            err = float(np.max(np.abs(r - g)))
            if err > 1e-3 * max(1.0, float(np.max(np.abs(r)))):
                raise BackendUnavailableError(
                    f"the exported graph differs from the network by {err:.3g}; not using it")

    # --- running --------------------------------------------------------------------------
    def _fallback(self, model, exc: Exception) -> None:
        if self.strict:
            raise exc
        self.failed = str(exc)
        self._say(f"{exc}; using torch")
        model._runtime = None

    def encode(self, model, batch: np.ndarray):
        try:
            sess = self._session(model, "encoder")
        except BackendUnavailableError as exc:
            self._fallback(model, exc)
            return model._encode(batch[0])
        return sess.run(None, {"image": np.ascontiguousarray(batch, np.float32)})[0]

    def decode(self, model, features, coords, labels, boxes, mask, multimask: bool):
        """As :meth:`SamFamilyModel._decode_net`; ``None`` hands the prompt to torch."""
        if coords is None and boxes is None:
            return None  # a mask alone: zero prompt tokens, which the graph does not take
        try:
            sess = self._session(model, "decoder")
        except BackendUnavailableError as exc:
            self._fallback(model, exc)
            return None
        feats = _as_numpy(features)
        sl = slice(1, None) if multimask else slice(0, 1)
        lows, ious = [], []
        for box in ([None] if boxes is None else boxes):
            low, iou = sess.run(None, _decoder_inputs(feats, coords, labels, box, mask))
            lows.append(low[0, sl])
            ious.append(iou[0, sl])
        return (np.ascontiguousarray(np.concatenate(lows), np.float32),
                np.concatenate(ious).astype(np.float32))
