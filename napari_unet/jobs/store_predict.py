"""The compute worker's side of `PredictStoreRequest`: predict chunk by chunk into a labels store."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from napari_unet.core.states import JobState

from . import arrays
from .messages import Progress
from .handlers import _started, bundle_info, load_model
from .store_messages import PredictStoreOutcome, PredictStoreRequest

#: Chunks of at most this side in the viewer's jobs: progress moves and Stop is seen between chunks.
WIDGET_MAX_CHUNK = 2048


def run_store_predict(request: PredictStoreRequest, emit: Any, stop: threading.Event) -> tuple[JobState, Any]:
    from napari_unet.core.largeimage import predict_to_store
    from napari_unet.core.omezarr import free_labels_name, image_yxc, open_image, plan_labels, target_for_array
    from napari_unet.core.predict import PredictionStopped
    from napari_unet.core.tiling import chunk_size


    start = time.monotonic()
    _started(request.job, emit)
    bundle = load_model(request.model)
    cfg = bundle.config
    if request.threshold is not None:
        cfg = cfg.replace(predict={"threshold": float(request.threshold)})
    if request.source is not None:
        image = open_image(request.source)
        source = image_yxc(image)
        # the name the viewer chose may have been taken since (an earlier job of the queue)
        target = plan_labels([image], free_labels_name(request.source, request.name))[0]
    else:
        source = arrays.view(request.image)
        target = target_for_array(Path(request.root), request.name, source.shape[:2])
    chunk = min(chunk_size(cfg), WIDGET_MAX_CHUNK)

    def progress(done: int, total: int) -> None:
        emit(Progress(request.job, done / max(total, 1)))

    info = {"model": str(bundle.path), "source": request.source or "a napari layer"}
    try:
        if request.cluster and request.source is not None:
            path = _on_cluster(request, emit, bundle, cfg, image, target, chunk, progress, stop)
        else:
            path = predict_to_store(bundle.model, source, cfg, target, chunk, progress, stop, info=info)
    except PredictionStopped:
        return JobState.STOPPED, None
    return JobState.DONE, PredictStoreOutcome(str(path), time.monotonic() - start, bundle_info(bundle))


def _on_cluster(request: PredictStoreRequest, emit: Any, bundle: Any, cfg: Any, image: Any, target: Any, chunk: int,
                progress: Any, stop: threading.Event) -> Path:  # fmt: skip
    """The store's chunks as tasks on a dask cluster (`core/batch.py`, as `napari-unet predict --cluster`)."""
    import argparse

    from napari_unet.core.batch import Run
    from napari_unet.core.cluster import cluster_target, dashboard, open_client

    local, address = cluster_target(request.cluster or "")
    overrides = {} if request.threshold is None else {"threshold": float(request.threshold)}
    model_path = str(Path(bundle.path).resolve())
    with open_client(local, address) as client:
        emit(Progress(request.job, 0.0, text=f"dask dashboard: {dashboard(client)}"))
        args = argparse.Namespace(overwrite=False, axes=None)
        written = Run(model_path, overrides, bundle, cfg).execute(client, [image], [target], [], args, chunk, progress, stop)
    return written[0]
