"""Exported graphs of a SAM-family network, run by ONNX Runtime, OpenVINO, or both.

Three graphs per network, exported from the weights in memory on first use (never at import)
into ``<user cache>/exports``, named by the weights' digest, so that a second run, and every
model sharing those weights (a fine-tuned decoder keeps its base's image encoder), finds them:

``encoder-<digest>-<S>-v<N>.onnx``
    image (1, 3, S, S) float32 -> features (1, 256, 64, 64).
``prepare-<digest>-<S>-v<N>.onnx``
    the decoder's per-image work: features, mask_input (1, 1, 256, 256), has_mask_input (1,)
    -> the first transformer layer's image-side projections
    (:class:`~app.core.models._decoder_graphs.PrepareImage`). Without a mask input it runs
    once per embedding, not per click.
``click-<digest>-<S>-v<N>.onnx``
    the rest of prompt encoder + mask decoder: those projections, point_coords (1, P, 2) in
    model-input pixels, point_labels (1, P) (1 object, 0 background, 2/3 box corners, -1
    padding) -> low-res logits (1, 4, 256, 256) and predicted IoU (1, 4) for all four
    outputs; the caller takes output 0 (single mask) or 1..3 (multimask), as
    segment-anything's ``MaskDecoder.forward`` does.

Points and boxes are encoded exactly as segment-anything's ``PromptEncoder`` does (box
corners are points with labels 2 and 3; without a box one padding point is appended). Each
export is run, in the runtime that will run it, against segment-anything's own modules before
it is kept.

Runtimes (:data:`RUNTIMES`): :class:`OnnxRuntime` (``"onnx"``), :class:`OpenVinoRuntime`
(``"openvino"``, fp32), :class:`MixedRuntime` (``"openvino+onnx"``: OpenVINO's encoder, ONNX
Runtime's click graphs) -- one set of graph files serves all three.
"""

from __future__ import annotations

import hashlib
import importlib.util
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
    "MixedRuntime",
    "OnnxRuntime",
    "OpenVinoRuntime",
    "RUNTIMES",
    "exports_dir",
    "module_digest",
    "module_stamp",
    "ort_threads",
]

#: bump when the exported graphs' inputs/outputs or the wrapper code change
EXPORT_VERSION = 2
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
    """Intra-op threads of an exported graph: every core (``$SAMSCOPE_ORT_THREADS`` overrides).

    The encoder runs in a background worker while the user waits for the slice, a click's
    graphs while the user waits for its masks. Unlike torch's OpenMP pool (which, given every
    core, collapsed when Qt needed one: see :func:`app.core.engine.configure_torch_threads`),
    ONNX Runtime's threads do not spin here: on two cores with one of them kept busy, two
    threads decoded a click no slower than one (52 vs 58 ms p50), and idle in 41 vs 58 ms.
    """
    env = os.environ.get(ORT_THREADS_ENV)
    if env:
        return max(1, int(env))
    return _cores()


def _prompt_arrays(coords, labels, box):
    """point_coords (1, P, 2) and point_labels (1, P) for one prediction (one box at most),
    as segment-anything's ``PromptEncoder`` builds them: box corners are points labelled 2
    and 3; without a box, one padding point (label -1) is appended."""
    pts = [] if coords is None else [np.asarray(coords, np.float32).reshape(-1, 2)]
    lab = [] if labels is None else [np.asarray(labels, np.float32).reshape(-1)]
    if box is not None:
        pts.append(np.asarray(box, np.float32).reshape(2, 2))
        lab.append(np.array([2.0, 3.0], np.float32))
    elif coords is not None:
        pts.append(np.zeros((1, 2), np.float32))
        lab.append(np.array([-1.0], np.float32))
    p = np.concatenate(pts) if pts else np.zeros((0, 2), np.float32)
    q = np.concatenate(lab) if lab else np.zeros((0,), np.float32)
    return p[None], q[None]


