"""What the compute worker does for each request. The only place outside the core that touches TensorFlow."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.config import Config
from napari_unet.core.paths import child_location
from napari_unet.core.targets import compact_labels
from napari_unet.core.states import JobState

from . import arrays
from .messages import (
    FinetuneRequest,
    InspectRequest,
    ModelInfo,
    PairRef,
    PredictOutcome,
    PredictRequest,
    PreviewReady,
    Progress,
    Request,
    ReviewFinetuneRequest,
    ReviewItemDone,
    ReviewOutcome,
    ReviewPredictRequest,
    Started,
    TrainOutcome,
    TrainRequest,
    TrainUpdate,
)
from .models import info_from_metadata, model_info

Emit = Callable[[Any], None]

#: Batch updates are sent at most this often; epoch and end updates always are.
UPDATE_INTERVAL_S = 0.1
#: Previews are computed on at most this many pixels per side (a crop from the top left).
PREVIEW_MAX = 1024


def stopped_before_start(request: Request) -> tuple[JobState, Any]:
    if isinstance(request, (TrainRequest, FinetuneRequest, ReviewFinetuneRequest)):
        return JobState.STOPPED, TrainOutcome(JobState.STOPPED, "Stopped before training started.", None)
    return JobState.STOPPED, None


# ---------------------------------------------------------------- models, loaded once per worker

_MODELS: dict[str, tuple[float, Any]] = {}


def load_model(path: str) -> Any:
    """The ModelBundle at `path`, loaded (safe mode, no pickle) once and reused while the file is unchanged."""
    from napari_unet.core.bundle import load_bundle

    resolved = str(Path(path).expanduser().resolve())
    try:
        stamp = Path(resolved).stat().st_mtime
    except OSError:
        stamp = -1.0
    cached = _MODELS.get(resolved)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    bundle = load_bundle(resolved)
    _MODELS.clear()  # keep one model in memory
    _MODELS[resolved] = (stamp, bundle)
    return bundle


def bundle_info(bundle: Any) -> ModelInfo:
    return info_from_metadata(bundle.metadata, bundle.path)


def _started(job: str, emit: Emit) -> None:
    from napari_unet.core.model import device_info

    emit(Started(job, device_info()))


# ---------------------------------------------------------------- training


class _Updates:
    """`on_event` for core training: throttled TrainUpdates, and a preview of the model Stop would keep."""

    def __init__(self, job: str, emit: Emit, cfg: Config, preview: np.ndarray | None, scratch: str) -> None:
        self.job, self.emit, self.cfg, self.preview, self.scratch = job, emit, cfg, preview, scratch
        self._last = 0.0

    def __call__(self, event: Any) -> None:
        now = time.monotonic()
        if event.kind == "batch" and now - self._last < UPDATE_INTERVAL_S and event.step < event.steps:
            return
        self._last = now
        selected = bool(getattr(event, "selected", event.kind == "epoch"))
        self.emit(
            TrainUpdate(
                self.job, event.kind, event.epoch, event.epochs, event.step, event.steps, dict(event.logs),
                event.elapsed_s, event.eta_s, JobState(event.status).value, event.message, selected,
                event.fraction,
            )
        )  # fmt: skip
        if event.kind == "epoch" and selected and self.preview is not None and event.model is not None:
            labels = preview_labels(event.model, self.preview, self.cfg)
            self.emit(PreviewReady(self.job, arrays.put(self.scratch, labels), event.epoch))


def preview_labels(model: Any, plane: np.ndarray, cfg: Config) -> np.ndarray:
    """Labels the model predicts for a preview plane right now."""
    from napari_unet.core.normalize import as_samples, normalize_sample
    from napari_unet.core.train import predict_labels

    samples, _ = as_samples(plane, in_channels=cfg.data.in_channels, name="preview image")
    return predict_labels(model, normalize_sample(samples[0], cfg.data), cfg)


def _preview(ref: Any) -> np.ndarray | None:
    return None if ref is None else np.array(arrays.view(ref)[:PREVIEW_MAX, :PREVIEW_MAX])


def _pairs(refs: list[PairRef]) -> list[Any]:
    from napari_unet.core.data import TrainingPair

    return [TrainingPair(np.array(arrays.view(p.image)), np.array(arrays.view(p.labels)), p.name) for p in refs]


def _fit_and_save(
    run: Callable[[Any, Any], Any], root: Path, name: str, job: str, stop: threading.Event
) -> tuple[JobState, TrainOutcome]:
    """Train with checkpoints; publish the final model (done) or the checkpoint (stopped) as a version."""
    from napari_unet.core.checkpointed import fit_and_publish

    published = fit_and_publish(run, root, name, job, stop)
    state, path = published.state, published.path
    if path is None:
        return state, TrainOutcome(state, "Stopped before the first epoch ended; nothing was saved.", None)
    info = model_info(path)
    what = "Finished" if state == JobState.DONE else "Stopped; kept the best epoch"
    return state, TrainOutcome(state, f"{what}. Saved {info.label} to {path}", info, dict(published.result.metrics))


def _train(request: TrainRequest, emit: Emit, stop: threading.Event) -> tuple[JobState, Any]:
    from napari_unet.core import train as core_train

    cfg = Config.from_dict(request.config)
    _started(request.job, emit)
    pairs = _pairs(request.pairs)
    updates = _Updates(request.job, emit, cfg, _preview(request.preview), request.scratch)

    def run(on_best: Any, stop: threading.Event) -> Any:
        return core_train.train(pairs, cfg, updates, stop, on_best=on_best)

    return _fit_and_save(run, Path(request.root).expanduser(), request.name, request.job, stop)


def _finetune(request: FinetuneRequest, emit: Emit, stop: threading.Event) -> tuple[JobState, Any]:
    from napari_unet.core import train as core_train

    _started(request.job, emit)
    parent = load_model(request.parent)
    if request.sparse_background is not None:  # a copy: the cached bundle keeps its own config
        sparse = {"sparse": True, "background_label": request.sparse_background, "ignore_label": None}
        parent = dataclasses.replace(parent, config=parent.config.replace(data=sparse))
    pairs = _pairs(request.pairs)
    updates = _Updates(request.job, emit, parent.config, _preview(request.preview), request.scratch)
    root, name = child_location(Path(request.parent), Path(request.fallback_root), Path(request.parent).parent.name)

    def run(on_best: Any, stop: threading.Event) -> Any:
        return core_train.finetune(parent, pairs, updates, stop, epochs=request.epochs, on_best=on_best)

    return _fit_and_save(run, Path(root), name, request.job, stop)


# ---------------------------------------------------------------- prediction and models


def _predict(request: PredictRequest, emit: Emit, stop: threading.Event) -> tuple[JobState, Any]:
    from napari_unet.core.predict import PredictionStopped, predict_image

    start = time.monotonic()
    _started(request.job, emit)
    bundle = load_model(request.model)
    image = arrays.view(request.image)

    def progress(done: int, total: int) -> None:
        emit(Progress(request.job, done / max(total, 1)))

    try:
        result = predict_image(bundle.model, image, bundle.config, progress=progress, stop=stop)
    except PredictionStopped:
        return JobState.STOPPED, None
    outcome = PredictOutcome(
        arrays.put(request.scratch, np.asarray(result.probabilities, dtype=np.float32)),
        arrays.put(request.scratch, compact_labels(result.labels)),
        time.monotonic() - start,
        bundle_info(bundle),
    )
    return JobState.DONE, outcome


def _inspect(request: InspectRequest, emit: Emit, stop: threading.Event) -> tuple[JobState, Any]:
    _started(request.job, emit)
    return JobState.DONE, bundle_info(load_model(request.path))


# ---------------------------------------------------------------- review


def _review_predict(request: ReviewPredictRequest, emit: Emit, stop: threading.Event) -> tuple[JobState, Any]:
    from napari_unet.core import review as rv
    from napari_unet.core.errors import NapariUNetError
    from napari_unet.core.predict import PredictionStopped

    if request.cluster:
        from .review_cluster import run_review_on_cluster

        return run_review_on_cluster(request, emit, stop)
    _started(request.job, emit)
    bundle = load_model(request.model)
    project = rv.ReviewProject.open(request.project)
    done, total = 0, len(request.names)
    for index, name in enumerate(request.names):
        if stop.is_set():
            return JobState.STOPPED, ReviewOutcome(done, bundle_info(bundle))
        try:
            image = project.load_image(name)
            pred = rv.predict_for_review(bundle.model, image, bundle.config, request.method, stop, name)
        except PredictionStopped:
            return JobState.STOPPED, ReviewOutcome(done, bundle_info(bundle))
        except NapariUNetError as exc:
            emit(ReviewItemDone(request.job, name, index, total, error=str(exc)))
            continue
        project.write_prediction_files(name, pred)  # the index is the viewer's to write
        done += 1
        emit(
            ReviewItemDone(
                request.job, name, index, total, None, pred.uncertainty, pred.foreground, pred.objects,
                list(pred.labels.shape),
            )
        )  # fmt: skip
    return JobState.DONE, ReviewOutcome(done, bundle_info(bundle))


def _review_finetune(request: ReviewFinetuneRequest, emit: Emit, stop: threading.Event) -> tuple[JobState, Any]:
    from napari_unet.core import review as rv
    from napari_unet.core import train as core_train

    _started(request.job, emit)
    parent = load_model(request.model)
    project = rv.ReviewProject.open(request.project)
    pairs = rv.reviewed_pairs(project, request.statuses)
    updates = _Updates(request.job, emit, parent.config, None, request.scratch)
    root, name = rv.finetune_location(project.folder, parent.path)

    def run(on_best: Any, stop: threading.Event) -> Any:
        return core_train.finetune(parent, pairs, updates, stop, epochs=request.epochs, on_best=on_best)

    return _fit_and_save(run, root, name, request.job, stop)
