"""Messages of a prediction written into an OME-Zarr labels store (see `jobs/store_predict.py`).

Used for multiscale, lazy (dask) and OME-Zarr image layers: the worker reads the image (from its
OME-Zarr store, or from a scratch copy) chunk by chunk and writes labels to disk, so neither
process holds the whole output in memory; the viewer then shows the store lazily.
"""

from __future__ import annotations

from dataclasses import dataclass

from .messages import ArrayRef, ModelInfo, Request


@dataclass
class PredictStoreRequest(Request):
    model: str  # version folder
    source: str | None  # an OME-Zarr image the worker opens itself, or None: `image` holds the pixels
    image: ArrayRef | None  # a scratch copy of a lazy layer (H, W[, C]) when there is no store to read
    root: str  # the image group that receives labels/<name> (the source store, or a new one)
    name: str
    threshold: float | None = None  # the widget's post-processing threshold (None: the model's)
    cluster: str | None = None  # "local:N" or a scheduler address (an OME-Zarr `source` only): chunks as dask tasks


@dataclass
class PredictStoreOutcome:
    path: str  # the published labels image
    seconds: float
    model: ModelInfo
