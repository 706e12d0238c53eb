#!/usr/bin/env bash
# Debian/Ubuntu packages that Qt 6's xcb platform plugin needs (and, for the tests, Xvfb).
# Installs only what is missing (as root). Not root: prints the one apt-get line to run;
# with "app" that is an error (the window cannot open without them), with "test" a note.
#   scripts/system-deps.sh [test|app]
set -euo pipefail
mode="${1:-test}"
# (the list covers every library `ldd` shows libqxcb.so linking, not only the famous few)
pkgs=(libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
      libxcb-xinerama0 libxcb-shape0 libxcb-randr0 libxcb-xfixes0 libxcb-sync1 libxcb-shm0
      libxcb-render0 libxcb-xkb1 libx11-xcb1 libxkbcommon-x11-0 libgl1 libegl1 libfontconfig1
      libdbus-1-3 libglib2.0-0)
[ "$mode" = "test" ] && pkgs+=(xvfb xauth)
command -v dpkg-query >/dev/null 2>&1 || exit 0  # not Debian/Ubuntu: nothing to check here
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "SAMScope needs these system libraries; please run:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    [ "$mode" = "app" ] && exit 1
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
