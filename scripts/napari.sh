#!/usr/bin/env bash
# Command 1: install napari-unet into .venv and open napari with sample data and the widgets docked.
# NAPARI_UNET_EXIT_AFTER_SHOW=1 closes napari once the window is up (for tests);
# NAPARI_UNET_SCREENSHOT=path.png also saves a screenshot of the window then.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ensure_display_tools
ensure_venv gui
say "opening napari with the nuclei sample and the napari-unet widgets"
with_display "$VENV/bin/python" -m napari_unet.launch "$@"
