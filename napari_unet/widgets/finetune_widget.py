"""Fine-tune dock widget: the human-in-the-loop round (correct, add to the set, fine-tune, compare, roll back)."""

from __future__ import annotations

from functools import partial
from typing import Any

from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSpinBox,
)

from napari_unet.core.errors import InputError, NapariUNetError
from napari_unet.core.paths import default_model_root

from ._base import JobWidget
from ._checks import PatchTooLargeError, model_channels, training_arrays
from napari_unet.core.states import JobState
from napari_unet.jobs import arrays
from napari_unet.jobs.messages import PredictOutcome, TrainOutcome

from ._jobs import WorkerJob
from ._layers import META_KEY, layer_array
from ._monitor import TrainingMonitor
from ._notify import failure_message, show_error, show_info, show_warning
from ._pickers import LayerPicker
from ._sparse import SparseLabels
from ._tasks import finetune_request, predict_request
from .models_registry import CorrectedPair, ModelEntry, ModelRegistry, Round
from .predict_widget import Predicted, PredictionLayers

NO_MODEL = "No current model: train one with the Train widget or load one in the Predict widget first."


def _dice_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class FinetuneWidget(JobWidget):
    """Take corrected labels into the current model's fine-tuning set, fine-tune, compare, roll back."""

    def __init__(self, napari_viewer: Any, registry: ModelRegistry | None = None) -> None:
        super().__init__(napari_viewer, registry)
        self.job: WorkerJob = self.new_job("Fine-tuning")
        self.predict_job: WorkerJob = self.new_job("Re-prediction")
        self.layers = PredictionLayers(napari_viewer)
        self.last_outcome: TrainOutcome | None = None
        self._round_pairs: list[CorrectedPair] = []
        self._parent: ModelEntry | None = None

        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        # --- correction pair
        self.labels_picker = self.track_picker(LayerPicker(napari_viewer, Labels, prefer=_prediction_score))
        self.labels_picker.setToolTip("The labels you corrected with napari's brush, eraser and fill")
        self.image_picker = self.track_picker(LayerPicker(napari_viewer, Image, prefer=self._image_score))
        self.labels_picker.layerChanged.connect(lambda _layer: self.image_picker.update_choice())
        self.add_button = QPushButton("Add corrected labels to training set")
        self.add_button.clicked.connect(self.add_corrected)
        self.pair_list = QListWidget()
        self.pair_list.setMaximumHeight(70)
        self.clear_button = QPushButton("Clear set")
        self.clear_button.clicked.connect(self.registry.clear_pairs)
        set_box = QGroupBox("Corrections")
        set_form = QFormLayout(set_box)
        set_form.addRow("Labels", self.labels_picker)
        set_form.addRow("Image", self.image_picker)
        self.sparse = SparseLabels()
        set_form.addRow(self.sparse)
        set_form.addRow(self.add_button)
        set_form.addRow(self.pair_list)
        set_form.addRow(self.clear_button)

        # --- round
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(5)
        self.epochs.setToolTip("Short run from the current model; new data is mixed with a replay of the old")
        self.repredict = QCheckBox("Re-predict the image afterwards")
        self.repredict.setChecked(True)
        self.repredict.setToolTip("The old prediction layer, with your corrections, is kept and hidden")
        self.finetune_button = QPushButton("Fine-tune")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.rollback_button = QPushButton("Roll back")
        self.rollback_button.setToolTip("Make the previous version current again (files stay on disk)")
        self.rollback_button.setEnabled(False)
        self.finetune_button.clicked.connect(self.start_finetune)
        self.stop_button.clicked.connect(self.stop_finetune)
        self.rollback_button.clicked.connect(self.roll_back)
        buttons = QHBoxLayout()
        buttons.addWidget(self.finetune_button, 2)
        buttons.addWidget(self.stop_button, 1)
        buttons.addWidget(self.rollback_button, 1)
        self.monitor = TrainingMonitor()
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        round_box = QGroupBox("Fine-tuning round")
        round_form = QFormLayout(round_box)
        round_form.addRow("Epochs", self.epochs)
        round_form.addRow(self.repredict)
        round_form.addRow(buttons)
        round_form.addRow(self.monitor)
        round_form.addRow(self.result_label)

        self.export_button = QPushButton("Export for bioimage.io…")
        self.export_button.setToolTip("The current model version as a bioimage.io package")
        self.export_button.clicked.connect(self.open_export)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_label, 1)
        model_row.addWidget(self.export_button)
        self.body_layout.addLayout(model_row)
        self.body_layout.addWidget(set_box)
        self.body_layout.addWidget(round_box)
        self.finish_layout()
        self._on_registry_changed()

    def open_export(self) -> Any:
        """Export for bioimage.io… (export_dialog.py) for the current model version."""
        from .export_dialog import open_export_dialog

        return open_export_dialog(self, self.registry.current)

    # ------------------------------------------------------------------ state
    @property
    def status(self) -> JobState:
        return self.monitor.status

    def _image_score(self, image: Image) -> float:
        labels = self.labels_picker.layer() if hasattr(self, "labels_picker") else None
        if labels is None:
            return 0.0
        source = labels.metadata.get(META_KEY, {}).get("image")
        same_shape = tuple(labels.data.shape) == layer_array(image).spatial_shape
        return 2.0 * (image.name == source) + float(same_shape)

    def _on_registry_changed(self) -> None:
        entry = self.registry.current
        self.model_label.setText(f"Current model: {entry.label} ({entry.source})" if entry is not None else NO_MODEL)
        self.export_button.setEnabled(entry is not None and entry.path is not None and entry.path.is_dir())
        self.pair_list.clear()
        for pair in self.registry.pending:
            self.pair_list.addItem(f"{pair.name}  ({' x '.join(map(str, pair.labels.shape))})")
        self.clear_button.setEnabled(bool(self.registry.pending))
        self.rollback_button.setEnabled(bool(self.registry.rounds) and not self.job.running)
        if entry is not None and self.epochs.value() > entry.config.train.epochs:
            self.epochs.setValue(entry.config.train.epochs)

    # ------------------------------------------------------------------ the set
    def add_corrected(self) -> bool:
        """Snapshot the chosen (image, labels) pair into the current model's fine-tuning set."""
        entry = self.registry.current
        image, labels = self.image_picker.layer(), self.labels_picker.layer()
        try:
            if entry is None:
                raise InputError(NO_MODEL)
            if image is None or labels is None:
                raise InputError("Pick the corrected labels layer and its image first.")
            img_arr, lab_arr = layer_array(image), layer_array(labels)
            model_channels(img_arr.channels, entry.config.data.in_channels)
            cfg = entry.config
            img, lab = training_arrays(
                img_arr, lab_arr, cfg.data.task, cfg.data.n_classes, cfg.data.patch_size, cfg.size_multiple,
                self.sparse.background_label(),
            )  # fmt: skip
        except PatchTooLargeError as exc:
            show_error(f"{exc} The model was trained with {entry.config.data.patch_size}-pixel patches.")
            return False
        except NapariUNetError as exc:
            show_error(str(exc))
            return False
        self.registry.add_pair(CorrectedPair(img, lab, f"{image.name} + {labels.name}", img_arr.rgb))
        show_info(f"Added '{labels.name}' (on '{image.name}') to the fine-tuning set of {entry.label}.")
        return True

    # ------------------------------------------------------------------ the round
    def start_finetune(self) -> bool:
        if self.job.running:
            show_info("Fine-tuning is already running; wait for it or press Stop.")
            return False
        entry = self.registry.current
        if entry is None:
            show_error(NO_MODEL)
            return False
        if not self.registry.pending:
            show_error(
                "The fine-tuning set is empty: correct a prediction, then press 'Add corrected labels to training set'."
            )
            return False
        self._parent = entry
        self._round_pairs = list(self.registry.pending)
        self.monitor.begin()
        self.result_label.setText(f"Fine-tuning {entry.label} on {len(self._round_pairs)} corrected image(s)…")
        self._set_running(True)
        self.run_job(
            self.job,
            # No per-epoch preview: the image is re-predicted once the round ends.
            finetune_request(entry, self._round_pairs, self.epochs.value(), default_model_root(), None,
                             self.sparse.background_label()),  # fmt: skip
            self.monitor.show,
            self._on_finished,
        )
        return True

    def stop_finetune(self) -> None:
        if self.job.running:
            self.job.stop()
            self.monitor.set_status(JobState.STOPPING)
            self.stop_button.setEnabled(False)

    def _set_running(self, running: bool) -> None:
        self.finetune_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.add_button.setEnabled(not running)
        self.rollback_button.setEnabled(not running and bool(self.registry.rounds))

    def _on_finished(self, job: WorkerJob) -> None:
        self._set_running(False)
        entry = self._keep(job.result) if job.result is not None else None
        if job.failure is not None:
            self.monitor.finish(JobState.CRASHED)
            message = failure_message(job.failure, "Fine-tuning")
            self.result_label.setText(message)
            show_error(message)
            return
        if entry is not None and self.repredict.isChecked():
            self.repredict_image(entry)

    def _keep(self, outcome: TrainOutcome) -> ModelEntry | None:
        self.last_outcome = outcome
        parent = self._parent
        if outcome.model is None or parent is None:
            if not self._shut_down:
                self.monitor.finish(outcome.state)
                self.result_label.setText(outcome.message)
            return None
        child = ModelEntry.from_info(outcome.model, "fine-tuned")
        before, after = outcome.metrics.get("before_dice"), outcome.metrics.get("dice")
        round_ = Round(parent, child, self._round_pairs, before, after)
        self.registry.record_round(round_)
        if self._shut_down:
            return child
        verdict = {True: "better or equal", False: "worse: consider Roll back", None: "not measured"}[round_.improved]
        text = (
            f"Round {len(self.registry.rounds)}: validation Dice {_dice_text(before)} → {_dice_text(after)} "
            f"({verdict}). {outcome.message}"
        )
        self.monitor.finish(outcome.state)
        self.result_label.setText(text)
        (show_warning if round_.improved is False else show_info)(text)
        return child

    def roll_back(self) -> bool:
        """Make the version before the last round current again; its corrections return to the set."""
        if self.job.running:
            show_info("Wait for fine-tuning to finish (or Stop it) before rolling back.")
            return False
        if not self.registry.rounds:
            show_info("There is no fine-tuning round to roll back.")
            return False
        round_ = self.registry.roll_back()
        text = f"Rolled back to {round_.parent.label}; {round_.child.label} stays on disk at {round_.child.path}."
        self.result_label.setText(text)
        show_info(text)
        return True

    def on_shutdown(self, job: WorkerJob) -> None:
        if job is self.job and job.result is not None:
            self._keep(job.result)

    # ------------------------------------------------------------------ re-prediction
    def repredict_image(self, entry: ModelEntry) -> bool:
        """Predict the corrected image again with the new version; the old prediction layer is hidden."""
        image = self.image_picker.layer()
        if image is None or self.predict_job.running:
            return False
        arr = layer_array(image)
        old = self.labels_picker.layer()
        self.run_job(
            self.predict_job,
            predict_request(entry, arr.data, arr.rgb),
            None,
            partial(self._on_repredicted, entry, image, old),
        )
        return True

    def _on_repredicted(self, entry: ModelEntry, image: Image, old: Labels | None, job: WorkerJob) -> None:
        if job.failure is not None:
            show_error(failure_message(job.failure, "Re-prediction"))
            return
        if job.result is None or image not in self.viewer.layers:
            return
        result: PredictOutcome = job.result
        outcome = Predicted(arrays.take(result.probabilities), arrays.take(result.labels), result.seconds)
        # Earlier predictions of this image are hidden (kept, with the user's corrections, for comparison).
        for layer in self.viewer.layers:
            meta = layer.metadata.get(META_KEY) or {}
            if isinstance(layer, Labels) and meta.get("image") == image.name and meta.get("model"):
                layer.visible = False
        if old is not None and old in self.viewer.layers:
            old.visible = False
        record = self.layers.add(image, entry, outcome, with_probabilities=False)
        self.labels_picker.set_layer(record.labels_layer)


def _prediction_score(layer: Labels) -> float:
    """Prefer labels layers the widgets predicted (what the user corrects), not training previews."""
    meta = layer.metadata.get(META_KEY) or {}
    return float(bool(meta) and not meta.get("preview"))
