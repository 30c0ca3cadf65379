"""Training data: pairs -> normalised samples, validation split, patch sampling, tf.data pipelines.

Sampling happens in numpy on pre-normalised float32 images (slicing plus cheap views for the
flips and rotations), a whole batch per Python call, so the pipeline costs little CPU next to
the network on a 2-core machine. Images smaller than a patch are padded (image: reflection,
target: `IGNORE_TARGET`), so padding never counts in loss or metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

from .config import IGNORE_TARGET, Config, DataConfig
from .errors import InputError
from .normalize import as_samples, normalize_sample
from .targets import dense_labels, labels_to_target

INTENSITY_SCALE = (0.75, 1.25)  # random multiplicative range of the image (image only)
INTENSITY_SHIFT = (-0.1, 0.1)  # random additive range, in units of the normalised 0..1 range
ELASTIC_GRID = 4  # control points per side of the random displacement field
ELASTIC_STRENGTH = 0.04  # displacement standard deviation, as a fraction of the patch size


@dataclass
class TrainingPair:
    """An image (any layout `as_samples` accepts) with its label image, e.g. two napari layers."""

    image: np.ndarray
    labels: np.ndarray
    name: str = "image"


def prepare_pairs(pairs: Sequence[TrainingPair], cfg: Config) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Split pairs into 2D samples: normalised float32 `(H, W, C)` images, int32 targets, names.

    Raises InputError for a labels layer without any labelled (non-background) pixel and for
    images smaller than `cfg.size_multiple` pixels on a side. Gray and RGB images may be mixed:
    each is converted to `cfg.data.in_channels` by the channel rule (`channels.to_channels`).
    """
    images, targets, names, _ = prepare_samples(pairs, cfg)
    return images, targets, names


def prepare_samples(
    pairs: Sequence[TrainingPair], cfg: Config
) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[np.ndarray]]:
    """`prepare_pairs` plus the label image of every sample (instance ids or classes, for scoring)."""
    if not pairs:
        raise InputError("No training pairs given; pick at least one image with a labels layer.")
    d = cfg.data
    images, targets, names, labels_out = [], [], [], []
    for pair in pairs:
        samples, label_list = as_samples(_to_model_channels(pair.image, d.in_channels), pair.labels, d.in_channels, pair.name)
        try:
            pair_targets = [labels_to_target(lab, d) for lab in label_list]
        except InputError as exc:  # say which pair: the target functions only see arrays
            raise InputError(f"labels of {pair.name!r}: {exc}") from exc
        if not any(np.any(t > 0) for t in pair_targets):
            raise InputError(
                f"labels layer {pair.name!r} has no labelled pixels (only background or ignored); "
                "paint at least one object or leave this pair out."
            )
        for i, (sample, target) in enumerate(zip(samples, pair_targets)):
            name = pair.name if len(samples) == 1 else f"{pair.name}[{i}]"
            if min(sample.shape[:2]) < cfg.size_multiple:
                raise InputError(
                    f"{name} is {sample.shape[0]}x{sample.shape[1]} pixels; images must be at least "
                    f"{cfg.size_multiple} pixels on each side for a network of this depth."
                )
            images.append(normalize_sample(sample, d))
            targets.append(target)
            names.append(name)
            lab = dense_labels(label_list[i], d)
            labels_out.append(np.where(target < 0, 0, lab).astype(np.int64, copy=False))
    return images, targets, names, labels_out


def _to_model_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """A colour image for a one-channel model becomes gray (luminance); other layouts pass through."""
    image = np.asarray(image)
    if in_channels == 1 and image.ndim >= 3 and image.shape[-1] in (3, 4) and _is_colour(image.shape):
        from .channels import to_channels

        return to_channels(image, 1, rgb=True)
    return image


def _is_colour(shape: tuple[int, ...]) -> bool:
    """(H, W, 3|4) with H > 4 (a thin stack of 3 planes is not colour), or (N, H, W, 3|4)."""
    return len(shape) == 4 or (len(shape) == 3 and shape[0] > 4)


