"""Objects of a large image, chunk by chunk, with ids that hold across chunk borders (bounded memory).

Instance models, and binary models with a minimum object size, need whole objects, which a chunk
alone does not see. Three steps, each of which runs in one process or as cluster tasks:

1. **Segment** (`segment_chunk`, one task per chunk): predict the chunk plus `margin` pixels of its
   neighbours (plus the network's context, so the probabilities are exact), find the objects of
   that window with the model's own post-processing before its size filter
   (`targets.unsized_objects`: the tuned `cfg.predict` seeds and watershed for instances, 4-connected
   components for binary), store the chunk's objects with window-local ids in a temporary array
   (`ObjectsJob.raw`, a chunk and its finished marker), store the window's labels of a strip of
   ``2 * strip`` pixels across each inner border beside it, and return each local id's pixel count.
2. **Merge** (`ObjectMerger`, on the client, as chunks finish): both neighbours labelled the strip
   on their shared border, each from its own window. Instance pieces there are the same object when
   their intersection over union within the strip exceeds `MATCH_IOU` (so a clump that the two
   windows split differently is never chained into one object); binary pieces when they share a
   pixel (which gives the connected components exactly). Matches are joined (connected components
   of the match graph), global sizes are summed over the pieces, objects below ``min_size`` are
   dropped, and the rest are numbered 1..N in the order of the chunks (row by row) and their ids.
3. **Relabel** (`relabel_chunk`, one task per chunk): map each chunk's local ids to the global
   ones into the labels image that is published (`omezarr.StagedLabels`).

Exactness: an object whose foreground component (with a few pixels around it for the seeds'
smoothing) lies within `margin` pixels of every chunk it touches is segmented from the same
probabilities by every window that writes a piece of it, so it equals the whole-image object
(only the numbering differs). A clump larger than that is seen in part by some windows: its pieces
are still joined across borders, but where it is split may differ from the whole-image split near
the windows' edges (tests/core/test_chunk_objects.py measures both on real nuclei).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .omezarr import LabelsTarget, StagedLabels, chunk_grid, labels_dtype

#: Pixels of the neighbouring chunks segmented with each chunk: objects up to about this size are exact.
MARGIN = 64
#: Half width (pixels) of the strip across a border in which two neighbours' objects are matched.
STRIP = 16
#: Intersection over union (within the strip) above which two instance pieces are one object.
MATCH_IOU = 0.5
#: Segmenting a chunk costs about this many times relabelling it (progress weights).
SEGMENT_WEIGHT = 10
STRIPS_DIR = ".napari-unet-strips"
#: Neighbour offset, this chunk's side, the neighbour's side.
_SIDES = (((0, 1), "right", "left"), ((0, -1), "left", "right"), ((1, 0), "bottom", "top"), ((-1, 0), "top", "bottom"))

Progress = Callable[[int, int], Any]
Cell = tuple[int, int]


def needs_objects(cfg: Config) -> bool:
    """Chunked labels need whole objects: instances, or binary masks with a minimum object size."""
    return cfg.data.task == "instances" or (cfg.data.task == "binary" and cfg.predict.min_size > 1)


@dataclass(frozen=True)
class ObjectsJob:
    """What the segment and relabel tasks need besides the model: plain data, cheap to send."""

    raw: StagedLabels  # window-local object ids per chunk (uint32); temporary, never published
    bounds: tuple[float, float]  # normalisation (low, high) of the whole image
    context: int
    binary: bool  # the published labels are a mask (binary task), else object ids
    margin: int = MARGIN
    strip: int = STRIP

    @property
    def strips(self) -> Path:
        return self.raw.staging / STRIPS_DIR


def prepare_objects(
    source: Any, cfg: Config, target: LabelsTarget, chunk: int, info: dict | None = None, margin: int = MARGIN
) -> ObjectsJob:
    """Normalisation bounds of the whole image and the temporary store of local ids (nothing predicted yet)."""
    from .predict import _lazy_image, subsample_bounds, tile_geometry

    if margin < 1:
        raise ValueError("margin must be at least 1 pixel")
    m = cfg.size_multiple
    margin = -(-int(margin) // m) * m  # windows start on the network's pooling grid, as whole-image tiles do
    strip = min(STRIP, margin)
    bounds = subsample_bounds(_lazy_image(source, cfg), cfg)
    raw = StagedLabels.create(target, chunk, "uint32", info)
    (raw.staging / STRIPS_DIR).mkdir()
    return ObjectsJob(raw, (float(bounds[0]), float(bounds[1])), tile_geometry(cfg)[1], cfg.data.task == "binary",
                      margin, strip)  # fmt: skip


def chunk_region(staged: StagedLabels, iy: int, ix: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a chunk."""
    h, w = staged.target.yx_shape
    c = staged.chunk
    return iy * c, min(h, (iy + 1) * c), ix * c, min(w, (ix + 1) * c)


