"""Work a widget defers to a later event-loop turn, so that no single turn is long."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QTimer

#: How long deferred work waits. Not 0: a zero timer runs before the timers, input and paint already
#: due, which then wait for both pieces of work as if they were one turn.
LATER_MS = 20


def later(callback: Callable[[], object]) -> None:
    """Run `callback` in a later event-loop turn (after what is due now)."""
    QTimer.singleShot(LATER_MS, callback)
