#!/usr/bin/env bash
# Install SAMScope into .venv and open it on the bundled sample with LiteMedSAM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh app
exec .venv/bin/samscope --sample ultrasound "$@"
