"""The Review widget's table: one row per image with its scores and status, worst first."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from napari_unet.core import review as rv

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
NAME_ROLE = Qt.ItemDataRole.UserRole  # the full image name; the cell shows it without the shared prefix
COL_UNCERTAINTY, COL_STATUS = 4, 6
STATUS_COLOURS = {"accepted": "#4caf50", "corrected": "#2196f3", "rejected": "#f44336", "error": "#ff9800"}


class _SortItem(QTableWidgetItem):
    """A table cell that sorts by a key (numbers numerically, missing values last)."""

    def __init__(self, text: str, key: Any) -> None:
        super().__init__(text)
        self.key = key
        self.setFlags(self.flags() & ~Qt.ItemFlag.ItemIsEditable)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        a, b = self.key, getattr(other, "key", None)
        if a is None or b is None:
            # Missing values (not predicted, or errors) go to the bottom in both sort orders.
            table = self.tableWidget()
            descending = (
                table is not None and table.horizontalHeader().sortIndicatorOrder() == Qt.SortOrder.DescendingOrder
            )
            return (a is None and b is not None) if descending else (a is not None and b is None)
        return a < b


class ReviewTable(QTableWidget):
    """The review's images, sorted by uncertainty (highest first) unless the user sorts otherwise."""

    #: The user selected the row of this image.
    picked = Signal(str)

    def __init__(self) -> None:
        super().__init__(0, len(COLUMNS))
        self._rows: dict[str, QTableWidgetItem] = {}
        self._prefix = ""
        self.setHorizontalHeaderLabels(COLUMNS)
        for col, tip in enumerate(COLUMN_TIPS):
            self.horizontalHeaderItem(col).setToolTip(tip)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # image names often differ only at the end
        self.setWordWrap(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.setMinimumHeight(220)
        self.setSortingEnabled(True)
        self.sortItems(COL_UNCERTAINTY, Qt.SortOrder.DescendingOrder)
        self.itemSelectionChanged.connect(self._on_selection)

    def fill(self, project: rv.ReviewProject) -> None:
        """One row per image of the project."""
        self.setSortingEnabled(False)
        self.setRowCount(0)
        self._rows.clear()
        self._prefix = _common_prefix(project.names)
        for name in project.names:
            row = self.rowCount()
            self.insertRow(row)
            self._set_row(row, project.item(name))
        self.setSortingEnabled(True)

    def update_row(self, item: rv.ReviewItem) -> None:
        """Show an image's new scores or status; the selected row stays selected after re-sorting."""
        cell = self._rows.get(item.name)
        if cell is None:
            return
        selected = self.selected_name()
        self.setSortingEnabled(False)
        self.blockSignals(True)
        try:
            self._set_row(self.row(cell), item)
            self.setSortingEnabled(True)
            if selected is not None:
                self.selectRow(self.row_of(selected))
        finally:
            self.blockSignals(False)

    def row_names(self) -> list[str]:
        """Image names in table order."""
        return [self.item(row, 0).data(NAME_ROLE) for row in range(self.rowCount())]

    def row_of(self, name: str) -> int:
        """The row showing this image (-1 if none)."""
        cell = self._rows.get(name)
        return self.row(cell) if cell is not None else -1

    def selected_name(self) -> str | None:
        rows = self.selectionModel().selectedRows()
        return self.item(rows[0].row(), 0).data(NAME_ROLE) if rows else None

    def select_name(self, name: str) -> None:
        """Highlight this image's row (without `picked`: the caller shows it)."""
        row = self.row_of(name)
        if row >= 0:
            self.blockSignals(True)
            try:
                self.selectRow(row)
            finally:
                self.blockSignals(False)

    def _on_selection(self) -> None:
        name = self.selected_name()
        if name is not None:
            self.picked.emit(name)

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
        colour = STATUS_COLOURS.get(item.status)
        if colour:
            cells[COL_STATUS].setForeground(QColor(colour))
        tip = item.name + (f"\n{item.error}" if item.error else f"\nmodel {item.model}" if item.model else "")
        for col, cell in enumerate(cells):
            cell.setToolTip(tip)
            self.setItem(row, col, cell)
        cells[0].setData(NAME_ROLE, item.name)
        self._rows[item.name] = cells[0]


def _common_prefix(names: list[str]) -> str:
    """The prefix all names share, cut after its last separator (e.g. "dsb2018_s1test_")."""
    if len(names) < 2:
        return ""
    prefix = os.path.commonprefix(names)
    cut = max(prefix.rfind(c) for c in "_-. ")
    return prefix[: cut + 1] if cut >= 0 else ""


def _short(name: str, prefix: str) -> str:
    return "…" + name[len(prefix) :] if prefix and name.startswith(prefix) and len(name) > len(prefix) else name
