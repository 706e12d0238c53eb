#!/usr/bin/env bash
# Install everything the tests need (system packages too, when root) and run the whole suite:
# ruff, the import contract (app/core never imports Qt/napari/widgets), then pytest under Xvfb.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/bootstrap.sh app,test,cluster
. .venv/bin/activate
echo "== ruff"; ruff check app tests bench scripts packaging
echo "== import contract"; lint-imports
echo "== pytest"
export QT_API=pyside6
xvfb-run -a -s "-screen 0 1600x1000x24" python -m pytest "$@"
