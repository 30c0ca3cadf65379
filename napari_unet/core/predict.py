"""Tiled prediction that equals whole-image prediction, for images, stacks and lazy (dask/zarr) arrays.

How tiles fit together: the image is reflect-padded at its bottom/right to a multiple of
`cfg.size_multiple`; tiles start at multiples of it (so every pooling grid lines up with the
whole image's) and each tile keeps only pixels at least `context >= halo(cfg)` away from its
inner edges. Tiles at the image border reach the border, so the network sees the same zero
padding there as on the whole image. The kept regions partition the image, so no blending is
needed and there are no seams: the result equals `model(padded image)` up to float round-off.
"""

from __future__ import annotations

import math
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import keras
import numpy as np

from .config import Config
from .errors import ConfigError, InputError, NapariUNetError
from .model import halo
from .normalize import as_samples, check_image, normalize, normalize_sample, percentiles
from .targets import probabilities_to_labels

Progress = Callable[[int, int], Any]

# One model call at a time: Keras builds its predict function lazily (not thread-safe), and dask
# or napari may compute chunks from several threads. TensorFlow still uses all cores inside a call.
_MODEL_LOCK = threading.Lock()

#: Pixels read to estimate normalisation percentiles of a large lazy image.
SUBSAMPLE_PIXELS = 4_000_000


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


class PredictionStopped(NapariUNetError):
    """Prediction was stopped on request before it finished."""


@dataclass
class Prediction:
    """Probabilities `(H, W, K)` and labels `(H, W)`; with a leading `N` axis for stacks."""

    probabilities: np.ndarray
    labels: np.ndarray


