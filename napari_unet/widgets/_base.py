"""Common ground of the dock widgets: compute-worker jobs that end cleanly when the widget or viewer closes."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, QObject, QSize
from qtpy.QtWidgets import QMainWindow, QScrollArea, QVBoxLayout, QWidget

from ._jobs import WorkerJob
from ._pickers import LayerPicker
from .models_registry import ModelRegistry, session_registry

try:  # PyQt
    from qtpy.sip import isdeleted as _isdeleted
except ImportError:  # PySide
    from shiboken6 import isValid as _is_valid

    def _isdeleted(obj: QObject) -> bool:
        return not _is_valid(obj)


#: How long a closing widget waits for its jobs (Stop takes effect within about 2 s).
CLOSE_TIMEOUT_S = 5.0


def _stop_jobs(jobs: list[WorkerJob]) -> None:
    # Module-level so the `destroyed` connection holds no reference to the widget.
    for job in jobs:
        if job.running:
            job.stop_and_wait(CLOSE_TIMEOUT_S)


class _BodyScroll(QScrollArea):
    """Scrolls vertically; as wide as its content needs (so napari makes the dock wide enough)."""

    MAX_HINT_WIDTH = 460

    def __init__(self) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.Shape.NoFrame)

    def setWidget(self, widget: QWidget) -> None:
        super().setWidget(widget)
        widget.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the content's minimum width may have changed: tell the dock
        return super().eventFilter(obj, event)

    def _extra(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth() + 2

    def minimumSizeHint(self) -> QSize:
        body = self.widget()
        hint = super().minimumSizeHint()
        return QSize(body.minimumSizeHint().width() + self._extra(), hint.height()) if body else hint

    def sizeHint(self) -> QSize:
        body = self.widget()
        hint = super().sizeHint()
        if body is None:
            return hint
        return QSize(min(body.sizeHint().width(), self.MAX_HINT_WIDTH) + self._extra(), hint.height())


class JobWidget(QWidget):
    """A scrollable dock widget owning compute-worker jobs.

    The jobs are stopped and waited for when the widget is closed, removed from its dock, or when
    the napari window closes, so no thread outlives the viewer. `on_shutdown(job)` lets a subclass
    keep what a job produced (for example register the model a stopped training saved).
    """

    def __init__(self, napari_viewer: Any, registry: ModelRegistry | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.registry = registry if registry is not None else session_registry()
        self._jobs: list[WorkerJob] = []
        self._pickers: list[LayerPicker] = []
        self._window: QMainWindow | None = None
        self._shut_down = False
        self._had_parent = False
        self.destroyed.connect(lambda *_, jobs=self._jobs: _stop_jobs(jobs))
        self.body = QWidget()
        self.body_layout = QVBoxLayout(self.body)
        self._scroll = scroll = _BodyScroll()
        scroll.setWidget(self.body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.registry.changed.connect(self._registry_changed)

    # ------------------------------------------------------------------ helpers for subclasses
    def finish_layout(self) -> None:
        """End of a subclass's __init__: push the content to the top."""
        self.body_layout.addStretch(1)

    def new_job(self, name: str) -> WorkerJob:
        job = WorkerJob(name)
        self._jobs.append(job)
        return job

    def run_job(self, job: WorkerJob, source: Any, on_event: Any = None, on_finished: Any = None) -> None:
        """Submit a request to the compute worker; from now on closing the napari window stops it first."""
        self._watch_window()  # docked by now (napari adds the dock to its window after our parent)
        job.start(source, on_event, on_finished)

    def track_picker(self, picker: LayerPicker) -> LayerPicker:
        self._pickers.append(picker)
        return picker

    def _registry_changed(self) -> None:
        if self._shut_down or _isdeleted(self):
            return
        self._on_registry_changed()

    def _on_registry_changed(self) -> None:
        """Override: the session model list changed."""

    def on_shutdown(self, job: WorkerJob) -> None:
        """Override: a job finished while the widget was closing; keep what it produced."""

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        """Stop and wait for every job, stop following the viewer. Safe to call more than once."""
        if self._shut_down:
            return
        self._shut_down = True
        for job in self._jobs:
            if job.running:
                job.stop_and_wait(CLOSE_TIMEOUT_S)
                self.on_shutdown(job)
        for picker in self._pickers:
            picker.close_picker()
        self.registry.changed.disconnect(self._registry_changed)
        if self._window is not None:
            self._window.removeEventFilter(self)
            self._window = None

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange and not self._shut_down:
            if self.parent() is None and self._had_parent:
                self.shutdown()  # taken out of its dock (the dock's close button)
            elif self.parent() is not None:
                self._had_parent = True
                self._watch_window()
        return super().event(event)

    def _watch_window(self) -> None:
        widget = self.parentWidget()
        while widget is not None and not isinstance(widget, QMainWindow):
            widget = widget.parentWidget()
        if widget is self._window:
            return
        if self._window is not None:
            self._window.removeEventFilter(self)
        self._window = widget
        if widget is not None:
            widget.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        # A programmatic close (viewer.close()) always proceeds: stop now. A close by the user may still
        # be cancelled in napari's confirmation dialog; the window's deletion then runs `_stop_jobs`.
        if obj is self._window and event.type() == QEvent.Type.Close and not event.spontaneous():
            self.shutdown()
        return False
