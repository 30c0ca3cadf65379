"""Train dock widget: pick (image, labels) pairs, choose settings, train in the background, watch it learn."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_unet.core.errors import InputError, NapariUNetError

from napari_unet.core.paths import check_model_name, default_model_root

from ._base import JobWidget
from ._checks import (
    LayerArray,
    PatchTooLargeError,
    channel_count,
    check_shapes,
    model_folder,
    training_arrays,
)
from napari_unet.core.states import JobState
from napari_unet.core.suggest import suggest_task
from napari_unet.jobs import arrays
from napari_unet.jobs.messages import Event, PreviewReady, TrainOutcome

from ._jobs import WorkerJob
from ._layers import META_KEY, layer_array, placement, safe_folder_name, unique_name
from ._monitor import TrainingMonitor
from ._notify import failure_message, offer, show_error, show_info
from ._pickers import LayerPicker
from ._settings import TrainingSettings
from ._turns import later
from ._tasks import preview_plane, train_request
from .models_registry import CorrectedPair, ModelEntry, ModelRegistry

#: Labels larger than this are not scanned to suggest a task (the user picks it).
SUGGEST_MAX_PIXELS = 4_000_000  # a few ms on the GUI thread
NO_LAYERS = (
    "No image and labels layers are open. Open an image and its labels (File > Open), or try "
    "File > Open Sample > napari-unet > Nuclei, then pick them here."
)


class PairRow(QWidget):
    """One training pair: an image picker, a labels picker (preferring labels of the image's shape)."""

    def __init__(self, viewer: Any, on_remove: Any) -> None:
        super().__init__()
        self.image = LayerPicker(viewer, Image)
        self.labels = LayerPicker(viewer, Labels, prefer=self._labels_score)
        self.image.setToolTip("Image layer (2D, RGB or a stack of 2D images)")
        self.labels.setToolTip("Labels layer painted on this image (same height and width)")
        self.remove = QToolButton()
        self.remove.setText("✕")
        self.remove.setToolTip("Remove this pair")
        self.remove.clicked.connect(lambda: on_remove(self))
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setTextFormat(Qt.TextFormat.PlainText)
        self.hint.setStyleSheet("color: #e0a040;")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.image, 1)
        row.addWidget(QLabel("+"))
        row.addWidget(self.labels, 1)
        row.addWidget(self.remove)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(row)
        layout.addWidget(self.hint)
        self.image.layerChanged.connect(lambda _layer: self.labels.update_choice())
        self.image.layerChanged.connect(self.update_hint)
        self.labels.layerChanged.connect(self.update_hint)
        self.update_hint()

    def _labels_score(self, labels: Labels) -> float:
        image = self.image.layer() if hasattr(self, "image") else None
        if image is None:
            return 0.0
        same_shape = tuple(labels.data.shape) == layer_array(image).spatial_shape
        # The user's own labels beat the predictions and previews the widgets made.
        return 2.0 * same_shape + (not labels.metadata.get(META_KEY))

    def arrays(self) -> tuple[LayerArray, LayerArray] | None:
        image, labels = self.image.layer(), self.labels.layer()
        if image is None or labels is None:
            return None
        return layer_array(image), layer_array(labels)

    def update_hint(self, *_: Any) -> None:
        """Explain a shape mismatch as soon as the pair is picked (full checks run at Train)."""
        pair = self.arrays()
        text = ""
        if pair is not None:
            try:
                check_shapes(*pair)
            except InputError as exc:
                text = str(exc)
        self.hint.setText(text)
        self.hint.setVisible(bool(text))


