"""Widget choices remembered between sessions: one small JSON file, written atomically.

``NAPARI_UNET_SETTINGS`` names the file (default ``~/.napari-unet/settings.json``). A missing or
unreadable file means the defaults; a failed write is not an error (the choice lasts the session).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

ENV_FILE = "NAPARI_UNET_SETTINGS"


def settings_file() -> Path:
    return Path(os.environ.get(ENV_FILE) or Path.home() / ".napari-unet" / "settings.json").expanduser()


def load(key: str, default: Any = None) -> Any:
    """The value remembered under `key`, or `default`."""
    try:
        values = json.loads(settings_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    return values.get(key, default) if isinstance(values, dict) else default


def save(key: str, value: Any) -> None:
    """Remember `value` under `key` (other keys are kept)."""
    path = settings_file()
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        values = values if isinstance(values, dict) else {}
    except (OSError, ValueError):
        values = {}
    values[key] = value
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".settings-", suffix=".json.tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(values, fh, indent=1)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
