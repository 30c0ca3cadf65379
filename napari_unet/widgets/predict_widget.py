"""Predict dock widget: run a model on an image layer in the background into a new Labels layer."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSpinBox,
    QToolButton,
)

from napari_unet.core.config import Config
from napari_unet.core.errors import InputError, NapariUNetError
from napari_unet.core.normalize import check_image

from napari_unet.core.states import JobState
from napari_unet.core.targets import foreground_probability, stack_probabilities_to_labels
from napari_unet.jobs import arrays
from napari_unet.jobs.messages import Event, InspectRequest, PredictOutcome, Progress
from napari_unet.jobs.store_messages import PredictStoreOutcome

from ._base import JobWidget
from ._checks import LayerArray, check_spatial_layout, model_channels
from ._cluster_choice import ClusterChoice
from ._jobs import WorkerJob
from ._layers import META_KEY, layer_array, placement, unique_name
from ._notify import failure_message, report, show_error, show_info
from ._pickers import LayerPicker
from ._progress import ProgressBar
from ._store_predict import add_store_layer, store_request, wants_store
from ._tasks import predict_request
from .models_registry import ModelEntry, ModelRegistry

#: Post-processing of larger results runs in a worker, smaller ones at once on the GUI thread.
SYNC_POSTPROCESS_PIXELS = 2_000_000
NO_MODEL = (
    "No model yet: train one with the Train widget, or load one with Load… (a model folder or .zip, or the "
    "starter model for fluorescence nuclei)."
)


@dataclass(eq=False)
class PredictionRecord:
    """A prediction the widget made: its layers and the probabilities post-processing re-uses."""

    labels_layer: Labels
    prob_layer: Image | None
    probabilities: np.ndarray
    config: Config
    image_name: str
    model_label: str
    edited: bool = False


@dataclass
class Predicted:
    """A finished prediction, in the viewer's memory."""

    probabilities: np.ndarray
    labels: np.ndarray
    seconds: float


