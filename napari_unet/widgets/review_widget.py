"""Review dock widget: predict a whole set of images, review them worst first, feed corrections back.

The review folder, scores and rules live in `napari_unet.core.review`; predictions and fine-tuning run
in the compute worker (`WorkerJob`), which writes each image's prediction files while this widget
writes the review index as results stream in. Every decision is saved at once, so closing napari
loses nothing and opening the folder again resumes. The widget wires three panels together:
`ReviewInputs` (images, review folder, model), `ReviewTable` (one row per image) and `ReviewLayers`
(the shown image, mask and uncertainty map, and the user's edits).

Keys (bound on the viewer while the widget is open): N next, Shift-N previous,
A accept (and go to the next image), R reject (and go to the next image).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_unet.core import review as rv
from napari_unet.core.errors import NapariUNetError
from napari_unet.core.states import JobState
from napari_unet.jobs.messages import (
    Event,
    InspectRequest,
    Progress,
    ReviewFinetuneRequest,
    ReviewItemDone,
    ReviewPredictRequest,
    TrainOutcome,
    TrainUpdate,
)

from ._base import JobWidget
from ._jobs import WorkerJob
from ._monitor import format_duration
from ._notify import failure_message, show_error, show_info, show_warning
from ._progress import ProgressBar
from .models_registry import ModelEntry, ModelRegistry
from .review_inputs import ReviewInputs
from .review_layers import IMAGE_LAYER, LABELS_LAYER, UNCERTAINTY_LAYER, ReviewLayers
from .review_table import COL_STATUS, COL_UNCERTAINTY, ReviewTable

__all__ = ["COL_STATUS", "COL_UNCERTAINTY", "IMAGE_LAYER", "KEYS", "LABELS_LAYER", "UNCERTAINTY_LAYER", "ReviewWidget"]

KEYS = {"N": "next", "Shift-N": "previous", "A": "accept", "R": "reject"}
NO_MODEL = "Choose a model: pick one of this session's models or type a model folder."


class ReviewWidget(JobWidget):
    """Review a day's acquisitions: predict all, accept or correct worst first, fine-tune, re-predict."""

    #: Emitted (image name) when a prediction has been added to the table, as results stream in.
    item_predicted = Signal(str)
    #: Emitted when a prediction or fine-tuning job has ended (finished, stopped or failed).
    job_finished = Signal()

    def __init__(self, napari_viewer: Any, registry: ModelRegistry | None = None) -> None:
        super().__init__(napari_viewer, registry)
        self.job: WorkerJob = self.new_job("Review")
        self.load_job: WorkerJob = self.new_job("Loading the review model")
        self.project: rv.ReviewProject | None = None
        self.model: ModelEntry | None = None  # the model of the review's predictions and fine-tuning
        self.current: str | None = None
        self._run_errors: list[str] = []
        self._auto_selected = False  # the shown image was chosen by the widget, not the user
        self._keys: dict[str, Any] = {}  # key -> the binding it replaced

        self.inputs = ReviewInputs(napari_viewer, self.registry)
        self.table = ReviewTable()
        self.layers = ReviewLayers(napari_viewer)
        self.table.picked.connect(self._on_picked)
        self.layers.edited.connect(lambda _name: self.flush_edits())
        self._build()
        self._bind_keys()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.body.setMinimumWidth(560)
        layout = self.body_layout
        layout.addWidget(self.inputs)

        row = QHBoxLayout()
        self.start_button = QPushButton("Start / resume review")
        self.start_button.clicked.connect(self.start_review)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        row.addWidget(self.start_button)
        row.addWidget(self.stop_button)
        layout.addLayout(row)
        self.progress = ProgressBar()
        self.progress.setTextVisible(True)
        layout.addWidget(self.progress)
        self.status_label = QLabel("Choose images, a model and press Start.")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
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
        self.include_accepted.toggled.connect(self._update_buttons)
        row.addWidget(self.finetune_button)
        row.addWidget(self.epochs_spin)
        row.addWidget(self.include_accepted)
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

    def _on_registry_changed(self) -> None:
        self.inputs.refresh_models()

    def _browse_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export accepted and corrected masks to")
        if folder:
            self.export_masks(folder)

    def set_layers(self, names: list[str]) -> None:
        """Review these image layers (each plane of a stack becomes one image)."""
        self.inputs.set_layers(names)

    # ------------------------------------------------------------------ starting
    @property
    def busy(self) -> bool:
        """A job (loading the model, predicting or fine-tuning) is running."""
        return self.job.running or self.load_job.running

    def start_review(self) -> bool:
        """Open (or resume) the review folder, add the chosen images and predict those not done yet."""
        if self._refuse_when_busy():
            return False
        try:
            self.project = self.inputs.open_project()
            self.inputs.add_inputs(self.project)
            if not len(self.project):
                raise NapariUNetError("The review is empty: choose a folder with images or image layers.")
        except NapariUNetError as exc:
            self._fail(str(exc))
            return False
        self.current = None
        self.table.fill(self.project)
        self._update_counts()
        self.inputs.model_path(self.project)  # a resumed review names the model that made its masks
        pending = self.project.to_predict()
        if not pending:
            self._say(f"Resumed: all {len(self.project)} images have predictions. Review them worst first.")
            self._select_first()
            return True
        return self._run_predictions(pending, only_unreviewed=False)

    def repredict_unreviewed(self) -> bool:
        """Predict every unreviewed image again with the review's model (after fine-tuning)."""
        if self._refuse_when_busy() or not self._require_project():
            return False
        names = self.project.with_status(rv.UNREVIEWED)
        if not names:
            self._say("No unreviewed images left.")
            return False
        return self._run_predictions(names, only_unreviewed=True)

    def stop(self) -> None:
        """Stop the running job (within about 2 s); what it finished so far is kept."""
        if self.busy:
            self.job.stop()
            self.load_job.stop()
            self._say("Stopping…")

    def _refuse_when_busy(self) -> bool:
        if self.busy:
            self._say("A job is running; wait for it or press Stop.")
            return True
        return False

    def _with_model(self, then: Callable[[ModelEntry], None]) -> bool:
        """Call `then` with the model asked for; one not yet in the session is loaded in the worker first."""
        path = self.inputs.model_path(self.project)
        if path is None:
            if self.model is None:
                self._fail(NO_MODEL)
                return False
            then(self.model)
            return True
        known = self.model if self.model is not None and _same(self.model.path, path) else self.registry.find(path)
        if known is not None:
            self.model = known
            then(known)
            return True
        self._say(f"Loading the model {path}…")
        self.run_job(self.load_job, InspectRequest(str(path)), None, partial(self._on_model_loaded, then))
        self._update_buttons()
        return True

    def _on_model_loaded(self, then: Callable[[ModelEntry], None], job: WorkerJob) -> None:
        if job.failure is not None or job.result is None:
            if job.failure is not None:
                self._fail(failure_message(job.failure, "Loading the model"))
            else:
                self._say("Stopped.")
            self._update_buttons()
            self.job_finished.emit()
            return
        self.model = self.registry.add(ModelEntry.from_info(job.result, "loaded"))
        then(self.model)

    # ------------------------------------------------------------------ predictions
    def _run_predictions(self, names: list[str], only_unreviewed: bool) -> bool:
        try:
            cluster = self.inputs.cluster.value()  # a bad scheduler address is refused before any work
        except NapariUNetError as exc:
            self._fail(str(exc))
            return False
        return self._with_model(partial(self._predict, names, only_unreviewed, cluster))

    def _predict(self, names: list[str], only_unreviewed: bool, cluster: str | None, model: ModelEntry) -> None:
        assert self.project is not None
        self._run_errors = []
        self.progress.setRange(0, len(names))
        self.progress.setValue(0)
        self.progress.setFormat(f"%v / {len(names)} images")
        where = f" on {cluster}" if cluster else ""
        self._say(f"Predicting {len(names)} image(s) with {model.label}{where}…")
        self.inputs.cluster.show_dashboard("")
        request = ReviewPredictRequest(
            str(self.project.folder), str(model.path), list(names), self.inputs.method, only_unreviewed, cluster
        )
        self.run_job(self.job, request, partial(self._on_predicted, model, only_unreviewed), self._on_predictions_done)
        self._update_buttons()

    def _on_predicted(self, model: ModelEntry, only_unreviewed: bool, event: Event) -> None:
        """One image done in the worker (its files are written): enter it in the index and the table."""
        if isinstance(event, Progress) and event.text.startswith("dask dashboard"):
            self.inputs.cluster.show_dashboard(event.text)
            return
        if not isinstance(event, ReviewItemDone) or self.project is None or event.name not in self.project:
            return
        self.progress.setValue(event.index + 1)
        name = event.name
        if event.error is not None:
            if not (only_unreviewed and self.project.item(name).status != rv.UNREVIEWED):
                self.project.record_error(name, event.error)
            self._run_errors.append(f"{name}: {event.error}")
            self._say(f"{name}: {event.error}")
        else:
            self.project.record_scores(
                name, event.uncertainty, event.foreground, event.objects, event.shape or [], model.path,
                model.version, only_unreviewed,
            )  # fmt: skip
        self._update_row(name)
        if self.current is None and event.error is None:
            self._select_first()
        elif name == self.current:
            self.show_item(name)
        self.item_predicted.emit(name)

    def _on_predictions_done(self, job: WorkerJob) -> None:
        if job.failure is not None:
            self._fail(failure_message(job.failure, "Prediction"))  # the shown image stays as it is
        else:
            stopped = " (stopped)" if job.state == JobState.STOPPED else ""
            self._say(f"Done{stopped}. {self._counts_text()}")
            if self.current is None or self._auto_selected:
                self._select_first()  # results streamed in: now the worst one is on top
        if self._run_errors:
            shown = "\n".join(self._run_errors[:5]) + ("\n…" if len(self._run_errors) > 5 else "")
            show_warning(f"{len(self._run_errors)} image(s) left out of the review (see the table):\n{shown}")
            self._run_errors = []
        self._update_counts()
        self.job_finished.emit()

    # ------------------------------------------------------------------ fine-tuning
    def finetune(self) -> bool:
        """Fine-tune the review's model on the corrected images; the new version becomes its model."""
        if self._refuse_when_busy() or not self._require_project():
            return False
        self.flush_edits()
        statuses = self._finetune_statuses()
        if not self.project.with_status(*statuses):
            self._fail("No corrected images yet: edit a predicted mask with the brush or eraser, then fine-tune.")
            return False
        return self._with_model(partial(self._finetune, statuses))

    def _finetune(self, statuses: tuple[str, ...], model: ModelEntry) -> None:
        assert self.project is not None
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setFormat("fine-tuning %p%")
        self._say(f"Fine-tuning {model.label} on {len(self.project.with_status(*statuses))} reviewed image(s)…")
        folder, epochs = str(self.project.folder), self.epochs_spin.value()
        request = ReviewFinetuneRequest(folder, str(model.path), epochs, list(statuses))
        self.run_job(self.job, request, self._on_train_event, self._on_finetuned)
        self._update_buttons()

    def _finetune_statuses(self) -> tuple[str, ...]:
        return (rv.CORRECTED, rv.ACCEPTED) if self.include_accepted.isChecked() else (rv.CORRECTED,)

    def _on_train_event(self, event: Event) -> None:
        if isinstance(event, TrainUpdate) and event.kind in ("batch", "epoch"):
            self.progress.setValue(int(100 * event.fraction))
            eta = f", about {format_duration(event.eta_s)} left" if event.eta_s is not None else ""
            loss = event.logs.get("loss")
            loss_text = f", loss {loss:.4f}" if loss is not None else ""
            self._say(f"Fine-tuning: epoch {event.epoch}/{event.epochs}{loss_text}{eta}")

    def _on_finetuned(self, job: WorkerJob) -> None:
        if isinstance(job.result, TrainOutcome):
            self._keep_finetuned(job.result)
        if job.failure is not None:
            self._fail(failure_message(job.failure, "Fine-tuning"))
        self._update_buttons()
        self.job_finished.emit()

    def _keep_finetuned(self, outcome: TrainOutcome) -> None:
        """The saved version joins the session's models and becomes the review's model."""
        if outcome.model is None:
            self._say(outcome.message)
            return
        self.model = self.registry.add(ModelEntry.from_info(outcome.model, "fine-tuned"))
        self.inputs.model_edit.setText(str(self.model.path))
        before, after = outcome.metrics.get("before_dice"), outcome.metrics.get("dice")
        scores = f" Validation Dice {before:.3f} → {after:.3f}." if before is not None and after is not None else ""
        message = f"Saved {self.model.label} at {self.model.path}.{scores} Re-predict the unreviewed images with it."
        self._say(message)
        show_info(message)

    def on_shutdown(self, job: WorkerJob) -> None:
        if job is self.job and isinstance(job.result, TrainOutcome) and job.result.model is not None:
            self.registry.add(ModelEntry.from_info(job.result.model, "fine-tuned"))

    # ------------------------------------------------------------------ table and navigation
    def row_names(self) -> list[str]:
        """Image names in table order (worst first unless the user sorted otherwise)."""
        return self.table.row_names()

    def _update_row(self, name: str) -> None:
        if self.project is not None:
            self.table.update_row(self.project.item(name))
            self._update_counts()

    def _on_picked(self, name: str) -> None:
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
        self.table.select_name(name)
        if self.current != name:
            self.show_item(name)
        self._auto_selected = auto

    def next(self) -> None:
        self._step(+1)

    def previous(self) -> None:
        self._step(-1)

    def _step(self, delta: int) -> None:
        if self.project is None:
            return
        names = [n for n in self.row_names() if self.project.item(n).predicted_ok]
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
        umap = self.project.uncertainty_map(name) if self.show_uncertainty.isChecked() else None
        self.layers.show(name, image, self.project.current_labels(name), umap)
        if item.status == rv.ERROR:
            self._say(f"{name}: {item.error}")

    def _on_uncertainty_toggled(self, on: bool) -> None:
        if self.current is not None and self.project is not None:
            self.layers.show_uncertainty(self.project.uncertainty_map(self.current) if on else None)

    # ------------------------------------------------------------------ reviewing
    def flush_edits(self) -> None:
        """Save a pending edit of the shown labels as the image's corrected mask."""
        name = self.layers.take_edit()
        labels = self.layers.labels()
        if name is None or name != self.current or labels is None or self.project is None:
            return
        if not self.project.item(name).predicted_ok:
            return
        try:
            self.project.correct(name, labels)
        except NapariUNetError as exc:
            self._fail(str(exc))
            return
        self._update_row(name)
        self._update_current_label()
        self._say(f"{name}: corrected mask saved.")

    def accept(self) -> None:
        """Keep the shown mask and go to the next image."""
        self._review(lambda project, name: project.accept(name, self.layers.labels()))

    def reject(self) -> None:
        """Mark the prediction unusable (left out of export and fine-tuning) and go on."""
        self._review(lambda project, name: project.reject(name))

    def _review(self, action: Callable[[rv.ReviewProject, str], None]) -> None:
        self.flush_edits()
        if self.project is None or self.current is None:
            return
        name = self.current
        try:
            action(self.project, name)
        except NapariUNetError as exc:
            self._fail(str(exc))
            return
        self._update_row(name)
        self._say(f"{name}: {self.project.item(name).status}. {self._counts_text()}")
        self.next()

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
        if self.project is None:
            return ""
        parts = [f"{n} {status}" for status, n in self.project.counts().items() if n]
        return f"{len(self.project)} images: " + ", ".join(parts)

    def _update_counts(self) -> None:
        self.counts_label.setText(self._counts_text())
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
        busy, project = self.busy, self.project
        self.start_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        can_finetune = project is not None and bool(project.with_status(*self._finetune_statuses()))
        self.finetune_button.setEnabled(not busy and can_finetune)
        self.repredict_button.setEnabled(not busy and project is not None)
        self.export_button.setEnabled(project is not None)

    def _say(self, text: str) -> None:
        self.status_label.setText(text)

    def _fail(self, text: str) -> None:
        self._say(text)
        show_error(text)

    # ------------------------------------------------------------------ keys and closing
    def _bind_keys(self) -> None:
        for key, method in KEYS.items():
            self._keys[key] = self.viewer.bind_key(key, _KeyHandler(self, method), overwrite=True)

    def _release_keys(self) -> None:
        for key, previous in self._keys.items():
            try:
                self.viewer.bind_key(key, previous, overwrite=True)
            except (AttributeError, RuntimeError, TypeError, ValueError):
                pass
        self._keys.clear()

    def shutdown(self) -> None:
        """Save a pending edit, stop the jobs, release the keys and stop following the viewer."""
        if self._shut_down:
            return
        self.flush_edits()
        self.layers.release()
        super().shutdown()
        self._release_keys()
        self.inputs.close_panel()

    def close_review(self) -> None:
        """Save a pending edit, stop jobs and release the keys; every decision is then on disk."""
        self.shutdown()


class _KeyHandler:
    """A viewer key binding calling one widget method (napari passes the viewer)."""

    def __init__(self, widget: ReviewWidget, method: str) -> None:
        self.widget, self.method = widget, method
        self.__name__ = f"review_{method}"
        self.__doc__ = f"Review: {method}"

    def __call__(self, viewer: Any) -> None:
        getattr(self.widget, self.method)()


def _same(a: Path | str | None, b: Path | str) -> bool:
    if a is None:
        return False
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False
