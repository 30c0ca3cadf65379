"""Where model files live by default (no TensorFlow here: the widgets read it at start-up)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import InputError

ENV_MODEL_DIR = "NAPARI_UNET_MODEL_DIR"


def default_model_root() -> Path:
    """Where models live: ``$NAPARI_UNET_MODEL_DIR`` or ``~/.napari-unet/models``."""
    env = os.environ.get(ENV_MODEL_DIR)
    return Path(env).expanduser() if env else Path.home() / ".napari-unet" / "models"


def check_model_name(name: str) -> None:
    """Raise InputError when `name` cannot be a model folder name (checked before any training)."""
    bad = set('<>:"/\\|?*') | {"\0"}
    if not name or name.strip() != name or name.startswith(".") or any(c in bad for c in name):
        raise InputError(
            f"Model name {name!r} cannot be used as a folder name; use letters, digits, '-', '_' or '.' "
            "(not at the start)."
        )


def child_location(parent_path: Path | None, fallback_root: Path, name: str) -> tuple[Path, str]:
    """(root, name) for a fine-tuned child: beside its parent's `vNNN` versions, else `fallback_root/name`.

    A child of the shipped starter model goes to `fallback_root`: the installed package is never written.
    A child of a bioimage.io package goes to `fallback_root`, named after the package's file or folder.
    """
    if parent_path is not None and is_shipped(parent_path):
        return fallback_root, Path(parent_path).parent.name
    from .bioimageio_import import is_package, package_model_name

    if parent_path is not None and is_package(parent_path):
        return fallback_root, package_model_name(parent_path)
    if parent_path is not None and Path(parent_path).is_dir() and re.fullmatch(r"v\d{3,}", Path(parent_path).name):
        return Path(parent_path).parent.parent, Path(parent_path).parent.name
    return fallback_root, name


def is_shipped(path: Path | str) -> bool:
    """Whether `path` lies inside the installed package (the starter models): never written to."""
    from .starter import STARTER_ROOT

    try:
        Path(path).resolve().relative_to(STARTER_ROOT.resolve())
    except ValueError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    """Whether process `pid` may still run (another user's process counts; on Windows, always True)."""
    if pid <= 0:
        return False
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True
