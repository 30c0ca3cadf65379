"""Small helpers between napari layers and the core's arrays."""

from __future__ import annotations

from typing import Any

from napari.layers import Layer

from ._checks import LayerArray

#: Key of the dict the widgets keep in `layer.metadata` of the layers they create.
META_KEY = "napari_unet"


def layer_array(layer: Layer) -> LayerArray:
    """Name, level-0 data (multiscale layers) and RGB flag of an image or labels layer."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return LayerArray(layer.name, data, bool(getattr(layer, "rgb", False)))


def unique_name(viewer: Any, base: str) -> str:
    """`base`, or `base (2)`, `base (3)`... whichever no layer has yet."""
    taken = {layer.name for layer in viewer.layers}
    if base not in taken:
        return base
    n = 2
    while f"{base} ({n})" in taken:
        n += 1
    return f"{base} ({n})"


def placement(layer: Layer, ndim: int | None = None, plane: int | None = None) -> dict[str, Any]:
    """The transform that puts a new layer on `layer`'s pixels: scale, translate, rotate, shear, affine.

    `ndim` keeps the last dimensions only (a 2D result for a 2D image); `plane` places a single
    plane `(1, H, W)` of a stack at its index. Rotation, shear and affine are carried whenever the
    new layer has the source's dimensions (always, for a 2D image or a whole stack).
    """
    scale, translate = list(layer.scale), list(layer.translate)
    same_ndim = ndim is None or ndim == layer.ndim
    if ndim is not None:
        scale, translate = scale[-ndim:], translate[-ndim:]
    if plane is not None and len(scale) == 3:
        translate[0] += plane * scale[0]
    where: dict[str, Any] = {"scale": scale, "translate": translate}
    if same_ndim:
        where.update(rotate=layer.rotate, shear=layer.shear, affine=layer.affine.affine_matrix)
    return where


def safe_folder_name(text: str) -> str:
    """A model name usable as a folder name (see core.bundle's rules)."""
    bad = set('<>:"/\\|?*[]() ')
    name = "".join("-" if c in bad else c for c in text.strip()).strip("-.")
    while "--" in name:
        name = name.replace("--", "-")
    return name or "unet"
