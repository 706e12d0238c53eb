#!/usr/bin/env bash
# Check the napari-plugin install path in a FRESH virtual environment, as a napari user does it:
#   pip install "napari[pyqt6]"   (napari with the Qt binding it recommends, not ours)
#   pip install <this checkout>   (WITHOUT the `app` extra)
# and then that
#   1. pip did not install PySide6 (the base install forces no Qt binding on napari users);
#   2. `import app` (and the CLI parser) does not import PySide6 or any Qt binding by itself;
#   3. `npe2 list` shows samscope and `npe2 validate samscope` passes;
#   4. npe2 discovers, through the installed `napari.manifest` entry point, both docks, the
#      reader, the writer and both samples, and every python_name in the manifest imports;
#   5. in a napari Viewer (under Xvfb when there is no display) the Plugins menu lists SAMScope's
#      two docks and File > Open Sample its samples; both docks open on the user's binding, and
#      PySide6 is never loaded beside it.
#
#   bash scripts/check_plugin_install.sh [VENV_DIR]      (default: /tmp/samscope-plugin-check)
# Env: QT_EXTRA (default pyqt6), KEEP_VENV=1 to reuse an existing VENV_DIR.
# torch is pinned first so pip takes the same release as the project's machines (on those, the
# wheels lie on disk); elsewhere pip downloads it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
VENV="${1:-/tmp/samscope-plugin-check}"
QT_EXTRA="${QT_EXTRA:-pyqt6}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

step() { echo; echo "== $* ($(date -u +%T))"; }
failed=()
fail() { echo "FAIL: $*" >&2; failed+=("$*"); }

if [ "${KEEP_VENV:-0}" != 1 ] || [ ! -x "$VENV/bin/python" ]; then
    step "fresh venv at $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip

step "pip install torch==2.14.1 torchvision==0.29.1"
"$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
step "pip install \"napari[$QT_EXTRA]\""
"$PY" -m pip install -q "napari[$QT_EXTRA]"
step "pip install $REPO   (no extras)"
"$PY" -m pip install -q "$REPO"
# a reused venv already has samscope 0.1.0: put the checkout's current code in place
[ "${KEEP_VENV:-0}" = 1 ] && "$PY" -m pip install -q --no-deps --force-reinstall "$REPO"
"$PY" -m pip list 2>/dev/null | grep -iE "^(samscope|napari|npe2|pyqt6|pyqt5|pyside6|qtpy|torch) " || true

step "1. no PySide6 installed by the base install"
if "$PY" -m pip show PySide6 >/dev/null 2>&1 || "$PY" -m pip show PySide6-Essentials >/dev/null 2>&1; then
    fail "PySide6 was installed although neither napari[$QT_EXTRA] nor samscope (no extras) asks for it"
fi
echo "ok: PySide6 not installed"

step "2. import app pulls no Qt binding"
"$PY" - <<'EOF' || fail "2. import app pulls a Qt binding"
import sys

import app
import app.cli

app.cli.build_parser()
qt = sorted(m for m in ("PySide6", "PyQt6", "PyQt5", "PySide2", "qtpy") if m in sys.modules)
assert not qt, f"import app / the CLI parser imported {qt}"
print(f"ok: samscope {app.__version__} imported without Qt ({len(sys.modules)} modules)")
EOF

step "3. npe2 list / npe2 validate samscope"
"$VENV/bin/npe2" list | tee /tmp/samscope-npe2-list.txt
grep -qi samscope /tmp/samscope-npe2-list.txt || fail "npe2 list does not show samscope"
"$VENV/bin/npe2" validate samscope || fail "npe2 validate samscope"

step "4. contributions discovered through the napari.manifest entry point"
"$PY" - <<'EOF' || fail "4. contributions / python_names"
import importlib
from importlib.metadata import entry_points

from npe2 import PluginManager

eps = [ep for ep in entry_points(group="napari.manifest") if ep.name == "samscope"]
assert eps and eps[0].value == "app:napari.yaml", eps
pm = PluginManager()
pm.discover()
mf = pm.get_manifest("samscope")
c = mf.contributions
widgets = sorted(w.display_name for w in c.widgets or [])
samples = sorted(s.key for s in c.sample_data or [])
assert widgets == ["Benchmark", "Segment"], widgets
assert len(c.readers or []) >= 1 and len(c.writers or []) >= 1, (c.readers, c.writers)
assert samples == ["ct", "ultrasound"], samples
missing = []
for cmd in c.commands or []:
    mod, _, attr = cmd.python_name.partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001 - report every name that does not resolve
        missing.append(f"{cmd.python_name}: {type(exc).__name__}: {exc}")
assert not missing, "unresolved python_names:\n  " + "\n  ".join(missing)
print(f"ok: {mf.name} {mf.package_version} via {eps[0].value}: widgets {widgets}, "
      f"{len(c.readers)} reader(s), {len(c.writers)} writer(s), samples {samples}, "
      f"{len(c.commands)} commands resolve")
EOF

step "5. napari's Plugins menu and Open Sample menu (Qt binding: $QT_EXTRA)"
run_display() { if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null; then xvfb-run -a "$@"; else "$@"; fi; }
run_display "$PY" - <<'EOF' || fail "5. napari menus"
import sys

import napari
from napari._app_model import get_app_model
from qtpy import API_NAME

viewer = napari.Viewer(show=False)
try:
    app_model = get_app_model()

    def titles(menu_id):
        out = []
        for item in app_model.menus.get_menu(menu_id):
            title = getattr(getattr(item, "command", None), "title", None) or getattr(item, "title", None)
            sub = getattr(item, "submenu", None)
            if sub:
                out.append(str(title))
                out += [f"{title} > {t}" for t in titles(sub)]
            elif title:
                out.append(str(title))
        return out

    plugins = [t for t in titles("napari/plugins") if "SAMScope" in t or "samscope" in t.lower()]
    samples = [t for t in titles("napari/file/samples") if "SAMScope" in t or "samscope" in t.lower()]
    print("Plugins menu:", plugins)
    print("Open Sample menu:", samples)
    assert any("Segment" in t for t in plugins) and any("Benchmark" in t for t in plugins), plugins
    assert len([t for t in samples if ">" in t]) >= 2 or len(samples) >= 2, samples
    print(f"ok: napari {napari.__version__} on {API_NAME} lists SAMScope's docks and samples")
    # open both docks as the Plugins menu does (imports the widget, passes the viewer)
    broken = []
    for name in ("Segment", "Benchmark"):
        try:
            _, widget = viewer.window.add_plugin_dock_widget("samscope", name)
            print(f"ok: opened the {name} dock: {type(widget).__name__}")
        except Exception as exc:  # noqa: BLE001 - report each dock
            broken.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not broken, f"docks that do not open on {API_NAME}: {broken}"
    if API_NAME != "PySide6":
        assert "PySide6" not in sys.modules, f"PySide6 loaded beside the user's {API_NAME}"
finally:
    viewer.close()
EOF

if [ ${#failed[@]} -gt 0 ]; then
    step "FAILED: ${#failed[@]} check(s)"; printf '  - %s\n' "${failed[@]}"; exit 1
fi
step "all plugin-install checks passed"
