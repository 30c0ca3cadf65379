"""napari notifications for the widgets: core errors shown as is, surprises short with details logged."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from napari.utils.notifications import (
    Notification,
    NotificationSeverity,
    notification_manager,
    show_error,
    show_info,
    show_warning,
)

from napari_unet.core.errors import NapariUNetError
from napari_unet.jobs.messages import Failed

log = logging.getLogger("napari_unet.widgets")

__all__ = ["error_message", "failure_message", "log", "offer", "report", "show_error", "show_info", "show_warning"]


def error_message(exc: BaseException, doing: str) -> str:
    """The text to show for an exception raised while `doing` something (e.g. "Training")."""
    if isinstance(exc, NapariUNetError):
        return str(exc)
    return f"{doing} failed unexpectedly ({type(exc).__name__}: {exc}). Details are in the log."


def failure_message(failure: Failed, doing: str) -> str:
    """The text to show for a job that failed in the compute worker (its traceback is in the log)."""
    if failure.expected:
        return failure.message
    return f"{doing} failed unexpectedly ({failure.message}). Details are in the log."


def report(exc: BaseException, doing: str) -> str:
    """Show an error notification for `exc`; unexpected exceptions are logged with their traceback."""
    message = error_message(exc, doing)
    if not isinstance(exc, NapariUNetError):
        log.error("%s failed", doing, exc_info=(type(exc), exc, exc.__traceback__))
    show_error(message)
    return message


def offer(
    message: str,
    actions: Sequence[tuple[str, Callable[[], None]]],
    severity: NotificationSeverity = NotificationSeverity.WARNING,
) -> Notification:
    """A notification with buttons (e.g. "Use 64-pixel patches") that call the given functions."""
    notification = Notification(
        message, severity=severity, actions=[(text, _ignore_argument(fn)) for text, fn in actions]
    )
    notification_manager.dispatch(notification)
    return notification


def _ignore_argument(fn: Callable[[], None]) -> Callable[[object], None]:
    # napari calls an action with the notification's dialog as argument.
    return lambda _dialog: fn()
