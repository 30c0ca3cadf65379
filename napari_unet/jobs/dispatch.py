"""Which worker function runs which request: the one table, used by the worker's request loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from napari_unet.core.states import JobState

from . import handlers
from .export import run_export
from .export_messages import ExportRequest
from .live import run_live
from .live_messages import LiveRequest
from .messages import (
    FinetuneRequest,
    InspectRequest,
    PredictRequest,
    Request,
    ReviewFinetuneRequest,
    ReviewPredictRequest,
    TrainRequest,
)
from .store_messages import PredictStoreRequest
from .store_predict import run_store_predict

Handler = Callable[[Any, handlers.Emit, threading.Event], tuple[JobState, Any]]

HANDLERS: dict[type, Handler] = {
    TrainRequest: handlers._train,
    FinetuneRequest: handlers._finetune,
    PredictRequest: handlers._predict,
    InspectRequest: handlers._inspect,
    ReviewPredictRequest: handlers._review_predict,
    ReviewFinetuneRequest: handlers._review_finetune,
    LiveRequest: run_live,
    PredictStoreRequest: run_store_predict,
    ExportRequest: run_export,
}


def handle(request: Request, emit: handlers.Emit, stop: threading.Event) -> tuple[JobState, Any]:
    """Run one request; returns (done or stopped, its outcome)."""
    for kind, handler in HANDLERS.items():
        if isinstance(request, kind):
            return handler(request, emit, stop)
    raise TypeError(f"The compute worker cannot run {type(request).__name__}.")
