"""A progress bar that repaints with the next frame instead of at once."""

from __future__ import annotations

from qtpy.QtWidgets import QProgressBar


class ProgressBar(QProgressBar):
    """`QProgressBar` whose `setValue` only schedules a repaint.

    `QProgressBar.setValue` repaints synchronously; in napari's window that flushes the window and
    with it draws the OpenGL canvas inside the caller's event-loop turn (50-200 ms with software
    OpenGL), on every progress event. Here the bar is drawn with the next regular paint.
    """

    def setValue(self, value: int) -> None:
        if value == self.value():
            return
        self.setUpdatesEnabled(False)  # no synchronous repaint; re-enabling posts an update
        try:
            super().setValue(value)
        finally:
            self.setUpdatesEnabled(True)
