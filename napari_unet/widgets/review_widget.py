"""Review dock widget: predict a whole set of images, review them worst first, feed corrections back.

The widget is thin: the review folder, scores and jobs live in `napari_unet.core.review`.
Prediction and fine-tuning run in napari `thread_worker`s; every decision is written to the
review folder at once, so closing napari loses nothing and opening the folder again resumes.

Keys (bound on the viewer while the widget is open): N next, Shift-N previous,
A accept (and go to the next image), R reject (and go to the next image).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_unet.core import review as rv
from napari_unet.core.errors import NapariUNetError

from .models_registry import ModelEntry, ModelRegistry, session_registry

COLUMNS = ("Name", "Size", "Obj.", "Fg", "Uncert.", "Ver.", "Status")
COLUMN_TIPS = (
    "image name",
    "height × width (× channels)",
    "objects in the mask",
    "foreground fraction of the mask",
    "uncertainty: how much the mask changes under a flip and contrast changes (higher = check first)",
    "model version that made the prediction",
    "review status",
)
NAME_ROLE = Qt.UserRole  # the full image name; the cell shows it without the prefix all names share
COL_UNCERTAINTY, COL_STATUS = 4, 6
CLOSE_TIMEOUT_S = 60.0
METHOD_NAMES = {
    "tta": "flip + contrast changes (best, 4 passes)",
    "intensity": "contrast changes (3 passes)",
    "flip": "flip (2 passes)",
    "entropy": "entropy (fastest, 1 pass)",
}
KEYS = {"N": "next", "Shift-N": "previous", "A": "accept", "R": "reject"}
IMAGE_LAYER, LABELS_LAYER, UNCERTAINTY_LAYER = "review image", "review labels", "review uncertainty"
_OWN_LAYERS = (IMAGE_LAYER, LABELS_LAYER, UNCERTAINTY_LAYER)
_STATUS_COLOURS = {"accepted": "#4caf50", "corrected": "#2196f3", "rejected": "#f44336", "error": "#ff9800"}


class _SortItem(QTableWidgetItem):
    """A table cell that sorts by a key (numbers numerically, missing values last)."""

    def __init__(self, text: str, key: Any) -> None:
        super().__init__(text)
        self.key = key
        self.setFlags(self.flags() & ~Qt.ItemIsEditable)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        a, b = self.key, getattr(other, "key", None)
        if a is None or b is None:
            # Missing values (not predicted, or errors) go to the bottom in both sort orders.
            table = self.tableWidget()
            descending = table is not None and table.horizontalHeader().sortIndicatorOrder() == Qt.DescendingOrder
            return (a is None and b is not None) if descending else (a is not None and b is None)
        return a < b


class _Relay(QObject):
    """Queues fine-tuning events from the worker thread to the GUI thread."""

    event = Signal(object)


class _Teardown:
    """Stops the running job, waits for it, releases the keys and disconnects; safe to call twice.

    It holds no reference to the widget's Qt object, so it can run from the widget's `destroyed`.
    """

    def __init__(self, viewer: Any, stop: threading.Event, done: threading.Event, connections: list) -> None:
        self.viewer, self.stop, self.done, self.connections = viewer, stop, done, connections
        self.keys: dict[str, Any] = {}
        self.finished = False

    def __call__(self, *_: Any) -> None:
        if self.finished:
            return
        self.finished = True
        self.stop.set()
        # A fine-tuning run stops within a training step and still saves its best epoch: wait for it.
        self.done.wait(CLOSE_TIMEOUT_S)
        for key, previous in self.keys.items():
            try:
                self.viewer.bind_key(key, previous, overwrite=True)
            except (AttributeError, RuntimeError, TypeError, ValueError):
                pass
        self.keys.clear()
        for signal, slot in self.connections:
            try:
                signal.disconnect(slot)
            except (AttributeError, RuntimeError, TypeError, ValueError):
                pass
        self.connections = []


class ReviewWidget(QWidget):
    """Review a day's acquisitions: predict all, accept or correct worst first, fine-tune, re-predict."""

    #: Emitted (image name) when a prediction has been added to the table, as results stream in.
    item_predicted = Signal(str)
    #: Emitted when a prediction or fine-tuning job has ended (finished, stopped or failed).
    job_finished = Signal()

    def __init__(self, napari_viewer: Any, registry: ModelRegistry | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.registry = registry if registry is not None else session_registry()
        self.project: rv.ReviewProject | None = None
        self.bundle: Any = None  # core.bundle.ModelBundle used for predictions
        self.current: str | None = None
        self.method = rv.DEFAULT_METHOD
        self._worker: Any = None
        self._stop = threading.Event()
        self._job_done = threading.Event()
        self._job_done.set()
        self._loading = False  # True while the widget itself sets layer data
        self._rows: dict[str, QTableWidgetItem] = {}
        self._prefix = ""
        self._run_errors: list[str] = []
        self._auto_selected = False
        self._edited: str | None = None  # image whose shown labels were edited and not saved yet
        self._relay = _Relay()
        self._relay.event.connect(self._on_train_event)
        self._closed = False
        self._build()
        connections = [
            (self.registry.changed, self._refresh_models),
            (self.viewer.layers.events.inserted, self._refresh_layers),
            (self.viewer.layers.events.removed, self._refresh_layers),
        ]
        for signal, slot in connections:
            signal.connect(slot)
        # Runs on close, and also when Qt deletes the widget with the window (no closeEvent then).
        self._teardown = _Teardown(self.viewer, self._stop, self._job_done, connections)
        self.destroyed.connect(self._teardown)
        self._bind_keys()
        self._refresh_models()
        self._refresh_layers()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.setMinimumWidth(580)
        layout = QVBoxLayout(self)

        inputs = QGroupBox("Images")
        form = QFormLayout(inputs)
        self.source_combo = QComboBox()
        self.source_combo.addItems(["Folder of images", "Image layers"])
        form.addRow("Source", self.source_combo)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder with TIFF/PNG images")
        self.folder_row = self._with_button(self.folder_edit, "Browse…", self._browse_images)
        form.addRow(self.folder_row)
        self.layer_list = QListWidget()
        self.layer_list.setMaximumHeight(90)
        self.layer_list.setToolTip("Check the image layers to review; each plane of a stack is one image.")
        self.layer_list.setVisible(False)
        form.addRow(self.layer_list)
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self.review_edit = QLineEdit()
        self.review_edit.setPlaceholderText("default: <images folder>/review")
        form.addRow("Review folder", self._with_button(self.review_edit, "Browse…", self._browse_review))
        self.folder_edit.textChanged.connect(self._suggest_review_folder)
        layout.addWidget(inputs)

        model_box = QGroupBox("Model")
        form = QFormLayout(model_box)
        self.model_combo = QComboBox()
        self.model_combo.currentIndexChanged.connect(self._on_model_picked)
        form.addRow("Session", self.model_combo)
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("model folder or version folder (v001)")
        form.addRow("Path", self._with_button(self.model_edit, "Load…", self._browse_model))
        self.method_combo = QComboBox()
        for method, text in METHOD_NAMES.items():
            self.method_combo.addItem(text, method)
        self.method_combo.setToolTip(
            "How the per-image uncertainty is measured. Test-time augmentation ranks bad predictions first "
            "best (benchmarks/uncertainty_ranking.py) and costs 4 network passes per image; entropy costs 1."
        )
        self.method_combo.currentIndexChanged.connect(lambda i: setattr(self, "method", self.method_combo.itemData(i)))
        form.addRow("Uncertainty", self.method_combo)
        layout.addWidget(model_box)

        row = QHBoxLayout()
        self.start_button = QPushButton("Start / resume review")
        self.start_button.clicked.connect(self.start_review)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        row.addWidget(self.start_button)
        row.addWidget(self.stop_button)
        layout.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        layout.addWidget(self.progress)
        self.status_label = QLabel("Choose images, a model and press Start.")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        for col, tip in enumerate(COLUMN_TIPS):
            self.table.horizontalHeaderItem(col).setToolTip(tip)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setTextElideMode(Qt.ElideMiddle)  # image names often differ only at the end
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.setMinimumHeight(220)
        self.table.setSortingEnabled(True)
        self.table.sortItems(COL_UNCERTAINTY, Qt.DescendingOrder)
        self.table.itemSelectionChanged.connect(self._on_selection)
        layout.addWidget(self.table, stretch=1)

        self.current_label = QLabel("")
        layout.addWidget(self.current_label)
        row = QHBoxLayout()
        for text, slot in (
            ("◀ Previous (Shift-N)", self.previous),
            ("Next (N) ▶", self.next),
            ("Accept (A)", self.accept),
            ("Reject (R)", self.reject),
        ):
            button = QPushButton(text)
            button.clicked.connect(slot)
            row.addWidget(button)
        layout.addLayout(row)
        self.show_uncertainty = QCheckBox("Show uncertainty map")
        self.show_uncertainty.toggled.connect(self._on_uncertainty_toggled)
        layout.addWidget(self.show_uncertainty)
        self.counts_label = QLabel("")
        layout.addWidget(self.counts_label)

        rounds = QGroupBox("Feed corrections back")
        grid = QVBoxLayout(rounds)
        row = QHBoxLayout()
        self.finetune_button = QPushButton("Fine-tune on corrected")
        self.finetune_button.clicked.connect(self.finetune)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(5)
        self.epochs_spin.setPrefix("epochs ")
        self.include_accepted = QCheckBox("also accepted")
        self.include_accepted.setToolTip("Fine-tune on the accepted masks too, not only on the corrected ones.")
        row.addWidget(self.finetune_button)
        row.addWidget(self.epochs_spin)
        row.addWidget(self.include_accepted)
        self.include_accepted.toggled.connect(self._update_buttons)
        grid.addLayout(row)
        row = QHBoxLayout()
        self.repredict_button = QPushButton("Re-predict unreviewed")
        self.repredict_button.clicked.connect(self.repredict_unreviewed)
        self.export_button = QPushButton("Export masks…")
        self.export_button.clicked.connect(self._browse_export)
        row.addWidget(self.repredict_button)
        row.addWidget(self.export_button)
        grid.addLayout(row)
        layout.addWidget(rounds)
        self._update_buttons()

    def _on_source_changed(self, index: int) -> None:
        self.folder_row.setVisible(index == 0)
        self.layer_list.setVisible(index == 1)

    @staticmethod
    def _with_button(edit: QLineEdit, text: str, slot: Any) -> QWidget:
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit)
        button = QPushButton(text)
        button.clicked.connect(slot)
        row.addWidget(button)
        return box

    # ------------------------------------------------------------------ choices
    def _browse_images(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images to review")
        if folder:
            self.folder_edit.setText(folder)

    def _browse_review(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Review folder (new, or one to resume)")
        if folder:
            self.review_edit.setText(folder)

    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder or version folder")
        if folder:
            self.model_edit.setText(folder)

    def _browse_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export accepted and corrected masks to")
        if folder:
            self.export_masks(folder)

    def _suggest_review_folder(self, text: str) -> None:
        if text.strip() and (not self.review_edit.text() or self.review_edit.property("auto")):
            self.review_edit.setText(str(Path(text.strip()).expanduser() / "review"))
            self.review_edit.setProperty("auto", True)

    def _refresh_models(self) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem("(path below)", None)
        for entry in self.registry.entries:
            self.model_combo.addItem(entry.label, entry)
        current = self.registry.current
        if current is not None:
            self.model_combo.setCurrentIndex(self.registry.entries.index(current) + 1)
            if current.path is not None:
                self.model_edit.setText(str(current.path))
        self.model_combo.blockSignals(False)

    def _on_model_picked(self, index: int) -> None:
        entry = self.model_combo.itemData(index)
        if isinstance(entry, ModelEntry) and entry.path is not None:
            self.model_edit.setText(str(entry.path))

    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image

        checked = self._checked_layers()
        self.layer_list.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image) and layer.name not in _OWN_LAYERS:
                item = QListWidgetItem(layer.name)
                item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
                item.setCheckState(Qt.Checked if layer.name in checked else Qt.Unchecked)
                self.layer_list.addItem(item)

    def _checked_layers(self) -> list[str]:
        return [
            self.layer_list.item(i).text()
            for i in range(self.layer_list.count())
            if self.layer_list.item(i).checkState() == Qt.Checked
        ]

    def set_layers(self, names: list[str]) -> None:
        """Review these image layers (each plane of a stack becomes one image)."""
        self.source_combo.setCurrentIndex(1)
        for i in range(self.layer_list.count()):
            item = self.layer_list.item(i)
            item.setCheckState(Qt.Checked if item.text() in names else Qt.Unchecked)

    # ------------------------------------------------------------------ starting
    def start_review(self) -> bool:
        """Open (or resume) the review folder, add the chosen images and predict those not done yet."""
        if self._busy():
            return False
        try:
            self.project = self._open_project()
            self._add_inputs(self.project)
            if not len(self.project):
                raise NapariUNetError("The review is empty: choose a folder with images or image layers.")
        except NapariUNetError as exc:
            self._fail(str(exc))
            return False
        self._fill_table()
        pending = self.project.to_predict()
        if not pending:
            self._say(f"Resumed: all {len(self.project)} images have predictions. Review them worst first.")
            self._select_first()
            return True
        return self._run_predictions(pending, only_unreviewed=False)

    def _open_project(self) -> rv.ReviewProject:
        folder = self.review_edit.text().strip()
        if not folder:
            images = self.folder_edit.text().strip()
            if self.source_combo.currentIndex() == 0 and images:
                folder = str(Path(images).expanduser() / "review")
            else:
                raise NapariUNetError("Choose a review folder, where masks and the review index are saved.")
        try:
            return rv.ReviewProject.open(folder)
        except NapariUNetError as exc:
            alternative = _writable_alternative(Path(folder))
            self.review_edit.setProperty("auto", False)
            self.review_edit.setText(str(alternative))
            raise NapariUNetError(f"{exc} Suggested instead: {alternative} (press Start again to use it).") from exc

    def _add_inputs(self, project: rv.ReviewProject) -> None:
        if self.source_combo.currentIndex() == 0:
            images = self.folder_edit.text().strip()
            if images:
                project.add_files([Path(images).expanduser()])
            return
        for name in self._checked_layers():
            if name not in self.viewer.layers:
                continue
            layer = self.viewer.layers[name]
            data = np.asarray(layer.data)
            spatial = data.ndim - (1 if layer.rgb else 0)
            if spatial == 2:
                project.add_array(name, data)
            elif spatial == 3:
                for i in range(data.shape[0]):
                    project.add_array(f"{name}[{i:03d}]", data[i])
            else:
                raise NapariUNetError(
                    f"Layer '{name}' has {spatial} spatial dimensions; review 2D images or stacks of them."
                )

    def _model_path(self) -> Path | None:
        text = self.model_edit.text().strip()
        if not text and self.project is not None and self.project.meta.get("model"):
            text = str(self.project.meta["model"])
            self.model_edit.setText(text)
        return Path(text).expanduser() if text else None

    def _needs_bundle(self) -> Path | None:
        """The model path to load first, or None when the loaded bundle is the one asked for."""
        path = self._model_path()
        if path is None:
            if self.bundle is not None:
                return None
            raise NapariUNetError("Choose a model: pick one of this session's models or load a model folder.")
        if self.bundle is not None and self.bundle.path is not None and _same(self.bundle.path, path):
            return None
        entry = self.registry.find(path)
        if entry is not None and entry.bundle is not None:
            self.bundle = entry.bundle
            return None
        return path

    # ------------------------------------------------------------------ prediction jobs
    def _run_predictions(self, names: list[str], only_unreviewed: bool) -> bool:
        try:
            load = self._needs_bundle()
        except NapariUNetError as exc:
            self._fail(str(exc))
            return False
        self._new_job()
        worker = create_worker(
            _predict_job,
            self._job_done,
            self.project,
            self.bundle,
            load,
            names,
            self._stop,
            self.method,
            only_unreviewed,
            _start_thread=False,
        )
        worker.yielded.connect(self._on_predicted)
        worker.errored.connect(lambda exc: self._fail(_message(exc, "Prediction")))
        worker.finished.connect(self._on_worker_done)
        self.progress.setRange(0, len(names))
        self.progress.setValue(0)
        self.progress.setFormat(f"%v / {len(names)} images")
        what = f"Predicting {len(names)} image(s)…"
        self._say(what if load is None else f"Loading {load.name}, then {what[0].lower()}{what[1:]}")
        self._start(worker)
        return True

    def _on_predicted(self, message: tuple[str, Any]) -> None:
        kind, value = message
        if kind == "bundle":
            self.bundle = value
            self.registry.add(ModelEntry.from_bundle(value, "loaded"))
            self._say(f"Predicting with {value.label}…")
            return
        done: rv.PredictionDone = value
        self.progress.setValue(done.index + 1)
        self._update_row(done.name)
        if done.error:
            self._run_errors.append(f"{done.name}: {done.error}")
            self._say(f"{done.name}: {done.error}")
        if self.current is None and done.error is None:
            self._select_first()
        elif done.name == self.current:
            self.show_item(done.name)
        self.item_predicted.emit(done.name)

    def _on_worker_done(self) -> None:
        self._worker = None
        self._update_buttons()
        self._update_counts()
        if self.project is not None:
            stopped = " (stopped)" if self._stop.is_set() else ""
            self._say(f"Done{stopped}. {self._counts_text()}")
        if self._run_errors:
            shown = "\n".join(self._run_errors[:5]) + ("\n…" if len(self._run_errors) > 5 else "")
            show_warning(f"{len(self._run_errors)} image(s) left out of the review (see the table):\n{shown}")
            self._run_errors = []
        if self.current is None or self._auto_selected:
            self._select_first()  # results streamed in: now the worst one is on top
        self.job_finished.emit()

    def repredict_unreviewed(self) -> bool:
        """Predict every unreviewed image again with the current model (after fine-tuning)."""
        if self._busy() or not self._require_project():
            return False
        names = self.project.with_status(rv.UNREVIEWED)
        if not names:
            self._say("No unreviewed images left.")
            return False
        return self._run_predictions(names, only_unreviewed=True)

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None and hasattr(self._worker, "quit"):
            self._worker.quit()
        self._say("Stopping…")

    def _new_job(self) -> None:
        """Reset the stop and done flags (one object each, so `destroyed` can still reach them)."""
        self._stop.clear()
        self._job_done.clear()  # the job sets it itself, in its thread, when it ends

    def _start(self, worker: Any) -> None:
        self._worker = worker
        worker.start()
        self._update_buttons()

    def _busy(self) -> bool:
        if self._worker is not None:
            self._say("A job is running; wait for it or press Stop.")
            return True
        return False

    # ------------------------------------------------------------------ fine-tuning
    def finetune(self) -> bool:
        """Fine-tune the current model on the corrected images; the result becomes the current model."""
        if self._busy() or not self._require_project():
            return False
        self.flush_edits()
        statuses = self._finetune_statuses()
        if not self.project.with_status(*statuses):
            self._fail("No corrected images yet: edit a predicted mask with the brush or eraser, then fine-tune.")
            return False
        try:
            load = self._needs_bundle()
        except NapariUNetError as exc:
            self._fail(str(exc))
            return False
        self._new_job()
        worker = create_worker(
            _finetune_job,
            self._job_done,
            self.project,
            self.bundle,
            load,
            self._relay.event.emit,
            self._stop,
            self.epochs_spin.value(),
            statuses,
            _start_thread=False,
        )
        worker.returned.connect(self._on_finetuned)
        worker.errored.connect(lambda exc: self._fail(_message(exc, "Fine-tuning")))
        worker.finished.connect(self._on_worker_done)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setFormat("fine-tuning %p%")
        self._say(f"Fine-tuning on {len(self.project.with_status(*statuses))} reviewed image(s)…")
        self._start(worker)
        return True

    def _finetune_statuses(self) -> tuple[str, ...]:
        return (rv.CORRECTED, rv.ACCEPTED) if self.include_accepted.isChecked() else (rv.CORRECTED,)

    def _on_train_event(self, event: Any) -> None:
        if event.kind in ("batch", "epoch"):
            self.progress.setValue(int(100 * event.fraction))
            eta = f", about {event.eta_s:.0f} s left" if event.eta_s is not None else ""
            loss = event.logs.get("loss")
            loss_text = f", loss {loss:.4f}" if loss is not None else ""
            self._say(f"Fine-tuning: epoch {event.epoch}/{event.epochs}{loss_text}{eta}")

    def _on_finetuned(self, outcome: tuple[Any, Any, Any]) -> None:
        result, new_bundle, parent = outcome
        if parent is not None and parent is not self.bundle:
            self.registry.add(ModelEntry.from_bundle(parent, "loaded"), make_current=False)
        if new_bundle is None:
            self._say("Fine-tuning stopped before a complete epoch; nothing was saved.")
            return
        self.bundle = new_bundle
        self.registry.add(ModelEntry.from_bundle(new_bundle, "fine-tuned"))
        self.model_edit.setText(str(new_bundle.path))
        before, after = result.metrics.get("before_dice"), result.metrics.get("dice")
        scores = f" Validation Dice {before:.3f} → {after:.3f}." if before is not None and after is not None else ""
        message = f"Saved {new_bundle.label} at {new_bundle.path}.{scores} Re-predict the unreviewed images with it."
        self._say(message)
        show_info(message)

    # ------------------------------------------------------------------ table
    def _fill_table(self) -> None:
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        self._rows.clear()
        self._prefix = _common_prefix(self.project.names)
        for name in self.project.names:
            row = self.table.rowCount()
            self.table.insertRow(row)
            self._set_row(row, self.project.item(name))
        self.table.setSortingEnabled(True)
        self._update_counts()
        self._update_buttons()

    def _set_row(self, row: int, item: rv.ReviewItem) -> None:
        shape = item.shape[:2] if item.shape else []
        size = "×".join(str(s) for s in shape)
        if len(item.shape) == 3:
            size += f"×{item.shape[2]}"
        cells = [
            _SortItem(_short(item.name, self._prefix), item.name),
            _SortItem(size, int(np.prod(shape)) if shape else None),
            _SortItem("" if item.objects is None else str(item.objects), item.objects),
            _SortItem("" if item.foreground is None else f"{100 * item.foreground:.1f}%", item.foreground),
            _SortItem("" if item.uncertainty is None else f"{item.uncertainty:.3f}", item.uncertainty),
            _SortItem("" if item.model_version is None else f"v{item.model_version}", item.model_version),
            _SortItem(item.status, rv.STATUSES.index(item.status)),
        ]
        colour = _STATUS_COLOURS.get(item.status)
        tip = item.name + (f"\n{item.error}" if item.error else f"\nmodel {item.model}" if item.model else "")
        for col, cell in enumerate(cells):
            if colour and col == COL_STATUS:
                from qtpy.QtGui import QColor

                cell.setForeground(QColor(colour))
            cell.setToolTip(tip)
            self.table.setItem(row, col, cell)
        cells[0].setData(NAME_ROLE, item.name)
        self._rows[item.name] = cells[0]

    def _update_row(self, name: str) -> None:
        cell = self._rows.get(name)
        if cell is None:
            return
        selected = self.current
        self.table.setSortingEnabled(False)
        self.table.blockSignals(True)
        self._set_row(self.table.row(cell), self.project.item(name))
        self.table.setSortingEnabled(True)
        if selected is not None and selected in self._rows:
            self.table.selectRow(self.table.row(self._rows[selected]))
        self.table.blockSignals(False)
        self._update_counts()

    def row_names(self) -> list[str]:
        """Image names in table order (worst first unless the user sorted otherwise)."""
        return [self.table.item(row, 0).data(NAME_ROLE) for row in range(self.table.rowCount())]

    def _on_selection(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            name = self.table.item(rows[0].row(), 0).data(NAME_ROLE)
            if name != self.current:
                self.show_item(name)
                self._auto_selected = False

    def _select_first(self) -> None:
        for name in self.row_names():
            if self.project is not None and self.project.item(name).predicted_ok:
                self.select(name, auto=True)
                return

    def select(self, name: str, auto: bool = False) -> None:
        """Show this image and highlight its row (`auto`: chosen by the widget, not the user)."""
        cell = self._rows.get(name)
        if cell is not None:
            self.table.selectRow(self.table.row(cell))
        if self.current != name:
            self.show_item(name)
        self._auto_selected = auto

    # ------------------------------------------------------------------ showing an image
    def show_item(self, name: str) -> None:
        """Show the image with its mask (reviewed or predicted) and, if asked, its uncertainty map."""
        if self.project is None:
            return
        self.flush_edits()
        item = self.project.item(name)
        self.current = name
        self._update_current_label()
        try:
            image = self.project.load_image(name)
        except NapariUNetError as exc:
            self._say(str(exc))
            return
        labels = self.project.current_labels(name)
        reset = self._set_image(image, name)
        self._set_labels(labels if labels is not None else np.zeros(image.shape[:2], np.int32))
        self._set_uncertainty(self.project.uncertainty_map(name) if self.show_uncertainty.isChecked() else None)
        if reset:
            self.viewer.reset_view()
        if item.status == rv.ERROR:
            self._say(f"{name}: {item.error}")

    def _set_image(self, image: np.ndarray, name: str) -> bool:
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
        layer = self._layer(IMAGE_LAYER)
        if layer is not None and (layer.rgb != rgb or layer.data.shape != image.shape):
            self.viewer.layers.remove(layer)
            layer = None
        if layer is None:
            layer = self.viewer.add_image(image, name=IMAGE_LAYER, rgb=rgb)
            self.viewer.layers.move(self.viewer.layers.index(layer), 0)
            return True
        layer.data = image
        layer.reset_contrast_limits()
        return False

    def _set_labels(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels).astype(np.int32, copy=True)
        layer = self._layer(LABELS_LAYER)
        self._loading = True
        try:
            if layer is None or layer.data.shape != labels.shape:
                if layer is not None:
                    self.viewer.layers.remove(layer)
                layer = self.viewer.add_labels(labels, name=LABELS_LAYER, opacity=0.5)
                layer.events.paint.connect(self._on_labels_edited)
                layer.events.data.connect(self._on_labels_edited)
            else:
                layer.data = labels
                # Undo must not reach into the previous image's strokes (napari has no public API).
                if hasattr(layer, "_reset_history"):
                    layer._reset_history()
        finally:
            self._loading = False
        self.viewer.layers.selection.active = layer

    def _set_uncertainty(self, umap: np.ndarray | None) -> None:
        layer = self._layer(UNCERTAINTY_LAYER)
        if umap is None:
            if layer is not None:  # removed, not hidden: a stale shape would skew reset_view
                self.viewer.layers.remove(layer)
            return
        if layer is None or layer.data.shape != umap.shape:
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_image(
                umap, name=UNCERTAINTY_LAYER, colormap="magma", blending="additive", contrast_limits=(0, 1), opacity=0.6
            )
        else:
            layer.data = umap
        layer.visible = True
        labels = self._layer(LABELS_LAYER)
        if labels is not None:
            self.viewer.layers.selection.active = labels

    def _on_uncertainty_toggled(self, on: bool) -> None:
        if self.current is not None and self.project is not None:
            self._set_uncertainty(self.project.uncertainty_map(self.current) if on else None)

    def _layer(self, name: str) -> Any:
        return self.viewer.layers[name] if name in self.viewer.layers else None

    # ------------------------------------------------------------------ reviewing
    def _on_labels_edited(self, event: Any = None) -> None:
        """A napari edit (brush, eraser, fill, or new data) marks the shown image corrected and saves it."""
        if self._loading or self.current is None or self.project is None:
            return
        if self._edited is None:
            # napari reports a fill or a programmatic paint before it writes the pixels: save a moment later.
            self._edited = self.current
            QTimer.singleShot(0, self.flush_edits)

    def flush_edits(self) -> None:
        """Save a pending edit of the shown labels as the image's corrected mask."""
        name, self._edited = self._edited, None
        layer = self._layer(LABELS_LAYER)
        if name is None or name != self.current or layer is None or self.project is None:
            return
        if not self.project.item(name).predicted_ok:
            return
        try:
            self.project.correct(name, np.asarray(layer.data))
        except NapariUNetError as exc:
            self._fail(str(exc))
            return
        self._update_row(name)
        self._update_current_label()
        self._say(f"{name}: corrected mask saved.")

    def accept(self) -> None:
        """Keep the shown mask and go to the next image."""
        self._review(lambda name: self.project.accept(name, self._shown_labels()))

    def reject(self) -> None:
        """Mark the prediction unusable (left out of export and fine-tuning) and go on."""
        self._review(self.project.reject if self.project is not None else None)

    def _review(self, action: Any) -> None:
        self.flush_edits()
        if self.project is None or self.current is None or action is None:
            return
        name = self.current
        try:
            action(name)
        except NapariUNetError as exc:
            self._fail(str(exc))
            return
        self._update_row(name)
        self._say(f"{name}: {self.project.item(name).status}. {self._counts_text()}")
        self.next()

    def _shown_labels(self) -> np.ndarray | None:
        layer = self._layer(LABELS_LAYER)
        return np.asarray(layer.data) if layer is not None else None

    def next(self) -> None:
        self._step(+1)

    def previous(self) -> None:
        self._step(-1)

    def _step(self, delta: int) -> None:
        names = [n for n in self.row_names() if self.project is not None and self.project.item(n).predicted_ok]
        if not names:
            return
        if self.current not in names:
            self.select(names[0])
            return
        index = names.index(self.current) + delta
        if 0 <= index < len(names):
            self.select(names[index])
        else:
            self._update_current_label()
            self._say("End of the list." if delta > 0 else "Start of the list.")

    # ------------------------------------------------------------------ export
    def export_masks(self, folder: str | Path) -> list[Path]:
        """Write accepted and corrected masks as label TIFFs named like the input images."""
        if not self._require_project():
            return []
        self.flush_edits()
        try:
            written = self.project.export(folder)
        except NapariUNetError as exc:
            self._fail(str(exc))
            return []
        message = f"{len(written)} mask(s) written to {folder}."
        self._say(message)
        show_info(message)
        return written

    # ------------------------------------------------------------------ status
    def _require_project(self) -> bool:
        if self.project is None:
            self._fail("Start a review first (choose images and a review folder, then press Start).")
            return False
        return True

    def _counts_text(self) -> str:
        counts = self.project.counts() if self.project is not None else {}
        parts = [f"{n} {status}" for status, n in counts.items() if n]
        return f"{len(self.project) if self.project else 0} images: " + ", ".join(parts)

    def _update_counts(self) -> None:
        self.counts_label.setText(self._counts_text() if self.project is not None else "")
        self._update_buttons()

    def _update_current_label(self) -> None:
        if self.project is None or self.current is None:
            self.current_label.setText("")
            return
        names = self.row_names()
        position = names.index(self.current) + 1 if self.current in names else 0
        item = self.project.item(self.current)
        self.current_label.setText(f"<b>{position}/{len(names)}</b> {self.current} — {item.status}")

    def _update_buttons(self) -> None:
        busy = self._worker is not None
        has = self.project is not None
        self.start_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        self.finetune_button.setEnabled(not busy and has and bool(self.project.with_status(*self._finetune_statuses())))
        self.repredict_button.setEnabled(not busy and has)
        self.export_button.setEnabled(has)

    def _say(self, text: str) -> None:
        self.status_label.setText(text)

    def _fail(self, text: str) -> None:
        self._say(text)
        show_error(text)

    # ------------------------------------------------------------------ keys and closing
    def _bind_keys(self) -> None:
        for key, method in KEYS.items():
            previous = self.viewer.bind_key(key, _KeyHandler(self, method), overwrite=True)
            self._teardown.keys[key] = previous

    def close_review(self) -> None:
        """Save a pending edit, stop jobs and release the keys; every decision is then on disk."""
        if self._closed:
            return
        self._closed = True
        self.flush_edits()
        self._teardown()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self.close_review()
        super().closeEvent(event)


class _KeyHandler:
    """A viewer key binding calling one widget method (napari passes the viewer)."""

    def __init__(self, widget: ReviewWidget, method: str) -> None:
        self.widget, self.method = widget, method
        self.__name__ = f"review_{method}"
        self.__doc__ = f"Review: {method}"

    def __call__(self, viewer: Any) -> None:
        getattr(self.widget, self.method)()


# ---------------------------------------------------------------------- worker functions


def _predict_job(
    done: threading.Event,
    project: rv.ReviewProject,
    bundle: Any,
    load: Path | None,
    names: list[str],
    stop: threading.Event,
    method: str,
    only_unreviewed: bool,
):
    """Generator run by the worker: maybe load the model, then yield each finished image."""
    try:
        from ._tf import import_tensorflow

        import_tensorflow()  # before anything imports TensorFlow plainly (see _tf.py)
        if load is not None:
            from napari_unet.core.bundle import load_bundle

            bundle = load_bundle(load)
            yield ("bundle", bundle)
        for result in rv.predict_items(project, bundle, names, stop, method, only_unreviewed):
            yield ("done", result)
    finally:
        done.set()


def _finetune_job(
    done: threading.Event,
    project: rv.ReviewProject,
    bundle: Any,
    load: Path | None,
    on_event: Any,
    stop: threading.Event,
    epochs: int,
    statuses: tuple[str, ...],
) -> tuple[Any, Any, Any]:
    """Fine-tune (loading the model first if needed); returns (result, new bundle or None, loaded parent)."""
    try:
        from ._tf import import_tensorflow

        import_tensorflow()
        from napari_unet.core.bundle import load_bundle

        loaded = None
        if load is not None:
            bundle = loaded = load_bundle(load)
        result, path = rv.finetune_on_reviewed(project, bundle, on_event, stop, epochs, statuses)
        return result, (load_bundle(path) if path is not None else None), loaded
    finally:
        done.set()


def _common_prefix(names: list[str]) -> str:
    """The prefix all names share, cut after its last separator (e.g. "dsb2018_s1test_")."""
    if len(names) < 2:
        return ""
    prefix = os.path.commonprefix(names)
    cut = max(prefix.rfind(c) for c in "_-. ")
    return prefix[: cut + 1] if cut >= 0 else ""


def _short(name: str, prefix: str) -> str:
    return "…" + name[len(prefix) :] if prefix and name.startswith(prefix) and len(name) > len(prefix) else name


def _same(a: Path | str, b: Path | str) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def _writable_alternative(folder: Path) -> Path:
    """A review folder in the user's home when the chosen one cannot be written."""
    name = folder.parent.name if folder.name == "review" else folder.name
    return Path.home() / "napari-unet-reviews" / (rv.safe_name(name) if name else "review")


def _message(exc: BaseException, doing: str) -> str:
    if isinstance(exc, NapariUNetError):
        return str(exc)
    return f"{doing} failed: {type(exc).__name__}: {exc}"
