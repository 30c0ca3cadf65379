"""The shipped starter model (no TensorFlow import): a generic fluorescence-nuclei U-Net.

It is trained by `scripts/train_starter.py` on the CC0 DSB2018 images and ships inside the wheel
(`napari_unet/starter/nuclei/v001/`, see its README for data, licence and scores). Predict can
use it before the user has painted anything, and fine-tuning can start from it.
"""

from __future__ import annotations

from pathlib import Path

STARTER_ROOT = Path(__file__).resolve().parents[1] / "starter"
STARTER_NAME = "nuclei"
STARTER_VERSION = "v001"


def starter_model_path(name: str = STARTER_NAME) -> Path:
    """Folder of the shipped starter model version (load it with `bundle.load_bundle`).

    Raises FileNotFoundError when the package was installed without it.
    """
    path = STARTER_ROOT / name / STARTER_VERSION
    if not (path / "metadata.json").is_file():
        raise FileNotFoundError(
            f"The starter model {name!r} is not installed at {path}; reinstall napari-unet "
            "or train it with scripts/train_starter.py."
        )
    return path
