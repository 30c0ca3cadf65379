"""The plugin installs, registers with napari, stays light to import, and opens docked in a viewer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_import_does_not_load_tensorflow_or_qt():
    code = (
        "import sys, napari_unet, napari_unet.core.config, napari_unet.core.normalize, napari_unet.samples;"
        "heavy = [m for m in ('tensorflow', 'keras', 'qtpy', 'PyQt5', 'PyQt6') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_widget_modules_do_not_load_tensorflow():
    code = (
        "import sys, napari_unet.widgets.train_widget, napari_unet.widgets.predict_widget,"
        " napari_unet.widgets.finetune_widget, napari_unet.widgets.review_widget;"
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_manifest_is_valid():
    result = subprocess.run([str(BIN / "npe2"), "validate", "napari-unet"], capture_output=True, text=True)
    assert result.returncode == 0 and "valid" in result.stdout, result.stdout + result.stderr


def test_napari_info_lists_the_plugin():
    result = subprocess.run([str(BIN / "napari"), "--info"], capture_output=True, text=True, timeout=300)
    assert "napari-unet" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]


def test_widgets_dock_from_the_manifest(make_napari_viewer):
    from napari_unet.launch import PLUGIN, WIDGETS

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "nuclei")
    for name in WIDGETS:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert dock.widget() is not None and widget is not None
    docked = list(viewer.window.dock_widgets)
    assert all(any(name in title for title in docked) for name in WIDGETS), docked
    shot = viewer.screenshot(canvas_only=False)
    assert shot.ndim == 3 and shot.shape[0] > 200 and shot.shape[1] > 400
    assert np.std(shot[..., :3]) > 5, "screenshot is blank"


def test_readme_command_one_opens_napari(tmp_path):
    """scripts/napari.sh (README command 1) reuses the environment and reaches a shown, docked window."""
    shot = tmp_path / "window.png"
    env = {**os.environ, "NAPARI_UNET_EXIT_AFTER_SHOW": "1", "NAPARI_UNET_SCREENSHOT": str(shot)}
    env["NAPARI_UNET_VENV"] = str(Path(sys.executable).parents[1])
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "napari.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "widgets Train, Predict, Fine-tune, Review, Live docked" in out
    assert "window shown" in out
    import imageio.v3 as iio

    image = iio.imread(shot)
    assert image.shape[0] > 300 and np.std(image[..., :3]) > 5


def test_readme_opens_with_two_commands():
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in quick.splitlines() if line.startswith("bash ")]
    assert commands == ["bash scripts/napari.sh", "bash scripts/test.sh"]
