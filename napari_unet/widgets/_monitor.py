"""Training progress panel: status, device, progress bar with ETA, live loss and Dice curves."""

from __future__ import annotations

import math
from typing import Any

import pyqtgraph as pg
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QVBoxLayout, QWidget

#: Status words of a run (careamics-napari's states) and how the label shows them.
STATUS_TEXT = {
    "idle": "Idle",
    "starting": "Starting…",
    "training": "Training…",
    "stopping": "Stopping…",
    "finishing": "Evaluating and saving…",
    "done": "Done",
    "stopped": "Stopped",
    "crashed": "Crashed",
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
    """Shows `core.train.TrainEvent`s as they arrive; keeps the per-epoch values it plotted."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.status = "idle"
        self.events_seen = 0
        self.history: dict[str, list[float]] = {}
        self.status_label = QLabel()
        self.status_label.setTextFormat(Qt.TextFormat.PlainText)
        self.device_label = QLabel("Device: chosen at start")
        self.device_label.setWordWrap(True)
        self.device_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.device_label.setToolTip("TensorFlow is loaded when training starts, so napari opens fast.")
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
        self.set_status("idle")

    def begin(self) -> None:
        """Clear curves and progress for a new run."""
        self.history = {}
        self.events_seen = 0
        for curve in self.curves.values():
            curve.setData([], [])
        self.progress.setValue(0)
        self.eta_label.setText("Loading TensorFlow and preparing patches…")
        self.set_status("starting")

    def set_status(self, status: str, detail: str = "") -> None:
        self.status = status
        text = STATUS_TEXT.get(status, status)
        self.status_label.setText(f"{text} {detail}".strip())

    def set_device(self, device: str) -> None:
        self.device_label.setText(f"Device: {device}")

    def show(self, kind: str, payload: Any) -> None:
        """A message of a training job: ("device", text) or ("event", TrainEvent)."""
        if kind == "device":
            self.set_device(payload)
        elif kind == "event":
            self.handle(payload)
            if payload.kind == "end":  # the epochs are over; evaluation and saving follow
                self.set_status("finishing" if payload.status == "done" else payload.status)

    def handle(self, event: Any) -> None:
        """Update from one TrainEvent (kind start, batch, epoch or end)."""
        self.events_seen += 1
        if event.kind in ("start", "batch", "epoch") and self.status == "starting":
            self.set_status("training")
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

    def finish(self, status: str, message: str = "") -> None:
        if status == "done":
            self.progress.setValue(_STEPS)
        self.set_status(status)
        if message:
            self.eta_label.setText(message)