# ---------------------------------------------------------------- 1. segment (a task per chunk)


def segment_chunk(model: Any, source: Any, cfg: Config, job: ObjectsJob, iy: int, ix: int, stop: Any = None) -> np.ndarray:
    """Store a chunk's objects (window-local ids) and its border strips; returns pixels per local id."""
    from .largeimage import predict_window
    from .targets import unsized_objects

    h, w = job.raw.target.yx_shape
    y0, y1, x0, x1 = chunk_region(job.raw, iy, ix)
    m = job.margin
    window = (max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m))
    probs = predict_window(model, source, cfg, job.bounds, window, job.context, stop=stop)
    objects = unsized_objects(probs, cfg)
    del probs
    _save_strips(job, iy, ix, objects, window)  # before the chunk's finished marker
    own = objects[y0 - window[0] : y1 - window[0], x0 - window[2] : x1 - window[2]]
    job.raw.write_chunk(iy, ix, own)
    return np.bincount(own.ravel(), minlength=int(objects.max(initial=0)) + 1).astype(np.int64)


def _strip_regions(job: ObjectsJob, iy: int, ix: int) -> dict[str, tuple[int, int, int, int]]:
    """The strip across each inner border of a chunk; both neighbours compute the same region."""
    h, w = job.raw.target.yx_shape
    y0, y1, x0, x1 = chunk_region(job.raw, iy, ix)
    s = job.strip

    def across(edge: int, length: int) -> tuple[int, int]:
        return max(0, edge - s), min(length, edge + s)

    regions = {}
    if x1 < w:
        regions["right"] = (y0, y1, *across(x1, w))
    if x0 > 0:
        regions["left"] = (y0, y1, *across(x0, w))
    if y1 < h:
        regions["bottom"] = (*across(y1, h), x0, x1)
    if y0 > 0:
        regions["top"] = (*across(y0, h), x0, x1)
    return regions


def _save_strips(job: ObjectsJob, iy: int, ix: int, objects: np.ndarray, window: tuple[int, int, int, int]) -> None:
    wy, wx = window[0], window[2]
    strips = {side: objects[y0 - wy : y1 - wy, x0 - wx : x1 - wx] for side, (y0, y1, x0, x1) in _strip_regions(job, iy, ix).items()}
    final = job.strips / f"{iy}-{ix}.npz"
    partial = job.strips / f".{iy}-{ix}-{uuid.uuid4().hex[:8]}.npz"
    with open(partial, "wb") as f:
        np.savez_compressed(f, **strips)
    os.replace(partial, final)  # a rerun of the task replaces it whole


def _load_strip(job: ObjectsJob, cell: Cell, side: str) -> np.ndarray:
    with np.load(job.strips / f"{cell[0]}-{cell[1]}.npz", allow_pickle=False) as strips:
        return strips[side]


# ---------------------------------------------------------------- 2. merge (on the client)


