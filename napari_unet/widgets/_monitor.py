"""Training progress panel: status, device, progress bar with ETA, live loss and Dice curves."""

from __future__ import annotations

import math

import pyqtgraph as pg
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QVBoxLayout, QWidget

from napari_unet.core.states import JobState
from napari_unet.jobs.messages import Event, Started, TrainUpdate

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
_STEPS = 1000


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
        self.progress = QProgressBar()
        self.progress.setRange(0, _STEPS)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(12)
        self.eta_label = QLabel(" ")
        self.eta_label.setWordWrap(True)
        self.plots: dict[str, pg.PlotWidget] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        plots_row = QHBoxLayout()
        plots_row.setContentsMargins(0, 0, 0, 0)
        for title, curves in _CURVES.items():
            plot = pg.PlotWidget(background=None)
            plot.setFixedHeight(150)
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
            plots_row.addWidget(plot)
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

    def begin(self) -> None:
        """Clear curves and progress for a new run."""
        self.history = {}
        self.events_seen = 0
        for curve in self.curves.values():
            curve.setData([], [])
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
            for key in self.curves:
                if key in event.logs:
                    self.history.setdefault(key, []).append(float(event.logs[key]))
                    self.history.setdefault(f"{key}_epoch", []).append(float(event.epoch))
            for key, curve in self.curves.items():
                if key in self.history:
                    curve.setData(self.history[f"{key}_epoch"], self.history[key])
            spacing = max(1, math.ceil(event.epoch / 6))  # whole epochs on the axis
            for plot in self.plots.values():
                plot.getAxis("bottom").setTickSpacing(major=spacing, minor=spacing)

    def finish(self, status: JobState | str, message: str = "") -> None:
        if status == JobState.DONE:
            self.progress.setValue(_STEPS)
        self.set_status(status)
        if message:
            self.eta_label.setText(message)
