"""Checks of layer arrays before work starts, with messages a user can act on (Qt-free, TF-free)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.errors import InputError
from napari_unet.core.normalize import check_image


class PatchTooLargeError(InputError):
    """An image is smaller than the training patch; `suggested` is a patch size that fits (or None)."""

    def __init__(self, message: str, suggested: int | None) -> None:
        super().__init__(message)
        self.suggested = suggested


@dataclass
class LayerArray:
    """What the widgets read from a napari layer: its name, level-0 data and whether it is RGB."""

    name: str
    data: Any  # numpy, dask or zarr array
    rgb: bool = False

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return spatial_shape(tuple(self.data.shape), self.rgb)

    @property
    def channels(self) -> int:
        return int(self.data.shape[-1]) if self.rgb else 1


def spatial_shape(shape: tuple[int, ...], rgb: bool) -> tuple[int, ...]:
    """Shape without the colour axis."""
    return tuple(shape[:-1]) if rgb else tuple(shape)


def describe_shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(s) for s in shape)


def check_spatial_layout(image: LayerArray) -> None:
    """A 2D image or a stack of 2D images (N, H, W); anything else is explained."""
    ndim = len(image.spatial_shape)
    if ndim not in (2, 3):
        raise InputError(
            f"Image '{image.name}' has {ndim} spatial dimension(s) (shape {describe_shape(image.data.shape)}); "
            "use a 2D image, an RGB image or a stack of 2D images (N, H, W)."
        )


def check_shapes(image: LayerArray, labels: LayerArray) -> None:
    """Labels must cover the image's spatial shape pixel for pixel."""
    check_spatial_layout(image)
    img_shape, lab_shape = image.spatial_shape, tuple(labels.data.shape)
    if len(img_shape) == 2 and len(lab_shape) == 3:
        raise InputError(
            f"Labels '{labels.name}' are 3D (shape {describe_shape(lab_shape)}) but image '{image.name}' is a "
            f"single 2D image ({describe_shape(img_shape)}); pick a 2D labels layer, or make one with "
            "New Labels while only this image is open."
        )
    if len(img_shape) == 3 and len(lab_shape) == 2:
        raise InputError(
            f"Image '{image.name}' is a stack of {img_shape[0]} images ({describe_shape(img_shape)}) but labels "
            f"'{labels.name}' are a single 2D image ({describe_shape(lab_shape)}); use a labels layer with one "
            "plane per image of the stack."
        )
    if lab_shape != img_shape:
        rgb_note = " (the colour axis of an RGB image does not count)" if image.rgb else ""
        raise InputError(
            f"Labels '{labels.name}' have shape {describe_shape(lab_shape)} but image '{image.name}' is "
            f"{describe_shape(img_shape)}{rgb_note}; labels must cover the image pixel for pixel. "
            "Pick the labels that belong to this image."
        )


def suggest_patch(min_side: int, size_multiple: int) -> int | None:
    """Largest patch size that fits the image and the network's size multiple (None if none does)."""
    size = (min_side // size_multiple) * size_multiple
    return size if size >= size_multiple else None


def check_patch_fits(image: LayerArray, patch_size: int, size_multiple: int) -> None:
    height, width = image.spatial_shape[-2:]
    if min(height, width) < patch_size:
        suggested = suggest_patch(min(height, width), size_multiple)
        offer = (
            f"choose a patch size of {suggested} (Advanced) or use a larger image."
            if suggested
            else "use a larger image or a shallower network."
        )
        raise PatchTooLargeError(
            f"Image '{image.name}' is {height} x {width} pixels, smaller than the {patch_size}-pixel training "
            f"patch; {offer}",
            suggested,
        )


def training_arrays(
    image: LayerArray,
    labels: LayerArray,
    task: str,
    n_classes: int,
    patch_size: int,
    size_multiple: int,
    background_label: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Snapshot numpy copies of a training pair after every check; raises InputError with the reason.

    `background_label` is set for sparse labels (0 = not annotated): it is not a class id.
    """
    check_shapes(image, labels)
    check_patch_fits(image, patch_size, size_multiple)
    img = np.array(image.data, copy=True)
    check_image(img, f"Image '{image.name}'")
    lab = np.array(labels.data, copy=True)
    if not np.any(lab):
        raise InputError(
            f"Labels '{labels.name}' are all zero, so there is nothing to learn from; paint some objects "
            "with the brush or pick another labels layer."
        )
    ids = lab if background_label is None else np.where(lab == background_label, 0, lab)
    if task == "classes" and int(ids.max()) >= n_classes:
        raise InputError(
            f"Labels '{labels.name}' contain the value {int(ids.max())} but the task has {n_classes} classes "
            f"(0..{n_classes - 1}); raise the number of classes or use the instances task."
        )
    if lab.min() < 0:
        raise InputError(f"Labels '{labels.name}' contain negative values; labels must be 0 or positive.")
    return img, lab


def channel_count(pairs_rgb_channels: list[int]) -> int:
    """All training images must have one channel count."""
    counts = sorted(set(pairs_rgb_channels))
    if len(counts) > 1:
        raise InputError(
            f"The training images have different channel counts ({', '.join(map(str, counts))}); "
            "train one model per kind of image (all grayscale or all RGB)."
        )
    return counts[0]


def model_channels(image_channels: int, model_channels_: int) -> int:
    """Channels the model will see for this image; raises InputError when they cannot be matched."""
    if image_channels == model_channels_:
        return image_channels
    if (image_channels, model_channels_) in ((4, 3), (1, 3)):  # RGBA drops alpha, gray is repeated
        return model_channels_
    raise InputError(
        f"The image has {image_channels} channel(s) but the model was trained on {model_channels_}; "
        "pick an image of the kind the model was trained on, or train a new model."
    )


def model_folder(text: str) -> Path:
    """The folder models are saved in, created now so a bad location is reported before training."""
    folder = Path(text).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot use {folder} as the model folder ({exc.strerror}); choose another one.") from exc
    return folder