def tile_geometry(cfg: Config) -> tuple[int, int]:
    """(tile, context) in pixels actually used: context >= halo, both multiples of `size_multiple`.

    `predict.overlap` is raised to the network's halo when smaller, and `predict.tile_size` grows
    when the context would leave a kept core smaller than half the configured tile.
    """
    m = cfg.size_multiple
    context = _round_up(max(cfg.predict.overlap, halo(cfg), 1), m)
    tile = _round_up(cfg.predict.tile_size, m)
    min_core = max(m, _round_up(cfg.predict.tile_size // 2, m))
    return max(tile, 2 * context + min_core), context


def predict_probabilities(
    model: keras.Model,
    image: np.ndarray,
    cfg: Config,
    progress: Progress | None = None,
    stop: StopFlag | None = None,
) -> np.ndarray:
    """Probabilities float32 `(H, W, K)` of one normalised image `(H, W, C)` (or `(H, W)` when C is 1)."""
    image = _check_sample(image, cfg)
    n_out = _check_model(model, cfg)
    h, w = image.shape[:2]
    m = cfg.size_multiple
    padded = np.pad(image, ((0, _round_up(h, m) - h), (0, _round_up(w, m) - w), (0, 0)), mode="reflect")
    jobs = _tile_grid(padded.shape[0], padded.shape[1], cfg)
    tile = tile_geometry(cfg)[0]
    size_y, size_x = min(tile, padded.shape[0]), min(tile, padded.shape[1])
    out = np.empty((h, w, n_out), dtype=np.float32)
    batch_size = max(1, cfg.predict.batch_size)
    for first in range(0, len(jobs), batch_size):
        if stop is not None and stop.is_set():
            raise PredictionStopped("Prediction stopped.")
        batch = jobs[first : first + batch_size]
        x = np.stack([padded[ty[0] : ty[0] + size_y, tx[0] : tx[0] + size_x] for ty, tx in batch])
        probs = _call_model(model, x)
        for (ty, tx), p in zip(batch, probs, strict=True):
            (y0, ky0, ky1), (x0, kx0, kx1) = ty, tx
            ky1, kx1 = min(ky1, h), min(kx1, w)  # the reflect padding is dropped
            out[ky0:ky1, kx0:kx1] = p[ky0 - y0 : ky1 - y0, kx0 - x0 : kx1 - x0]
        if progress is not None:
            progress(first + len(batch), len(jobs))
    return out


def count_tiles(height: int, width: int, cfg: Config) -> int:
    """Number of model tiles `predict_probabilities` runs for an image of this size."""
    m = cfg.size_multiple
    return len(_tile_grid(_round_up(height, m), _round_up(width, m), cfg))


def _tile_grid(height: int, width: int, cfg: Config) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """Tiles of a padded image as (y, x) pairs of `_axis_tiles` entries, row by row."""
    tile, context = tile_geometry(cfg)
    return [(ty, tx) for ty in _axis_tiles(height, tile, context) for tx in _axis_tiles(width, tile, context)]


def predict_image(
    model: Any,
    image: np.ndarray,
    cfg: Config | None = None,
    progress: Progress | None = None,
    stop: StopFlag | None = None,
    fit_memory: bool = False,
) -> Prediction:
    """Predict an image in any layout `normalize.as_samples` accepts, slice by slice.

    `model` is a keras.Model or a model bundle (anything with `.model` and `.config`; its config is
    used when `cfg` is None). 2D or RGB images give `(H, W, K)` and `(H, W)`; stacks `(N, H, W[, C])`
    give `(N, H, W, K)` and `(N, H, W)`. Each slice is normalised with its own percentiles.
    With `fit_memory` the tiles are the largest this device's memory holds (`tiling.fit_tiles`)
    instead of `cfg.predict.tile_size`: the same result, with less halo to compute.
    """
    model, cfg = _model_and_config(model, cfg)
    image = np.asarray(image)
    samples, _ = as_samples(image, in_channels=cfg.data.in_channels)
    if fit_memory:
        from .tiling import fit_tiles

        cfg = fit_tiles(cfg, samples[0].shape[0], samples[0].shape[1])
    stacked = image.ndim == 4 or len(samples) > 1 or (image.ndim == 3 and samples[0].shape[:2] != image.shape[:2])
    per_slice = count_tiles(samples[0].shape[0], samples[0].shape[1], cfg)
    total = per_slice * len(samples)
    probs, labels = [], []
    for i, sample in enumerate(samples):
        report = None if progress is None else _offset_progress(progress, i * per_slice, total)
        p = predict_probabilities(
            model, normalize_sample(sample, cfg.data), cfg, progress=report, stop=stop
        )
        probs.append(p)
        labels.append(probabilities_to_labels(p, cfg))
    if stacked:
        return Prediction(np.stack(probs), np.stack(labels))
    return Prediction(probs[0], labels[0])


def predict_dask(model: keras.Model, darr: Any, cfg: Config, bounds: tuple[float, float] | None = None):
    """Lazy probabilities `(H, W, K)` float32 of a large 2D image `(H, W)` or `(H, W, C)` (dask, zarr, numpy).

    Nothing is read until the result is computed, and then chunk by chunk: each output chunk is
    predicted from its chunk plus `context` pixels of neighbours (no padding at the outer border,
    exactly as the in-memory tiling), so the result equals `predict_probabilities`
    on the whole normalised image. Normalisation `bounds` (low, high intensity) default to the
    `cfg.data` percentiles of a strided subsample of at most `SUBSAMPLE_PIXELS` pixels.

    Model calls hold a lock, so any thread-based dask scheduler is safe; memory stays bounded by
    (workers x chunk) as long as the result is consumed chunk-wise (e.g. `dask.array.to_zarr`, or
    napari showing it). Use a bounded pool, e.g.
    ``with dask.config.set(scheduler="threads", num_workers=2): result.to_zarr(...)``;
    the model cannot be shipped to process-based or distributed schedulers.
    """
    import dask.array as da

    n_out = _check_model(model, cfg)
    x = _lazy_image(darr, cfg)
    if bounds is None:
        bounds = subsample_bounds(x, cfg)
    tile, context = tile_geometry(cfg)
    core = tile - 2 * context
    # Several tiles per chunk so that one block fills a model batch; chunks at least `context` wide.
    chunk = core * max(math.isqrt(max(1, cfg.predict.batch_size)), math.ceil(context / core))
    chunks = (_aligned_chunks(x.shape[0], chunk, context), _aligned_chunks(x.shape[1], chunk, context), (n_out,))
    # Each output chunk reads its own window (chunk + context) from the source. dask.array.overlap
    # would do the same but keeps memory proportional to the image area (measured: +606 MiB at 20000^2).
    grid = da.empty((x.shape[0], x.shape[1], n_out), chunks=chunks, dtype=np.uint8)
    return grid.map_blocks(
        _BlockPredictor(model, cfg, (float(bounds[0]), float(bounds[1])), x, context),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
    )


def subsample_bounds(darr: Any, cfg: Config, max_pixels: int = SUBSAMPLE_PIXELS) -> tuple[float, float]:
    """Normalisation percentiles `cfg.data.norm_low/high` of a strided subsample of a lazy image."""
    import dask.array as da

    x = da.asarray(darr)
    pixels = x.shape[0] * x.shape[1]
    step = max(1, math.ceil(math.sqrt(pixels / max_pixels)))
    sample = x[::step, ::step].compute(scheduler="threads", num_workers=2)
    return percentiles(sample, cfg.data.norm_low, cfg.data.norm_high)


class _BlockPredictor:
    """Chunk function of `predict_dask`: read the chunk plus context, normalise, predict, crop."""

    def __init__(self, model: keras.Model, cfg: Config, bounds: tuple[float, float], source: Any, context: int):
        self.model, self.cfg, self.bounds = model, cfg, bounds
        self.source, self.context = source, context
        self._token = uuid.uuid4().hex

    def __call__(self, block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        height, width = self.source.shape[:2]
        ya, xa = max(0, y0 - self.context), max(0, x0 - self.context)
        yb, xb = min(height, y1 + self.context), min(width, x1 + self.context)
        window = np.asarray(self.source[ya:yb, xa:xb].compute(scheduler="synchronous"))
        probs = predict_probabilities(self.model, normalize(window, bounds=self.bounds), self.cfg)
        return probs[y0 - ya : y1 - ya, x0 - xa : x1 - xa]

    def __dask_tokenize__(self) -> str:
        # Unique per call: hashing the model would pickle it (seconds), and a model fine-tuned in
        # place must not hit chunks cached (e.g. by napari) from its previous weights.
        return self._token


def _lazy_image(darr: Any, cfg: Config):
    """Dask array `(H, W, in_channels)` from a 2D or channels-last image."""
    import dask.array as da

    x = darr if isinstance(darr, da.Array) else da.from_array(darr, chunks="auto")
    check_image(x, "image")
    if cfg.data.preprocessing:
        # Chunks share whole-image statistics, which only the percentile normalisation has for now.
        steps = ", ".join(str(step.get("id")) for step in cfg.data.preprocessing)
        raise InputError(
            f"Large-image prediction supports percentile normalisation only; this imported model declares "
            f"the pre-processing {steps}. Load the image into memory to predict it."
        )
    c = cfg.data.in_channels
    if x.ndim == 2 and c == 1:
        return x[:, :, None]
    if x.ndim == 3 and x.shape[-1] == c:
        return x
    if x.ndim == 3 and x.shape[-1] == 4 and c == 3:
        return x[:, :, :3]
    raise InputError(
        f"Large-image prediction needs a 2D image (H, W) or (H, W, {c}) for this {c}-channel model; "
        f"got shape {tuple(x.shape)}. Predict stacks slice by slice."
    )


def _aligned_chunks(length: int, chunk: int, context: int) -> tuple[int, ...]:
    """Chunks of `chunk` pixels (a multiple of size_multiple); a last piece under `context` joins its neighbour."""
    sizes = [chunk] * (length // chunk)
    rest = length - chunk * len(sizes)
    if rest:
        if sizes and rest < context:
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return tuple(sizes)


def _axis_tiles(length: int, tile: int, context: int) -> list[tuple[int, int, int]]:
    """(start, keep_from, keep_to) per tile along one axis; the kept ranges partition 0..length."""
    if length <= tile:
        return [(0, 0, length)]
    step = tile - 2 * context
    starts = list(range(0, length - tile, step)) + [length - tile]
    edges = [0] + [s + context for s in starts[1:]] + [length]
    return [(s, edges[i], edges[i + 1]) for i, s in enumerate(starts)]


def _offset_progress(progress: Progress, offset: int, total: int) -> Progress:
    return lambda done, _total: progress(offset + done, total)


def _call_model(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    with _MODEL_LOCK:
        if isinstance(model, keras.Model) and keras.backend.backend() == "tensorflow":
            out = _predict_function(model)(batch)
        else:  # e.g. an imported package's runtime, which only offers predict_on_batch
            out = model.predict_on_batch(batch)
    return np.asarray(out, dtype=np.float32)


#: One traced inference function per model, for any batch, height and width.
_PREDICT_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _predict_function(model: keras.Model) -> Callable[[np.ndarray], Any]:
    """`model(x, training=False)` traced once for all tile shapes (predict_on_batch traces the first few
    shapes separately: about 0.2 s per new shape when a folder of differently sized images starts)."""
    fn = _PREDICT_FUNCTIONS.get(model)
    if fn is None:
        import tensorflow as tf

        ref = weakref.ref(model)  # the cache must not keep the model alive
        spec = tf.TensorSpec((None, None, None, model.input_shape[-1]), tf.float32)
        fn = tf.function(lambda x: ref()(x, training=False), input_signature=[spec])
        _PREDICT_FUNCTIONS[model] = fn
    return fn


def _check_sample(image: np.ndarray, cfg: Config) -> np.ndarray:
    image = np.asarray(image)
    check_image(image, "image")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] != cfg.data.in_channels:
        raise InputError(
            f"predict_probabilities needs one normalised image (H, W, {cfg.data.in_channels}); got shape "
            f"{image.shape}. Use predict_image for stacks, RGB or unnormalised images."
        )
    return image.astype(np.float32, copy=False)


def _check_model(model: keras.Model, cfg: Config) -> int:
    in_shape, out_shape = model.input_shape, model.output_shape
    if in_shape[-1] != cfg.data.in_channels or out_shape[-1] != cfg.n_outputs:
        raise ConfigError(
            f"The model takes {in_shape[-1]} channel(s) and gives {out_shape[-1]} output(s), but the config "
            f"says {cfg.data.in_channels} and {cfg.n_outputs}; use the config saved with the model."
        )
    return int(out_shape[-1])


def _model_and_config(model: Any, cfg: Config | None) -> tuple[keras.Model, Config]:
    if not isinstance(model, keras.Model) and hasattr(model, "model"):
        cfg = cfg if cfg is not None else getattr(model, "config", None)
        model = model.model
    if cfg is None:
        raise ConfigError("predict_image needs a Config when given a bare Keras model.")
    return model, cfg


def _round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple
