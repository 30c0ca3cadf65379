""""Export for bioimage.io…": a small dialog (authors, licence, citation, file) whose export runs in the
compute worker. The viewer's process only checks the entries (bioimageio.spec's licence list, the output
policy); TensorFlow, tf2onnx and the package writer run in the worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari.layers import Image
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_unet.core.bioimageio_export import (
    DEFAULT_LICENSE,
    check_export,
    check_license,
    parse_author,
    parse_cite,
)
from napari_unet.core.errors import NapariUNetError
from napari_unet.core.states import JobState
from napari_unet.jobs import arrays
from napari_unet.jobs.export_messages import ExportOutcome, ExportRequest
from napari_unet.jobs.messages import Event, Progress

from ._jobs import WorkerJob
from ._notify import failure_message, show_error, show_info
from ._tasks import Build, preview_plane
from .models_registry import ModelEntry

#: Licences offered in the list; any other SPDX identifier can be typed.
COMMON_LICENSES = ("CC-BY-4.0", "CC0-1.0", "MIT", "BSD-3-Clause", "Apache-2.0", "GPL-3.0-only")
TRAINING_PATCHES = "(the model's training patches)"


def export_request(
    entry: ModelEntry, dest: Path, authors: list[dict], license: str, cite: list[dict], overwrite: bool, sample: Any
) -> Build:
    """The request for the worker; `sample` (a 2D plane or None) is copied to a scratch file off the GUI thread."""
    if entry.path is None:
        raise ValueError(f"{entry.label} has no folder on disk to export.")

    def build(scratch: Path) -> ExportRequest:
        ref = None if sample is None else arrays.put(scratch, sample)
        return ExportRequest(str(entry.path), str(dest), authors, license, cite, overwrite, ref)

    return build


def default_package_path(entry: ModelEntry) -> Path:
    version = f"-v{entry.version:03d}" if entry.version is not None else ""
    return Path.home() / f"{entry.name}{version}.bioimageio.zip"


class ExportDialog(QDialog):
    """Authors, licence, citation, test image and package file for one model version; Export runs `job`."""

    def __init__(self, entry: ModelEntry, viewer: Any, job: WorkerJob, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.entry, self.viewer, self.job = entry, viewer, job
        self.outcome: ExportOutcome | None = None
        self.setWindowTitle(f"Export {entry.label} for bioimage.io")
        self.authors = QLineEdit()
        self.authors.setPlaceholderText("Name <email>; another Name")
        self.authors.setToolTip("Who made the model: names separated by ';', each optionally with <email>")
        self.license = QComboBox()
        self.license.setEditable(True)
        self.license.addItems(COMMON_LICENSES)
        self.license.setCurrentText(DEFAULT_LICENSE)
        self.license.setToolTip("An SPDX licence identifier (https://spdx.org/licenses/)")
        self.cite = QLineEdit()
        self.cite.setPlaceholderText("Paper or dataset with a DOI or URL (empty: the U-Net paper)")
        self.sample = QComboBox()
        self.sample.addItem(TRAINING_PATCHES)
        self.sample.addItems([layer.name for layer in viewer.layers if isinstance(layer, Image)])
        self.sample.setToolTip("The image the package's test tensors and cover are made from")
        self.out = QLineEdit(str(default_package_path(entry)))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out, 1)
        out_row.addWidget(browse)
        self.overwrite = QCheckBox("Replace a package exported before")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(12)
        self.status = QLabel(
            "Writes Keras, TensorFlow SavedModel and ONNX weights, test tensors, a cover and a README, and "
            "validates the package with bioimageio.spec."
        )
        self.status.setWordWrap(True)
        self.export_button = QPushButton("Export")
        self.export_button.setDefault(True)
        self.export_button.clicked.connect(self.export)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.job.stop)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addWidget(self.export_button, 2)
        buttons.addWidget(self.stop_button, 1)
        buttons.addWidget(close, 1)
        form = QFormLayout()
        form.addRow("Authors", self.authors)
        form.addRow("Licence", self.license)
        form.addRow("Citation", self.cite)
        form.addRow("Test image", self.sample)
        form.addRow("Package", out_row)
        form.addRow(self.overwrite)
        heading = QLabel(f"<b>Export {entry.label} for bioimage.io</b> (deepImageJ, QuPath, ilastik, Python)")
        heading.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(heading)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.setMinimumWidth(520)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "bioimage.io package", self.out.text(), "bioimage.io packages (*.zip)")
        if path:
            self.out.setText(path if path.lower().endswith(".zip") else f"{path}.zip")

    def _sample(self) -> Any:
        name = self.sample.currentText()
        if name == TRAINING_PATCHES or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        return preview_plane(layer.data, bool(layer.rgb)).image

    def export(self) -> bool:
        """Check the entries (a message, no job, when one is wrong), then export in the worker."""
        if self.job.running:
            show_info("An export is already running.")
            return False
        try:
            authors = [parse_author(a) for a in self.authors.text().split(";") if a.strip()]
            cite = [parse_cite(self.cite.text())] if self.cite.text().strip() else []
            license = check_license(self.license.currentText().strip())
            _, dest = check_export(
                self.entry.path, self.out.text().strip(), license=license, authors=authors, overwrite=self.overwrite.isChecked()
            )
            request = export_request(self.entry, dest, authors, license, cite, self.overwrite.isChecked(), self._sample())
        except (NapariUNetError, ValueError) as exc:
            self.status.setText(str(exc))
            show_error(str(exc))
            return False
        self._running(True, f"Exporting {self.entry.label} to {dest}…")
        self.job.start(request, self._on_event, self._on_finished)
        return True

    def _running(self, running: bool, text: str) -> None:
        self.export_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.status.setText(text)
        if running:
            self.progress.setValue(0)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Progress):
            self.progress.setValue(int(1000 * event.fraction))
            if event.text:
                self.status.setText(event.text)

    def _on_finished(self, job: WorkerJob) -> None:
        if job.failure is not None:
            self._running(False, "Not exported.")
            self.status.setText(failure_message(job.failure, "The export"))
            show_error(failure_message(job.failure, "The export"))
        elif job.state == JobState.STOPPED or not isinstance(job.result, ExportOutcome):
            self._running(False, "Export stopped; no package was written.")
        else:
            self.outcome = job.result
            self.progress.setValue(1000)
            text = f"Exported {self.entry.label} to {job.result.path} in {job.result.seconds:.0f} s."
            self._running(False, text)
            show_info(text)

    def closeEvent(self, event: Any) -> None:
        self.job.stop()  # Stop takes effect within about 2 s; nothing half-written is left
        super().closeEvent(event)


def open_export_dialog(owner: Any, entry: ModelEntry | None) -> ExportDialog | None:
    """Show the export dialog for `entry` from a JobWidget `owner` (which stops the job when it closes)."""
    if entry is None or entry.path is None:
        show_error("Pick a model first: train one, or load one with Load….")
        return None
    if entry.path.is_file():
        show_error(f"{entry.label} is a package already ({entry.path}); share that file.")
        return None
    job = getattr(owner, "export_job", None)
    if job is None:
        job = owner.export_job = owner.new_job("bioimage.io export")
    dialog = ExportDialog(entry, owner.viewer, job, owner)
    owner._watch_window()  # closing napari stops the export first, as for every job of the widget
    dialog.show()
    return dialog
