"""The channel rule for sets that mix gray and colour images (no TensorFlow, no Qt).

Policy (docs/reliability.md):

- **Training a new model** on a set that mixes gray and RGB(A) images: the majority decides.
  When most images are gray, RGB images are converted to gray by luminance (ITU-R BT.601:
  0.299 R + 0.587 G + 0.114 B); otherwise (a tie included) gray images are replicated to 3 channels.
  RGBA drops its alpha channel. Any other mix (e.g. 2-channel with gray) is refused.
- **Predicting or fine-tuning** with an existing model: the model's ``in_channels`` decides, and each
  image is converted to it when that is one of the conversions above; otherwise it is refused.
- Whatever was converted is said (the CLI prints it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from .errors import InputError

LUMINANCE = (0.299, 0.587, 0.114)


def _kind(channels: int) -> int:
    """1 for gray, 3 for colour (RGB or RGBA), else the count itself."""
    return 3 if channels in (3, 4) else int(channels)


def choose_channels(channel_counts: Iterable[int]) -> int:
    """The channel count a new model trained on images with these channel counts gets."""
    counts = Counter(_kind(c) for c in channel_counts)
    if not counts:
        raise InputError("No images to choose a channel count from.")
    if len(counts) == 1:
        return next(iter(counts))
    if set(counts) == {1, 3}:
        return 1 if counts[1] > counts[3] else 3
    shown = ", ".join(f"{n} image(s) with {c} channel(s)" for c, n in sorted(counts.items()))
    raise InputError(
        f"The images mix channel counts that cannot be converted into each other ({shown}); "
        "train on images with the same number of channels (gray and RGB can be mixed)."
    )


def to_channels(image: np.ndarray, channels: int, rgb: bool) -> np.ndarray:
    """Convert an image to ``channels`` channels.

    ``rgb`` says whether the image's last axis is its channel axis (``(..., C)``); otherwise it is
    gray (``(H, W)`` or a stack ``(N, H, W)``). The result is gray without a channel axis when
    ``channels == 1`` and channel-last ``(..., channels)`` otherwise. Luminance keeps the dtype's
    range (float32 result for integer input).
    """
    image = np.asarray(image)
    have = int(image.shape[-1]) if rgb else 1
    if have == channels:
        return image[..., 0] if rgb and channels == 1 else image
    if channels == 1 and have in (3, 4):
        weights = np.asarray(LUMINANCE, dtype=np.float64 if image.dtype == np.float64 else np.float32)
        return image[..., :3] @ weights
    if channels == 3 and have == 4:
        return image[..., :3]
    if channels == 3 and have == 1:
        gray = image[..., 0] if rgb else image
        return np.repeat(gray[..., None], 3, axis=-1)
    raise InputError(
        f"An image with {have} channel(s) cannot be converted to {channels} channel(s); "
        f"use images with {channels} channel(s) or train a new model."
    )


def describe_conversion(have: int, channels: int) -> str:
    """Human words for what :func:`to_channels` does, e.g. 'RGB converted to gray (luminance)'."""
    names = {1: "gray", 3: "RGB", 4: "RGBA"}
    src = names.get(have, f"{have}-channel")
    if have == channels:
        return f"{src}, used as is"
    if channels == 1:
        return f"{src} converted to gray (luminance)"
    if have == 1:
        return "gray replicated to 3 channels"
    return f"{src} converted to RGB (alpha dropped)"
