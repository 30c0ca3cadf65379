"""Reading and writing image files (TIFF, PNG, JPEG) and pairing images with label files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tifffile

from .errors import InputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file; raises InputError for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file.")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return np.asarray(tifffile.imread(path))
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    except Exception as exc:  # any reader failure is the file's fault here
        raise InputError(f"Cannot read {path.name}: {exc}") from exc


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Write a label image as zlib-compressed TIFF, atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tifffile.imwrite(tmp, np.asarray(labels), compression="zlib")
    tmp.replace(path)
    return path


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Image files named directly or found (not recursively) in the named folders, sorted."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()))
        elif p.is_file():
            found.append(p)
        else:
            raise InputError(f"{p} does not exist.")
    if not found:
        raise InputError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}.")
    return found


def pair_files(images: list[Path], labels: list[Path]) -> list[tuple[Path, Path]]:
    """Match label files to image files by file stem (e.g. `a.tif` with `a.tif` or `a.png`)."""
    by_stem = {p.stem: p for p in labels}
    pairs, missing = [], []
    for image in images:
        match = by_stem.get(image.stem)
        if match is None:
            missing.append(image.name)
        else:
            pairs.append((image, match))
    if missing:
        raise InputError(
            f"No label file with the same name for: {', '.join(missing[:5])}"
            + (" …" if len(missing) > 5 else "")
            + ". Label files must share the image's file name."
        )
    return pairs
