"""Tile and chunk sizes chosen from the memory a device has, so tiled prediction costs little more
than one whole-image call while staying exact (the halo comes from `predict.tile_geometry`).

Tiled prediction is exact for any tile (see `predict.py`); what tiles cost is the halo: a tile of
``T`` pixels keeps ``T - 2 * context``, so small tiles predict the same pixels several times
(1024 px tiles with a 112 px context cost 2.06x a 2048 px image's whole-image call). The rule
here: use the largest tiles the memory budget holds, up to `max_tile()` per side, and split an
image into the fewest tiles whose sizes are evened out, so no tile is mostly overlap. An image
that fits is one tile.

The budget is ``NAPARI_UNET_TILE_MEMORY_MB`` when set, else a share of the free memory of the
device prediction runs on (the first GPU's free memory from ``nvidia-smi`` when a GPU is
visible, else the host's available memory). A model call's memory is estimated from the network's
layer widths (`bytes_per_pixel`); the estimate is about twice what was measured on CPU
(793 MiB above baseline for a 2048 x 2048 image with 8 base filters at depth 4, i.e. ~200 B/pixel).
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
from dataclasses import dataclass

from .config import Config

ENV_MEMORY = "NAPARI_UNET_TILE_MEMORY_MB"
#: Share of the free memory one prediction may use (the rest is for the viewer, other jobs, users).
MEMORY_FRACTION = 0.4
#: Longest tile side on a GPU: bounds one model call's time (Stop) and its memory on a huge device.
MAX_TILE = 4096
#: Longest tile side on a CPU: larger calls got slower per pixel there (Fast (CPU) preset, 2 cores:
#: 112-122 ns/pixel for 1024-3072 px tiles, 144 ns at 4096 px); 3072 keeps a chunk's halo cost
#: at 1.17x for a 112 px context.
MAX_TILE_CPU = 3072
#: Target of the rule: processed pixels / image pixels of a tiling.
TARGET_COST = 1.2
#: float32 activations a U-Net keeps alive per pixel and per filter of a level (measured ~2.5).
_TENSORS_PER_LEVEL = 6


@dataclass(frozen=True)
class TilePlan:
    """Tiles for one image: side `tile` (pixels), `batch` tiles per call, `tiles` in all, and
    `cost`, the pixels the network processes divided by the image's pixels (1.0: no overlap)."""

    tile: int
    batch: int
    tiles: int
    cost: float


def bytes_per_pixel(cfg: Config) -> float:
    """Estimated peak bytes of one model call per input pixel (float32, or half on GPU with mixed precision)."""
    m = cfg.model
    if m.architecture == "mobilenetv2":
        floats = 6.0 * 96  # the encoder's expanded 96-channel blocks at 1/2 resolution dominate, x4 margin
    else:
        floats = sum(_TENSORS_PER_LEVEL * m.base_filters * 2**level / 4**level for level in range(m.depth + 1))
    floats += 2 * cfg.data.in_channels + 2 * cfg.n_outputs
    return 4.0 * floats


def memory_budget() -> int:
    """Bytes one prediction may use on the device it runs on (see the module docstring)."""
    override = os.environ.get(ENV_MEMORY)
    if override:
        try:
            return max(1, int(float(override) * 2**20))
        except ValueError:
            pass
    free = _gpu_free_bytes()
    if free is None:
        import psutil

        free = int(psutil.virtual_memory().available)
    return int(free * MEMORY_FRACTION)


def max_tile() -> int:
    """Longest tile side for the device prediction runs on."""
    return MAX_TILE if _has_gpu() else MAX_TILE_CPU


@functools.lru_cache(maxsize=1)
def _has_gpu() -> bool:
    return _gpu_free_bytes() is not None


def _gpu_free_bytes() -> int | None:
    """Free memory of the first visible GPU (None without a GPU or nvidia-smi)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1") or shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        first = out.stdout.strip().splitlines()[0]
        return int(float(first) * 2**20)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def plan_tiles(height: int, width: int, cfg: Config, budget: int | None = None) -> TilePlan:
    """The fewest evened-out square tiles of an `height x width` image that fit `budget` bytes."""
    from .predict import count_tiles, tile_geometry

    budget = memory_budget() if budget is None else int(budget)
    m = cfg.size_multiple
    context = tile_geometry(cfg)[1]
    h, w = _round_up(height, m), _round_up(width, m)
    max_pixels = max(1.0, budget / bytes_per_pixel(cfg))
    longest, longest_tile = max(h, w), max_tile()
    smallest = tile_geometry(cfg.replace(predict={"tile_size": _round_up(2 * context + m, m)}))[0]
    tile = smallest
    for n in range(1, longest // m + 2):
        # n tiles along the longest side, evened out: each keeps about (L + 2c(n-1)) / n pixels
        candidate = min(_round_up(math.ceil((longest + 2 * context * (n - 1)) / n), m), longest)
        if candidate < smallest:
            break
        if candidate <= longest_tile and min(candidate, h) * min(candidate, w) <= max_pixels:
            tile = candidate
            break
    tile = tile_geometry(cfg.replace(predict={"tile_size": tile}))[0]
    fitted = cfg.replace(predict={"tile_size": tile})
    area = min(tile, h) * min(tile, w)
    tiles = count_tiles(height, width, fitted)
    # a batch is one call: it holds at most max_tile()^2 pixels too
    batch = max(1, min(cfg.predict.batch_size, int(max_pixels // area), longest_tile**2 // area, tiles))
    return TilePlan(tile, batch, tiles, tiles * area / float(h * w))


def fit_tiles(cfg: Config, height: int, width: int, budget: int | None = None) -> Config:
    """`cfg` with `predict.tile_size` and `predict.batch_size` from `plan_tiles`."""
    plan = plan_tiles(height, width, cfg, budget)
    return cfg.replace(predict={"tile_size": plan.tile, "batch_size": plan.batch})


def chunk_size(cfg: Config, budget: int | None = None, parallel: int = 1) -> int:
    """Side of the square output chunks of large-image and cluster prediction (a multiple of size_multiple).

    Each chunk is predicted as one window of chunk + 2 * context pixels, so the chunk is the largest
    whose window fits `budget / parallel` bytes (`parallel` chunks at a time per device), at most
    `max_tile()` minus the context; its cost is (window / chunk)^2.
    """
    from .predict import tile_geometry

    budget = memory_budget() if budget is None else int(budget)
    m = cfg.size_multiple
    context = tile_geometry(cfg)[1]
    max_pixels = max(1.0, budget / max(1, parallel) / bytes_per_pixel(cfg))
    window = min(max_tile(), int(math.sqrt(max_pixels)))
    chunk = (window - 2 * context) // m * m
    return max(chunk, _round_up(max(context, m), m))


def window_cost(chunk: int, cfg: Config) -> float:
    """Processed / kept pixels of a chunk predicted with its context on every side."""
    from .predict import tile_geometry

    context = tile_geometry(cfg)[1]
    return ((chunk + 2 * context) / chunk) ** 2


def _round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple
