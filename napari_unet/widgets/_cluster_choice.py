"""Where a widget's batch prediction runs: the compute worker itself, a LocalCluster of N worker
processes, or an existing dask scheduler. The choice is remembered (`_prefs.py`); the dashboard
link of a running batch is shown under it."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_unet.core.errors import InputError

from . import _prefs

NONE, LOCAL, SCHEDULER = "this computer's worker", "local cluster", "dask scheduler"
#: Default worker processes of a local cluster.
DEFAULT_WORKERS = 2


class ClusterChoice(QWidget):
    """Cluster: none / local N workers / scheduler address; `value()` is what a request carries."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.kind = QComboBox()
        self.kind.addItems([NONE, LOCAL, SCHEDULER])
        self.kind.setToolTip("Run the batch prediction on a dask.distributed cluster (one task per image).")
        self.workers = QSpinBox()
        self.workers.setRange(1, 64)
        self.workers.setValue(DEFAULT_WORKERS)
        self.workers.setSuffix(" workers")
        self.address = QLineEdit()
        self.address.setPlaceholderText("tcp://host:8786")
        self.dashboard = QLabel("")
        self.dashboard.setOpenExternalLinks(True)
        self.dashboard.setWordWrap(True)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        for widget in (self.kind, self.workers, self.address):
            row.addWidget(widget)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.dashboard)
        self.set_value(_prefs.load(key))
        self.kind.currentTextChanged.connect(self._changed)
        self.workers.valueChanged.connect(self._changed)
        self.address.editingFinished.connect(self._changed)

    def value(self) -> str | None:
        """None (no cluster), ``local:N`` or a scheduler address; InputError for an address that is not one."""
        from napari_unet.core.cluster import check_address

        kind = self.kind.currentText()
        if kind == LOCAL:
            return f"local:{self.workers.value()}"
        if kind == SCHEDULER:
            if not self.address.text().strip():
                raise InputError("Type the dask scheduler's address (e.g. tcp://10.0.0.5:8786), or choose no cluster.")
            return check_address(self.address.text())
        return None

    def set_value(self, value: str | None) -> None:
        """Show a remembered or given value (unknown values mean no cluster)."""
        text = str(value or "")
        if text.startswith("local:") and text[6:].isdigit():
            self.kind.setCurrentText(LOCAL)
            self.workers.setValue(int(text[6:]))
        elif text:
            self.kind.setCurrentText(SCHEDULER)
            self.address.setText(text)
        else:
            self.kind.setCurrentText(NONE)
        self._show_fields()

    def show_dashboard(self, text: str) -> None:
        """The running batch's dashboard (a link when it is one), or nothing."""
        link = text.split(" ", 2)[-1] if text else ""
        self.dashboard.setText(f'dask dashboard: <a href="{link}">{link}</a>' if link.startswith("http") else text)

    def _show_fields(self) -> None:
        kind = self.kind.currentText()
        self.workers.setVisible(kind == LOCAL)
        self.address.setVisible(kind == SCHEDULER)

    def _changed(self, *_args: object) -> None:
        self._show_fields()
        try:
            _prefs.save(self.key, self.value())
        except InputError:
            pass  # an address being typed: saved once it is one
