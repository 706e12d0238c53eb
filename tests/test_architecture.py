"""The layering rules of the README's architecture section, checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_never_imports_qt_napari_or_widgets():
    exe = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(exe)], capture_output=True, text=True, cwd=REPO_ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "0 broken" in output and "KEPT" in output, output


def test_cli_help_is_light():
    """``samscope --help`` must not pay for torch, napari or Qt."""
    mods = _modules_after(
        "import contextlib, io\n"
        "from app.cli import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    build_parser().format_help()"
    )
    heavy = {"torch", "napari", "PySide6", "qtpy", "highdicom", "matplotlib", "segment_anything"}
    assert not heavy & mods, f"heavy modules imported by --help: {sorted(heavy & mods)}"


def test_core_image_type_is_light():
    mods = _modules_after("import app.core.image, app.core.models.base, app.core.errors")
    assert "torch" not in mods and "napari" not in mods
