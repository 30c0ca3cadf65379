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


def write_labels(path: str | Path, labels: np.ndarray, overwrite: bool = True, prefix: str | None = None) -> Path:
    """Write a label image as zlib-compressed TIFF through a temporary file that is always removed.

    Without ``overwrite`` an existing file is never replaced (OutputError, also an OSError).
    """
    from .outputs import write_atomic

    from .outputs import SOFTWARE

    arr = np.asarray(labels)
    write = lambda tmp: tifffile.imwrite(tmp, arr, compression="zlib", software=SOFTWARE)  # noqa: E731
    if prefix is None:
        return write_atomic(path, write, overwrite=overwrite)
    return write_atomic(path, write, overwrite=overwrite, prefix=prefix)


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
    """Match label files to image files by file stem (e.g. `a.tif` with `a.tif` or `a.png`).

    Refuses (InputError, with the list of conflicts) when a stem is ambiguous: two images or two
    label files share it, or an image is also given as its own label file.
    """
    _check_distinct(images, labels)
    by_stem: dict[str, list[Path]] = {}
    for p in labels:
        by_stem.setdefault(p.stem, []).append(p)
    image_stems: dict[str, list[Path]] = {}
    for p in images:
        image_stems.setdefault(p.stem, []).append(p)
    conflicts = [f"labels {', '.join(map(str, v))} all match {k!r}" for k, v in by_stem.items() if len(v) > 1 and k in image_stems]
    conflicts += [f"images {', '.join(map(str, v))} would share one label file" for k, v in image_stems.items() if len(v) > 1]
    _refuse_conflicts(conflicts)
    pairs, missing = [], []
    for image in images:
        match = by_stem.get(image.stem)
        if match is None:
            missing.append(image.name)
        else:
            pairs.append((image, match[0]))
    if missing:
        raise InputError(
            f"No label file with the same name for: {', '.join(missing[:5])}"
            + (" …" if len(missing) > 5 else "")
            + ". Label files must share the image's file name."
        )
    return pairs


def pair_inputs(image_args: Iterable[str | Path], label_args: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """Pair images with labels by relative path, as the CLI's ``--images ... --labels ...`` do.

    - one image file and one label file: they are a pair, whatever their names;
    - as many image folders as label folders: folder i pairs with folder i, by relative path
      (``d1/a.tif`` with ``l1/a.tif``, ``d2/a.tif`` with ``l2/a.tif``);
    - otherwise all files are pooled and paired by file name, refusing any name that is ambiguous.
    """
    image_args, label_args = [Path(p) for p in image_args], [Path(p) for p in label_args]
    images, labels = list_images(image_args), list_images(label_args)
    _check_distinct(images, labels)
    if len(image_args) == len(label_args) == len(images) == len(labels) == 1 and image_args[0].is_file() and label_args[0].is_file():
        return [(images[0], labels[0])]
    if len(image_args) == len(label_args) and all(p.is_dir() for p in (*image_args, *label_args)):
        pairs: list[tuple[Path, Path]] = []
        for i, l in zip(image_args, label_args):
            pairs.extend(pair_files(list_images([i]), list_images([l])))
        return pairs
    return pair_files(images, labels)


def _check_distinct(images: list[Path], labels: list[Path]) -> None:
    label_set = {p.resolve() for p in labels}
    both = [p for p in images if p.resolve() in label_set]
    if both:
        raise InputError(
            f"{', '.join(map(str, both[:3]))} is given both as an image and as its labels; "
            "--labels must name the label files, not the images."
        )


def _refuse_conflicts(conflicts: list[str]) -> None:
    if conflicts:
        raise InputError(
            "Cannot tell which label file belongs to which image: "
            + "; ".join(conflicts[:5])
            + (f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
            + ". Give each image folder its own label folder (--images d1 d2 --labels l1 l2), or rename the files."
        )
