"""Shared fixtures: real labelled images from ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.widgets._tf import import_tensorflow

# TensorFlow and Mesa's OpenGL (Xvfb) each carry LLVM: a plain `import tensorflow` anywhere in this
# process (core test modules import it at collection) would crash the viewers of the widget tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import_tensorflow()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NAPARI_UNET_SHARED_DATA", REPO.parent / "shared" / "data"))


def _pairs(folder: str, label_dir: str, pattern: str = "*.tif") -> list[tuple[str, np.ndarray, np.ndarray]]:
    root = SHARED_DATA / folder
    if not (root / "images").is_dir():
        pytest.skip(f"real data not found at {root} (set NAPARI_UNET_SHARED_DATA)")
    out = []
    for img_path in sorted((root / "images").glob(pattern)):
        out.append((img_path.stem, tifffile.imread(img_path), tifffile.imread(root / label_dir / img_path.name)))
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def nuclei_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Grayscale DSB2018 nuclei (name, uint8 image, uint16 instance labels), 256x256 ones first."""
    pairs = [p for p in _pairs("nuclei", "labels") if p[1].ndim == 2]
    return sorted(pairs, key=lambda p: (p[1].shape != (256, 256), p[0]))


@pytest.fixture(scope="session")
def nuclei_rgb_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    return [p for p in _pairs("nuclei", "labels") if p[1].ndim == 3]


@pytest.fixture(scope="session")
def xray_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    return _pairs("xray", "masks")
