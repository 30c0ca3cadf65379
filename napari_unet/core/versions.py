"""Version folders of a model, without TensorFlow: naming, publishing, checkpoints, the current version.

A model folder ``<root>/<name>/`` holds ``v001/``, ``v002/``, ... Each version is written in a hidden
temporary folder and renamed into place (`publish`). A training job also keeps a *checkpoint*: a
complete version folder of its best epoch so far, in ``.checkpoint-<job>/``. If the job is killed, the
viewer's process (which never imports TensorFlow) promotes that checkpoint to the next version, so a
terminated training still keeps its best epoch. ``current.json`` records which version the user
works with (for example after a rollback), so the next session starts from it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

from .errors import BundleError

METADATA_FILE = "metadata.json"
CURRENT_FILE = "current.json"
REPLAY_DIR = "replay"
CHECKPOINT_PREFIX = ".checkpoint-"
#: Written last into a checkpoint: its presence means the folder is complete.
COMPLETE_MARK = ".complete"

_VERSION_RE = re.compile(r"^v(\d{3,})$")


def is_version_dir(path: Path | str) -> bool:
    return bool(_VERSION_RE.match(Path(path).name))


def list_versions(model_dir: Path | str) -> list[Path]:
    """Version folders ``vNNN`` of a model folder, oldest first (empty if there are none)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in model_dir.iterdir() if (m := _VERSION_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_version(model_dir: Path | str) -> Path | None:
    """Newest version folder of a model folder, or None."""
    versions = list_versions(model_dir)
    return versions[-1] if versions else None


def version_number(version_dir: Path | str) -> int:
    match = _VERSION_RE.match(Path(version_dir).name)
    if not match:
        raise BundleError(f"{version_dir} is not a version folder (expected a name like v001).")
    return int(match.group(1))


def next_version(model_dir: Path) -> int:
    versions = list_versions(model_dir)
    return version_number(versions[-1]) + 1 if versions else 1


def write_json(path: Path, data: object, default: object = None) -> None:
    """Write JSON and flush it to disk (callers rename the folder into place afterwards)."""
    try:
        text = json.dumps(data, indent=2, default=default)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise BundleError(f"Cannot store {path.name}: {exc}. Pass plain numbers, strings, lists and dicts.") from exc
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def publish(tmp: Path, model_dir: Path, version: int | None = None) -> Path:
    """Rename a finished folder to the first free ``vNNN`` at or above `version`; returns the new folder.

    The version number inside its ``metadata.json`` is rewritten when another writer took the number.
    """
    version = next_version(model_dir) if version is None else version
    for _ in range(10_000):
        target = model_dir / f"v{version:03d}"
        if not target.exists():
            _set_version(tmp, version)
            try:
                os.rename(tmp, target)  # atomic; fails if another writer published this number first
                (target / COMPLETE_MARK).unlink(missing_ok=True)
                return target
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not isinstance(exc, FileExistsError):
                    raise
        version = max(version + 1, next_version(model_dir))
    raise BundleError(f"Could not find a free version number in {model_dir}.")


def _set_version(folder: Path, version: int) -> None:
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        return
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("version") != version:
        meta["version"] = version
        write_json(meta_path, meta)


# ---------------------------------------------------------------- checkpoints of running jobs


def checkpoint_dir(model_dir: Path, job: str) -> Path:
    """Where job `job` keeps the complete version folder of its best epoch so far."""
    return Path(model_dir) / f"{CHECKPOINT_PREFIX}{job}"


def replace_checkpoint(tmp: Path, checkpoint: Path) -> None:
    """Make the finished folder `tmp` the job's checkpoint (the old one is removed after the swap)."""
    old = checkpoint.with_name(checkpoint.name + ".old")
    kept = checkpoint / REPLAY_DIR
    if not (tmp / REPLAY_DIR).exists() and kept.is_dir():
        os.rename(kept, tmp / REPLAY_DIR)  # one job's replay data does not change: carry it over
    (tmp / COMPLETE_MARK).touch()
    shutil.rmtree(old, ignore_errors=True)
    if checkpoint.exists():
        os.rename(checkpoint, old)
    os.rename(tmp, checkpoint)
    shutil.rmtree(old, ignore_errors=True)


def promote_checkpoint(model_dir: Path, job: str) -> Path | None:
    """Publish the job's checkpoint as the next version (None when it has none); cleans up after it."""
    checkpoint = checkpoint_dir(model_dir, job)
    old = checkpoint.with_name(checkpoint.name + ".old")
    # A swap interrupted between its two renames leaves only the old copy: that one is complete too.
    source = checkpoint if (checkpoint / COMPLETE_MARK).is_file() else old
    try:
        if not (source / COMPLETE_MARK).is_file():
            return None
        return publish(source, Path(model_dir))
    finally:
        discard_checkpoint(model_dir, job)


def discard_checkpoint(model_dir: Path, job: str) -> None:
    checkpoint = checkpoint_dir(model_dir, job)
    for path in (checkpoint, checkpoint.with_name(checkpoint.name + ".old")):
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- the version the user works with


def read_current(model_dir: Path | str) -> Path | None:
    """The version recorded as current (after a rollback, say), else the newest; None if none exists."""
    model_dir = Path(model_dir)
    try:
        name = json.loads((model_dir / CURRENT_FILE).read_text(encoding="utf-8")).get("current")
    except (OSError, ValueError, AttributeError):
        name = None
    if isinstance(name, str) and is_version_dir(name) and (model_dir / name).is_dir():
        return model_dir / name
    return latest_version(model_dir)


def write_current(version_dir: Path | str) -> None:
    """Record `version_dir` as its model's current version (atomically; failures only lose the hint)."""
    version_dir = Path(version_dir)
    tmp = version_dir.parent / f".{CURRENT_FILE}.tmp"
    try:
        write_json(tmp, {"current": version_dir.name})
        os.replace(tmp, version_dir.parent / CURRENT_FILE)
    except (OSError, BundleError):
        tmp.unlink(missing_ok=True)
