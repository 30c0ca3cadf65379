#!/usr/bin/env bash
# Shared set-up for scripts/napari.sh and scripts/test.sh: idempotent, prints what it does.
# - installs Xvfb + Mesa from Debian when there is no display (napari needs OpenGL; Qt's
#   offscreen platform gives vispy none), only when missing;
# - creates .venv and installs the plugin with its test extras, only when pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NAPARI_UNET_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

say() { printf '\033[1m[napari-unet]\033[0m %s\n' "$*"; }

# Debian packages napari needs on a machine without a screen: a virtual X server, Mesa's
# software OpenGL and the X libraries Qt's xcb platform loads.
DISPLAY_PACKAGES="xvfb xauth libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 \
libdbus-1-3 libfontconfig1"

ensure_display_tools() {
  [ -z "${DISPLAY:-}" ] || return 0
  if ! command -v dpkg >/dev/null 2>&1; then
    command -v xvfb-run >/dev/null 2>&1 || { say "no display and no xvfb-run: install Xvfb and Mesa, or run with a display"; exit 1; }
    return 0
  fi
  # shellcheck disable=SC2086
  if dpkg -s $DISPLAY_PACKAGES >/dev/null 2>&1; then
    say "Xvfb and Mesa are installed"
    return 0
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  say "no display: installing Xvfb, Mesa and Qt's X libraries from Debian ($DISPLAY_PACKAGES)"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $DISPLAY_PACKAGES >/dev/null
}

ensure_venv() {
  local extras="$1"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtual environment $VENV"
    "$PY" -m venv "$VENV"
  fi
  local want
  want="$(sha256sum < "$ROOT/pyproject.toml" | cut -c1-16)"
  # The testing extra includes everything the gui extra installs.
  local stamp
  for stamp in "$VENV/.napari-unet-$extras" "$VENV/.napari-unet-testing"; do
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
      say "environment $VENV is up to date"
      return 0
    fi
  done
  say "installing napari-unet[$extras] into $VENV (first time: a few minutes, about 2.5 GB)"
  "$VENV/bin/python" -m pip install -q --upgrade pip "setuptools>=77" wheel  # the wheel test builds without isolation
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$extras]"
  # An environment made before the move to PyQt6 still holds PyQt5, which napari would warn about.
  if "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('PyQt5') is None)" 2>/dev/null; then
    say "removing PyQt5 (napari-unet uses PyQt6; napari deprecated PyQt5)"
    "$VENV/bin/python" -m pip uninstall -q -y PyQt5 PyQt5-Qt5 PyQt5-sip
  fi
  echo "$want" > "$VENV/.napari-unet-$extras"
}

# Run a command with a display: the user's own, or a virtual one (Xvfb) when there is none.
with_display() {
  if [ -n "${DISPLAY:-}" ]; then
    "$@"
  else
    say "no display found: running under Xvfb"
    xvfb-run -a -s "-screen 0 1600x1000x24" "$@"
  fi
}
