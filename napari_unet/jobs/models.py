"""What the viewer knows of a saved model, read from its ``metadata.json`` (no TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

from napari_unet.core.errors import BundleError
from napari_unet.core.versions import METADATA_FILE, is_version_dir, version_number

from .messages import ModelInfo


def model_info(version_dir: Path | str) -> ModelInfo:
    """The ModelInfo of a version folder or a bioimage.io package; BundleError when it cannot be read."""
    from napari_unet.core.bioimageio_import import describe_package, is_package

    version_dir = Path(version_dir)
    if is_package(version_dir):
        return info_from_metadata(describe_package(version_dir).metadata, version_dir)
    try:
        meta = json.loads((version_dir / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise BundleError(f"Cannot read the model description in {version_dir}: {exc}") from exc
    return info_from_metadata(meta, version_dir)


def info_from_metadata(meta: object, path: Path | str) -> ModelInfo:
    """The ModelInfo of a model at `path` (a version folder or a .zip) with metadata `meta`."""
    path = Path(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise BundleError(f"{path} has no valid napari-unet model description ({METADATA_FILE}).")
    version = version_number(path) if is_version_dir(path) else meta.get("version")
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    return ModelInfo(
        path=str(path),
        name=str(meta.get("name") or path.parent.name),
        version=int(version) if isinstance(version, int) else None,
        config=meta["config"],
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        parent=meta.get("parent") if isinstance(meta.get("parent"), str) else None,
        created=str(meta.get("created") or ""),
    )