def _mask_arrays(mask):
    """mask_input (1, 1, 256, 256) and has_mask_input (1,) for the per-image graph."""
    if mask is None:
        return np.zeros((1, 1, 256, 256), np.float32), np.zeros(1, np.float32)
    return np.asarray(mask, np.float32).reshape(1, 1, 256, 256), np.ones(1, np.float32)


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
        ``False`` (backend ``"auto"``): when the runtime is missing or an export fails, say so
        through ``on_status`` and run torch instead. ``True``: raise
        :class:`BackendUnavailableError`.
    """

    name = "onnx"
    #: the runtime that runs each graph: ``"onnxruntime"`` or ``"openvino"``
    runs_on = {"encoder": "onnxruntime", "prepare": "onnxruntime", "click": "onnxruntime"}
    #: per-image graph outputs kept (each ~10 MiB: the slices a user moves between)
    PREPARED_CACHE = 4

    def __init__(self, *, on_status: Callable[[str], None] | None = None,
                 strict: bool = False) -> None:
        self.on_status = on_status
        self.strict = strict
        self._sessions: dict[str, tuple[tuple, Callable, str]] = {}
        self._prepared: list[tuple[object, Callable, np.ndarray | None, list]] = []
        self.failed: str | None = None
        self.exported: list[str] = []  # graph files this runtime exported (not found)

    def _say(self, msg: str) -> None:
        if self.on_status is not None:
            self.on_status(msg)

    # --- graphs ---------------------------------------------------------------------------
    def graph_path(self, model, part: str) -> Path:
        """``<cache>/exports/<part>-<weights digest>-<input size>-v<version>.onnx``."""
        digest = model.weights_digest("encoder" if part == "encoder" else "decoder")
        size = model.preprocessing.input_size
        return exports_dir() / f"{part}-{digest[:24]}-{size}-v{EXPORT_VERSION}.onnx"

    def _open(self, path: Path, part: str) -> Callable[[dict], list]:
        """Load one graph in its runtime; ``run(inputs) -> outputs`` (raises if the file is
        bad)."""
        opener = _open_openvino if self.runs_on[part] == "openvino" else _open_onnxruntime
        return opener(path, ort_threads(part))

    def _available(self) -> None:
        for package in sorted(set(self.runs_on.values())):
            if importlib.util.find_spec(package) is None:
                raise BackendUnavailableError(
                    f"the {self.name} backend needs {package} (pip install {package})")

    def _session(self, model, part: str, stamp: tuple | None = None) -> Callable[[dict], list]:
        """The loaded graph of ``part`` for the weights as they are now (``stamp``: their
        :func:`module_stamp`, when the caller has it)."""
        if stamp is None:
            stamp = module_stamp(model._parts("encoder" if part == "encoder" else "decoder"))
        hit = self._sessions.get(part)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        self._available()
        parts = ("encoder",) if part == "encoder" else DECODER_PARTS
        with _EXPORT_LOCK:
            paths = {p: self.graph_path(model, p) for p in parts}
            if not all(path.is_file() for path in paths.values()):
                self._export(model, part, paths)
            try:
                runs = {p: self._open(path, p) for p, path in paths.items()}
            except Exception as exc:  # noqa: BLE001 - a damaged file, or the runtime
                if self.runs_on[part] != "onnxruntime" and _loads_in_onnxruntime(paths):
                    raise BackendUnavailableError(  # the files are sound: it is the runtime
                        f"{self.runs_on[part]} cannot load {paths[part].name}: {exc}") from exc
                self._say(f"{paths[part].name} could not be loaded ({exc}); exporting it again")
                for path in paths.values():
                    path.unlink(missing_ok=True)
                self._export(model, part, paths)
                try:
                    runs = {p: self._open(path, p) for p, path in paths.items()}
                except Exception as exc2:  # noqa: BLE001 - the runtime, not the file
                    raise BackendUnavailableError(
                        f"the {self.name} backend cannot load {paths[part].name}: {exc2}"
                    ) from exc2
            self._check_runtime(model, part, paths, runs)
        for p, run in runs.items():
            self._sessions[p] = (stamp, run, str(paths[p]))
        return runs[part]

    def _export(self, model, part: str, paths: dict[str, Path]) -> None:
        """Export the encoder, or both decoder graphs, checked against torch; each file is
        renamed into place only when complete (a reader never sees half a graph)."""
        import warnings

        import torch

        what = "image encoder" if part == "encoder" else "prompt encoder + mask decoder"
        self._say(f"Exporting {model.name} {what} to ONNX (once for these weights)...")
        t0 = time.perf_counter()
        net = _cpu_net(model.net)
        size = model.preprocessing.input_size
        graphs = _encoder_graphs(net, size) if part == "encoder" else _decoder_graphs(net, size)
        tmps: dict[str, str] = {}
        try:
            for p, (module, example, names_in, names_out, dynamic) in graphs.items():
                path = paths[p]
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmps[p] = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx",
                                               dir=path.parent)
                os.close(fd)
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(module, example, tmps[p], dynamo=False, opset_version=17,
                                      input_names=names_in, output_names=names_out,
                                      dynamic_axes=dynamic, do_constant_folding=True)
            # the files are checked in ONNX Runtime, the reference runtime for the format
            self._check(net, part, {p: _open_onnxruntime(Path(t), ort_threads(p))
                                    for p, t in tmps.items()}, size)
            for p, tmp in tmps.items():
                os.replace(tmp, paths[p])
        except BackendUnavailableError:
            raise
        except Exception as exc:
            raise BackendUnavailableError(
                f"exporting the {what} of {model.name!r} to ONNX failed: {exc}") from exc
        finally:
            for tmp in tmps.values():
                if os.path.exists(tmp):
                    os.unlink(tmp)
        self.exported.extend(str(paths[p]) for p in graphs)
        self._say(f"Exported {model.name} {what} in {time.perf_counter() - t0:.1f} s: "
                  f"{paths[part].parent}")

    def _check_runtime(self, model, part: str, paths: dict[str, Path], runs: dict) -> None:
        """Graphs run by another runtime than ONNX Runtime are checked against torch in it
        too, once per graph file and runtime version (a ``.checked`` file records it)."""
        other = sorted({self.runs_on[p] for p in paths} - {"onnxruntime"})
        if not other:
            return
        tag = "-".join(f"{r}{_version(r)}" for r in other)
        first = next(iter(paths.values()))  # one marker per export (decoder: its pair)
        marker = first.with_name(f"{first.stem}.{tag}.checked")
        if marker.is_file():
            return
        try:
            self._check(_cpu_net(model.net), part, runs, model.preprocessing.input_size)
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(f"{tag}: {exc}") from exc
        try:
            marker.touch()
        except OSError:  # a read-only cache: the check runs again next time, nothing breaks
            pass

    @staticmethod
    def _check(net, part: str, runs: dict[str, Callable], size: int) -> None:
        """The exported graphs, run by this runtime, must reproduce segment-anything's own
        modules on an example (else: refuse them)."""
        import torch

        from app.core.models._decoder_graphs import decoder_outputs

        rng = np.random.default_rng(0)
        cases = []
        if part == "encoder":
            image = rng.random((1, 3, size, size), dtype=np.float32)
            with torch.inference_mode():
                ref = net.image_encoder(torch.from_numpy(image))
            cases.append(([ref], runs["encoder"]({"image": image})))
        else:
            feats = rng.normal(size=(1, 256, 64, 64)).astype(np.float32)
            point = np.array([[size * 0.4, size * 0.5], [size * 0.1, size * 0.2]], np.float32)
            box = np.array([size * 0.2, size * 0.3, size * 0.7, size * 0.8], np.float32)
            mask = rng.normal(size=(256, 256)).astype(np.float32)
            for coords, labels, b, m in ((point, np.array([1, 0]), None, None),
                                         (point[:1], np.array([1]), box, mask),
                                         (None, None, box, None)):
                with torch.inference_mode():
                    ref = decoder_outputs(net, feats, coords, labels,
                                          None if b is None else b[None], m)
                got = _run_decoder(runs, feats, coords, labels, b, m)
                cases.append((list(ref), got))
        for ref, got in cases:
            for r, g in zip(ref, got):
                r = r.float().numpy()
                err = float(np.max(np.abs(r - g)))
                if err > 1e-3 * max(1.0, float(np.max(np.abs(r)))):
                    raise BackendUnavailableError(
                        f"the exported graph differs from the network by {err:.3g}; not using it")

    # --- running --------------------------------------------------------------------------
    def _fallback(self, model, exc: Exception):
        """Not strict (``"auto"``): say why and run on ONNX Runtime when this runtime used
        OpenVINO and ONNX Runtime is there, else on torch. Returns the new runtime (or None)."""
        if self.strict:
            raise exc
        self.failed = str(exc)
        if "openvino" in self.runs_on.values() and importlib.util.find_spec("onnxruntime"):
            self._say(f"{exc}; using ONNX Runtime")
            model._runtime = OnnxRuntime(on_status=self.on_status)
        else:
            self._say(f"{exc}; using torch")
            model._runtime = None
        return model._runtime

    def encode(self, model, batch: np.ndarray):
        try:
            run = self._session(model, "encoder")
        except BackendUnavailableError as exc:
            self._fallback(model, exc)
            return model._encode(batch[0])
        return run({"image": np.ascontiguousarray(batch, np.float32)})[0]

    def _prepare(self, prepare, features, mask) -> list:
        """The per-image graph's outputs, kept for the last few (embedding, mask input) pairs:
        a user's clicks on one slice, or on one accepted object being refined (its logits fed
        back unchanged), run it once. An entry answers only the same ``features`` object and
        an equal mask input."""
        for i, (feats, run, kept_mask, out) in enumerate(self._prepared):
            if feats is features and run is prepare and _same_mask(kept_mask, mask):
                self._prepared.append(self._prepared.pop(i))  # most recent last
                return out
        out = prepare(_prepare_inputs(_as_numpy(features), mask))
        # holding ``features`` and ``prepare`` keeps them alive: no stale identity matches
        kept = None if mask is None else np.array(mask, np.float32, copy=True)
        self._prepared.append((features, prepare, kept, out))
        del self._prepared[:-self.PREPARED_CACHE]
        return out

    def decode(self, model, features, coords, labels, boxes, mask, multimask: bool):
        """As :meth:`SamFamilyModel._decode_net`; ``None`` hands the prompt to torch."""
        if coords is None and boxes is None:
            return None  # a mask alone: zero prompt tokens, which the graph does not take
        try:
            stamp = module_stamp(model._parts("decoder"))  # one walk over the weights
            prepare = self._session(model, "prepare", stamp)
            click = self._session(model, "click", stamp)
        except BackendUnavailableError as exc:
            rt = self._fallback(model, exc)
            return None if rt is None else rt.decode(model, features, coords, labels, boxes,
                                                     mask, multimask)
        prepared = self._prepare(prepare, features, mask)
        sl = slice(1, None) if multimask else slice(0, 1)
        lows, ious = [], []
        for box in ([None] if boxes is None else boxes):
            low, iou = click(_click_inputs(prepared, coords, labels, box))
            lows.append(low[0, sl])
            ious.append(iou[0, sl])
        return (np.ascontiguousarray(np.concatenate(lows), np.float32),
                np.concatenate(ious).astype(np.float32))


class OpenVinoRuntime(OnnxRuntime):
    """The same exported graphs compiled by OpenVINO (fp32) for the CPU."""

    name = "openvino"
    runs_on = {"encoder": "openvino", "prepare": "openvino", "click": "openvino"}


class MixedRuntime(OnnxRuntime):
    """OpenVINO for the image encoder, ONNX Runtime for the per-click graphs: on these CPUs
    each is the faster for its part (``bench/engine.py``), and ``"auto"`` picks it."""

    name = "openvino+onnx"
    runs_on = {"encoder": "openvino", "prepare": "onnxruntime", "click": "onnxruntime"}


#: backend name -> runtime class
RUNTIMES = {cls.name: cls for cls in (OnnxRuntime, OpenVinoRuntime, MixedRuntime)}


def _open_onnxruntime(path: Path, threads: int) -> Callable[[dict], list]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda inputs: sess.run(None, inputs)


def _open_openvino(path: Path, threads: int) -> Callable[[dict], list]:
    """Compile ``path`` for OpenVINO's CPU plugin in fp32: its default on CPUs with bf16 units
    is bf16, which moved the encoder's features by 0.05 and the logits by 0.3 here (measured
    against torch), beyond the masks-equal tolerance the exported graphs must keep."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)

    def run(inputs: dict) -> list:
        result = request.infer(inputs)
        return [np.array(result[o]) for o in outputs]  # a copy: the request reuses its buffers

    return run


