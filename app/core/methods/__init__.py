"""Interactive segmentation methods behind one interface (see :mod:`app.core.methods.base`)."""

from app.core.methods.base import (
    CLASSICAL_METHODS,
    ENTRY_POINT_GROUP,
    InteractiveMethod,
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