class TrainWidget(JobWidget):
    """Train a new U-Net on pairs of layers; the saved model joins the session's model list."""

    def __init__(self, napari_viewer: Any, registry: ModelRegistry | None = None) -> None:
        super().__init__(napari_viewer, registry)
        self.job: WorkerJob = self.new_job("Training")
        self.rows: list[PairRow] = []
        self.last_outcome: TrainOutcome | None = None
        self._preview_layer: Labels | None = None
        self._preview_plane: int | None = None
        self._preview_source: Image | None = None
        self._name_edited = False

        # --- data
        data_box = QGroupBox("Training data (image + labels)")
        self.rows_layout = QVBoxLayout()
        self.rows_layout.setSpacing(4)
        self.add_pair_button = QPushButton("Add pair")
        self.add_pair_button.setToolTip("Train on several images at once")
        self.add_pair_button.clicked.connect(self.add_pair)
        data_layout = QVBoxLayout(data_box)
        data_layout.addLayout(self.rows_layout)
        data_layout.addWidget(self.add_pair_button, 0, Qt.AlignmentFlag.AlignLeft)

        # --- settings and output
        self.settings = TrainingSettings()
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip("Folder name of the model; each training writes a new version v001, v002...")
        self.name_edit.textEdited.connect(self._on_name_edited)
        self.folder_edit = QLineEdit(str(default_model_root()))
        self.folder_edit.setToolTip("Models are saved in <folder>/<name>/vNNN")
        self.folder_edit.setCursorPosition(0)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_folder)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(browse)
        self.preview_picker = self.track_picker(
            LayerPicker(napari_viewer, Image, allow_none=True, prefer=self._preview_score)
        )
        self.preview_picker.setToolTip("Image on which a preview prediction is shown after every epoch")
        settings_box = QGroupBox("Model")
        form = QFormLayout(settings_box)
        form.addRow(self.settings)
        form.addRow("Name", self.name_edit)
        form.addRow("Save in", folder_row)
        form.addRow("Preview on", self.preview_picker)

        # --- run
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Train a new model in the background")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop within a second, keeping the best epoch so far")
        self.stop_button.setEnabled(False)
        self.train_button.clicked.connect(self.start_training)
        self.stop_button.clicked.connect(self.stop_training)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button, 2)
        buttons.addWidget(self.stop_button, 1)
        self.monitor = TrainingMonitor()
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        for widget in (data_box, settings_box):
            self.body_layout.addWidget(widget)
        self.body_layout.addLayout(buttons)
        self.body_layout.addWidget(self.monitor)
        self.body_layout.addWidget(self.result_label)
        self._task_chosen = False
        self.settings.task.activated.connect(lambda _i: setattr(self, "_task_chosen", True))
        self.add_pair()
        self.rows[0].labels.layerChanged.connect(self._suggest_task)
        self._suggest_task()
        self.finish_layout()

    # ------------------------------------------------------------------ pairs
    def _suggest_task(self, *_: Any) -> None:
        """The task the first labels layer suggests (one id per object: instances), unless the user chose one."""
        labels = self.rows[0].labels.layer() if self.rows else None
        if labels is None or self._task_chosen or not isinstance(labels.data, np.ndarray):
            return
        if labels.data.size > SUGGEST_MAX_PIXELS:
            return
        self.settings.task.setCurrentText(suggest_task(labels.data))

    def add_pair(self) -> PairRow:
        row = PairRow(self.viewer, self.remove_pair)
        self.track_picker(row.image)
        self.track_picker(row.labels)
        row.image.layerChanged.connect(self._on_first_image_changed)
        self.rows.append(row)
        self.rows_layout.addWidget(row)
        self._update_remove_buttons()
        self._on_first_image_changed()
        return row

    def remove_pair(self, row: PairRow) -> None:
        if len(self.rows) <= 1:
            return
        self.rows.remove(row)
        row.image.close_picker()
        row.labels.close_picker()
        self._pickers = [p for p in self._pickers if p not in (row.image, row.labels)]
        row.setParent(None)
        row.deleteLater()
        self._update_remove_buttons()
        self._on_first_image_changed()

    def _update_remove_buttons(self) -> None:
        for row in self.rows:
            row.remove.setVisible(len(self.rows) > 1)

    def _first_image(self) -> Image | None:
        return self.rows[0].image.layer() if self.rows else None

    def _preview_score(self, layer: Image) -> float:
        return float(layer is self._first_image()) if hasattr(self, "rows") else 0.0

    def _on_first_image_changed(self, *_: Any) -> None:
        self.preview_picker.update_choice()
        image = self._first_image()
        if not self._name_edited:
            self.name_edit.setText(safe_folder_name(f"{image.name}-unet") if image is not None else "unet")

    def _on_name_edited(self, _text: str) -> None:
        self._name_edited = True

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for models", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)
            self.folder_edit.setCursorPosition(0)

    # ------------------------------------------------------------------ state
    @property
    def status(self) -> JobState:
        """Where the current or last run is (a `JobState`)."""
        return self.monitor.status

    @property
    def running(self) -> bool:
        return self.job.running

    # ------------------------------------------------------------------ training
    def collect_pairs(
        self, patch_size: int, size_multiple: int, task: str, n_classes: int, background_label: int | None = None
    ) -> list[CorrectedPair]:
        """Checked snapshots of the chosen pairs (`background_label`: sparse labels); raises InputError saying what to fix."""
        if not any(isinstance(lyr, Image) for lyr in self.viewer.layers):
            raise InputError(NO_LAYERS)
        if not any(isinstance(lyr, Labels) for lyr in self.viewer.layers):
            raise InputError(
                "There is no labels layer to learn from. Add one with the 'New labels layer' button of the "
                "layer list and paint some objects, or open a label image."
            )
        pairs: list[CorrectedPair] = []
        names: set[str] = set()
        for row in self.rows:
            chosen = row.arrays()
            if chosen is None:
                continue
            image, labels = chosen
            img, lab = training_arrays(image, labels, task, n_classes, patch_size, size_multiple, background_label)
            name = image.name if image.name not in names else f"{image.name} + {labels.name}"
            names.add(name)
            pairs.append(CorrectedPair(img, lab, name, image.rgb))
        if not pairs:
            raise InputError("Pick an image layer and a labels layer for at least one pair.")
        return pairs

    def start_training(self) -> bool:
        """What the Train button does; returns whether a run started."""
        if self.job.running:
            show_info("Training is already running; wait for it to finish or press Stop.")
            return False
        settings = self.settings
        try:
            chosen = [pair for pair in (row.arrays() for row in self.rows) if pair is not None]
            channels = [min(image.channels, 3) for image, _ in chosen]  # RGBA trains as RGB
            cfg = settings.config(channel_count(channels) if channels else 1)
            pairs = self.collect_pairs(
                cfg.data.patch_size, cfg.size_multiple, cfg.data.task, cfg.data.n_classes, settings.sparse.background_label()
            )
            name = self.name_edit.text().strip() or "unet"
            check_model_name(name)
            root = model_folder(self.folder_edit.text().strip() or str(default_model_root()))
        except PatchTooLargeError as exc:
            self._offer_patch(exc)
            return False
        except NapariUNetError as exc:
            show_error(str(exc))
            return False
        preview = self._make_preview()
        if preview is not None:  # creating the layer is the slow part of pressing Train: a turn of its own
            later(lambda shape=preview.image.shape[:2]: self._prepare_preview_layer(shape))
        self.monitor.begin()
        self.result_label.setText(f"Training {name}… it will be saved in {root / name}")
        self._set_running(True)
        self.run_job(self.job, train_request(pairs, cfg, root, name, preview), self._on_event, self._on_finished)
        return True

    def _offer_patch(self, exc: PatchTooLargeError) -> None:
        suggested = exc.suggested
        if suggested is None:
            show_error(str(exc))
            return
        offer(str(exc), [(f"Use {suggested}-pixel patches", lambda: self.use_patch_size(suggested))])

    def use_patch_size(self, size: int) -> None:
        self.settings.patch.setValue(size)
        show_info(f"Patch size set to {size} pixels; press Train again.")

    def stop_training(self) -> None:
        if self.job.running:
            self.job.stop()
            self.monitor.set_status(JobState.STOPPING)
            self.stop_button.setEnabled(False)

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.add_pair_button.setEnabled(not running)

    def _make_preview(self) -> Any:
        layer = self.preview_picker.layer()
        self._preview_source, self._preview_plane = layer, None
        if layer is None:
            return None
        arr = layer_array(layer)
        if len(arr.spatial_shape) == 3:
            step = self.viewer.dims.current_step
            self._preview_plane = int(min(step[-3], arr.spatial_shape[0] - 1)) if len(step) >= 3 else 0
        return preview_plane(arr.data, arr.rgb, self._preview_plane or 0)

    # ------------------------------------------------------------------ events from the worker
    def _on_event(self, event: Event) -> None:
        if isinstance(event, PreviewReady):
            self._show_preview(arrays.take(event.labels))
        else:
            self.monitor.show(event)

    def _prepare_preview_layer(self, shape: tuple[int, ...]) -> None:
        """An empty preview layer, made before training starts: creating a layer is the slow part."""
        if self._shut_down:
            return
        source = self._preview_source
        shape = (1, *shape) if self._preview_plane is not None else tuple(shape)
        layer = self._preview_layer
        if layer is not None and layer in self.viewer.layers and layer.data.shape == shape:
            layer.data[...] = 0
            layer.refresh()
            return
        self._preview_layer = self.viewer.add_labels(
            np.zeros(shape, dtype=np.uint16),  # the dtype napari draws fastest (core.targets.compact_labels)
            name=unique_name(self.viewer, f"preview [{self.name_edit.text() or 'unet'}]"),
            opacity=0.5,
            metadata={META_KEY: {"preview": True}},
            **placement(source, ndim=len(shape), plane=self._preview_plane),
        )

    def _show_preview(self, labels: np.ndarray) -> None:
        layer = self._preview_layer
        if layer is None or layer not in self.viewer.layers:
            return  # the user removed the preview layer: stop showing previews
        if self._preview_plane is not None:
            labels = labels[None]
        if layer.data.shape != labels.shape:
            return
        layer.data[...] = labels  # in place: far cheaper than a new array for napari to take in
        layer.refresh()

    def _on_finished(self, job: WorkerJob) -> None:
        self._set_running(False)
        if job.result is not None:
            self._keep(job.result)  # a crashed worker's best epoch is kept too
        if job.failure is not None:
            self.monitor.finish(JobState.CRASHED)
            message = failure_message(job.failure, "Training")
            self.result_label.setText(message)
            show_error(message)

    def _keep(self, outcome: TrainOutcome) -> None:
        self.last_outcome = outcome
        if outcome.model is not None:
            self.registry.add(ModelEntry.from_info(outcome.model, "trained"), make_current=True)
        dice = outcome.metrics.get("dice")
        text = outcome.message + (f" (validation Dice {dice:.3f})" if dice is not None else "")
        if not self._shut_down:
            self.monitor.finish(outcome.state)
            self.result_label.setText(text)
            show_info(text)

    def on_shutdown(self, job: WorkerJob) -> None:
        if job is self.job and job.result is not None:
            self._keep(job.result)
