"""The compute worker's bioimage.io export job (TensorFlow, tf2onnx and bioimageio.spec run here)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from napari_unet.core.states import JobState

from . import arrays
from .export_messages import ExportOutcome, ExportRequest
from .handlers import Emit, _started
from .messages import Progress
from .models import model_info


def run_export(request: ExportRequest, emit: Emit, stop: threading.Event) -> tuple[JobState, Any]:
    from napari_unet.core.bioimageio_export import (
        ExportStopped,
        check_export,
        export_package,
    )

    start = time.monotonic()
    version, _ = check_export(
        request.model, request.dest, license=request.license, authors=request.authors, overwrite=request.overwrite
    )
    _started(request.job, emit)
    sample = None if request.sample is None else np.array(arrays.view(request.sample))

    def progress(done: int, total: int) -> None:
        emit(Progress(request.job, done / max(total, 1), text=f"Exporting: step {done} of {total}"))

    try:
        path = export_package(
            request.model, request.dest, authors=request.authors or None, license=request.license,
            cite=request.cite or None, overwrite=request.overwrite, sample=sample, progress=progress, stop=stop,
        )  # fmt: skip
    except ExportStopped:
        return JobState.STOPPED, None
    return JobState.DONE, ExportOutcome(str(path), model_info(version), time.monotonic() - start)