class PredictionLayers:
    """Creates prediction layers (never over an existing one) and tracks whether the user edits them."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.records: list[PredictionRecord] = []
        self._writing = False

    def add(
        self, image: Image, entry: ModelEntry, outcome: Predicted, with_probabilities: bool
    ) -> PredictionRecord:
        base = f"{image.name} [{entry.label}]"
        ndim = outcome.labels.ndim
        where = placement(image, ndim=ndim)
        meta = {META_KEY: {"image": image.name, "model": entry.label, "model_path": str(entry.path or "")}}
        prob_layer = None
        if with_probabilities:
            prob_layer = self.viewer.add_image(
                foreground_probability(outcome.probabilities),
                name=unique_name(self.viewer, f"{base} probability"),
                colormap="magma",
                contrast_limits=(0.0, 1.0),
                blending="additive",
                opacity=0.6,
                metadata=meta,
                **where,
            )
        labels_layer = self.viewer.add_labels(
            outcome.labels, name=unique_name(self.viewer, base), opacity=0.6, metadata=meta, **where
        )
        record = PredictionRecord(
            labels_layer, prob_layer, outcome.probabilities, entry.config, image.name, entry.label
        )
        self._watch(record)
        self.records.append(record)
        return record

    def put_labels(self, record: PredictionRecord, labels: np.ndarray) -> Labels:
        """Show new labels for a record: in place, or in a new layer when the user edited the old one."""
        layer = record.labels_layer
        if record.edited or layer not in self.viewer.layers:
            kept = layer.name
            new = self.viewer.add_labels(
                labels,
                name=unique_name(self.viewer, f"{record.image_name} [{record.model_label}]"),
                opacity=layer.opacity,
                metadata=dict(layer.metadata),
                **placement(layer),
            )
            record.labels_layer, record.edited = new, False
            self._watch(record)
            if kept in {lyr.name for lyr in self.viewer.layers}:
                show_info(f"Your edits in '{kept}' are kept; the new post-processing went to '{new.name}'.")
            return new
        self._writing = True
        try:
            layer.data = labels
        finally:
            self._writing = False
        return layer

    def record_for(self, layer: Labels | None) -> PredictionRecord | None:
        return next((r for r in reversed(self.records) if r.labels_layer is layer), None)

    def _watch(self, record: PredictionRecord) -> None:
        layer = record.labels_layer

        def mark(_event: Any = None, record: PredictionRecord = record) -> None:
            if not self._writing and record.labels_layer is layer:
                record.edited = True

        layer.events.paint.connect(mark)
        layer.events.data.connect(mark)


class PredictWidget(JobWidget):
    """Pick a model and an image, predict in the background; post-processing re-applies at once."""

    def __init__(self, napari_viewer: Any, registry: ModelRegistry | None = None) -> None:
        super().__init__(napari_viewer, registry)
        self.job: WorkerJob = self.new_job("Prediction")
        self.load_job: WorkerJob = self.new_job("Loading a model")
        self._post_worker: Any = None  # numpy post-processing of large results (no TensorFlow)
        self.layers = PredictionLayers(napari_viewer)
        self.status = JobState.IDLE
        self._entries: list[ModelEntry] = []
        self._image_layer: Image | None = None
        self._shown_entry: ModelEntry | None = None

        # --- model
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Models trained, fine-tuned or loaded in this session")
        self.model_combo.setPlaceholderText("(no model yet)")
        self.model_combo.activated.connect(self._on_model_chosen)
        load_button = QToolButton()
        load_button.setText("Load…")
        load_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(load_button)
        menu.addAction("Model folder…", self._browse_folder)
        menu.addAction("Model .zip or bioimage.io package…", self._browse_zip)
        menu.addAction("Starter model: fluorescence nuclei", self.load_starter)
        load_button.setMenu(menu)
        self.export_button = QToolButton()
        self.export_button.setText("Export…")
        self.export_button.setToolTip("Export for bioimage.io…: the picked model version as a bioimage.io package")
        self.export_button.clicked.connect(self.open_export)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("or type a model folder / .zip path and press Enter")
        self.path_edit.returnPressed.connect(lambda: self.load_model(self.path_edit.text()))
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        self.model_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(load_button)
        model_row.addWidget(self.export_button)
        model_box = QGroupBox("Model")
        model_form = QFormLayout(model_box)
        model_form.addRow(model_row)
        model_form.addRow(self.path_edit)
        model_form.addRow(self.model_info)

        # --- image and run
        self.image_picker = self.track_picker(LayerPicker(napari_viewer, Image))
        self.image_picker.setToolTip("2D image, RGB, stack of 2D images, or a large lazy (dask/zarr) image")
        self.with_probabilities = QCheckBox("Also add a probability layer")
        self.predict_button = QPushButton("Predict")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.predict_button.clicked.connect(self.start_prediction)
        self.stop_button.clicked.connect(self.stop_prediction)
        self.progress = ProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(12)
        self.status_label = QLabel("Idle")
        self.status_label.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.predict_button, 2)
        buttons.addWidget(self.stop_button, 1)
        image_box = QGroupBox("Image")
        image_form = QFormLayout(image_box)
        image_form.addRow("Image", self.image_picker)
        image_form.addRow(self.with_probabilities)
        self.cluster = ClusterChoice("predict.cluster")
        self.cluster.setToolTip("OME-Zarr layers only: their chunks become tasks on a dask cluster.")
        image_form.addRow("Cluster", self.cluster)
        image_form.addRow(buttons)
        image_form.addRow(self.progress)
        image_form.addRow(self.status_label)

        # --- post-processing
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.01, 0.99)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 10_000_000)
        self.min_size.setSuffix(" px")
        self.min_size.setToolTip("Objects smaller than this are removed")
        self.split_touching = QCheckBox("Split touching objects")
        self.split_touching.setToolTip("Instances: separate touching objects by watershed from their interiors")
        post_box = QGroupBox("Post-processing")
        post_box.setToolTip("Changes re-apply to the last prediction at once, without running the network")
        post_form = QFormLayout(post_box)
        post_hint = QLabel("Changes re-apply to the last prediction without running the network.")
        post_hint.setWordWrap(True)
        post_form.addRow(post_hint)
        post_form.addRow("Threshold", self.threshold)
        post_form.addRow("Minimum size", self.min_size)
        post_form.addRow(self.split_touching)
        self._post_timer = QTimer(self)
        self._post_timer.setSingleShot(True)
        self._post_timer.setInterval(150)
        self._post_timer.timeout.connect(self.reapply)
        for signal in (self.threshold.valueChanged, self.min_size.valueChanged, self.split_touching.toggled):
            signal.connect(lambda *_: self._post_timer.start())

        for box in (model_box, image_box, post_box):
            self.body_layout.addWidget(box)
        self.finish_layout()
        self._show_model(None)
        self._on_registry_changed()

    # ------------------------------------------------------------------ models
    @property
    def entry(self) -> ModelEntry | None:
        index = self.model_combo.currentIndex()
        return self._entries[index] if 0 <= index < len(self._entries) else None

    def _on_registry_changed(self) -> None:
        self._entries = self.registry.entries
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for entry in self._entries:
            self.model_combo.addItem(f"{entry.label} ({entry.source})")
        current = self.registry.current
        if current in self._entries:
            self.model_combo.setCurrentIndex(self._entries.index(current))
        self.model_combo.blockSignals(False)
        if self.entry is not self._shown_entry:
            self._show_model(self.entry)

    def _on_model_chosen(self, index: int) -> None:
        if 0 <= index < len(self._entries):
            self.registry.set_current(self._entries[index])

    def _show_model(self, entry: ModelEntry | None) -> None:
        """Describe the chosen model and load its post-processing defaults into the controls."""
        self._shown_entry = entry
        self.export_button.setEnabled(entry is not None and entry.path is not None and entry.path.is_dir())
        if entry is None:
            self.model_info.setText(NO_MODEL)
            return
        cfg = entry.config
        channels = "RGB" if cfg.data.in_channels == 3 else f"{cfg.data.in_channels} channel(s)"
        dice = entry.metrics.get("dice")
        parts = [cfg.data.task, channels]
        if dice is not None:
            parts.append(f"validation Dice {dice:.3f}")
        self.model_info.setText(" · ".join(parts) + (f"\n{entry.path}" if entry.path else ""))
        self.model_info.setToolTip(str(entry.path or ""))
        for box, value in (
            (self.threshold, cfg.predict.threshold),
            (self.min_size, cfg.predict.min_size),
        ):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        self.split_touching.blockSignals(True)
        self.split_touching.setChecked(cfg.predict.split_touching)
        self.split_touching.blockSignals(False)
        self.split_touching.setEnabled(cfg.data.task == "instances")
        self.min_size.setEnabled(cfg.data.task != "classes")
        self.threshold.setEnabled(cfg.data.task != "classes")

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder, version folder (v001…) or bioimage.io package folder")
        if folder:
            self.load_model(folder)

    def _browse_zip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model .zip or bioimage.io package", "", "Model archives and bioimage.io packages (*.zip)"
        )
        if path:
            self.load_model(path)

    def open_export(self) -> Any:
        """Export for bioimage.io… (export_dialog.py) for the picked model version."""
        from .export_dialog import open_export_dialog

        return open_export_dialog(self, self.entry)

    def load_starter(self) -> bool:
        """Load the shipped nuclei model: a mask before anything is painted, and a start for fine-tuning."""
        from napari_unet.core.starter import starter_model_path

        try:
            path = starter_model_path()
        except FileNotFoundError as exc:
            show_error(str(exc))
            return False
        return self.load_model(path)

    def load_model(self, path: str | Path) -> bool:
        """Load a model folder, version folder, .zip or bioimage.io package in the background; it becomes the
        current model."""
        text = str(path).strip()
        if not text:
            show_error("Type the path of a model folder or .zip first.")
            return False
        if self.load_job.running:
            show_info("A model is already loading; wait a moment.")
            return False
        self.path_edit.setText(text)
        self._set_status(JobState.RUNNING, f"Loading {text}…")
        self.run_job(self.load_job, InspectRequest(str(Path(text).expanduser())), None, self._on_loaded)
        return True

    def _on_loaded(self, job: WorkerJob) -> None:
        if job.failure is not None:
            self._set_status(JobState.IDLE, "Could not load the model.")
            show_error(failure_message(job.failure, "Loading the model"))
            return
        entry = ModelEntry.from_info(job.result, "loaded")
        self.registry.add(entry, make_current=True)
        self._set_status(JobState.IDLE, f"Loaded {entry.label}.")

    # ------------------------------------------------------------------ prediction
    def _set_status(self, status: JobState, text: str) -> None:
        self.status = status
        self.status_label.setText(text)

    def _check_image(self, entry: ModelEntry, image: LayerArray) -> None:
        check_spatial_layout(image)
        model_channels(image.channels, entry.config.data.in_channels)
        if isinstance(image.data, np.ndarray):
            check_image(image.data, f"Image '{image.name}'")

    def start_prediction(self) -> bool:
        """What the Predict button does; returns whether a run started."""
        if self.job.running:
            show_info("A prediction is already running; wait for it or press Stop.")
            return False
        entry, layer = self.entry, self.image_picker.layer()
        try:
            if entry is None:
                raise InputError(NO_MODEL)
            if layer is None:
                raise InputError("No image layer is open: open an image (File > Open) and pick it here.")
            image = layer_array(layer)
            self._check_image(entry, image)
            cluster = self.cluster.value()
        except NapariUNetError as exc:
            self._set_status(JobState.IDLE, str(exc))  # the whole message stays readable here
            show_error(str(exc))
            return False
        self._image_layer = layer
        self.progress.setValue(0)
        queued = " (after the running job)" if self.job_queue_busy() else ""
        self._set_status(JobState.STARTING, f"Predicting {layer.name} with {entry.label}{queued}…")
        self.predict_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        if wants_store(layer, image.data, image.rgb):  # large or lazy: labels go to an OME-Zarr store, shown lazily
            threshold = None if entry.config.data.task == "classes" else round(self.threshold.value(), 4)
            self.cluster.show_dashboard("")
            request = store_request(entry.path, entry.label, layer, image.data, threshold, cluster)
        else:
            request = predict_request(entry, image.data, image.rgb)
        self.run_job(self.job, request, self._on_event, partial(self._on_predicted, entry))
        return True

    def stop_prediction(self) -> None:
        if self.job.running:
            self.job.stop()
            self._set_status(JobState.STOPPING, "Stopping…")

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Progress):
            if event.text.startswith("dask dashboard"):
                self.cluster.show_dashboard(event.text)
            if self.status == JobState.STARTING:
                self.status = JobState.RUNNING
            self.progress.setValue(int(round(event.fraction * 1000)))

    def _on_predicted(self, entry: ModelEntry, job: WorkerJob) -> None:
        self.predict_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        image = self._image_layer
        if job.failure is not None:
            self._set_status(JobState.CRASHED, "Prediction failed.")
            show_error(failure_message(job.failure, "Prediction"))
            return
        if job.state == JobState.STOPPED or job.result is None:
            self._set_status(JobState.STOPPED, "Prediction stopped; no layer was added.")
            return
        if isinstance(job.result, PredictStoreOutcome):
            self._show_store(entry, image, job.result)
            return
        result: PredictOutcome = job.result
        outcome = Predicted(arrays.take(result.probabilities), arrays.take(result.labels), result.seconds)
        if image is None or image not in self.viewer.layers:
            self._set_status(JobState.IDLE, "The image layer was removed while predicting; result dropped.")
            return
        self.progress.setValue(1000)
        record = self.layers.add(image, entry, outcome, self.with_probabilities.isChecked())
        options = self.postprocess_options(entry.config)
        if options != _defaults(entry.config):  # the user changed the controls before predicting
            self.layers.put_labels(
                record, stack_probabilities_to_labels(outcome.probabilities, entry.config, **options)
            )
        self._set_status(JobState.DONE, f"Added '{record.labels_layer.name}' in {outcome.seconds:.1f} s.")

    def _show_store(self, entry: ModelEntry, image: Image | None, result: PredictStoreOutcome) -> None:
        if image is None or image not in self.viewer.layers:
            self._set_status(JobState.IDLE, f"The image layer was removed while predicting; the labels are in {result.path}.")
            return
        self.progress.setValue(1000)
        layer = add_store_layer(self.viewer, image, result.path, entry.label, str(entry.path or ""))
        self._set_status(
            JobState.DONE,
            f"Added '{layer.name}' in {result.seconds:.1f} s, read lazily from {result.path} (post-processing "
            "controls re-apply to in-memory predictions only; predict again to change this one).",
        )

    def job_queue_busy(self) -> bool:
        from napari_unet.jobs.client import session_client

        return session_client().busy

    # ------------------------------------------------------------------ post-processing
    @property
    def last_record(self) -> PredictionRecord | None:
        return self.layers.records[-1] if self.layers.records else None

    def postprocess_options(self, cfg: Config) -> dict[str, Any]:
        options: dict[str, Any] = {"threshold": round(self.threshold.value(), 4), "min_size": self.min_size.value()}
        if cfg.data.task == "instances":
            options["split_touching"] = self.split_touching.isChecked()
        return options

    def reapply(self) -> None:
        """Re-run post-processing on the last prediction's probabilities (no network)."""
        record = self.last_record
        if record is None or record.labels_layer not in self.viewer.layers:
            return
        options = self.postprocess_options(record.config)
        pixels = record.probabilities.size // record.probabilities.shape[-1]
        if pixels <= SYNC_POSTPROCESS_PIXELS:
            labels = stack_probabilities_to_labels(record.probabilities, record.config, **options)
            self.layers.put_labels(record, labels)
            return
        if self._post_worker is not None:
            self._post_timer.start()  # try again when the running one is done
            return
        # numpy and scikit-image only: a thread of this process is enough, the network is not involved.
        from napari.qt.threading import create_worker

        worker = create_worker(stack_probabilities_to_labels, record.probabilities, record.config, **options)
        worker.returned.connect(partial(self._on_postprocessed, record))
        worker.errored.connect(lambda exc: report(exc, "Post-processing"))
        worker.finished.connect(lambda: setattr(self, "_post_worker", None))
        self._post_worker = worker
        worker.start()

    def _on_postprocessed(self, record: PredictionRecord, labels: np.ndarray) -> None:
        if record.labels_layer in self.viewer.layers or record.edited:
            self.layers.put_labels(record, labels)


def _defaults(cfg: Config) -> dict[str, Any]:
    options: dict[str, Any] = {"threshold": round(cfg.predict.threshold, 4), "min_size": cfg.predict.min_size}
    if cfg.data.task == "instances":
        options["split_touching"] = cfg.predict.split_touching
    return options
