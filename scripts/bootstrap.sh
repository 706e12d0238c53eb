#!/usr/bin/env bash
# Create .venv (if needed) and install SAMScope with the given extras.
#   scripts/bootstrap.sh app,test
# torch is pinned first so pip takes the release that matches torchvision (and, on the
# project's machines, the wheels that lie on disk) instead of resolving a newer CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-app}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[${extras}]"
# RTSTRUCT export: rt-utils without its opencv-python (which carries a second Qt); the cv2 it
# needs comes from opencv-python-headless, a dependency of SAMScope
python -m pip install -q --no-deps "rt-utils>=1.2.7"
