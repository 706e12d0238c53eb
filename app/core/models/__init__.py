"""Promptable segmentation models: the shared types, the registry and the loaders.

Import the registry functions from :mod:`app.core.models.registry`; this package stays light
(no torch at import time).
"""

from app.core.models.base import (
    Candidates,
    Capabilities,
    Embedding,
    Prompt,
    PromptableModel,
    PromptNotSupportedError,
)

__all__ = [
    "Candidates",
    "Capabilities",
    "Embedding",
    "Prompt",
    "PromptableModel",
    "PromptNotSupportedError",
]
