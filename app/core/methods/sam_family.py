"""Adapter: any registry model (LiteMedSAM, SAM ViT-B/L/H, MedSAM, MobileSAM) as a method.

``prepare`` is the engine's cached image embedding, so an image is encoded once per model and
reused by every mode, click, selection and task that shares the image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from app.core.image import Image2D
from app.core.methods.base import InteractiveMethod
from app.core.models.base import Candidates, Capabilities, Embedding, Prompt
from app.core.models.checkpoints import sha256_file

__all__ = ["SamFamilyMethod", "file_sha256"]


#: SHA-256 hex digest of a file (for the run manifest); the checkpoint module's, re-exported
file_sha256 = sha256_file


class SamFamilyMethod(InteractiveMethod):
    """A registry model behind an :class:`app.core.engine.Engine`.

    Parameters
    ----------
    model_name : str
        Registry name (``"litemedsam"``...).
    device : str, optional
    checkpoint : path, optional
        Other weights for the same network (e.g. fine-tuned).
    engine : Engine, optional
        Use this engine (and its cache) instead of loading the model (tests, the GUI).
    """

    def __init__(
        self,
        model_name: str,
        *,
        device: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        engine: Any = None,
        cache_bytes: int | None = None,
    ) -> None:
        super().__init__()
        from app.core.engine import Engine

        if engine is None:
            from app.core.models.registry import load_model

            model = load_model(model_name, checkpoint=checkpoint, device=device)
            kwargs = {} if cache_bytes is None else {"cache_bytes": int(cache_bytes)}
            engine = Engine(model, **kwargs)
        self.engine = engine
        self.name = model_name
        self.capabilities: Capabilities = engine.model.capabilities
        self._checkpoint = checkpoint
        if not self.capabilities.points:
            self.note = (
                f"{model_name} is trained on box prompts: point-only prompts give it near-empty "
                "masks (results kept, flagged prompt_supported=False)"
            )

    def prepare(self, image: Image2D) -> Embedding:
        self.images_prepared += 1
        return self.engine.embed(image)

    def predict(self, state: Embedding, prompt: Prompt, multimask: bool = True) -> Candidates:
        return self.engine.predict(state, prompt, multimask=multimask)

    def stats(self) -> dict[str, int]:
        s = self.engine.stats
        return {
            "prepared": self.images_prepared,
            "computed": int(s.embeddings_computed),
            "reused": int(s.embeddings_reused),
            "predictions": int(s.predictions),
        }

    def describe(self) -> dict[str, Any]:
        model = self.engine.model
        path = getattr(model, "checkpoint_path", None) or self._checkpoint
        out: dict[str, Any] = {
            **super().describe(),
            "model": self.name,
            "device": str(getattr(model, "device", "")),
            "precision": str(getattr(model, "precision", "")),
            "capabilities": {
                k: getattr(self.capabilities, k)
                for k in ("points", "boxes", "mask_input", "meaningful_multimask", "input_size")
            },
        }
        if path and Path(path).is_file():
            out["checkpoint"] = str(path)
            out["checkpoint_sha256"] = file_sha256(path)
        try:
            import torch

            out["torch"] = torch.__version__
            out["torch_threads"] = torch.get_num_threads()
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        return out
