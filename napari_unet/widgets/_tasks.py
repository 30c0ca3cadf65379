"""The work the widgets run off the GUI thread: train, fine-tune, predict, load a model.

Qt-free: each function takes `emit` (a callable that hands items to the GUI thread) and a
`threading.Event` stop flag, so it can also run synchronously in a test. TensorFlow and the
heavy core modules are imported inside the functions, when work starts.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.config import Config
from napari_unet.core.paths import child_location

from ._tf import import_tensorflow
from .models_registry import CorrectedPair, ModelEntry

Emit = Callable[[Any], None]

#: Batch events are forwarded at most this often; epoch and end events always are.
EVENT_INTERVAL_S = 0.1
#: Nice value of worker threads (0 normal, 19 lowest).
WORKER_NICE = 10
#: Previews are computed on at most this many pixels per side (a crop from the top left).
PREVIEW_MAX = 1024


@dataclass
class Preview:
    """A 2D plane (H, W) or (H, W, C) on which to show the model's prediction after each epoch."""

    image: np.ndarray
    rgb: bool


@dataclass
class TrainOutcome:
    """What a training or fine-tuning run produced."""

    status: str  # done or stopped
    message: str
    entry: ModelEntry | None  # None when nothing was saved (stopped before one epoch ended)
    metrics: dict[str, float]


@dataclass
class PredictOutcome:
    probabilities: np.ndarray
    labels: np.ndarray
    seconds: float


class _EventForwarder:
    """`on_event` for core training: forwards TrainEvents (throttled) and epoch-end previews."""

    def __init__(self, emit: Emit, cfg: Config, preview: Preview | None) -> None:
        self.emit, self.cfg, self.preview = emit, cfg, preview
        self._last = 0.0

    def __call__(self, event: Any) -> None:
        now = time.monotonic()
        if event.kind == "batch" and now - self._last < EVENT_INTERVAL_S and event.step < event.steps:
            return
        self._last = now
        self.emit(("event", event))
        if event.kind == "epoch" and self.preview is not None:
            if event.model is not None:
                self.emit(("preview", preview_labels(event.model, self.preview, self.cfg)))


def preview_labels(model: Any, preview: Preview, cfg: Config) -> np.ndarray:
    """Labels the model predicts for the preview plane right now."""
    from napari_unet.core import train as core_train
    from napari_unet.core.normalize import as_samples, normalize

    samples, _ = as_samples(preview.image, in_channels=cfg.data.in_channels, name="preview image")
    image = normalize(samples[0], cfg.data.norm_low, cfg.data.norm_high)
    return core_train.predict_labels(model, image, cfg)


def preview_plane(data: Any, rgb: bool, index: int = 0) -> Preview:
    """The 2D plane of an image layer's data to preview on (plane `index` of a stack), cropped."""
    spatial = data.ndim - (1 if rgb else 0)
    plane = data[index] if spatial == 3 else data
    plane = np.asarray(plane[:PREVIEW_MAX, :PREVIEW_MAX])
    return Preview(np.array(plane, copy=True), rgb)


def yield_cpu_to_gui() -> None:
    """Lower this worker thread's CPU priority (Linux: nice is per thread, and TensorFlow's thread
    pools, created from here, inherit it), so napari's GUI thread wins the cores when it needs them.

    The raise cannot be undone without privileges, so a pool thread keeps it for later jobs.
    """
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < WORKER_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, WORKER_NICE)
    except OSError:  # not permitted here: run at normal priority
        pass


def _training_pairs(pairs: Sequence[CorrectedPair]) -> list[Any]:
    from napari_unet.core.data import TrainingPair

    return [TrainingPair(p.image, p.labels, p.name) for p in pairs]


def _save(result: Any, root: Path, name: str, source: str) -> ModelEntry | None:
    """Write the result as a new version (unless no epoch finished) and describe it as an entry."""
    from napari_unet.core import bundle as bundle_io

    if not result.history:
        return None
    bundle = result.to_bundle()
    bundle_io.save_bundle(bundle, root, name, replay=result.replay)
    return ModelEntry.from_bundle(bundle, source)


def _outcome(result: Any, entry: ModelEntry | None) -> TrainOutcome:
    if entry is None:
        message = "Stopped before the first epoch ended; nothing was saved."
    else:
        what = "Finished" if result.status == "done" else "Stopped; kept the best epoch"
        message = f"{what}. Saved {entry.label} to {entry.path}"
    return TrainOutcome(result.status, message, entry, dict(result.metrics))


def run_training(
    pairs: Sequence[CorrectedPair],
    cfg: Config,
    root: Path,
    name: str,
    preview: Preview | None,
    emit: Emit,
    stop: threading.Event,
) -> TrainOutcome:
    """Train a new model on the pairs and save it as the next version of `root/name`."""
    yield_cpu_to_gui()
    import_tensorflow()
    from napari_unet.core import model as core_model
    from napari_unet.core import train as core_train

    emit(("device", core_model.device_info()))
    result = core_train.train(_training_pairs(pairs), cfg, _EventForwarder(emit, cfg, preview), stop)
    return _outcome(result, _save(result, root, name, "trained"))


