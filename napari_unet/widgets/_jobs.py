"""The widgets' one job mechanism: a request runs in the compute worker, its events arrive on the GUI thread.

`WorkerJob` is a slot for one kind of job of a widget (training, prediction, ...). `start` submits a
request (or a function that builds one, run off the GUI thread) to the session's `ComputeClient`;
events are queued through a Qt signal to `on_event`, and `on_finished(job)` runs once at the end
with `state`, `result` and `failure` set. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal

from napari_unet.core.states import JobState
from napari_unet.jobs.client import ComputeClient, Job, RequestSource, session_client
from napari_unet.jobs.messages import Event, Failed, Finished, JobMessage

from ._notify import log


class _Relay(QObject):
    """Lives in the GUI thread; events emitted from the client's threads are queued to it."""

    event = Signal(object)


class WorkerJob:
    """One widget job slot: start, stop, wait; the outcome of the last run is kept."""

    def __init__(self, name: str, client: Callable[[], ComputeClient] = session_client) -> None:
        self.name = name
        self._client = client
        self._job: Job | None = None
        self._relay: _Relay | None = None
        self._on_event: Callable[[Event], None] | None = None
        self._on_finished: Callable[[WorkerJob], None] | None = None
        self._ended = True  # the end of the last job has reached the GUI thread

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        """True until the job's end has been handled on the GUI thread (not merely in the worker)."""
        return self._job is not None and (self._job.running or not self._ended)

    @property
    def state(self) -> JobState:
        return self._job.state if self._job is not None else JobState.IDLE

    @property
    def result(self) -> Any:
        return self._job.result if self._job is not None else None

    @property
    def failure(self) -> Failed | None:
        return self._job.failure if self._job is not None else None

    @property
    def started_at(self) -> float:
        return self._job.started_at if self._job is not None else 0.0

    # ------------------------------------------------------------------ control
    def start(
        self,
        source: RequestSource,
        on_event: Callable[[Event], None] | None = None,
        on_finished: Callable[[WorkerJob], None] | None = None,
    ) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running.")
        self._relay = _Relay()
        self._relay.event.connect(self._dispatch)
        self._on_event, self._on_finished = on_event, on_finished
        self._ended = False
        relay = self._relay

        def listener(event: Event) -> None:
            try:
                relay.event.emit(event)
            except RuntimeError:  # the relay was deleted with its widget: nobody listens any more
                pass

        self._job = self._client().submit(source, listener)

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, (Finished, Failed)):
            if isinstance(event, Failed) and not event.expected and event.traceback:
                log.error("%s failed in the compute worker:\n%s", self.name, event.traceback)
            callback, self._on_finished = self._on_finished, None
            self._ended = True
            if callback is not None:
                callback(self)
        elif self._on_event is not None:
            self._on_event(event)

    def stop(self) -> None:
        """Stop: asked at once, the worker terminated after a grace period if need be. Returns at once."""
        if self._job is not None and self.running:
            self._client().stop(self._job)

    def send(self, message: JobMessage) -> bool:
        """Send a message to the running job (live strokes, Freeze); False when none runs."""
        return self._job is not None and self.running and self._client().send(self._job, message)

    def wait(self, timeout: float | None = None) -> bool:
        return self._job is None or self._job.wait(timeout)

    def detach(self) -> None:
        """Drop the GUI callbacks (the widget is going away); the job is stopped by `stop_and_wait`."""
        self._on_event = self._on_finished = None
        self._ended = True

    def stop_and_wait(self, timeout: float = 5.0) -> bool:
        """What a closing widget does: stop, detach, wait (Stop takes effect within about 2 s)."""
        self.detach()
        self.stop()
        finished = self.wait(timeout)
        if not finished:
            log.error("%s did not stop within %.0f s.", self.name, timeout)
        return finished
