"""Image layouts and per-image percentile normalisation (recorded with the model)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import InputError


def check_image(image: Any, name: str = "image") -> None:
    """Raise InputError for arrays no model can use: empty, non-numeric, NaN or Inf."""
    arr = np.asarray(image) if not hasattr(image, "dtype") else image
    if arr.size == 0 or 0 in arr.shape:
        raise InputError(f"{name} is empty (shape {tuple(arr.shape)}).")
    if arr.dtype == bool:
        return
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{name} has dtype {arr.dtype}; use an integer or float image.")
    if np.issubdtype(arr.dtype, np.floating) and isinstance(arr, np.ndarray):
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            raise InputError(
                f"{name} has {bad} NaN or infinite pixel(s); replace them "
                "(for example with numpy.nan_to_num) before training or prediction."
            )


def channel_count(shape: tuple[int, ...], rgb: bool | None = None) -> int:
    """Channels of an image of this shape: a last axis of 3 or 4 on a >2D array is colour."""
    if rgb is None:
        rgb = len(shape) >= 3 and shape[-1] in (3, 4)
    return int(shape[-1]) if rgb else 1


def as_samples(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    in_channels: int | None = None,
    name: str = "image",
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Split an image (and labels) into 2D samples `(H, W, C)` and `(H, W)`.

    Accepted image layouts: `(H, W)`, `(H, W, C)` with C in 3/4 (or `in_channels`),
    `(N, H, W)` stacks and `(N, H, W, C)`. RGBA drops alpha when the model wants 3 channels.
    Labels must have the image's spatial shape, `(H, W)` or `(N, H, W)`.
    """
    image = np.asarray(image)
    check_image(image, name)
    if image.dtype == bool:
        image = image.astype(np.uint8)
    rgb = _is_channel_last(image.shape, in_channels)
    if image.ndim == 3 and not rgb and image.shape[-1] == 2:
        raise InputError(
            f"{name} has shape {image.shape}: two channels, or a stack of planes two pixels wide? "
            "Give a (H, W, C) image to a model with that many channels, or a (N, H, W) stack."
        )
    if image.ndim == 2:
        stack = image[None, :, :, None]
    elif image.ndim == 3:
        stack = image[None] if rgb else image[..., None]
    elif image.ndim == 4:
        if not rgb:
            raise InputError(
                f"{name} has shape {image.shape}; a 4D image must be (N, H, W, C) with channels last."
            )
        stack = image
    else:
        raise InputError(f"{name} has {image.ndim} dimensions; use a 2D image, RGB, or a stack of 2D images.")
    if in_channels is not None:
        stack = _match_channels(stack, in_channels, name)
    samples = [stack[i] for i in range(stack.shape[0])]
    if labels is None:
        return samples, None
    labels = np.asarray(labels)
    spatial = stack.shape[:3] if stack.shape[0] > 1 else stack.shape[1:3]
    if labels.ndim == 2 and stack.shape[0] == 1:
        label_list = [labels]
    elif labels.ndim == 3 and labels.shape[0] == stack.shape[0]:
        label_list = [labels[i] for i in range(labels.shape[0])]
    else:
        label_list = []
    if not label_list or label_list[0].shape != stack.shape[1:3]:
        raise InputError(
            f"The labels for {name} have shape {labels.shape} but the image's spatial shape is "
            f"{tuple(spatial)}; labels must cover the image pixel for pixel."
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise InputError(f"The labels for {name} are not whole numbers (dtype {labels.dtype}).")
    return samples, label_list


def _is_channel_last(shape: tuple[int, ...], in_channels: int | None) -> bool:
    if len(shape) < 3:
        return False
    if len(shape) == 4:
        return True
    if in_channels is not None and in_channels > 1:
        return shape[-1] == in_channels or (in_channels == 3 and shape[-1] == 4)
    # A last axis of 3 or 4 on a tall image is colour, even for a one-channel model (which then
    # gets a clear channel-count error instead of a stack of thin slices). A last axis of 1 is a
    # channel axis: planes one pixel wide are never what was meant.
    return (shape[-1] in (3, 4) and shape[0] > 4) or shape[-1] == 1


def _match_channels(stack: np.ndarray, in_channels: int, name: str) -> np.ndarray:
    channels = stack.shape[-1]
    if channels == in_channels:
        return stack
    if channels == 4 and in_channels == 3:
        return stack[..., :3]
    if in_channels == 3 and channels == 1:
        return np.repeat(stack, 3, axis=-1)
    raise InputError(
        f"{name} has {channels} channel(s) but the model expects {in_channels}; "
        "pick an image with the model's channel count or train a new model."
    )


def percentiles(image: np.ndarray, low: float, high: float, max_pixels: int = 4_000_000) -> tuple[float, float]:
    """Low and high percentiles of an image, on a strided subsample for large arrays."""
    flat = np.asarray(image).reshape(-1)
    if flat.size > max_pixels:
        flat = flat[:: flat.size // max_pixels + 1]
    # float64 for float64 input: float32 turns 1e300 into inf (and loses tiny ranges near large offsets).
    work = np.float64 if flat.dtype == np.float64 or flat.dtype.itemsize > 8 else np.float32
    lo, hi = np.percentile(flat.astype(work, copy=False), [low, high])
    return float(lo), float(hi)


def normalize(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, bounds: tuple[float, float] | None = None
) -> np.ndarray:
    """Map the image's `low`..`high` percentiles to 0..1 (float32); constant images map to 0.

    `bounds` gives precomputed percentile values (for tiles or chunks of a larger image).
    """
    lo, hi = bounds if bounds is not None else percentiles(image, low, high)
    lo, hi = float(lo), float(hi)
    scale = hi - lo
    # A range is flat only relative to the values' magnitude: 1e-16-scaled or 1e300-scaled floats
    # are ordinary images. Outside float32's range the arithmetic is done in float64.
    magnitude = max(abs(lo), abs(hi))
    flat = not (math.isfinite(scale) and scale > 0 and scale > magnitude * 1e-9)
    arr = np.asarray(image)
    if flat and magnitude > 1e30:
        return np.zeros(arr.shape, np.float32)
    if magnitude > 1e30 or (not flat and scale < 1e-30):
        out64 = (arr.astype(np.float64) - lo) / scale
        return out64.astype(np.float32)
    out = np.asarray(arr, dtype=np.float32) - np.float32(lo)
    if not flat:
        out *= np.float32(1.0 / scale)
    else:
        out[...] = 0.0
    return out


def normalize_sample(sample: np.ndarray, data: Any) -> np.ndarray:
    """The network input for one raw `(H, W, C)` sample, by the model's rule (`cfg.data`).

    napari-unet's own models use percentile normalisation (`norm_low`, `norm_high`); a model imported
    from a bioimage.io package uses the pre-processing steps its package declares.
    """
    if getattr(data, "preprocessing", None):
        from .preprocessing import apply

        return apply(data.preprocessing, sample)
    return normalize(sample, data.norm_low, data.norm_high)
