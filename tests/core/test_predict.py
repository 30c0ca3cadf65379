"""Tiled prediction equals whole-image prediction, for images, stacks, RGB and lazy dask arrays."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import dask
import dask.array as da
import keras
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.config import Config
from napari_unet.core.errors import ConfigError, InputError, NapariUNetError
from napari_unet.core.model import build_model, halo
from napari_unet.core.normalize import normalize
from napari_unet.core.predict import (
    Prediction,
    PredictionStopped,
    _axis_tiles,
    count_tiles,
    predict_dask,
    predict_image,
    predict_probabilities,
    subsample_bounds,
    tile_geometry,
)
from napari_unet.core.targets import probabilities_to_labels

TOL = 1e-3


@pytest.fixture(scope="module")
def cfg() -> Config:
    """Untrained small U-Net (depth 3, 8 filters, batch norm) tiled in 512 px tiles with 64 px overlap."""
    return Config().replace(
        model={"depth": 3, "base_filters": 8, "batch_norm": True}, predict={"tile_size": 512, "overlap": 64}
    )


@pytest.fixture(scope="module")
def model(cfg) -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model(cfg)


def _smooth_image(shape, seed=0, scale=1.0, offset=0.0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=shape)
    img = ndi.gaussian_filter(noise, sigma=[2, 2] + [0] * (len(shape) - 2))
    img = (img - img.min()) / (img.max() - img.min())
    return (img * scale + offset).astype(np.float32)


def _whole(model: keras.Model, image: np.ndarray, m: int) -> np.ndarray:
    """Reference: one model call on the whole image, reflect-padded to a multiple of m."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % m), (0, -w % m), (0, 0)), mode="reflect")
    return np.asarray(model.predict_on_batch(padded[None]))[0, :h, :w]


@pytest.fixture(scope="module")
def big(model, cfg):
    image = _smooth_image((1024, 1024))[..., None]
    calls = []
    tiled = predict_probabilities(model, image, cfg, progress=lambda done, total: calls.append((done, total)))
    return image, tiled, calls


