"""One image-axes contract for files (no TensorFlow, no Qt).

An image's axes come, in this order, from an explicit ``axes`` (the CLI's ``--axes``), from
ImageJ or OME metadata, from a TIFF's RGB photometric tag or the file format (PNG/JPEG are
channels-last), and last from its shape when only one reading makes sense. Shapes that can be
read more than one way, such as ``(H, W, 1)``, ``(H, W, 2)`` or ``(3, H, W)``, are refused with
the ``--axes`` value that resolves them. A truncated ImageJ stack is refused.

Axis letters: ``Y`` and ``X`` (the plane), ``C`` or ``S`` (channels), anything else (``Z``, ``T``,
``Q``, ``I``...) a plane axis: stacks are treated plane by plane.

:func:`to_core` gives the layout the core reads unambiguously: ``(H, W)`` for one gray plane,
else ``(N, H, W, C)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, InputError

#: The ``--axes`` values the CLI documents; any string of the letters below naming Y and X works.
AXES_CHOICES = ("YX", "YXC", "CYX", "ZYX", "TYX", "ZYXC", "TYXC")
_LETTERS = set("TZCYXSQIRHEV")
_CHANNEL = set("CS")
_HINT = "--axes YXC (channels last), --axes CYX (channels first) or --axes ZYX (a stack of planes)"


def parse_axes(text: str | None) -> str | None:
    """Check an axes string such as ``YXC``; returns it upper-cased (``S`` read as ``C``)."""
    if text is None:
        return None
    axes = str(text).strip().upper().replace("S", "C")
    if (
        not axes
        or any(a not in _LETTERS for a in axes)
        or len(set(axes)) != len(axes)
        or axes.count("Y") != 1
        or axes.count("X") != 1
        or axes.index("Y") > axes.index("X")
    ):
        raise ConfigError(
            f"--axes {text!r} is not an axes string; use one of {', '.join(AXES_CHOICES)} "
            "(letters Y and X for the plane, C for channels, Z or T for a stack)."
        )
    return axes


@dataclass(frozen=True)
class Layout:
    """How one image's axes were read."""

    shape: tuple[int, ...]
    axes: str  # one letter per axis of `shape`, C for channels
    source: str  # "--axes", "ImageJ metadata", "OME metadata", "TIFF RGB tag", "file format", "shape"

    @property
    def channels(self) -> int:
        return int(self.shape[self.axes.index("C")]) if "C" in self.axes else 1

    @property
    def planes(self) -> int:
        return int(math.prod(n for n, a in zip(self.shape, self.axes) if a not in "YXC"))

    def describe(self, name: str) -> str:
        what = f"{self.planes} plane(s), each predicted on its own" if self.planes > 1 else "one plane"
        return f"{name}: shape {self.shape} read as {self.axes} (from {self.source}): {what}, {self.channels} channel(s)"


def infer_layout(shape: tuple[int, ...], name: str = "image", axes: str | None = None) -> Layout:
    """Layout from an explicit ``axes`` or from the shape alone; raises InputError when ambiguous."""
    shape = tuple(int(n) for n in shape)
    if axes is not None:
        axes = parse_axes(axes)
        if len(axes) != len(shape):
            raise InputError(
                f"{name} has {len(shape)} axes (shape {shape}) but --axes {axes} names {len(axes)}; "
                f"give one letter per axis."
            )
        return Layout(shape, axes, "--axes")
    n = len(shape)
    if n == 2:
        return Layout(shape, "YX", "shape")
    if n == 3:
        a, b, c = shape
        if c in (3, 4) and a > 4 and b > 4:
            return Layout(shape, "YXC", "shape (last axis of 3 or 4 read as colour)")
        if min(shape) > 4:
            return Layout(shape, "ZYX", "shape (a stack of planes)")
    if n == 4:
        a, b, c, d = shape
        if d in (3, 4) and b > 4 and c > 4:
            return Layout(shape, "ZYXC", "shape (a stack of colour planes)")
    if n < 2:
        raise InputError(f"{name} has shape {shape}; an image needs at least two axes (Y and X).")
    raise InputError(
        f"{name} has shape {shape}, which can be read more than one way; say which axis is which with "
        f"{_HINT}" + (" (one letter per axis)." if n != 3 else ".")
    )


