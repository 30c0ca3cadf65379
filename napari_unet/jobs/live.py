"""The worker's side of Live mode: train while the user paints, until Freeze or Stop.

One loop on the worker's main thread: apply the messages the viewer sent (strokes, a new field
of view, Freeze), train one batch, and now and then predict the field of view and send it back
as a `LiveFrame`. A frame follows a stroke once the model has trained on it for
`STEPS_AFTER_STROKE` batches; otherwise one comes every `refresh_s`, or less often when predicting
would take more than a quarter of the time (`PREDICT_SHARE`). Stop is checked
between batches (tens of milliseconds), so a live job ends well within the 2 s Stop promise.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.config import Config
from napari_unet.core.errors import InputError
from napari_unet.core.states import JobState

from . import arrays
from .handlers import _started, load_model
from .live_messages import LiveFrame, LiveFreeze, LiveOutcome, LiveRequest, LiveStroke, LiveView, LiveViewport
from .messages import Progress
from .models import model_info

#: Training batches on a new stroke before the next frame shows what the model made of it.
STEPS_AFTER_STROKE = 8
#: Timed frames (without a new stroke) leave training at least this many times their prediction time.
PREDICT_SHARE = 4.0
#: Text of the Progress event sent once the network is ready to learn (strokes sent earlier wait for it).
READY = "Live: ready"
#: How long the loop waits for a message while there is nothing to train on.
IDLE_WAIT_S = 0.1


def run_live(request: LiveRequest, emit: Any, stop: threading.Event) -> tuple[JobState, Any]:
    from napari_unet.core.live import LiveTrainer, as_planes, from_parent
    from napari_unet.core.live_source import open_source
    from napari_unet.core.strokes import View


    _started(request.job, emit)
    messages: queue.Queue = getattr(stop, "messages", None) or queue.Queue()
    if request.source is not None:
        image = open_source(request.source)
    elif request.image is not None:
        image = arrays.view(request.image)
    else:
        raise InputError("The live request names no image.")
    labels = _labels_store(request, as_planes(image, request.rgb).shape[:3])
    parent = load_model(request.parent) if request.parent else None
    if parent is not None:
        cfg = from_parent(parent, request.background_label)
    else:
        cfg = Config.from_dict(request.config).replace(data={"sparse": True, "background_label": request.background_label})
    trainer = LiveTrainer(image, labels, cfg, parent, rgb=request.rgb)
    for region in request.regions:
        trainer.paint(region.plane, region.top, region.left, arrays.take(region.labels))
    loop = _Loop(request, emit, trainer, View)
    loop.view = request.view
    trainer.warm_up(loop.viewport())
    emit(Progress(request.job, 0.0, text=READY))
    loop.frame_due = parent is not None  # a given model has something to show before any stroke
    while True:
        freeze = loop.apply(messages)
        if stop.is_set():
            return JobState.STOPPED, LiveOutcome("Stopped; nothing was saved (Freeze saves).", None, trainer.stats.steps)
        if freeze:
            return JobState.DONE, _freeze(request, trainer)
        if trainer.ready:
            trainer.step()
        elif not loop.frame_due:
            loop.wait(messages)
            continue
        loop.maybe_frame()


class _Loop:
    """The state between batches: the field of view, the strokes seen, when the next frame is due."""

    def __init__(self, request: LiveRequest, emit: Any, trainer: Any, view_cls: type) -> None:
        self.request, self.emit, self.trainer, self.View = request, emit, trainer, view_cls
        self.view: LiveViewport | None = None
        self.frame_due = False
        self.last_frame = time.monotonic()
        self.stroke_seq = 0  # the newest stroke applied
        self.trained_seq = 0  # the newest stroke trained on for STEPS_AFTER_STROKE batches
        self.stroke_step = 0
        self.predict_s = 0.0  # how long the last frame's prediction took
        self.unshown = False  # a stroke was learnt that no frame has shown yet
        self._held: list[Any] = []

    def apply(self, messages: queue.Queue) -> bool:
        """Apply every waiting message; True when Freeze was asked for."""
        freeze = False
        pending, self._held = self._held, []
        while True:
            try:
                pending.append(messages.get_nowait())
            except queue.Empty:
                break
        for message in pending:
            if isinstance(message, LiveStroke):
                try:
                    patch = arrays.take(message.labels)
                    self.trainer.paint(message.plane, message.top, message.left, patch)
                except (InputError, OSError, ValueError):
                    continue  # a stroke the worker cannot read is dropped, the session goes on
                self.stroke_seq = max(self.stroke_seq, message.seq)
                self.stroke_step = self.trainer.stats.steps
            elif isinstance(message, LiveView):  # show the new view at once, if there is a model to show
                self.view = message.view
                self.frame_due = self.trainer.ready or self.trainer.parent is not None
            elif isinstance(message, LiveFreeze):
                freeze = True
        return freeze

    def wait(self, messages: queue.Queue) -> None:
        try:
            self._held.append(messages.get(timeout=IDLE_WAIT_S))
        except queue.Empty:
            pass

    def viewport(self) -> Any:
        """The field of view as a `strokes.View` (None before the viewer sent one)."""
        v = self.view
        if v is None:
            return None
        return self.View(int(v.plane), int(np.floor(v.top)), int(np.floor(v.left)), int(np.ceil(v.bottom)), int(np.ceil(v.right)))

    def maybe_frame(self) -> None:
        steps = self.trainer.stats.steps
        if self.stroke_seq > self.trained_seq and steps - self.stroke_step >= STEPS_AFTER_STROKE:
            self.trained_seq, self.unshown = self.stroke_seq, True
        since = time.monotonic() - self.last_frame
        # Predicting must not starve training: stroke frames leave at least as much time to training,
        # timed frames PREDICT_SHARE times as much.
        stroke_frame = self.unshown and since >= self.predict_s
        timed = self.trainer.ready and since >= max(self.request.refresh_s, PREDICT_SHARE * self.predict_s)
        if self.view is None or not (stroke_frame or timed or self.frame_due):
            return
        start = time.monotonic()
        view, labels, _ = self.trainer.predict(self.viewport())
        seconds = self.predict_s = time.monotonic() - start
        ref = arrays.put(self.request.scratch, labels.astype(np.int32, copy=False))
        stats = self.trainer.stats
        self.emit(LiveFrame(self.request.job, ref, view.plane, view.top, view.left, stats.steps, stats.loss,
                            self.trained_seq, seconds))  # fmt: skip
        self.last_frame, self.frame_due, self.unshown = time.monotonic(), False, False


def _labels_store(request: LiveRequest, shape: tuple[int, int, int]) -> Any:
    """The strokes: a writable `(planes, H, W)` int32 memory map in the scratch folder, with the labels given.

    Without `labels` the map is never read or written as a whole: its untouched pages cost nothing.
    """
    from napari_unet.core.strokes import StrokeStore

    ref, store = arrays.empty(request.scratch, shape, np.int32)
    arrays.release(ref)  # the map stays valid; the file is gone when the job ends
    if request.labels is None:
        return StrokeStore(store, request.background_label, scan=False)
    given = arrays.view(request.labels)
    given = given.reshape(shape) if given.size == store.size else None
    if given is None:
        raise InputError(f"The labels layer must have the image's shape {shape[1:]} (per plane).")
    if np.any(given < 0):
        raise InputError("The labels layer holds negative values; live labels are 0 (not annotated) or positive.")
    store[:] = given
    return store


def _freeze(request: LiveRequest, trainer: Any) -> LiveOutcome:
    """Save the model as it is now as the next version of root/name."""
    from napari_unet.core.bundle import save_bundle

    if trainer.stats.steps == 0:
        return LiveOutcome("Nothing to save: the model has not trained on any stroke yet.", None, 0)
    path = save_bundle(trainer.bundle(request.name), Path(request.root).expanduser(), request.name,
                       replay=trainer.replay())  # fmt: skip
    info = model_info(path)
    return LiveOutcome(f"Froze {info.label} after {trainer.stats.steps} training steps ({path}).", info, trainer.stats.steps)
