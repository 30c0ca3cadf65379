"""What the Live widget sends for strokes painted before it starts, and which images go as a path (no viewer)."""

from __future__ import annotations

import numpy as np


def test_painted_regions_are_blocks_of_the_painted_pixels():
    from napari_unet.widgets._live_source import painted_regions

    labels = np.zeros((3000, 2500), np.uint16)
    labels[10:13, 20:30] = 1
    labels[2900:2950, 2400:2410] = 255
    regions = painted_regions(labels, block=512)
    assert [(p, t, l, r.shape) for p, t, l, r in regions] == [(0, 10, 20, (3, 10)), (0, 2900, 2400, (50, 10))]
    assert regions[0][3].dtype == np.int32 and (regions[1][3] == 255).all()
    stack = np.zeros((2, 100, 100), np.uint8)
    stack[1, 50, 60] = 4
    assert [(p, t, l) for p, t, l, _ in painted_regions(stack)] == [(1, 50, 60)]
    assert painted_regions(np.zeros((40, 40), np.uint8)) == []


def test_zarr_backed_images_go_as_their_path(tmp_path):
    import dask.array as da
    import zarr

    from napari_unet.widgets._live_source import zarr_path

    z = zarr.open_array(str(tmp_path / "img.zarr"), mode="w", shape=(600, 400), chunks=(256, 256), dtype="uint8")

    class Layer:
        source = None

    assert zarr_path(Layer(), z) == str(tmp_path / "img.zarr")
    assert zarr_path(Layer(), da.from_zarr(z)) == str(tmp_path / "img.zarr")
    assert zarr_path(Layer(), da.from_zarr(z) * 2) is None  # computed from it: its pixels are not the store's
    assert zarr_path(Layer(), np.zeros((600, 400), np.uint8)) is None
