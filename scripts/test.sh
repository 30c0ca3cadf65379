#!/usr/bin/env bash
# Command 2: install napari-unet with its test extras into .venv and run the whole test suite,
# headless (Xvfb) when there is no display. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ensure_display_tools
ensure_venv testing
export TF_CPP_MIN_LOG_LEVEL=2
cd "$ROOT"
say "running the test suite: pytest $*"
with_display "$VENV/bin/python" -m pytest -ra "$@"
