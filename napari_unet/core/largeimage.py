"""Predict a large 2D image chunk by chunk into an OME-Zarr labels image, in bounded memory.

Each output chunk is predicted from one window: the chunk plus `context` pixels of its neighbours
(none beyond the image border), normalised with the whole image's percentiles, so every chunk
equals the same pixels of a whole-image `predict_probabilities`. Chunks are square, of
`tiling.chunk_size` pixels, and start at multiples of `size_multiple`.

Labels of a chunk are pixel-wise, so chunks never disagree at their borders: binary
``p > threshold`` and classes argmax. Labels that need whole objects (instances, and binary masks
with a ``min_size``) are made by `chunkobjects.py`: objects per chunk with a margin, matched across
chunk borders, sized globally.

The same functions run in one process here (the CLI without a cluster, the compute worker) and
as cluster tasks (`cluster.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import Config
from .omezarr import LabelsTarget, StagedLabels, chunk_grid, labels_dtype

Progress = Callable[[int, int], Any]


@dataclass(frozen=True)
class ChunkJob:
    """What a chunk task needs besides the model: plain data, cheap to send to a cluster worker."""

    staged: StagedLabels
    bounds: tuple[float, float]  # normalisation (low, high) of the whole image
    context: int


def pixel_labels(probs: np.ndarray, cfg: Config) -> np.ndarray:
    """Pixel-wise labels of probabilities (H, W, K): the rule of binary and classes chunks (instances: the
    foreground; chunked instance labels are objects, see `chunkobjects.py`)."""
    task = cfg.data.task
    if task == "binary":
        return (probs[..., 0] > cfg.predict.threshold).astype(np.uint8)
    if task == "instances":
        return ((1.0 - probs[..., 0]) > cfg.predict.threshold).astype(np.uint8)
    return np.argmax(probs, axis=-1).astype(np.uint16 if probs.shape[-1] > 255 else np.uint8)


def n_label_values(cfg: Config) -> int:
    return max(2, cfg.n_outputs) if cfg.data.task == "classes" else 2


def predict_window(
    model: Any, source: Any, cfg: Config, bounds: tuple[float, float], region: tuple[int, int, int, int],
    context: int, budget: int | None = None, stop: Any = None,
) -> np.ndarray:  # fmt: skip
    """Probabilities (h, w, K) of `region` (y0, y1, x0, x1) of a lazy (H, W[, C]) image, exact."""
    from .normalize import normalize
    from .predict import predict_probabilities
    from .tiling import fit_tiles

    y0, y1, x0, x1 = region
    height, width = source.shape[:2]
    ya, xa = max(0, y0 - context), max(0, x0 - context)
    yb, xb = min(height, y1 + context), min(width, x1 + context)
    window = np.asarray(source[ya:yb, xa:xb])
    if hasattr(window, "compute"):
        window = window.compute()
    window = normalize(np.asarray(window), bounds=bounds)
    fitted = fit_tiles(cfg, window.shape[0], window.shape[1], budget)
    probs = predict_probabilities(model, window, fitted, stop=stop)
    return probs[y0 - ya : y1 - ya, x0 - xa : x1 - xa]


def predict_chunk(model: Any, source: Any, cfg: Config, job: ChunkJob, iy: int, ix: int, stop: Any = None) -> None:
    """Predict one chunk and store it with its finished marker."""
    chunk = job.staged.chunk
    h, w = job.staged.target.yx_shape
    region = (iy * chunk, min(h, (iy + 1) * chunk), ix * chunk, min(w, (ix + 1) * chunk))
    probs = predict_window(model, source, cfg, job.bounds, region, job.context, stop=stop)
    job.staged.write_chunk(iy, ix, pixel_labels(probs, cfg))


def prepare(source: Any, cfg: Config, target: LabelsTarget, chunk: int, info: dict | None = None) -> ChunkJob:
    """Normalisation bounds of the whole image and the staged labels image (nothing predicted yet)."""
    from .predict import _lazy_image, subsample_bounds, tile_geometry

    x = _lazy_image(source, cfg)
    bounds = subsample_bounds(x, cfg)
    staged = StagedLabels.create(target, chunk, labels_dtype(n_label_values(cfg)), info)
    return ChunkJob(staged, (float(bounds[0]), float(bounds[1])), tile_geometry(cfg)[1])


def predict_to_store(
    model: Any, source: Any, cfg: Config, target: LabelsTarget, chunk: int | None = None,
    progress: Progress | None = None, stop: Any = None, overwrite: bool = False, info: dict | None = None,
) -> Any:  # fmt: skip
    """Predict a lazy (H, W[, C]) image into the labels image `target` in this process; returns its path.

    Stops (raising `PredictionStopped`) between chunks when `stop` is set; the temporary store is
    removed on every failure.
    """
    from .chunkobjects import needs_objects, predict_objects_to_store
    from .predict import PredictionStopped, _lazy_image
    from .tiling import chunk_size

    x = _lazy_image(source, cfg)
    chunk = chunk or chunk_size(cfg)
    if needs_objects(cfg):
        return predict_objects_to_store(model, x, cfg, target, chunk, progress, stop, overwrite, info)
    job = prepare(x, cfg, target, chunk, info)
    cells = list(chunk_grid(target.yx_shape, chunk))
    try:
        for done, (iy, ix, _) in enumerate(cells):
            if stop is not None and stop.is_set():
                raise PredictionStopped("Prediction stopped.")
            predict_chunk(model, x, cfg, job, iy, ix, stop)
            if progress is not None:
                progress(done + 1, len(cells))
        return job.staged.publish(overwrite=overwrite)
    except BaseException:
        job.staged.discard()
        raise
