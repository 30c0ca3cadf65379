"""The tile-size rule: as few, evened-out tiles as the memory budget allows; exact either way."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.predict import count_tiles, predict_probabilities, tile_geometry
from napari_unet.core.tiling import (
    TARGET_COST,
    bytes_per_pixel,
    chunk_size,
    fit_tiles,
    max_tile,
    memory_budget,
    plan_tiles,
    window_cost,
)

from zarr_helpers import tiny_config  # noqa: E402  (tests/core is on sys.path)


def _budget(cfg, side: int) -> int:
    """Bytes for one tile of `side` x `side` pixels."""
    return int(bytes_per_pixel(cfg) * side * side) + 1


def test_an_image_that_fits_is_one_tile_and_the_configured_tile_is_not_used():
    from napari_unet.core.config import Config

    cfg = Config()  # 1024 px tiles, 112 px context: 9 tiles and 2.25x the pixels on 2048 x 2048
    assert count_tiles(2048, 2048, cfg) == 9
    plan = plan_tiles(2048, 2048, cfg, budget=_budget(cfg, 2048))
    assert (plan.tile, plan.tiles, plan.cost) == (2048, 1, 1.0)
    plan = plan_tiles(3072, 3072, cfg, budget=_budget(cfg, 4096))
    assert plan.tiles == 1 and plan.cost == 1.0
    # beyond the device's longest tile (3072 px on a CPU: larger calls are slower per pixel there)
    plan = plan_tiles(4096, 4096, cfg, budget=_budget(cfg, 4096))
    assert plan.tile <= max_tile() and plan.tiles == (1 if max_tile() >= 4096 else 4)
    assert plan.cost <= TARGET_COST


def test_a_tight_budget_gives_the_fewest_evened_tiles():
    from napari_unet.core.config import Config

    cfg = Config()
    context = tile_geometry(cfg)[1]
    plan = plan_tiles(4096, 4096, cfg, budget=_budget(cfg, 2300))
    assert plan.tiles == 4 and plan.tile == 2048 + context  # (4096 + 2c) / 2, a multiple of 16
    assert plan.cost == pytest.approx(((4096 + 2 * context) / 4096) ** 2, rel=1e-6)
    assert plan.cost <= TARGET_COST
    # larger than max_tile() is never chosen, however much memory there is
    huge = plan_tiles(20000, 20000, cfg, budget=10**15)
    assert huge.tile <= max_tile() and huge.cost <= TARGET_COST


def test_memory_budget_follows_the_environment(monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_TILE_MEMORY_MB", "100")
    assert memory_budget() == 100 * 2**20
    monkeypatch.delenv("NAPARI_UNET_TILE_MEMORY_MB")
    assert memory_budget() > 0


def test_fitted_tiles_are_exact():
    import keras

    from napari_unet.core.model import build_model

    cfg = tiny_config()
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    image = np.random.default_rng(0).random((500, 452, 1)).astype(np.float32)
    whole = np.asarray(model.predict_on_batch(image[None]))[0]
    for side, wanted in ((512, 1), (300, 4), (200, 9)):
        fitted = fit_tiles(cfg, 500, 452, budget=_budget(cfg, side))
        assert count_tiles(500, 452, fitted) == wanted, side
        tiled = predict_probabilities(model, image, fitted)
        assert float(np.max(np.abs(tiled - whole))) <= 1e-3


def test_chunk_size_fits_the_budget_and_keeps_the_cost_low():
    cfg = tiny_config()
    context = tile_geometry(cfg)[1]
    chunk = chunk_size(cfg, budget=_budget(cfg, 2048))
    assert chunk % cfg.size_multiple == 0 and chunk + 2 * context <= 2048
    assert window_cost(chunk, cfg) <= TARGET_COST
    assert chunk_size(cfg, budget=_budget(cfg, 2048), parallel=4) <= 1024
