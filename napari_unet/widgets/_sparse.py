"""The "Sparse labels" control of the Train and Fine-tune widgets (see core.targets for the meaning)."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSpinBox, QWidget

from napari_unet.core.config import DEFAULT_BACKGROUND_LABEL

SPARSE_HELP = (
    "Sparse labels: only painted pixels count. 0 = not annotated (ignored), the background label = "
    "painted background, other values = objects (or class ids). Instances learn the boundary only "
    "where both sides are painted."
)


class SparseLabels(QWidget):
    """A checkbox "Sparse labels (0 = not annotated)" and the background label value."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.check = QCheckBox("Sparse labels (0 = not annotated)")
        self.check.setToolTip(SPARSE_HELP)
        self.background = QSpinBox()
        self.background.setRange(1, 2**31 - 1)
        self.background.setValue(DEFAULT_BACKGROUND_LABEL)
        self.background.setToolTip("Label value you paint background with (sparse labels only)")
        self.background.setEnabled(False)
        self.check.toggled.connect(self.background.setEnabled)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.check)
        row.addWidget(QLabel("background ="))
        row.addWidget(self.background)

    @property
    def sparse(self) -> bool:
        return self.check.isChecked()

    def data_values(self) -> dict[str, object]:
        """The `data` section entries of a Config."""
        return {"sparse": self.sparse, "background_label": self.background.value()}

    def background_label(self) -> int | None:
        """The background label when sparse, else None."""
        return self.background.value() if self.sparse else None
