"""Live mode's image when it is larger than memory: read only the regions training and the view need.

No TensorFlow. The viewer passes the path of a zarr array or an OME-Zarr image instead of the
pixels (`jobs/live_messages.LiveRequest.source`); the compute worker opens it here and
`LazyPlanes` reads patches, fields of view and a normalisation sample, never the whole image.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

#: Normalisation percentiles of a lazy plane come from a grid of this many windows per side...
SAMPLE_GRID = 16
#: ...each this many pixels per side (about a million pixels in all, a few chunks' worth each).
SAMPLE_WINDOW = 64
#: Regions are read in aligned blocks of this side, and the most recent `CACHED_BLOCKS` are kept:
#: training reads patches around the same strokes again and again (a 96-pixel zarr read costs ms).
BLOCK = 256
CACHED_BLOCKS = 256


def open_source(path: str | Path) -> Any:
    """A lazy array of the image at `path`: an OME-Zarr image (its full resolution, 2D) or a zarr array."""
    import zarr

    from .omezarr import image_yxc, open_image

    p = Path(path).expanduser()
    if not p.is_dir():
        raise InputError(f"The live image {p} is not a zarr folder any more (was it moved or deleted?).")
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:  # zarr raises several kinds for "nothing readable here"
        raise InputError(f"The live image {p} cannot be opened as zarr: {exc}") from None
    if isinstance(node, zarr.Array):
        return node
    lazy = image_yxc(open_image(p))
    stored = zarr_array_of(lazy)  # a plain (y, x) image: read its array directly, without dask graphs
    return stored if stored is not None else lazy


def zarr_array_of(data: Any) -> Any:
    """`data` when it is a zarr array; the zarr array a dask array reads unchanged (`da.from_zarr`); else None."""
    import zarr

    if isinstance(data, zarr.Array):
        return data
    graph = getattr(data, "dask", None)
    if graph is None or len(getattr(graph, "layers", {})) > 2:  # from_zarr: the array and its getter only
        return None
    found = [v for layer in graph.layers.values() for v in dict(layer).values() if isinstance(v, zarr.Array)]
    return found[0] if len(found) == 1 and tuple(found[0].shape) == tuple(data.shape) else None


class LazyPlanes:
    """`(planes, H, W, C)` indexing over a lazy `(H, W)`, `(H, W, C)`, `(P, H, W)` or `(P, H, W, C)` array.

    `self[plane, rows, cols]` reads that region only and returns numpy.
    """

    def __init__(self, source: Any, rgb: bool) -> None:
        spatial = source.ndim - (1 if rgb else 0)
        if spatial not in (2, 3):
            raise InputError(f"Live mode needs a 2D image or a stack of 2D planes; got shape {tuple(source.shape)}.")
        self.source, self.stack, self.rgb = source, spatial == 3, rgb
        shape = tuple(int(n) for n in source.shape)
        shape = shape if self.stack else (1,) + shape
        self.shape = shape if rgb else shape + (1,)
        self.dtype = np.dtype(source.dtype)
        self.ndim = 4
        self._blocks: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()

    def __getitem__(self, key: tuple[int, slice, slice]) -> np.ndarray:
        """The region `(h, w, C)`; rows and columns are slices with steps of 1 inside the image."""
        plane, rows, cols = key
        _, h, w, c = self.shape
        top, bottom, _ = rows.indices(h)
        left, right, _ = cols.indices(w)
        out = np.empty((max(bottom - top, 0), max(right - left, 0), c), self.dtype)
        for by in range(top // BLOCK, -(-bottom // BLOCK)):
            for bx in range(left // BLOCK, -(-right // BLOCK)):
                block = self._block(int(plane), by, bx)
                y0, x0 = max(top, by * BLOCK), max(left, bx * BLOCK)
                y1, x1 = min(bottom, (by + 1) * BLOCK), min(right, (bx + 1) * BLOCK)
                out[y0 - top : y1 - top, x0 - left : x1 - left] = block[y0 - by * BLOCK : y1 - by * BLOCK,
                                                                         x0 - bx * BLOCK : x1 - bx * BLOCK]  # fmt: skip
        return out

    def _block(self, plane: int, by: int, bx: int) -> np.ndarray:
        key = (plane, by, bx)
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return self._blocks[key]
        self._blocks[key] = self._read(plane, slice(by * BLOCK, (by + 1) * BLOCK), slice(bx * BLOCK, (bx + 1) * BLOCK))
        if len(self._blocks) > CACHED_BLOCKS:
            self._blocks.popitem(last=False)
        return self._blocks[key]

    def sample(self, plane: int) -> np.ndarray:
        """Pixels of a grid of windows spread over the plane, `(n, w, C)`: for its percentiles."""
        _, h, w, _ = self.shape
        size = min(SAMPLE_WINDOW, h, w)
        tops = np.unique(np.linspace(0, h - size, SAMPLE_GRID).astype(int))
        lefts = np.unique(np.linspace(0, w - size, SAMPLE_GRID).astype(int))
        windows = [self._read(plane, slice(t, t + size), slice(left, left + size)) for t in tops for left in lefts]
        return np.concatenate(windows, axis=0)

    def _read(self, plane: int, rows: slice, cols: slice) -> np.ndarray:
        """A region `(h, w, C)` read from the source (no cache)."""
        region = self.source[((int(plane),) if self.stack else ()) + (rows, cols)]
        region = np.asarray(region.compute(scheduler="synchronous") if hasattr(region, "compute") else region)
        return region if self.rgb else region[..., None]