def test_tiled_equals_whole_image_1024(model, cfg, big):
    image, tiled, calls = big
    assert halo(cfg) <= cfg.predict.overlap and tile_geometry(cfg) == (512, 64)
    assert tiled.shape == (1024, 1024, 1) and tiled.dtype == np.float32
    assert np.abs(tiled - _whole(model, image, cfg.size_multiple)).max() <= TOL
    # progress counts batches of tiles up to the total
    total = count_tiles(1024, 1024, cfg)
    assert total == 9
    assert calls[-1] == (total, total)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert len(calls) == -(-total // cfg.predict.batch_size)


def _seam_score(probs: np.ndarray, positions: list[int], m: int) -> float:
    """Worst log-ratio of the mean jump across a column boundary to that of columns in the same pooling phase."""
    jumps = np.abs(np.diff(probs, axis=1)).mean(axis=0)
    scores = []
    for q in positions:
        reference = np.mean([jumps[q - 1 + m * k] for k in (-3, -2, -1, 1, 2, 3)])
        scores.append(abs(np.log(jumps[q - 1] / reference)))
    return max(scores)


def test_no_seams_along_tile_borders(model, cfg, big):
    image, tiled, _ = big
    tile, context = tile_geometry(cfg)
    borders = [keep_from for _, keep_from, _ in _axis_tiles(1024, tile, context)[1:]]
    assert borders == [448, 576]
    m = cfg.size_multiple
    probs = tiled[..., 0]
    # Tiles without context, for contrast: the statistic does see seams.
    naive = np.zeros_like(probs)
    for y in range(0, 1024, 256):
        for x in range(0, 1024, 256):
            naive[y : y + 256, x : x + 256] = model.predict_on_batch(image[None, y : y + 256, x : x + 256])[0, ..., 0]
    assert _seam_score(naive, [256, 512, 768], m) > 0.3 or _seam_score(naive.T, [256, 512, 768], m) > 0.3
    assert _seam_score(probs, borders, m) < 0.1
    assert _seam_score(probs.T, borders, m) < 0.1


def test_tiled_equals_whole_on_non_multiple_size(model, cfg):
    image = _smooth_image((1000, 777), seed=1)[..., None]
    tiled = predict_probabilities(model, image, cfg)
    assert tiled.shape == (1000, 777, 1)
    assert count_tiles(1000, 777, cfg) > 1
    assert np.abs(tiled - _whole(model, image, cfg.size_multiple)).max() <= TOL


def test_small_overlap_is_raised_to_the_halo():
    cfg = Config().replace(
        model={"depth": 2, "base_filters": 4, "upsampling": "bilinear"},
        data={"patch_size": 32},
        predict={"tile_size": 64, "overlap": 4, "batch_size": 3},
    )
    keras.utils.set_random_seed(1)
    model = build_model(cfg)
    tile, context = tile_geometry(cfg)
    assert context >= halo(cfg) > 4 and context % cfg.size_multiple == 0 and tile > 2 * context
    image = _smooth_image((301, 190), seed=2)[..., None]
    assert count_tiles(301, 190, cfg) > 4
    assert np.abs(predict_probabilities(model, image, cfg) - _whole(model, image, 4)).max() <= TOL


@pytest.mark.parametrize("shape", [(40, 56), (13, 21), (3, 5)])
def test_image_smaller_than_a_tile_is_one_tile(model, cfg, shape):
    image = _smooth_image(shape, seed=3)
    assert count_tiles(*shape, cfg) == 1
    out = predict_probabilities(model, image, cfg)  # (H, W) accepted for one channel
    assert out.shape == (*shape, 1)
    np.testing.assert_allclose(out, _whole(model, image[..., None], cfg.size_multiple), atol=TOL)


def test_stop_raises(model, cfg, big):
    image = big[0]
    stop = threading.Event()
    stop.set()
    with pytest.raises(PredictionStopped):
        predict_probabilities(model, image, cfg, stop=stop)
    assert issubclass(PredictionStopped, NapariUNetError)
    stop.clear()
    seen = []

    def progress(done, total):
        seen.append(done)
        stop.set()  # stop after the first batch

    with pytest.raises(PredictionStopped):
        predict_probabilities(model, image, cfg, progress=progress, stop=stop)
    assert seen == [cfg.predict.batch_size]


def test_stack_slice_by_slice(model, cfg):
    stack = (np.stack([_smooth_image((72, 100), seed=s, scale=4000, offset=100 * s) for s in range(3)])).astype(
        np.uint16
    )
    calls = []
    result = predict_image(model, stack, cfg, progress=lambda d, t: calls.append((d, t)))
    assert isinstance(result, Prediction)
    assert result.probabilities.shape == (3, 72, 100, 1) and result.labels.shape == (3, 72, 100)
    assert calls[-1] == (3, 3)
    for i in range(3):
        single = predict_image(model, stack[i], cfg)
        assert single.probabilities.shape == (72, 100, 1) and single.labels.shape == (72, 100)
        np.testing.assert_allclose(result.probabilities[i], single.probabilities, atol=1e-6)
        np.testing.assert_array_equal(result.labels[i], single.labels)
        expected = _whole(model, normalize(stack[i][..., None], 1.0, 99.8), cfg.size_multiple)
        np.testing.assert_allclose(single.probabilities, expected, atol=TOL)
        np.testing.assert_array_equal(single.labels, probabilities_to_labels(single.probabilities, cfg))


def test_rgb_and_rgba_with_a_bundle_like_object():
    cfg = Config().replace(
        model={"depth": 2, "base_filters": 4},
        data={"in_channels": 3, "task": "classes", "n_classes": 3, "patch_size": 32},
        predict={"tile_size": 64, "overlap": 24},
    )
    keras.utils.set_random_seed(2)
    bundle = SimpleNamespace(model=build_model(cfg), config=cfg)
    rgb = (_smooth_image((150, 130, 3), seed=4) * 255).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((150, 130, 1), 255, np.uint8)], axis=-1)
    result = predict_image(bundle, rgb)
    assert result.probabilities.shape == (150, 130, 3) and result.labels.shape == (150, 130)
    np.testing.assert_allclose(result.probabilities.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.labels, np.argmax(result.probabilities, -1))
    np.testing.assert_allclose(predict_image(bundle, rgba).probabilities, result.probabilities, atol=1e-6)
    expected = _whole(bundle.model, normalize(rgb, 1.0, 99.8), cfg.size_multiple)
    np.testing.assert_allclose(result.probabilities, expected, atol=TOL)
    rgb_stack = np.stack([rgb, rgb[::-1]])
    assert predict_image(bundle, rgb_stack).probabilities.shape == (2, 150, 130, 3)


