"""What the Live widget sends for an image and its strokes, so large images never cross whole (no TensorFlow).

An image layer backed by a zarr store on disk (a zarr array, a dask array read straight from one,
or an OME-Zarr image opened with napari-ome-zarr) goes to the worker as its path, and the worker
reads only the regions it trains on and the field of view (`core/live_source.py`). Other images
go as pixels through the shared-memory files. Strokes painted before Live starts go as the
painted blocks only, never as a full-size array.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.live_source import zarr_array_of

from ._store_predict import ome_zarr_source

#: Strokes painted before Live starts are sent in blocks of at most this many pixels per side.
REGION_BLOCK = 512


def zarr_path(layer: Any, data: Any) -> str | None:
    """The zarr folder the worker can read the layer's full-resolution pixels from, or None."""
    ome = ome_zarr_source(layer, data)
    if ome is not None:
        return str(ome)
    array = zarr_array_of(data)
    if array is None:
        return None
    root = getattr(getattr(array, "store", None), "root", None)  # zarr 3 LocalStore
    if root is None or not Path(root).is_dir():
        return None
    path = Path(root) / str(getattr(array, "path", "") or "")
    return str(path) if path.is_dir() else None


def painted_regions(labels: Any, block: int = REGION_BLOCK) -> list[tuple[int, int, int, np.ndarray]]:
    """(plane, top, left, int32 labels) of each block of `block` x `block` pixels holding painted labels.

    Read a band of rows at a time, so a large, mostly empty layer is never copied whole.
    """
    stack = labels.ndim == 3
    planes = labels.shape[0] if stack else 1
    height, width = labels.shape[-2:]
    regions = []
    for plane in range(planes):
        for top in range(0, height, block):
            band = np.asarray(labels[plane, top : top + block] if stack else labels[top : top + block])
            for left in range(0, width, block):
                part = band[:, left : left + block]
                rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
                if rows.size:
                    box = part[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
                    regions.append((plane, top + int(rows[0]), left + int(cols[0]), box.astype(np.int32)))
    return regions
