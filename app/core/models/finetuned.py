"""Fine-tuned models: a base registry model plus new prompt-encoder/mask-decoder weights.

On disk a fine-tuned model is a folder::

    MODEL/
      manifest.json   base model, data (with hashes), prompt recipe, steps, seed, validation
      decoder.pt      state dict of ``prompt_encoder.*`` and ``mask_decoder.*`` (float16)
      MODEL_CARD.md   optional, for people

The weights are loaded with ``torch.load(..., weights_only=True)`` after their SHA-256 was
checked against the manifest: a file carrying pickled code is refused, never executed. The
image encoder is the base model's (it was frozen during training), so a fine-tuned model costs
a few MB on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from app.core.errors import CheckpointMissingError, CheckpointRefusedError, WriteError
from app.core.models.base import Capabilities, PromptableModel

__all__ = [
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "FORMAT",
    "save_finetuned",
    "read_manifest",
    "load_finetuned",
    "is_finetuned_dir",
    "bundled_model_dir",
    "user_models_dir",
    "list_user_models",
    "find_finetuned",
    "resolve_finetuned",
    "BUNDLED_FINETUNED",
    "POINT_CAPABILITIES",
    "FinetunedModel",
]

#: fine-tuned models shipped in ``assets/models/<name>``
BUNDLED_FINETUNED = ("litemedsam_points",)

#: What a decoder fine-tuned with clicks can do: points, boxes, three ranked candidates.
POINT_CAPABILITIES = Capabilities(
    points=True, boxes=True, mask_input=True, meaningful_multimask=True, input_size=256
)

#: environment variable that overrides the folder of the user's fine-tuned models
USER_MODELS_ENV = "SAMSCOPE_MODELS_DIR"

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "decoder.pt"
FORMAT = "samscope-finetuned/1"
_MODULES = ("prompt_encoder", "mask_decoder")


class FinetunedModel:
    """A fine-tuned SAM-family model, with optional routing of box-only prompts.

    Clicks (with or without a box or a previous mask) always go to the fine-tuned prompt
    encoder + mask decoder. **Box-only** prompts go to the base model's own decoder when
    ``box_decoder == "base"``: :func:`app.core.finetune.finetune` chooses that by evidence
    (:func:`app.core.finetune.choose_box_decoder`: the fine-tuned decoder is kept for boxes when
    it is better on the mean over validation tasks and no task is significantly worse under a
    paired case bootstrap), so boxes never lose to the base model on the evidence while clicks
    gain. Both decoders read the same embedding (the image encoder is shared and was frozen
    during training).

    Parameters
    ----------
    tuned : SamFamilyModel
        The base network with the fine-tuned prompt encoder + mask decoder.
    base : SamFamilyModel or None
        The base model, its image encoder shared with ``tuned``; required for
        ``box_decoder="base"``.
    box_decoder : {"tuned", "base"}
    manifest : dict, optional
    """

    def __init__(self, tuned, base=None, *, box_decoder: str = "tuned",
                 manifest: dict[str, Any] | None = None) -> None:
        if box_decoder not in ("tuned", "base"):
            raise ValueError(f"box_decoder must be 'tuned' or 'base'; got {box_decoder!r}")
        if box_decoder == "base" and base is None:
            raise ValueError("box_decoder='base' needs the base model")
        self.tuned = tuned
        self.base = base if box_decoder == "base" else None
        self.box_decoder = box_decoder
        self.manifest = manifest or {}
        if self.base is not None:
            # one image encoder in memory; its embeddings serve both decoders
            self.base.net.image_encoder = tuned.net.image_encoder

    # the attributes the engine, the benchmark and the GUI read
    @property
    def name(self) -> str:
        return self.tuned.name

    @name.setter
    def name(self, value: str) -> None:
        self.tuned.name = value

    @property
    def capabilities(self) -> Capabilities:
        return self.tuned.capabilities

    @capabilities.setter
    def capabilities(self, value: Capabilities) -> None:
        self.tuned.capabilities = value

    def __getattr__(self, attr: str):
        # net, device, precision, preprocessing, checkpoint_path: the fine-tuned model's
        if attr in ("tuned", "base", "box_decoder", "manifest"):
            raise AttributeError(attr)
        return getattr(self.tuned, attr)

    def __repr__(self) -> str:
        return f"FinetunedModel({self.name!r}, boxes -> {self.box_decoder} decoder)"

    def cache_token(self) -> str:
        return self.tuned.cache_token()

    def embed(self, image, **kw):
        return self.tuned.embed(image, **kw)

    def _routes_to_base(self, prompt) -> bool:
        return (self.base is not None and prompt.has_box and not prompt.has_points
                and prompt.mask_logits is None)

    def predict(self, embedding, prompt, multimask: bool = True):
        """Decode ``prompt`` (see :meth:`SamFamilyModel.predict`); box-only prompts go to the
        base decoder when ``box_decoder == "base"`` (then one mask, ``meaningful`` False)."""
        if self._routes_to_base(prompt):
            from dataclasses import replace

            return self.base.predict(replace(embedding, model_name=self.base.name), prompt,
                                     multimask=multimask)
        return self.tuned.predict(embedding, prompt, multimask=multimask)

    def predict_boxes(self, embedding, boxes_xyxy):
        """One mask per box, from the decoder that answers boxes."""
        if self.base is not None:
            from dataclasses import replace

            return self.base.predict_boxes(replace(embedding, model_name=self.base.name),
                                           boxes_xyxy)
        return self.tuned.predict_boxes(embedding, boxes_xyxy)


def bundled_model_dir(name: str) -> Path:
    """Folder of a fine-tuned model shipped in ``assets/models/<name>`` (``app.assets``)."""
    with resources.as_file(resources.files("app.assets") / "models" / name) as p:
        return Path(p)


def user_models_dir() -> Path:
    """Where the Adapt dock saves models by default (``$SAMSCOPE_MODELS_DIR`` overrides it)."""
    override = os.environ.get(USER_MODELS_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("samscope", appauthor=False)) / "models"


def list_user_models() -> list[dict[str, Any]]:
    """Manifests of the fine-tuned models in :func:`user_models_dir`, with their ``path``."""
    root = user_models_dir()
    out = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if is_finetuned_dir(p):
                try:
                    out.append({**read_manifest(p), "path": str(p)})
                except Exception:  # noqa: BLE001 - a broken folder is skipped, not fatal
                    continue
    return out


def find_finetuned(name_or_path: str | os.PathLike) -> Path | None:
    """The folder of a fine-tuned model given its folder path or its name in the user folder."""
    p = Path(name_or_path)
    if is_finetuned_dir(p):
        return p
    if isinstance(name_or_path, str) and "/" not in name_or_path and "\\" not in name_or_path:
        q = user_models_dir() / name_or_path
        if is_finetuned_dir(q):
            return q
    return None


def resolve_finetuned(name: str | os.PathLike) -> Path | None:
    """The folder behind ``name``: a bundled fine-tuned model, a model folder path, or a model
    saved in :func:`user_models_dir`; ``None`` when ``name`` is none of these."""
    if isinstance(name, str) and name in BUNDLED_FINETUNED:
        return bundled_model_dir(name)
    return find_finetuned(name)


def is_finetuned_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a fine-tuned model's manifest."""
    return (Path(path) / MANIFEST_NAME).is_file()


