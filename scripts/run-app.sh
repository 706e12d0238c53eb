#!/usr/bin/env bash
# Install SAMScope into .venv (once) and open it on the bundled sample with the default model.
# On a bare Debian/Ubuntu machine it first installs the system libraries Qt's xcb platform
# plugin links (as root; otherwise it prints the one apt-get line to run). A second launch
# skips pip when nothing it installs from has changed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh app
stamp=.venv/.samscope-app-installed
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/samscope ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    bash scripts/bootstrap.sh app
    echo "$want" > "$stamp"
fi
exec .venv/bin/samscope --sample ultrasound "$@"