def match_pieces(a: np.ndarray, b: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (id in `a`, id in `b`) of two labellings of the same strip that are one object."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    base = int(b.max()) + 1
    pairs, shared = np.unique(a[both].astype(np.int64) * base + b[both], return_counts=True)
    ia, ib = pairs // base, pairs % base
    if binary:
        return ia, ib
    size_a, size_b = np.bincount(a.ravel()), np.bincount(b.ravel())
    iou = shared / (size_a[ia] + size_b[ib] - shared)
    keep = iou > MATCH_IOU
    return ia[keep], ib[keep]


class ObjectMerger:
    """Matches neighbouring chunks' objects on their shared borders as chunks finish, in any order."""

    def __init__(self, job: ObjectsJob) -> None:
        self.job = job
        self.counts: dict[Cell, np.ndarray] = {}
        self.matches: list[tuple[Cell, np.ndarray, Cell, np.ndarray]] = []

    def add(self, iy: int, ix: int, counts: np.ndarray) -> None:
        """A chunk finished (its strips are on disk): match it with its finished neighbours."""
        cell = (iy, ix)
        if cell in self.counts:
            return
        self.counts[cell] = np.asarray(counts, dtype=np.int64)
        for (dy, dx), side, other in _SIDES:
            neighbour = (iy + dy, ix + dx)
            if neighbour in self.counts:
                mine, theirs = _load_strip(self.job, cell, side), _load_strip(self.job, neighbour, other)
                ia, ib = match_pieces(mine, theirs, self.job.binary)
                self.matches.append((cell, ia, neighbour, ib))

    def tables(self, min_size: int) -> tuple[dict[Cell, np.ndarray], int]:
        """Per chunk, the global id (uint32, 0: removed) of each local id; and the number of objects."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        cells = sorted(self.counts)  # chunk order, not finishing order: the same ids on every run
        offsets, n = {}, 0
        for cell in cells:
            offsets[cell] = n
            n += len(self.counts[cell]) - 1  # node offset + id - 1 is local id `id` (1..) of `cell`
        if n == 0:
            return {cell: np.zeros(1, np.uint32) for cell in cells}, 0
        sizes = np.concatenate([self.counts[cell][1:] for cell in cells])
        rows = [offsets[a] + ia - 1 for a, ia, _, _ in self.matches]
        cols = [offsets[b] + ib - 1 for _, _, b, ib in self.matches]
        rows_all = np.concatenate(rows) if rows else np.empty(0, np.int64)
        cols_all = np.concatenate(cols) if cols else np.empty(0, np.int64)
        graph = coo_matrix((np.ones(len(rows_all), np.int8), (rows_all, cols_all)), shape=(n, n))
        count, component = connected_components(graph, directed=False)
        total = np.bincount(component, weights=sizes, minlength=count)
        first = np.full(count, n, dtype=np.int64)
        np.minimum.at(first, component, np.arange(n))
        kept = np.flatnonzero(total >= max(1, min_size))  # pieces seen only outside their chunk have 0 pixels
        kept = kept[np.argsort(first[kept])]
        ids = np.zeros(count, dtype=np.uint32)
        ids[kept] = np.arange(1, len(kept) + 1, dtype=np.uint32)
        node_ids = ids[component]
        tables = {}
        for cell in cells:
            start = offsets[cell]
            tables[cell] = np.concatenate([[0], node_ids[start : start + len(self.counts[cell]) - 1]]).astype(np.uint32)
        return tables, len(kept)


def create_final(job: ObjectsJob, n_objects: int, info: dict | None = None) -> StagedLabels:
    """The staged labels image the relabel step writes (mask or ids of the smallest dtype)."""
    dtype = "uint8" if job.binary else labels_dtype(n_objects + 1)
    return StagedLabels.create(job.raw.target, job.raw.chunk, dtype, info)


# ---------------------------------------------------------------- 3. relabel (a task per chunk)


def relabel_chunk(job: ObjectsJob, final: StagedLabels, iy: int, ix: int, table: np.ndarray) -> tuple[int, int]:
    """Write a chunk's global labels from its local ids (reads the temporary store, so reruns are safe)."""
    y0, y1, x0, x1 = chunk_region(job.raw, iy, ix)
    local = job.raw.read_chunk(iy, ix)[: y1 - y0, : x1 - x0]
    labels = np.asarray(table)[local]
    final.write_chunk(iy, ix, (labels > 0).astype(np.uint8) if job.binary else labels)
    return iy, ix


# ---------------------------------------------------------------- in one process


def predict_objects_to_store(
    model: Any, source: Any, cfg: Config, target: LabelsTarget, chunk: int, progress: Progress | None = None,
    stop: Any = None, overwrite: bool = False, info: dict | None = None, margin: int = MARGIN,
) -> Path:  # fmt: skip
    """The three steps in this process; stops (PredictionStopped) between chunks; removes its temporary stores."""
    from .predict import PredictionStopped

    job = prepare_objects(source, cfg, target, chunk, info, margin)
    cells = [(iy, ix) for iy, ix, _ in chunk_grid(target.yx_shape, chunk)]
    total = (SEGMENT_WEIGHT + 1) * len(cells)
    final = None

    def check() -> None:
        if stop is not None and stop.is_set():
            raise PredictionStopped("Prediction stopped.")

    try:
        merger = ObjectMerger(job)
        for done, (iy, ix) in enumerate(cells, start=1):
            check()
            merger.add(iy, ix, segment_chunk(model, source, cfg, job, iy, ix, stop))
            if progress is not None:
                progress(SEGMENT_WEIGHT * done, total)
        tables, n_objects = merger.tables(cfg.predict.min_size)
        final = create_final(job, n_objects, info)
        for done, (iy, ix) in enumerate(cells, start=1):
            check()
            relabel_chunk(job, final, iy, ix, tables[(iy, ix)])
            if progress is not None:
                progress(SEGMENT_WEIGHT * len(cells) + done, total)
        return final.publish(overwrite=overwrite)
    except BaseException:
        if final is not None:
            final.discard()
        raise
    finally:
        job.raw.discard()
