"""Sample data for File > Open Sample > napari-unet: an image layer with its labels layer.

The files ship inside the wheel as the package `napari_unet.sample_data` (the repository's
top-level `sample_data/` folder); sample_data/README.md gives their sources and licences.
Only numpy and tifffile are imported here: napari calls these functions from its menu.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import tifffile

from .core.errors import InputError

LayerData = tuple[np.ndarray, dict[str, Any], str]


@dataclass(frozen=True)
class Sample:
    """One shipped image/labels pair and how to show it."""

    image_file: str
    labels_file: str
    image_name: str
    labels_name: str
    task: str  # the napari_unet.core.config task these labels suit
    image_kwargs: dict[str, Any] = field(default_factory=dict)


SAMPLES: dict[str, Sample] = {
    "nuclei": Sample(
        "nuclei_image.tif", "nuclei_labels.tif", "nuclei", "nuclei labels", "instances",
        {"colormap": "gray"},
    ),
    "chest_xray": Sample(
        "chest_xray_image.tif", "chest_xray_lungs.tif", "chest x-ray", "lung mask", "binary",
        {"colormap": "gray", "contrast_limits": (0, 4095)},  # 12-bit values in uint16
    ),
}


def _read(filename: str) -> np.ndarray:
    resource = resources.files("napari_unet.sample_data").joinpath(filename)
    with resources.as_file(resource) as path:
        return tifffile.imread(path)


def load_sample(key: str) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) arrays of a shipped sample: "nuclei" or "chest_xray"."""
    if key not in SAMPLES:
        raise InputError(f"Unknown sample {key!r}; choose one of: {', '.join(SAMPLES)}.")
    sample = SAMPLES[key]
    return _read(sample.image_file), _read(sample.labels_file)


def _layer_data(key: str) -> list[LayerData]:
    sample = SAMPLES[key]
    image, labels = load_sample(key)
    return [
        (image, {"name": sample.image_name, **sample.image_kwargs}, "image"),
        (labels, {"name": sample.labels_name, "opacity": 0.5}, "labels"),
    ]


def nuclei() -> list[LayerData]:
    """DSB2018 fluorescence nuclei (uint8, 512x512) with uint16 instance labels 1..125."""
    return _layer_data("nuclei")


def chest_xray() -> list[LayerData]:
    """A simulated frontal chest radiograph (uint16, 12-bit, 384x384) with its lung-field mask {0, 1}."""
    return _layer_data("chest_xray")
