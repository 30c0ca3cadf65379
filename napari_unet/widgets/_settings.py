"""Training settings form: task, presets and the "Advanced" options, turned into a core Config."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QSpinBox,
    QWidget,
)
from superqt import QCollapsible

from napari_unet.core.config import LOSSES, TASKS, Config
from napari_unet.core.errors import ConfigError

from ._sparse import SparseLabels

#: Presets: "Fast (CPU)" trains a first model in about a minute on a 2-core laptop CPU.
PRESETS: dict[str, dict[str, int]] = {
    "Fast (CPU)": {"depth": 4, "filters": 8, "patch": 256, "batch": 4, "epochs": 8, "steps": 40},
    "Quality (GPU)": {"depth": 4, "filters": 32, "patch": 256, "batch": 8, "epochs": 50, "steps": 100},
}
CUSTOM = "Custom"
TASK_HELP = {
    "binary": "foreground / background (any non-zero label is foreground)",
    "classes": "semantic classes: each label value is a class id",
    "instances": "separate objects: background / interior / boundary, split into objects",
}


def _spin(low: int, high: int, value: int, step: int = 1, tip: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    return box


class TrainingSettings(QWidget):
    """Task, preset and advanced options; `config(in_channels)` builds and validates a Config."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._applying_preset = False
        self.task = QComboBox()
        self.task.addItems(list(TASKS))
        for i, task in enumerate(TASKS):
            self.task.setItemData(i, TASK_HELP[task], 3)  # Qt.ToolTipRole
        self.n_classes = _spin(2, 255, 3, tip="Number of classes including background (label 0).")
        self.preset = QComboBox()
        self.preset.addItems([*PRESETS, CUSTOM])
        self.preset.setToolTip("Fast (CPU): a first model in about a minute. Quality (GPU): bigger, longer.")

        self.depth = _spin(1, 6, 4, tip="Number of poolings; each needs the patch size to double.")
        self.filters = _spin(1, 512, 8, tip="Filters of the first level, doubled at every level.")
        self.patch = _spin(16, 2048, 256, step=16, tip="Side of the square training patches, in pixels.")
        self.batch = _spin(1, 512, 4, tip="Patches per training step.")
        self.epochs = _spin(1, 10000, 8)
        self.steps = _spin(1, 100000, 40, tip="Training steps (batches) per epoch.")
        self.loss = QComboBox()
        self.loss.addItems(["auto", *LOSSES])
        self.loss.setToolTip("auto: BCE + Dice for binary, categorical CE + Dice otherwise.")
        self.class_weights = QLineEdit()
        self.class_weights.setPlaceholderText("e.g. 1, 5 (empty: equal weights)")
        self.flips = QCheckBox("flips")
        self.rotations = QCheckBox("90° rotations")
        self.intensity = QCheckBox("intensity")
        self.elastic = QCheckBox("elastic")
        for box, on in ((self.flips, True), (self.rotations, True), (self.intensity, True), (self.elastic, False)):
            box.setChecked(on)
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.0, 0.5)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(0.15)
        self.val_fraction.setToolTip("Share held out for validation (whole images from 4 images on, else a strip).")

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        task_row = QHBoxLayout()
        task_row.addWidget(self.task, 1)
        task_row.addWidget(self.n_classes)
        form.addRow("Task", task_row)
        self.sparse = SparseLabels()
        form.addRow(self.sparse)
        form.addRow("Preset", self.preset)
        self.advanced = QCollapsible("Advanced")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        adv_form.setContentsMargins(0, 0, 0, 0)
        adv_form.addRow("Depth", self.depth)
        adv_form.addRow("Filters", self.filters)
        adv_form.addRow("Patch size", self.patch)
        adv_form.addRow("Batch size", self.batch)
        adv_form.addRow("Epochs", self.epochs)
        adv_form.addRow("Steps / epoch", self.steps)
        adv_form.addRow("Loss", self.loss)
        adv_form.addRow("Class weights", self.class_weights)
        aug1, aug2 = QHBoxLayout(), QHBoxLayout()
        aug1.addWidget(self.flips)
        aug1.addWidget(self.rotations)
        aug2.addWidget(self.intensity)
        aug2.addWidget(self.elastic)
        adv_form.addRow("Augment", aug1)
        adv_form.addRow("", aug2)
        adv_form.addRow("Validation", self.val_fraction)
        self.advanced.addWidget(adv)
        form.addRow(self.advanced)

        self.task.currentTextChanged.connect(self._on_task)
        self.preset.currentTextChanged.connect(self._on_preset)
        for box in (self.depth, self.filters, self.patch, self.batch, self.epochs, self.steps):
            box.valueChanged.connect(self._on_advanced_edit)
        self.n_classes.valueChanged.connect(self.changed)
        self.loss.currentTextChanged.connect(self.changed)
        self._on_task(self.task.currentText())
        self._on_preset(self.preset.currentText())

    # ------------------------------------------------------------------ presets
    def apply_preset(self, name: str) -> None:
        self.preset.setCurrentText(name)

    def set_advanced(self, **values: int) -> None:
        """Set advanced fields by preset key (depth, filters, patch, batch, epochs, steps)."""
        for key, value in values.items():
            getattr(self, key).setValue(int(value))

    def _on_preset(self, name: str) -> None:
        if name in PRESETS:
            self._applying_preset = True
            try:
                self.set_advanced(**PRESETS[name])
            finally:
                self._applying_preset = False
        self.changed.emit()

    def _on_advanced_edit(self) -> None:
        if not self._applying_preset:
            current = {k: getattr(self, k).value() for k in PRESETS[next(iter(PRESETS))]}
            match = next((n for n, p in PRESETS.items() if p == current), CUSTOM)
            self.preset.blockSignals(True)
            self.preset.setCurrentText(match)
            self.preset.blockSignals(False)
        self.changed.emit()

    def _on_task(self, task: str) -> None:
        self.n_classes.setVisible(task == "classes")
        self.task.setToolTip(TASK_HELP.get(task, ""))
        self.changed.emit()

    # ------------------------------------------------------------------ config
    def _class_weights(self) -> list[float] | None:
        text = self.class_weights.text().strip()
        if not text:
            return None
        try:
            return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
        except ValueError as exc:
            raise ConfigError(f"Class weights must be numbers separated by commas, e.g. '1, 5'; got {text!r}.") from exc

    def config(self, in_channels: int = 1) -> Config:
        """The Config these settings describe; raises ConfigError with the reason when invalid."""
        values: dict[str, dict[str, Any]] = {
            "model": {"depth": self.depth.value(), "base_filters": self.filters.value()},
            "data": {
                "task": self.task.currentText(),
                "n_classes": self.n_classes.value(),
                "in_channels": in_channels,
                "patch_size": self.patch.value(),
                "flips": self.flips.isChecked(),
                "rotations": self.rotations.isChecked(),
                "intensity": self.intensity.isChecked(),
                "elastic": self.elastic.isChecked(),
                "val_fraction": round(self.val_fraction.value(), 4),
                **self.sparse.data_values(),
            },
            "train": {
                "epochs": self.epochs.value(),
                "steps_per_epoch": self.steps.value(),
                "batch_size": self.batch.value(),
                "loss": self.loss.currentText(),
                "class_weights": self._class_weights(),
            },
        }
        return Config().replace(**values).validate()
