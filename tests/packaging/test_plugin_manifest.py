"""The napari plugin as pip installs it: manifest valid, discoverable, complete and importable.

These run against the installed project (``pip install -e .`` in the dev venv): npe2 finds the
manifest through the ``napari.manifest`` entry point exactly as napari's Plugins menu does.
``scripts/check_plugin_install.sh`` repeats the same checks in a fresh venv with PyQt6.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points, requires
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = REPO_ROOT / "app" / "napari.yaml"
QT_BINDINGS = ("pyside6", "pyside2", "pyqt5", "pyqt6")


def _npe2(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npe2", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)


def test_npe2_validate_manifest_file():
    res = _npe2("validate", str(MANIFEST))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in res.stdout.lower()


def test_npe2_validate_installed_distribution():
    """``npe2 validate samscope``: the name resolves through the installed entry point."""
    res = _npe2("validate", "samscope")
    assert res.returncode == 0, res.stdout + res.stderr


def test_entry_point_names_the_packaged_manifest():
    eps = [ep for ep in entry_points(group="napari.manifest") if ep.name == "samscope"]
    assert len(eps) == 1, f"napari.manifest entry points named samscope: {eps}"
    assert eps[0].value == "app:napari.yaml"
    package, _, resource = eps[0].value.partition(":")
    assert (importlib.resources.files(package) / resource).is_file()


@pytest.fixture(scope="module")
def discovered_manifest():
    from npe2 import PluginManager

    pm = PluginManager()  # a fresh manager: discovery from installed metadata only
    pm.discover()
    names = [mf.name for mf in pm.iter_manifests()]
    assert "samscope" in names, f"npe2 did not discover samscope among {names}"
    return pm.get_manifest("samscope")


def test_discovered_contributions_are_complete(discovered_manifest):
    c = discovered_manifest.contributions
    assert discovered_manifest.display_name == "SAMScope"
    assert sorted(w.display_name for w in c.widgets) == ["Adapt", "Benchmark", "Segment"]
    assert {w.command for w in c.widgets} == {"samscope.segment_dock", "samscope.benchmark_dock", "samscope.adapt_dock"}

    (reader,) = c.readers
    assert reader.accepts_directories  # DICOM series come as folders
    for pattern in ("*.dcm", "*.nii.gz", "*.nrrd", "*.png", "DICOMDIR"):
        assert pattern in reader.filename_patterns, pattern

    (writer,) = c.writers
    assert [str(t) for t in writer.layer_types] == ["labels"]
    assert {".nii.gz", ".dcm", ".png"} <= set(writer.filename_extensions)

    assert sorted(s.key for s in c.sample_data) == ["ct", "ultrasound"]
    # every contribution points at a declared command
    command_ids = {cmd.id for cmd in c.commands}
    used = {w.command for w in c.widgets} | {reader.command, writer.command}
    used |= {s.command for s in c.sample_data}
    assert used <= command_ids, used - command_ids


def test_every_python_name_resolves(discovered_manifest):
    """What napari calls when a user picks a dock, opens a file, saves or loads a sample."""
    problems = []
    for cmd in discovered_manifest.contributions.commands:
        module_name, _, attr = cmd.python_name.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # noqa: BLE001 - collect every failure, not just the first
            problems.append(f"{cmd.id} -> {cmd.python_name}: {type(exc).__name__}: {exc}")
            continue
        if not callable(obj):
            problems.append(f"{cmd.id} -> {cmd.python_name} is not callable")
    assert not problems, "\n".join(problems)


def test_base_install_forces_no_qt_binding():
    """napari users bring their own Qt; only the ``app`` extra adds PySide6."""
    base = [r for r in requires("samscope") or [] if "extra ==" not in r]
    forced = [r for r in base if any(r.lower().replace("-", "").startswith(q) for q in QT_BINDINGS)]
    assert not forced, f"base requirements force a Qt binding: {forced}"
    assert not [r for r in base if "napari[" in r.replace(" ", "")], "napari extras pull Qt"
    app_extra = [r for r in requires("samscope") or [] if 'extra == "app"' in r]
    assert any(r.lower().startswith("pyside6") for r in app_extra), app_extra

    # and the source of truth agrees with what is installed
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"]
                if any(d.lower().replace("-", "").startswith(q) for q in QT_BINDINGS)]


def test_importing_the_package_imports_no_qt():
    code = (
        "import sys, json, app, app.cli\n"
        "app.cli.build_parser()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('PySide6', 'PyQt5', 'PyQt6', 'PySide2', 'qtpy'))))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_wheel_ships_manifest_samples_and_entry_points(tmp_path):
    """Build and install the wheel (no deps) to see what ``pip install .`` really ships."""
    target = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-compile", "--quiet", "--target", str(target), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (target / "app" / "napari.yaml").read_text() == MANIFEST.read_text()
    assert (target / "app" / "assets" / "__init__.py").is_file()
    # every file under assets/ in the checkout ships as app.assets package data
    shipped = {p.relative_to(target / "app" / "assets") for p in (target / "app" / "assets").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    source = {p.relative_to(REPO_ROOT / "assets") for p in (REPO_ROOT / "assets").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert source <= shipped, f"assets missing from the wheel: {sorted(map(str, source - shipped))}"
    # every Python package of the checkout's app/ is in the wheel (the package list is explicit)
    src_pkgs = {p.parent.relative_to(REPO_ROOT) for p in (REPO_ROOT / "app").rglob("__init__.py")}
    missing = sorted(str(p) for p in src_pkgs if not (target / p / "__init__.py").is_file())
    assert not missing, f"packages left out of the wheel (add them to pyproject): {missing}"
    (dist_info,) = target.glob("samscope-*.dist-info")
    eps = (dist_info / "entry_points.txt").read_text()
    assert "[napari.manifest]" in eps and "samscope = app:napari.yaml" in eps
    assert "samscope = app.cli:main" in eps
