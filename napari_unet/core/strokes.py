"""Sparse annotations that grow while the user paints, and the field of view to predict (no TensorFlow).

Used by the live trainer (`core.live`) in the compute worker and by the live benchmark. Labels
follow the sparse convention of `targets` (0 = not annotated, `background_label` = background).
Only the painted pixels are indexed, so sampling costs follow the strokes, not the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

#: Pixels per side of the blocks in which annotated pixels are indexed.
BLOCK = 64
#: The live prediction covers at most this many pixels per side (the centre of a larger view).
MAX_VIEW = 1024
#: View sizes are rounded up to a multiple of this, so the network sees few distinct shapes.
VIEW_QUANTUM = 64


@dataclass(frozen=True)
class View:
    """A rectangle of one plane: rows `top:bottom`, columns `left:right`."""

    plane: int
    top: int
    left: int
    bottom: int
    right: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left


def clip_view(view: View, shape: tuple[int, int, int], max_side: int = MAX_VIEW) -> View:
    """`view` inside a `(planes, H, W)` image and at most `max_side` per side (keeping its centre)."""
    planes, h, w = shape
    plane = min(max(int(view.plane), 0), planes - 1)
    top, bottom = _clip_axis(view.top, view.bottom, h, max_side)
    left, right = _clip_axis(view.left, view.right, w, max_side)
    return View(plane, top, left, bottom, right)


def _clip_axis(start: float, stop: float, length: int, max_side: int) -> tuple[int, int]:
    start, stop = max(0, int(np.floor(start))), min(length, int(np.ceil(stop)))
    if stop <= start:  # the view lies outside the image: show its nearest part
        start, stop = (0, min(length, max_side)) if stop <= 0 else (max(0, length - max_side), length)
    if stop - start > max_side:
        centre = (start + stop) // 2
        start = min(max(centre - max_side // 2, 0), length - max_side)
        stop = start + max_side
    return start, stop


def context_window(view: View, shape: tuple[int, int, int], halo: int, quantum: int = VIEW_QUANTUM) -> View:
    """The view grown by the network's `halo` on each side, rounded up to `quantum`, inside the image."""
    _, h, w = shape

    def axis(start: int, stop: int, length: int) -> tuple[int, int]:
        size = min(length, -(-(stop - start + 2 * halo) // quantum) * quantum)
        first = min(max(start - halo - (size - (stop - start + 2 * halo)) // 2, 0), length - size)
        return first, first + size

    top, bottom = axis(view.top, view.bottom, h)
    left, right = axis(view.left, view.right, w)
    return View(view.plane, top, left, bottom, right)


class StrokeStore:
    """The labels painted so far, `(planes, H, W)`, with an index of the annotated pixels.

    `labels` may be a writable memory map: pages that are never painted cost no memory. With
    `scan=False` the labels are known to be empty and are not read (a large map stays untouched).
    """

    def __init__(self, labels: np.ndarray, background_label: int, scan: bool = True) -> None:
        if labels.ndim != 3:
            raise InputError(f"Live labels must be (planes, H, W); got shape {labels.shape}.")
        self.labels = labels
        self.background_label = int(background_label)
        self._blocks: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._index: tuple[np.ndarray, np.ndarray] | None = None
        self.updates = 0
        planes, h, w = labels.shape
        for p in range(planes if scan else 0):  # labels the user brought along
            rows = np.flatnonzero(np.asarray(labels[p]).any(axis=1))
            if rows.size:
                self._reindex(p, int(rows[0]), 0, int(rows[-1]) + 1, w)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.labels.shape)  # type: ignore[return-value]

    def paint(self, plane: int, top: int, left: int, patch: np.ndarray) -> None:
        """Write a painted region (its pixels replace the old labels there, 0 included: erasing)."""
        patch = np.asarray(patch)
        planes, h, w = self.shape
        if patch.ndim != 2 or not 0 <= plane < planes:
            raise InputError(f"A stroke must be a 2D region of a plane in 0..{planes - 1}; got {patch.shape} on {plane}.")
        bottom, right = top + patch.shape[0], left + patch.shape[1]
        if top < 0 or left < 0 or bottom > h or right > w:
            raise InputError(f"The stroke region {top}:{bottom}, {left}:{right} lies outside the {h}x{w} image.")
        self.labels[plane, top:bottom, left:right] = patch
        self._reindex(plane, top, left, bottom, right)
        self.updates += 1

    def _reindex(self, plane: int, top: int, left: int, bottom: int, right: int) -> None:
        _, h, w = self.shape
        for by in range(top // BLOCK, -(-bottom // BLOCK)):
            for bx in range(left // BLOCK, -(-right // BLOCK)):
                y0, x0 = by * BLOCK, bx * BLOCK
                block = np.asarray(self.labels[plane, y0 : min(y0 + BLOCK, h), x0 : min(x0 + BLOCK, w)])
                ys, xs = np.nonzero(block)
                if ys.size:
                    coords = np.stack([np.full(ys.size, plane), ys + y0, xs + x0], axis=1)
                    self._blocks[(plane, by, bx)] = (coords, block[ys, xs] != self.background_label)
                else:
                    self._blocks.pop((plane, by, bx), None)
        self._index = None

    def _all(self) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None:
            parts = list(self._blocks.values())
            if parts:
                self._index = np.concatenate([c for c, _ in parts]), np.concatenate([f for _, f in parts])
            else:
                self._index = np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=bool)
        return self._index

    def counts(self) -> tuple[int, int]:
        """(object pixels, background pixels) painted."""
        _, fg = self._all()
        return int(fg.sum()), int(fg.size - fg.sum())

    @property
    def annotated(self) -> int:
        return int(self._all()[1].size)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` painted pixels `(plane, row, col)`: half on objects, half on background when both exist."""
        coords, fg = self._all()
        if not coords.shape[0]:
            raise InputError("Nothing is painted yet: paint an object stroke and a background stroke.")
        groups = [g for g in (np.flatnonzero(fg), np.flatnonzero(~fg)) if g.size]
        picks = [groups[i % len(groups)][rng.integers(groups[i % len(groups)].size)] for i in range(n)]
        rng.shuffle(picks)
        return coords[np.asarray(picks)]


def patch_origin(centre: np.ndarray, size: int, shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int]:
    """Top-left of a `size` patch holding pixel `centre` (jittered off the middle), inside the image."""
    _, h, w = shape
    jitter = rng.integers(-size // 4, size // 4 + 1, size=2)
    top = int(centre[1]) - size // 2 + int(jitter[0])
    left = int(centre[2]) - size // 2 + int(jitter[1])
    return min(max(top, 0), max(h - size, 0)), min(max(left, 0), max(w - size, 0))
