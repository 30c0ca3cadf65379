"""Predict widget on multiscale, lazy (dask/zarr) and OME-Zarr layers: the compute worker writes the
labels into an OME-Zarr store chunk by chunk, and the viewer shows that store lazily as a labels
layer, so the whole output is never held in memory (no TensorFlow here).

Where the labels go: beside the source, ``<image>.zarr/labels/<model>``, when the layer was opened
from an OME-Zarr image whose full resolution is the layer's; otherwise into a new store under
``NAPARI_UNET_PREDICTIONS_DIR`` (default ``~/.napari-unet/predictions``). Names never clash with
an existing labels image or store.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.errors import NapariUNetError
from napari_unet.core.omezarr import free_labels_name, image_yxc, is_zarr, open_image, open_labels
from napari_unet.jobs import arrays
from napari_unet.jobs.store_messages import PredictStoreRequest

from ._layers import META_KEY, placement, safe_folder_name, unique_name

ENV_DIR = "NAPARI_UNET_PREDICTIONS_DIR"


def wants_store(layer: Any, data: Any, rgb: bool) -> bool:
    """Multiscale and lazy 2D layers are predicted into a store rather than into memory (stacks plane by plane)."""
    lazy = bool(getattr(layer, "multiscale", False)) or not isinstance(data, np.ndarray)
    return lazy and data.ndim - (1 if rgb else 0) == 2


def predictions_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".napari-unet" / "predictions").expanduser()


def ome_zarr_source(layer: Any, data: Any) -> Path | None:
    """The OME-Zarr image a layer shows at full resolution (napari-ome-zarr sets `layer.source.path`)."""
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path or not is_zarr(path):
        return None
    try:
        full = image_yxc(open_image(path))
    except NapariUNetError:
        return None
    squeeze = lambda shape: tuple(int(n) for n in shape if n != 1)  # noqa: E731
    return Path(path) if squeeze(full.shape) == squeeze(data.shape) else None


def store_request(model_path: Path, model_label: str, layer: Any, data: Any, threshold: float | None,
                  cluster: str | None = None) -> Any:  # fmt: skip
    """A build function (run on the client's job thread) for a PredictStoreRequest of this layer.

    `cluster` applies to layers read from an OME-Zarr store only (the cluster's workers open it)."""
    source = ome_zarr_source(layer, data)
    base = safe_folder_name(model_label)
    if source is not None:
        root, name = source, free_labels_name(source, base)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root = predictions_dir() / f"{safe_folder_name(layer.name)}-{stamp}-{uuid.uuid4().hex[:6]}.zarr"
        name = base

    def build(scratch: Path) -> PredictStoreRequest:
        image = None if source is not None else arrays.put(scratch, data)  # band by band, bounded memory
        if source is None:
            root.parent.mkdir(parents=True, exist_ok=True)
        return PredictStoreRequest(str(model_path), None if source is None else str(source), image, str(root), name,
                                   threshold, cluster if source is not None else None)  # fmt: skip

    return build


def add_store_layer(viewer: Any, image_layer: Any, path: str, model_label: str, model_path: str) -> Any:
    """Show a labels store lazily on the image's pixels: a multiscale labels layer read chunk by chunk."""
    pyramid = open_labels(path)
    meta = {META_KEY: {"image": image_layer.name, "model": model_label, "model_path": model_path, "store": path}}
    data = pyramid if len(pyramid) > 1 else pyramid[0]
    return viewer.add_labels(
        data, multiscale=len(pyramid) > 1, name=unique_name(viewer, f"{image_layer.name} [{model_label}]"),
        opacity=0.6, metadata=meta, **placement(image_layer, ndim=2),
    )  # fmt: skip