def _metadata_layout(tif, series, name: str) -> Layout | None:
    axes = series.axes.upper()
    shape = tuple(series.shape)
    if len(axes) != len(shape):
        return None
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        expected = meta.get("images")
        held = math.prod(n for n, a in zip(shape, axes) if a not in "YXS")
        if isinstance(expected, int) and expected > held:
            raise InputError(
                f"{name} is a truncated ImageJ stack: its metadata lists {expected} planes but the file "
                f"holds {held}. Re-export the stack from ImageJ/Fiji or restore the file."
            )
        source = "ImageJ metadata"
    elif tif.is_ome:
        source = "OME metadata"
    elif "S" in axes:
        source = "TIFF RGB tag"
        axes = "".join(a if a in "YXS" else "Z" for a in axes)
    else:
        return None
    channel_axes = [i for i, a in enumerate(axes) if a in _CHANNEL and shape[i] > 1]
    if len(channel_axes) > 1:
        raise InputError(
            f"{name} has two channel axes ({axes}, shape {shape}); napari-unet takes one. Merge them first."
        )
    # Drop singleton channel axes so that at most one C remains; S becomes C.
    keep = [i for i, a in enumerate(axes) if not (a in _CHANNEL and i not in channel_axes)]
    shape = tuple(shape[i] for i in keep)
    axes = "".join("C" if axes[i] in _CHANNEL else axes[i] for i in keep)
    if "Y" not in axes or "X" not in axes:
        return None
    return Layout(shape, axes, source)


def read_image(path: str | Path, axes: str | None = None) -> tuple[np.ndarray, Layout]:
    """Read an image file and say how its axes were read; raises InputError for unusable files."""
    path = Path(path)
    array, layout = _read_file(path, lambda tif, series: None if axes is not None else _metadata_layout(tif, series, path.name))
    if layout is None and axes is None and not _is_tiff(path) and array.ndim == 3 and array.shape[-1] in (1, 2, 3, 4):
        layout = Layout(tuple(array.shape), "YXC", "file format")
    if layout is not None and layout.shape != tuple(array.shape):
        array = array.reshape(layout.shape)  # only singleton channel axes were dropped
    if layout is None:
        layout = infer_layout(array.shape, path.name, axes)
    return array, layout


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def _read_file(path: Path, tiff_layout: Callable[[Any, Any], Layout | None]) -> tuple[np.ndarray, Layout | None]:
    """The array of an image file and, for a TIFF, `tiff_layout(tif, series)`; InputError when unusable."""
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file.")
    layout = None
    try:
        if _is_tiff(path):
            import tifffile

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # truncation is reported by `tiff_layout`, not as a library warning
                with tifffile.TiffFile(path) as tif:
                    if not tif.series:
                        raise InputError(f"{path.name} holds no image.")
                    layout = tiff_layout(tif, tif.series[0])
                    array = np.asarray(tif.series[0].asarray())
        else:
            import imageio.v3 as iio

            array = np.asarray(iio.imread(path))
    except InputError:
        raise
    except Exception as exc:  # any reader failure is the file's fault here
        raise InputError(f"Cannot read {path.name}: {exc}") from exc
    return array, layout


def to_core(array: np.ndarray, layout: Layout) -> np.ndarray:
    """``(H, W)`` for one gray plane, else ``(N, H, W, C)`` with all plane axes flattened into N."""
    axes = layout.axes
    order = [i for i, a in enumerate(axes) if a not in "YXC"] + [axes.index("Y"), axes.index("X")]
    if "C" in axes:
        order.append(axes.index("C"))
    arr = np.transpose(np.asarray(array), order)
    h, w = arr.shape[-3:-1] if "C" in axes else arr.shape[-2:]
    arr = arr.reshape(layout.planes, h, w, layout.channels)
    if layout.planes == 1 and layout.channels == 1:
        return arr[0, :, :, 0]
    return arr


def read_labels(path: str | Path) -> np.ndarray:
    """Read a label image: ``(H, W)`` or a stack ``(N, H, W)`` (singleton axes dropped)."""
    path = Path(path)
    # An ImageJ stack's metadata is read only to refuse a truncated one.
    array, _ = _read_file(path, lambda tif, series: _metadata_layout(tif, series, path.name) if tif.is_imagej else None)
    if array.ndim > 2:
        squeezed = np.squeeze(array)
        array = squeezed if squeezed.ndim >= 2 else array
    return array
