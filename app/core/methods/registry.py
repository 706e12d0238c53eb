"""The method registry: every name ``samscope benchmark --methods`` and the docks accept.

Registry models (:mod:`app.core.models.registry`) become
:class:`~app.core.methods.sam_family.SamFamilyMethod`; the classical methods are built from
:mod:`app.core.methods.classical`; plug-ins come from the ``samscope.methods`` entry-point
group (see :mod:`app.core.methods.base`). This module imports the implementations; they import
only :mod:`app.core.methods.base` (checked by an import-linter contract).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

from app.core.methods.base import InteractiveMethod

__all__ = [
    "ENTRY_POINT_GROUP",
    "CLASSICAL_METHODS",
    "available_methods",
    "create_method",
]

#: entry-point group for method plug-ins
ENTRY_POINT_GROUP = "samscope.methods"


def _classical() -> dict[str, Callable[..., InteractiveMethod]]:
    from app.core.methods import classical

    return {
        "random_walker": classical.RandomWalkerMethod,
        "grabcut": classical.GrabCutMethod,
        "region_growing": classical.RegionGrowingMethod,
        "geodesic_active_contour": classical.GeodesicActiveContourMethod,
    }


#: names of the built-in classical methods (no weights needed)
CLASSICAL_METHODS = ("random_walker", "grabcut", "region_growing", "geodesic_active_contour")


def _model_names() -> list[str]:
    try:
        from app.core.models.registry import list_models
    except ImportError:  # the engine is not installed in this tree yet
        return []
    return [spec.name for spec in list_models()]


def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_methods() -> list[str]:
    """Every method name: registry models, classical methods, then plug-ins."""
    names = [*_model_names(), *CLASSICAL_METHODS]
    names += [n for n in _plugins() if n not in names]
    return names


def create_method(name: str, **options: Any) -> InteractiveMethod:
    """Build the method called ``name``.

    Parameters
    ----------
    name : str
        A registry model (``litemedsam``, ``sam_vit_b``, ...), a classical method
        (``random_walker``, ``grabcut``, ``region_growing``, ``geodesic_active_contour``; alias
        ``gac``), or a ``samscope.methods`` plug-in.
    **options
        ``device``, ``checkpoint`` for models; method-specific settings for the others.

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones).
    """
    key = {"gac": "geodesic_active_contour", "rw": "random_walker"}.get(name, name)
    classical = _classical()
    if key in classical:
        opts = {k: v for k, v in options.items() if k not in ("device", "checkpoint")}
        return classical[key](**opts)
    if key in _model_names():
        from app.core.methods.sam_family import SamFamilyMethod

        return SamFamilyMethod(key, **options)
    plugins = _plugins()
    if key in plugins:
        factory = plugins[key].load()
        method = factory(**options)
        if not isinstance(method, InteractiveMethod):
            raise ValueError(
                f"plug-in {key!r} ({plugins[key].value}) returned {type(method).__name__}, "
                "not an InteractiveMethod"
            )
        return method
    raise ValueError(f"unknown method {name!r}; known: {', '.join(available_methods())}")