def test_wrong_inputs_raise(model, cfg):
    with pytest.raises(InputError):
        predict_probabilities(model, np.zeros((32, 32, 3), np.float32), cfg)
    with pytest.raises(ConfigError):
        predict_probabilities(model, np.zeros((32, 32), np.float32), cfg.replace(data={"task": "instances"}))
    with pytest.raises(ConfigError):
        predict_image(model, np.zeros((32, 32), np.float32))  # bare model needs a config
    with pytest.raises(InputError):
        predict_dask(model, da.zeros((4, 32, 32), chunks=16), cfg)


class _SpyArray:
    """Array-like that records the largest block read from it."""

    def __init__(self, data: np.ndarray):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.largest_read = 0

    def __getitem__(self, key):
        block = self.data[key]
        self.largest_read = max(self.largest_read, block.size)
        return block


def test_dask_equals_in_memory_and_reads_chunkwise():
    cfg = Config().replace(
        model={"depth": 3, "base_filters": 4, "batch_norm": True}, predict={"tile_size": 512, "overlap": 64}
    )
    keras.utils.set_random_seed(4)
    model = build_model(cfg)
    image = _smooth_image((2048, 2048), seed=5, scale=3000, offset=200).astype(np.uint16)
    spy = _SpyArray(image)
    darr = da.from_array(spy, chunks=512)
    lazy = predict_dask(model, darr, cfg)
    assert lazy.shape == (2048, 2048, 1) and lazy.dtype == np.float32
    assert lazy.numblocks[:2] != (1, 1)
    assert max(max(c) for c in lazy.chunks[:2]) <= 1024  # bounded work per task
    with dask.config.set(scheduler="threads", num_workers=2):
        out = lazy.compute()
    assert spy.largest_read <= 512 * 512
    bounds = subsample_bounds(darr, cfg)
    expected = predict_probabilities(model, normalize(image[..., None], bounds=bounds), cfg)
    assert np.abs(out - expected).max() <= TOL


def test_dask_rgb_non_multiple_with_given_bounds():
    cfg = Config().replace(
        model={"depth": 2, "base_filters": 4},
        data={"in_channels": 3, "task": "instances", "patch_size": 32},
        predict={"tile_size": 96, "overlap": 24},
    )
    keras.utils.set_random_seed(3)
    model = build_model(cfg)
    image = (_smooth_image((390, 333, 3), seed=6) * 255).astype(np.uint8)
    lazy = predict_dask(model, da.from_array(image, chunks=(100, 100, 3)), cfg, bounds=(10.0, 240.0))
    with dask.config.set(scheduler="synchronous"):
        out = lazy.compute()
    assert out.shape == (390, 333, 3)
    expected = predict_probabilities(model, normalize(image, bounds=(10.0, 240.0)), cfg)
    assert np.abs(out - expected).max() <= TOL
    np.testing.assert_allclose(out, _whole(model, normalize(image, bounds=(10.0, 240.0)), 4), atol=TOL)