def _decoder_state(net, half: bool) -> dict[str, Any]:
    state = {}
    for prefix in _MODULES:
        for k, v in getattr(net, prefix).state_dict().items():
            t = v.detach().cpu().clone()
            # the random Fourier matrix of the positional encoding stays float32: rounding it
            # would move every prompt and dense position by a fraction of a pixel
            if half and t.is_floating_point() and "positional_encoding" not in k:
                t = t.half()
            state[f"{prefix}.{k}"] = t
    return state


def save_finetuned(model, path: str | os.PathLike, manifest: dict[str, Any], *,
                   half: bool = True, overwrite: bool = False,
                   model_card: str | None = None) -> Path:
    """Write a fine-tuned model folder (atomically: a temporary folder renamed into place).

    Parameters
    ----------
    model : SamFamilyModel
        With ``net.prompt_encoder`` and ``net.mask_decoder`` (e.g. ``FinetuneResult.model``).
    path : path
        The folder to create.
    manifest : dict
        JSON-serialisable; must name ``base_model``. ``weights_file``, ``weights_sha256``,
        ``weights_dtype`` and ``format`` are filled in here.
    half : bool
        Store floating weights as float16 (half the size; the trainer already rounded them).
    overwrite : bool
        Replace an existing fine-tuned model folder at ``path``.
    model_card : str, optional
        Markdown written as ``MODEL_CARD.md``.

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    WriteError
        When ``path`` exists (without ``overwrite``), or is something other than a model
        folder, or cannot be written.
    """
    import torch

    from app.core.models.checkpoints import sha256_file

    out = Path(path)
    if "base_model" not in manifest:
        raise ValueError("the manifest must name its base_model")
    if out.exists():
        if not overwrite:
            raise WriteError(f"{out} already exists; choose another name or overwrite it")
        if not is_finetuned_dir(out):
            raise WriteError(f"{out} exists and is not a fine-tuned model folder; not replacing it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise WriteError(f"cannot write {out}: {exc}") from None
    try:
        weights = tmp / WEIGHTS_NAME
        torch.save(_decoder_state(model.net, half), weights)
        full = {**manifest, "format": FORMAT,
                "box_decoder": getattr(model, "box_decoder", manifest.get("box_decoder", "tuned")), "weights_file": WEIGHTS_NAME,
                "weights_sha256": sha256_file(weights),
                "weights_dtype": "float16" if half else "float32",
                "weights_bytes": weights.stat().st_size}
        (tmp / MANIFEST_NAME).write_text(json.dumps(full, indent=2, default=_json_default))
        if model_card is not None:
            (tmp / "MODEL_CARD.md").write_text(model_card)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model folder is shared like any
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(f"cannot write {out}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a fine-tuned model folder.

    Raises
    ------
    CheckpointMissingError
        No manifest at ``path``.
    CheckpointRefusedError
        Not JSON, or not a SAMScope fine-tuned model manifest.
    """
    p = Path(path) / MANIFEST_NAME
    if not p.is_file():
        raise CheckpointMissingError(f"{path} is not a fine-tuned model folder: no {MANIFEST_NAME}")
    try:
        manifest = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointRefusedError(f"{p} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointRefusedError(
            f"{p} is not a SAMScope fine-tuned model manifest (format "
            f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, "
            f"expected {FORMAT!r})")
    for key in ("name", "base_model", "weights_file", "weights_sha256"):
        if key not in manifest:
            raise CheckpointRefusedError(f"{p} lacks {key!r}")
    return manifest


def load_finetuned(path: str | os.PathLike, *, device: str | None = None,
                   precision: str = "auto", name: str | None = None) -> PromptableModel:
    """Load a fine-tuned model folder as a :class:`PromptableModel`.

    Builds the manifest's base model from the registry, then replaces its prompt encoder and
    mask decoder weights with the folder's (hash-checked, ``weights_only=True``).

    Parameters
    ----------
    path : path
        A folder written by :func:`save_finetuned`.
    device, precision : str
        As for :func:`app.core.models.registry.load_model`.
    name : str, optional
        Registry name to give the model (default: the manifest's ``name``).

    Raises
    ------
    CheckpointMissingError
        No manifest or weights file.
    CheckpointRefusedError
        Wrong SHA-256, pickled code, tensors that do not fit the base model, or a base
        model that leads back to this folder.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    key = str(folder.resolve())
    loading = _LOADING.__dict__.setdefault("folders", [])
    if key in loading:
        chain = " -> ".join([*loading[loading.index(key):], key])
        raise CheckpointRefusedError(
            f"{folder / MANIFEST_NAME}: its base model {manifest.get('base_model')!r} leads back "
            f"to this folder ({chain}); a fine-tuned model's base must be a registry model")
    loading.append(key)
    try:
        return _load_finetuned(folder, manifest, device=device, precision=precision, name=name)
    finally:
        loading.remove(key)


#: folders being loaded by this thread (a manifest naming itself as base would recurse)
_LOADING = threading.local()


def _load_finetuned(folder: Path, manifest: dict[str, Any], *, device: str | None,
                    precision: str, name: str | None) -> PromptableModel:
    import torch

    from app.core.models.checkpoints import load_state_dict, sha256_file
    from app.core.models.registry import load_model

    weights = folder / manifest["weights_file"]
    if not weights.is_file():
        raise CheckpointMissingError(f"{weights} is missing (named by {folder / MANIFEST_NAME})")
    actual = sha256_file(weights)
    if actual != manifest["weights_sha256"]:
        raise CheckpointRefusedError(
            f"{weights} has SHA-256 {actual}, but its manifest says "
            f"{manifest['weights_sha256']}: the file was changed or corrupted; not loading it")
    state = load_state_dict(weights, map_location="cpu")
    model = load_model(manifest["base_model"], device=device, precision=precision)
    net = model.net
    own = {}
    for prefix in _MODULES:
        for k, v in getattr(net, prefix).state_dict().items():
            own[f"{prefix}.{k}"] = v
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unexpected or missing:
        raise CheckpointRefusedError(
            f"{weights} does not fit base model {manifest['base_model']!r}: "
            f"{len(missing)} missing tensors (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    with torch.no_grad():
        for k, v in state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise CheckpointRefusedError(
                    f"{weights}: tensor {k} has shape {tuple(v.shape)}, the base model's has "
                    f"{tuple(own[k].shape)}")
            own[k].copy_(v.to(own[k].dtype))
    model.name = name or manifest["name"]
    caps = manifest.get("capabilities")
    if isinstance(caps, dict):
        model.capabilities = Capabilities(**{k: v for k, v in caps.items()
                                             if k in Capabilities.__dataclass_fields__})
    model.checkpoint_path = str(weights)
    box_decoder = manifest.get("box_decoder", "tuned")
    base = None
    if box_decoder == "base":
        base = load_model(manifest["base_model"], device=device, precision=precision)
    return FinetunedModel(model, base, box_decoder=box_decoder, manifest=manifest)
