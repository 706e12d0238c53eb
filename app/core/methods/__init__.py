"""Interactive segmentation methods behind one interface (:mod:`app.core.methods.base`) and
their registry (:mod:`app.core.methods.registry`)."""

from app.core.methods.base import InteractiveMethod
from app.core.methods.registry import (
    CLASSICAL_METHODS,
    ENTRY_POINT_GROUP,
    available_methods,
    create_method,
)

__all__ = [
    "CLASSICAL_METHODS",
    "ENTRY_POINT_GROUP",
    "InteractiveMethod",
    "available_methods",
    "create_method",
]