def split_pairs(
    images: Sequence[np.ndarray], targets: Sequence[np.ndarray], cfg: Config | DataConfig, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Hold out validation data: `(train_images, train_targets, val_images, val_targets)`.

    "image" keeps whole images apart (needs >= 2 images); "region" cuts a strip of
    `val_fraction` of the longer side off every image (at its start or end, by `seed`), so the
    training crops never contain a validation pixel; "auto" is "image" from 4 images on.
    `val_fraction == 0` gives empty validation lists.
    """
    d = cfg.data if isinstance(cfg, Config) else cfg
    images, targets = list(images), list(targets)
    if len(images) != len(targets):
        raise InputError(f"{len(images)} images but {len(targets)} targets; give one target per image.")
    if d.val_fraction <= 0 or not images:
        return images, targets, [], []
    rng = np.random.default_rng(seed)
    mode = d.val_mode if d.val_mode != "auto" else ("image" if len(images) >= 4 else "region")
    if mode == "image":
        if len(images) < 2:
            raise InputError(
                "Validation by image needs at least 2 images; add images or set data.val_mode to 'region'."
            )
        n_val = min(len(images) - 1, max(1, round(d.val_fraction * len(images))))
        val_idx = set(rng.permutation(len(images))[:n_val].tolist())
        train = [i for i in range(len(images)) if i not in val_idx]
        val = sorted(val_idx)
        return _take(images, train), _take(targets, train), _take(images, val), _take(targets, val)
    out: tuple[list, list, list, list] = ([], [], [], [])
    for image, target in zip(images, targets):
        prefer_start = bool(rng.random() < 0.5)
        options = [_strip_slices(target.shape, d.val_fraction, at_start) for at_start in (prefer_start, not prefer_start)]
        # The end whose strip holds more foreground (the drawn one on a tie): a strip of pure
        # background would make the validation Dice meaningless.
        train_sl, val_sl = max(options, key=lambda o: np.count_nonzero(target[o[1]] > 0))
        out[0].append(image[train_sl])
        out[1].append(target[train_sl])
        out[2].append(image[val_sl])
        out[3].append(target[val_sl])
    return out


def _take(items: list, indices: list[int]) -> list:
    return [items[i] for i in indices]


def _strip_slices(shape: tuple[int, ...], fraction: float, at_start: bool) -> tuple[tuple, tuple]:
    """(train, validation) slices cutting a strip across the longer axis of a 2D shape."""
    axis = 0 if shape[0] >= shape[1] else 1
    length = shape[axis]
    if length < 2:
        raise InputError(f"An image of shape {shape[:2]} is too small to split into training and validation.")
    n_val = min(length - 1, max(1, round(fraction * length)))
    val = slice(0, n_val) if at_start else slice(length - n_val, length)
    train = slice(n_val, length) if at_start else slice(0, length - n_val)
    full = slice(None)
    if axis == 0:
        return (train, full), (val, full)
    return (full, train), (full, val)


class PatchSampler:
    """Draws augmented `(P, P, C)` patches with `(P, P)` targets from images and targets.

    A share `foreground_fraction` of patches is centred on a random target pixel > 0 (chosen
    uniformly over all such pixels of all images); the others are uniform over the image area.
    """

    def __init__(self, images: Sequence[np.ndarray], targets: Sequence[np.ndarray], cfg: Config):
        if not images:
            raise InputError("No training images; give at least one image with labels.")
        if len(images) != len(targets):
            raise InputError(f"{len(images)} images but {len(targets)} targets; give one target per image.")
        self.cfg = cfg
        self.patch = cfg.data.patch_size
        channels = {int(img.shape[-1]) for img in images}
        if len(channels) != 1 or images[0].ndim != 3:
            raise InputError(f"Training images must all be (H, W, C) with one channel count; got {sorted(channels)}.")
        self.channels = channels.pop()
        self.images, self.targets = [], []
        for image, target in zip(images, targets):
            if image.shape[:2] != target.shape:
                raise InputError(f"Image shape {image.shape[:2]} and target shape {target.shape} differ.")
            image, target = pad_pair(image, target, self.patch, self.patch)
            self.images.append(np.ascontiguousarray(image, dtype=np.float32))
            self.targets.append(np.ascontiguousarray(target, dtype=np.int32))
        self.fg_pixels = [np.flatnonzero(t > 0) for t in self.targets]
        fg_counts = np.array([len(f) for f in self.fg_pixels], dtype=np.float64)
        areas = np.array([t.size for t in self.targets], dtype=np.float64)
        self.area_p = areas / areas.sum()
        self.fg_p = fg_counts / fg_counts.sum() if fg_counts.sum() > 0 else None
        # Sparse strokes: a uniform window would mostly hold unannotated pixels that teach nothing,
        # so the other patches are centred on annotated pixels (background strokes) instead.
        self.annotated_pixels: list[np.ndarray] | None = None
        if cfg.data.sparse:
            self.annotated_pixels = [np.flatnonzero(t >= 0) for t in self.targets]
            counts = np.array([len(a) for a in self.annotated_pixels], dtype=np.float64)
            self.area_p = counts / counts.sum() if counts.sum() > 0 else self.area_p

    def window(self, rng: np.random.Generator) -> tuple[int, int, int, bool]:
        """(image index, top, left, centred on foreground) of the next patch."""
        if self.fg_p is not None and rng.random() < self.cfg.data.foreground_fraction:
            i = int(rng.choice(len(self.images), p=self.fg_p))
            return (i, *self._centred(i, self.fg_pixels[i], rng), True)
        i = int(rng.choice(len(self.images), p=self.area_p))
        if self.annotated_pixels is not None and len(self.annotated_pixels[i]):
            return (i, *self._centred(i, self.annotated_pixels[i], rng), False)
        p = self.patch
        h, w = self.targets[i].shape
        return i, int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1)), False

    def _centred(self, i: int, pixels: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """(top, left) of a patch of image `i` centred on one of `pixels` (flat indices), inside the image."""
        p = self.patch
        h, w = self.targets[i].shape
        r, c = divmod(int(pixels[rng.integers(len(pixels))]), w)
        return min(max(r - p // 2, 0), h - p), min(max(c - p // 2, 0), w - p)

    def batch(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`size` augmented patches: x float32 `(B, P, P, C)`, y int32 `(B, P, P, 1)`."""
        p, d = self.patch, self.cfg.data
        x = np.empty((size, p, p, self.channels), dtype=np.float32)
        y = np.empty((size, p, p, 1), dtype=np.int32)
        for b in range(size):
            i, top, left, _ = self.window(rng)
            img = self.images[i][top : top + p, left : left + p]
            tgt = self.targets[i][top : top + p, left : left + p]
            # Geometry on views: one copy when writing into the batch.
            if d.flips:
                if rng.random() < 0.5:
                    img, tgt = img[::-1], tgt[::-1]
                if rng.random() < 0.5:
                    img, tgt = img[:, ::-1], tgt[:, ::-1]
            if d.rotations:
                k = int(rng.integers(4))
                img, tgt = np.rot90(img, k, axes=(0, 1)), np.rot90(tgt, k, axes=(0, 1))
            if d.elastic:
                img, tgt = elastic_deform(img, tgt, rng)
            x[b] = img
            y[b, ..., 0] = tgt
            if d.intensity:
                x[b] *= np.float32(rng.uniform(*INTENSITY_SCALE))
                x[b] += np.float32(rng.uniform(*INTENSITY_SHIFT))
        return x, y


def elastic_deform(image: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random warp of a square patch: linear interpolation for the image, nearest for the target."""
    p = image.shape[0]
    basis = _smooth_basis(p, ELASTIC_GRID)
    coarse = rng.normal(0.0, ELASTIC_STRENGTH * p, size=(2, ELASTIC_GRID, ELASTIC_GRID))
    shift = basis @ coarse @ basis.T  # (2, P, P): control-point displacements, smoothly interpolated
    coords = _pixel_grid(p) + shift
    warped = np.stack(
        [ndi.map_coordinates(image[..., c], coords, order=1, mode="mirror") for c in range(image.shape[-1])],
        axis=-1,
    )
    return warped.astype(np.float32), ndi.map_coordinates(target, coords, order=0, mode="mirror")


@lru_cache(maxsize=8)
def _smooth_basis(size: int, points: int) -> np.ndarray:
    """`(size, points)` weights that spread control-point values smoothly over `size` pixels."""
    u = np.linspace(0.0, points - 1.0, size)[:, None] - np.arange(points)[None, :]
    weights = np.exp(-0.5 * (u / 0.6) ** 2)
    return weights / weights.sum(axis=1, keepdims=True)


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> np.ndarray:
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij")).astype(np.float64)
    grid.flags.writeable = False
    return grid


def static_options() -> tf.data.Options:
    """tf.data without autotuning: the buffers here are fixed anyway, and deleting an iterator (at the
    end of `model.fit`) waits for the autotuning thread, which held the end of every training for 6-30 s
    (measured on 2 CPU cores)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def make_train_dataset(
    images: Sequence[np.ndarray], targets: Sequence[np.ndarray], cfg: Config, seed: int = 0
) -> tf.data.Dataset:
    """Endless batches `(x float32 (B, P, P, C), y int32 (B, P, P, 1))` of augmented patches.

    The random stream lives with the dataset, so iterating it again continues the stream
    instead of repeating the same patches.
    """
    sampler = PatchSampler(images, targets, cfg)
    rng = np.random.default_rng(seed)
    size, p, c = cfg.train.batch_size, sampler.patch, sampler.channels

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            yield sampler.batch(size, rng)

    import tensorflow as tf  # here, not at import: TrainingPair and the samplers need no TensorFlow

    signature = (
        tf.TensorSpec((size, p, p, c), tf.float32),
        tf.TensorSpec((size, p, p, 1), tf.int32),
    )
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2).with_options(static_options())


def val_patches(
    images: Sequence[np.ndarray], targets: Sequence[np.ndarray], cfg: Config
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping patches covering the images: x `(N, P, P, C)`, y `(N, P, P, 1)`.

    Images are padded to whole patches (reflection; target `IGNORE_TARGET`); patches without any
    labelled pixel are left out.
    """
    p = cfg.data.patch_size
    xs, ys = [], []
    for image, target in zip(images, targets):
        h, w = target.shape
        image, target = pad_pair(image, target, -(-h // p) * p, -(-w // p) * p)
        for top in range(0, target.shape[0], p):
            for left in range(0, target.shape[1], p):
                tgt = target[top : top + p, left : left + p]
                if np.any(tgt >= 0):
                    xs.append(image[top : top + p, left : left + p])
                    ys.append(tgt[..., None])
    if not xs:
        raise InputError(
            "The validation data has no labelled pixels; label more of the images, "
            "change data.val_mode, or set data.val_fraction to 0."
        )
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.int32)


def make_val_dataset(images: Sequence[np.ndarray], targets: Sequence[np.ndarray], cfg: Config) -> tf.data.Dataset:
    """Finite, deterministic batches of the non-overlapping validation patches (see `val_patches`)."""
    x, y = val_patches(images, targets, cfg)
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(cfg.train.batch_size)


def pad_pair(image: np.ndarray, target: np.ndarray, min_h: int, min_w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad at the bottom/right to at least `min_h x min_w`: image by reflection, target with IGNORE."""
    h, w = target.shape
    ph, pw = max(0, min_h - h), max(0, min_w - w)
    if not ph and not pw:
        return image, target
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    target = np.pad(target, ((0, ph), (0, pw)), mode="constant", constant_values=IGNORE_TARGET)
    return image, target
