"""Background jobs: a function runs in a napari `thread_worker`, talks to the GUI thread through a signal.

The function gets `emit(item)` (queued to `on_message` on the GUI thread) and a `threading.Event`
stop flag. Its return value or exception is kept on the job, so a widget closing while the job
runs can wait for it and still use the result (a finished model is saved, never lost).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from napari.qt.threading import FunctionWorker, create_worker
from qtpy.QtCore import QObject, Signal

from ._notify import log

Emit = Callable[[Any], None]
JobFunction = Callable[[Emit, threading.Event], Any]


class _Relay(QObject):
    """Lives in the GUI thread; signals emitted from the worker thread are queued to it."""

    message = Signal(object)


class _StoppableWorker(FunctionWorker):
    """napari calls `quit()` on running workers when its window closes: turn that into our stop flag."""

    stop_event: threading.Event | None = None

    def quit(self) -> None:
        super().quit()
        if self.stop_event is not None:
            self.stop_event.set()


class BackgroundJob:
    """One run of a function off the GUI thread, with stop, wait and the outcome kept."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.result: Any = None
        self.error: BaseException | None = None
        self.stop_event = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._relay: _Relay | None = None
        self._worker: _StoppableWorker | None = None
        self._on_finished: Callable[[BackgroundJob], None] | None = None
        self.started_at = 0.0

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def start(
        self,
        fn: JobFunction,
        on_message: Callable[[Any], None] | None = None,
        on_finished: Callable[[BackgroundJob], None] | None = None,
    ) -> None:
        """Run `fn(emit, stop)` in a worker thread; `on_finished(job)` runs on the GUI thread at the end."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running.")
        self.result, self.error = None, None
        self.stop_event = threading.Event()
        self._done = threading.Event()
        self._relay = _Relay()
        if on_message is not None:
            self._relay.message.connect(on_message)
        self._on_finished = on_finished
        relay, stop, done = self._relay, self.stop_event, self._done

        def emit(item: Any) -> None:
            try:
                relay.message.emit(item)
            except RuntimeError:  # the relay was deleted with its widget: nobody listens any more
                pass

        def body() -> None:
            try:
                self.result = fn(emit, stop)
            except Exception as exc:  # kept for the GUI thread, which reports it
                self.error = exc
            finally:
                done.set()

        worker = create_worker(body, _worker_class=_StoppableWorker, _start_thread=False, _ignore_errors=True)
        worker.stop_event = stop
        worker.finished.connect(self._finished)
        self._worker = worker
        self.started_at = time.monotonic()
        worker.start()

    def _finished(self) -> None:
        callback, self._on_finished = self._on_finished, None
        if callback is not None:
            callback(self)

    def stop(self) -> None:
        """Ask the function to stop (it polls the event); returns at once."""
        self.stop_event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the function has returned; True if it did within `timeout` seconds."""
        return self._done.wait(timeout)

    def detach(self) -> None:
        """Drop the GUI callbacks (the widget is going away); the function keeps running until it stops."""
        self._on_finished = None
        if self._relay is not None:
            try:
                self._relay.message.disconnect()
            except (TypeError, RuntimeError):  # nothing connected, or already deleted
                pass

    def stop_and_wait(self, timeout: float = 60.0) -> bool:
        """Stop, detach and wait: what a closing widget does. Logs if the function does not return."""
        self.detach()
        self.stop()
        finished = self.wait(timeout)
        if not finished:
            log.error("%s did not stop within %.0f s; it will finish in the background.", self.name, timeout)
        return finished
