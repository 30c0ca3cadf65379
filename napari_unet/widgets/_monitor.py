"""Training progress panel: status, device, progress bar with ETA, live loss and Dice curves."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from napari_unet.core.states import JobState
from napari_unet.jobs.messages import Event, Started, TrainUpdate

from ._progress import ProgressBar
from ._turns import LATER_MS

#: How the status label shows each job state.
STATUS_TEXT = {
    JobState.IDLE: "Idle",
    JobState.QUEUED: "Waiting for the running job…",
    JobState.STARTING: "Starting…",
    JobState.RUNNING: "Training…",
    JobState.STOPPING: "Stopping…",
    JobState.FINISHING: "Evaluating and saving…",
    JobState.DONE: "Done",
    JobState.STOPPED: "Stopped",
    JobState.CRASHED: "Crashed",
}
_CURVES = {  # plot -> (log key, colour, legend)
    "loss": (("loss", "#4fc3f7", "train"), ("val_loss", "#ffb74d", "validation")),
    "dice": (("dice", "#4fc3f7", "train"), ("val_dice", "#ffb74d", "validation")),
}
_CURVE_KEYS = tuple(key for curves in _CURVES.values() for key, _colour, _name in curves)
_STEPS = 1000
_PLOT_HEIGHT = 150


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


class TrainingMonitor(QWidget):
    """Shows a training job's events as they arrive; keeps the per-epoch values it plotted."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.status = JobState.IDLE
        self.events_seen = 0
        self.history: dict[str, list[float]] = {}
        self.status_label = QLabel()
        self.status_label.setTextFormat(Qt.TextFormat.PlainText)
        self.device_label = QLabel("Device: chosen at start")
        self.device_label.setWordWrap(True)
        self.device_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.device_label.setToolTip("Training runs in the compute worker, a separate process started on first use.")
        self.progress = ProgressBar()
        self.progress.setRange(0, _STEPS)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(12)
        self.eta_label = QLabel(" ")
        self.eta_label.setWordWrap(True)
        # The curves are built after the panel is first shown, one step per event-loop turn (importing
        # pyqtgraph and building a plot each take tens of ms): docking the widget stays one short turn.
        self.plots: dict[str, Any] = {}
        self.curves: dict[str, Any] = {}
        self._plots_row = plots_row = QHBoxLayout()
        plots_row.setContentsMargins(0, 0, 0, 0)
        self._placeholder = QWidget()
        self._placeholder.setFixedHeight(_PLOT_HEIGHT)  # the room the plots will take: no jump when they come
        plots_row.addWidget(self._placeholder)
        self._build_steps: Iterator[None] | None = None
        self._build_timer = QTimer(self)  # a child: it goes with the widget
        self._build_timer.setSingleShot(True)
        self._build_timer.timeout.connect(self._build_step)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.status_label)
        top.addWidget(self.device_label, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.progress)
        layout.addWidget(self.eta_label)
        layout.addLayout(plots_row)
        self.set_status(JobState.IDLE)

    # ------------------------------------------------------------------ curves, built lazily
    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self._build_steps is None:
            self._build_steps = self._plot_steps()
            self._build_timer.start(LATER_MS)

    def _build_step(self) -> None:
        if self._build_steps is not None and next(self._build_steps, "done") is None:
            self._build_timer.start(LATER_MS)

    def _plot_steps(self) -> Iterator[None]:
        import pyqtgraph as pg

        yield
        for title, curves in _CURVES.items():
            plot = pg.PlotWidget(background=None)
            plot.setFixedHeight(_PLOT_HEIGHT)
            plot.setTitle(title, size="9pt")
            plot.showGrid(x=True, y=True, alpha=0.2)
            plot.setLabel("bottom", "epoch")
            plot.setMouseEnabled(x=False, y=False)
            plot.hideButtons()
            legend = plot.addLegend(offset=(-4, 4), labelTextSize="8pt")
            legend.setBrush(pg.mkBrush(0, 0, 0, 90))
            for key, colour, name in curves:
                self.curves[key] = plot.plot(
                    [],
                    [],
                    pen=pg.mkPen(colour, width=2),
                    symbol="o",
                    symbolSize=4,
                    symbolBrush=colour,
                    symbolPen=None,
                    name=name,
                )
            self.plots[title] = plot
            self._plots_row.addWidget(plot)
            self._placeholder.hide()
            self._draw_curves()
            yield

    def _draw_curves(self) -> None:
        """Put the kept per-epoch values into the curves (those built so far)."""
        for key, curve in self.curves.items():
            curve.setData(self.history.get(f"{key}_epoch", []), self.history.get(key, []))
        epochs = self.history.get("loss_epoch") or self.history.get("dice_epoch") or [1]
        spacing = max(1, math.ceil(max(epochs) / 6))  # whole epochs on the axis
        for plot in self.plots.values():
            plot.getAxis("bottom").setTickSpacing(major=spacing, minor=spacing)

    def begin(self) -> None:
        """Clear curves and progress for a new run."""
        self.history = {}
        self.events_seen = 0
        self._draw_curves()
        self.progress.setValue(0)
        self.eta_label.setText("Starting the compute worker and preparing patches…")
        self.set_status(JobState.STARTING)

    def set_status(self, status: JobState | str, detail: str = "") -> None:
        self.status = JobState(status)
        self.status_label.setText(f"{STATUS_TEXT[self.status]} {detail}".strip())

    def set_device(self, device: str) -> None:
        self.device_label.setText(f"Device: {device}")

    def show(self, event: Event) -> None:
        """An event of a training job: Started (the device) or a TrainUpdate."""
        if isinstance(event, Started):
            self.set_device(event.device)
        elif isinstance(event, TrainUpdate):
            self.handle(event)
            if event.kind == "end" and self.status != JobState.STOPPING:  # saving follows
                self.set_status(JobState.FINISHING if event.status == JobState.DONE else event.status)

    def handle(self, event: TrainUpdate) -> None:
        """Update from one TrainUpdate (kind start, batch, epoch or end)."""
        self.events_seen += 1
        if event.kind in ("start", "batch", "epoch") and self.status == JobState.STARTING:
            self.set_status(JobState.RUNNING)
        if event.kind == "end":
            if event.message:
                self.eta_label.setText(event.message)
            return
        self.progress.setValue(int(round(event.fraction * _STEPS)))
        loss = event.logs.get("loss")
        parts = [f"epoch {event.epoch}/{event.epochs}", f"step {event.step}/{event.steps}"]
        if loss is not None:
            parts.append(f"loss {loss:.3f}")
        if event.eta_s is not None:
            parts.append(f"about {format_duration(event.eta_s)} left")
        self.eta_label.setText(" · ".join(parts))
        if event.kind == "epoch":
            for key in _CURVE_KEYS:
                if key in event.logs:
                    self.history.setdefault(key, []).append(float(event.logs[key]))
                    self.history.setdefault(f"{key}_epoch", []).append(float(event.epoch))
            self._draw_curves()

    def finish(self, status: JobState | str, message: str = "") -> None:
        if status == JobState.DONE:
            self.progress.setValue(_STEPS)
        self.set_status(status)
        if message:
            self.eta_label.setText(message)
