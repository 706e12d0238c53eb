"""The method registry lives apart from the interface: no import circle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_the_interface_loads_without_the_methods_or_the_registry():
    code = ("import sys, json, app.core.methods.base\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('app.core.methods'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO_ROOT)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    # the package's __init__ brings the registry; the implementations load only when used
    assert "app.core.methods.base" in loaded
    assert "app.core.methods.classical" not in loaded
    assert "app.core.methods.sam_family" not in loaded


def test_the_package_and_the_registry_module_build_the_same_methods():
    from app.core import methods
    from app.core.methods import registry
    from app.core.methods.classical import RandomWalkerMethod

    assert methods.create_method is registry.create_method
    assert isinstance(registry.create_method("rw"), RandomWalkerMethod)
    assert set(methods.CLASSICAL_METHODS) <= set(registry.available_methods())