def ensure_loaded(entry: ModelEntry) -> Any:
    """The entry's ModelBundle, loading it from disk the first time."""
    if entry.bundle is None:
        import_tensorflow()
        from napari_unet.core.bundle import load_bundle

        if entry.path is None:
            raise ValueError(f"{entry.label} has neither a model in memory nor a path.")
        entry.bundle = load_bundle(entry.path)
    return entry.bundle


def run_finetune(
    parent: ModelEntry,
    pairs: Sequence[CorrectedPair],
    epochs: int,
    fallback_root: Path,
    preview: Preview | None,
    emit: Emit,
    stop: threading.Event,
) -> TrainOutcome:
    """Fine-tune `parent` on corrected pairs (plus its replay data) and save the child version."""
    yield_cpu_to_gui()
    import_tensorflow()
    from napari_unet.core import model as core_model
    from napari_unet.core import train as core_train

    emit(("device", core_model.device_info()))
    # Start from the saved version: it is what the child records as its parent.
    if parent.path is not None:
        from napari_unet.core.bundle import load_bundle

        bundle = load_bundle(parent.path)
    else:
        bundle = ensure_loaded(parent)
    forwarder = _EventForwarder(emit, bundle.config, preview)
    result = core_train.finetune(bundle, _training_pairs(pairs), forwarder, stop, epochs=epochs)
    root, name = child_location(parent.path, fallback_root, parent.name)
    return _outcome(result, _save(result, root, name, "fine-tuned"))


def run_prediction(entry: ModelEntry, image: Any, rgb: bool, emit: Emit, stop: threading.Event) -> PredictOutcome:
    """Tiled prediction of a whole image (2D, RGB or a stack; numpy or lazy) with the entry's model.

    A lazy 2D image (dask, zarr) is predicted chunk by chunk with `core.predict.predict_dask`, so only
    the result has to fit in memory; anything else goes through `core.predict.predict_image`.
    """
    yield_cpu_to_gui()
    import_tensorflow()
    from napari_unet.core.predict import predict_image

    start = time.monotonic()
    bundle = ensure_loaded(entry)
    cfg = bundle.config
    spatial = image.ndim - (1 if rgb else 0)

    def progress(done: int, total: int) -> None:
        emit(("progress", done / max(total, 1)))

    if spatial == 2 and not isinstance(image, np.ndarray):
        probabilities = _predict_lazy(bundle.model, image, cfg, progress, stop)
        labels = probabilities_to_labels_any(probabilities, cfg)
    else:
        result = predict_image(bundle.model, np.asarray(image), cfg, progress=progress, stop=stop)
        probabilities, labels = result.probabilities, result.labels
    return PredictOutcome(np.asarray(probabilities), np.asarray(labels), time.monotonic() - start)


def _predict_lazy(model: Any, image: Any, cfg: Config, progress: Callable[[int, int], None], stop: threading.Event):
    """Probabilities of a lazy 2D image, computed one dask block at a time (stoppable, with progress)."""
    import itertools

    from napari_unet.core.predict import PredictionStopped, predict_dask

    lazy = predict_dask(model, image, cfg)
    out = np.empty(lazy.shape, dtype=np.float32)
    starts = [np.cumsum((0,) + c[:-1]) for c in lazy.chunks]
    blocks = list(itertools.product(*(range(len(c)) for c in lazy.chunks)))
    for done, index in enumerate(blocks, start=1):
        if stop.is_set():
            raise PredictionStopped("Prediction stopped.")
        where = tuple(slice(s[i], s[i] + c[i]) for s, c, i in zip(starts, lazy.chunks, index))
        out[where] = lazy.blocks[index].compute(scheduler="synchronous")
        progress(done, len(blocks))
    return out


def probabilities_to_labels_any(probabilities: np.ndarray, cfg: Config, **options: Any) -> np.ndarray:
    """`core.targets.probabilities_to_labels` for one image `(H, W, K)` or a stack `(N, H, W, K)`."""
    from napari_unet.core.targets import probabilities_to_labels

    if probabilities.ndim == 4:
        return np.stack([probabilities_to_labels(p, cfg, **options) for p in probabilities])
    return probabilities_to_labels(probabilities, cfg, **options)


def load_entry(path: Path, emit: Emit, stop: threading.Event) -> ModelEntry:
    """Load a model folder, version folder or .zip as a session entry."""
    yield_cpu_to_gui()
    import_tensorflow()
    from napari_unet.core.bundle import load_bundle

    return ModelEntry.from_bundle(load_bundle(path), "loaded")