def _cpu_net(net):
    """``net``, or a CPU copy of it: the exported graphs are made and checked on the CPU."""
    if next(net.parameters()).device.type == "cpu":
        return net
    import copy

    return copy.deepcopy(net).cpu()


def _same_mask(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Both absent, or equal arrays."""
    return (a is None) == (b is None) and (a is None or np.array_equal(a, b))


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # e.g. a bundle without the metadata
        return str(getattr(importlib.import_module(package), "__version__", "unknown"))


def _loads_in_onnxruntime(paths: dict[str, Path]) -> bool:
    try:
        for path in paths.values():
            _open_onnxruntime(path, 1)
    except Exception:  # noqa: BLE001 - any failure: the file is not sound
        return False
    return True


#: the two decoder graphs (see :mod:`app.core.models._decoder_graphs`)
DECODER_PARTS = ("prepare", "click")


def _prepare_inputs(feats: np.ndarray, mask) -> dict:
    mask_input, has_mask = _mask_arrays(mask)
    return {"image_embeddings": feats, "mask_input": mask_input, "has_mask_input": has_mask}


def _click_inputs(prepared: list, coords, labels, box) -> dict:
    from app.core.models._decoder_graphs import PREPARED

    pts, lab = _prompt_arrays(coords, labels, box)
    return {**dict(zip(PREPARED, prepared)), "point_coords": pts, "point_labels": lab}


def _run_decoder(runs: dict, feats, coords, labels, box, mask) -> list:
    """All four outputs of the two decoder graphs for one prediction."""
    prepared = runs["prepare"](_prepare_inputs(feats, mask))
    return runs["click"](_click_inputs(prepared, coords, labels, box))


def _encoder_graphs(net, size: int) -> dict:
    """{part: (module, example inputs, input names, output names, dynamic axes)}."""
    import torch

    return {"encoder": (net.image_encoder.eval(), (torch.rand(1, 3, size, size),),
                        ["image"], ["features"], None)}


def _decoder_graphs(net, size: int) -> dict:
    import torch

    from app.core.models._decoder_graphs import PREPARED, DecodeClick, PrepareImage

    prepare, click = PrepareImage(net), DecodeClick(net)
    feats = torch.randn(1, 256, 64, 64)
    mask_input, has_mask = (torch.from_numpy(a) for a in _mask_arrays(
        np.random.default_rng(0).normal(size=(256, 256))))
    ex_prepare = (feats, mask_input, has_mask)
    with torch.no_grad():
        prepared = prepare(*ex_prepare)
    # a point and a box: every prompt input takes part in the trace
    pts, lab = (torch.from_numpy(a) for a in _prompt_arrays(
        np.array([[size * 0.4, size * 0.5]]), np.array([1]),
        np.array([size * 0.2, size * 0.3, size * 0.7, size * 0.8])))
    n_points = {1: "n_points"}
    return {
        "prepare": (prepare, ex_prepare, ["image_embeddings", "mask_input", "has_mask_input"],
                    list(PREPARED), None),
        "click": (click, (*prepared, pts, lab), [*PREPARED, "point_coords", "point_labels"],
                  ["low_res_logits", "iou_predictions"],
                  {"point_coords": n_points, "point_labels": n_points}),
    }
