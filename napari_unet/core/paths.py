"""Where model files live by default (no TensorFlow here: the widgets read it at start-up)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_MODEL_DIR = "NAPARI_UNET_MODEL_DIR"


def default_model_root() -> Path:
    """Where models live: ``$NAPARI_UNET_MODEL_DIR`` or ``~/.napari-unet/models``."""
    env = os.environ.get(ENV_MODEL_DIR)
    return Path(env).expanduser() if env else Path.home() / ".napari-unet" / "models"
