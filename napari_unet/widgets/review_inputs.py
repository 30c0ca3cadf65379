"""The Review widget's choices: which images (a folder or image layers), the review folder, the model, the method."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_unet.core import review as rv
from napari_unet.core.errors import NapariUNetError

from ._cluster_choice import ClusterChoice
from .models_registry import ModelEntry, ModelRegistry
from .review_layers import OWN_LAYERS

METHOD_NAMES = {
    "tta": "flip + contrast changes (best, 4 passes)",
    "intensity": "contrast changes (3 passes)",
    "flip": "flip (2 passes)",
    "entropy": "entropy (fastest, 1 pass)",
}
FOLDER_SOURCE, LAYER_SOURCE = 0, 1


class ReviewInputs(QWidget):
    """The "Images" and "Model" boxes; follows the viewer's image layers and the session's model list."""

    def __init__(self, viewer: Any, registry: ModelRegistry) -> None:
        super().__init__()
        self.viewer = viewer
        self.registry = registry
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

        inputs = QGroupBox("Images")
        form = QFormLayout(inputs)
        self.source_combo = QComboBox()
        self.source_combo.addItems(["Folder of images", "Image layers"])
        form.addRow("Source", self.source_combo)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder with TIFF/PNG images")
        browse_images = self._browse("Folder of images to review", self.folder_edit)
        self.folder_row = _with_button(self.folder_edit, "Browse…", browse_images)
        form.addRow(self.folder_row)
        self.layer_list = QListWidget()
        self.layer_list.setMaximumHeight(90)
        self.layer_list.setToolTip("Check the image layers to review; each plane of a stack is one image.")
        self.layer_list.setVisible(False)
        form.addRow(self.layer_list)
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self.review_edit = QLineEdit()
        self.review_edit.setPlaceholderText("default: <images folder>/review")
        browse_review = self._browse("Review folder (new, or one to resume)", self.review_edit)
        form.addRow("Review folder", _with_button(self.review_edit, "Browse…", browse_review))
        self.folder_edit.textChanged.connect(self._suggest_review_folder)
        layout.addWidget(inputs)

        model_box = QGroupBox("Model")
        form = QFormLayout(model_box)
        self.model_combo = QComboBox()
        self.model_combo.currentIndexChanged.connect(self._on_model_picked)
        form.addRow("Session", self.model_combo)
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("model folder or version folder (v001)")
        browse_model = self._browse("Model folder, version folder or bioimage.io package folder", self.model_edit)
        form.addRow("Path", _with_button(self.model_edit, "Load…", browse_model))
        self.method_combo = QComboBox()
        for method, text in METHOD_NAMES.items():
            self.method_combo.addItem(text, method)
        self.method_combo.setToolTip(
            "How the per-image uncertainty is measured. Test-time augmentation ranks bad predictions first "
            "best (benchmarks/uncertainty_ranking.py) and costs 4 network passes per image; entropy costs 1."
        )
        form.addRow("Uncertainty", self.method_combo)
        self.cluster = ClusterChoice("review.cluster")
        form.addRow("Cluster", self.cluster)
        layout.addWidget(model_box)

        self._connections = [
            (self.viewer.layers.events.inserted, self.refresh_layers),
            (self.viewer.layers.events.removed, self.refresh_layers),
        ]
        for signal, slot in self._connections:
            signal.connect(slot)
        self.refresh_models()
        self.refresh_layers()

    # ------------------------------------------------------------------ choices
    @property
    def method(self) -> str:
        return str(self.method_combo.currentData() or rv.DEFAULT_METHOD)

    def _browse(self, title: str, edit: QLineEdit) -> Callable[[], None]:
        def browse() -> None:
            folder = QFileDialog.getExistingDirectory(self, title)
            if folder:
                edit.setText(folder)

        return browse

    def _on_source_changed(self, index: int) -> None:
        self.folder_row.setVisible(index == FOLDER_SOURCE)
        self.layer_list.setVisible(index == LAYER_SOURCE)

    def _suggest_review_folder(self, text: str) -> None:
        if text.strip() and (not self.review_edit.text() or self.review_edit.property("auto")):
            self.review_edit.setText(str(Path(text.strip()).expanduser() / "review"))
            self.review_edit.setProperty("auto", True)

    def refresh_models(self) -> None:
        """List the session's models; the current one fills the path."""
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

    def refresh_layers(self, *_: Any) -> None:
        """List the viewer's image layers (not the review's own), keeping the checks."""
        checked = self.checked_layers()
        self.layer_list.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image) and layer.name not in OWN_LAYERS:
                item = QListWidgetItem(layer.name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if layer.name in checked else Qt.CheckState.Unchecked)
                self.layer_list.addItem(item)

    def checked_layers(self) -> list[str]:
        items = [self.layer_list.item(i) for i in range(self.layer_list.count())]
        return [item.text() for item in items if item.checkState() == Qt.CheckState.Checked]

    def set_layers(self, names: list[str]) -> None:
        """Review these image layers (each plane of a stack becomes one image)."""
        self.source_combo.setCurrentIndex(LAYER_SOURCE)
        for i in range(self.layer_list.count()):
            item = self.layer_list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)

    # ------------------------------------------------------------------ what they mean
    def open_project(self) -> rv.ReviewProject:
        """Open (or start) the review folder; when it cannot be written, suggest one that can."""
        folder = self.review_edit.text().strip()
        if not folder:
            images = self.folder_edit.text().strip()
            if self.source_combo.currentIndex() == FOLDER_SOURCE and images:
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

    def add_inputs(self, project: rv.ReviewProject) -> None:
        """Add the chosen folder's images or the checked layers to the project (saved at once)."""
        if self.source_combo.currentIndex() == FOLDER_SOURCE:
            images = self.folder_edit.text().strip()
            if images:
                project.add_files([Path(images).expanduser()])
            return
        for name in self.checked_layers():
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

    def model_path(self, project: rv.ReviewProject | None) -> Path | None:
        """The model asked for: the path field, else the model that made the project's predictions."""
        text = self.model_edit.text().strip()
        if not text and project is not None and project.meta.get("model"):
            text = str(project.meta["model"])
            self.model_edit.setText(text)
        return Path(text).expanduser() if text else None

    def close_panel(self) -> None:
        """Stop following the viewer."""
        for signal, slot in self._connections:
            try:
                signal.disconnect(slot)
            except (RuntimeError, TypeError, ValueError):
                pass
        self._connections = []


def _with_button(edit: QLineEdit, text: str, slot: Callable[[], None]) -> QWidget:
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(edit)
    button = QPushButton(text)
    button.clicked.connect(slot)
    row.addWidget(button)
    return box


def _writable_alternative(folder: Path) -> Path:
    """A review folder in the user's home when the chosen one cannot be written."""
    name = folder.parent.name if folder.name == "review" else folder.name
    return Path.home() / "napari-unet-reviews" / (rv.safe_name(name) if name else "review")
