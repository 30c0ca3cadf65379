"""Property-based tests (hypothesis) of the tiling and data-to-target functions.

* Tiling: for any image shape, dtype, channel count, tile size, overlap and batch size, tiled
  prediction equals one whole-image call of the network (within 1e-3), in memory and with dask.
* Targets: for any label dtype and shape, labels -> target -> labels gives back the labels
  (binary: the foreground; classes: the ids), ignored pixels excepted, and the dtype never matters.
  tests/core/test_targets.py checks the instance trimap against a brute-force reference and the
  instance round trip on touching objects; this extends it to dtypes, shapes and ignore labels.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reliability_helpers import tiny_config

from napari_unet.core.config import Config
from napari_unet.core.errors import InputError
from napari_unet.core.targets import labels_to_target, target_to_labels

IMAGE_DTYPES = [np.uint8, np.uint16, np.int8, np.int32, np.float32, np.float64, np.bool_]


@functools.lru_cache(maxsize=4)
def sharp_model(channels: int, task: str = "binary"):
    """A tiny untrained U-Net whose head is scaled up, so probabilities span 0..1 instead of ~0.5
    (a comparison of near-constant outputs could not fail)."""
    import keras

    from napari_unet.core.model import build_model

    keras.utils.set_random_seed(channels)
    model = build_model(tiny_config(data={"in_channels": channels, "task": task}))
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 8.0, bias])
    return model


def whole_image(model, image: np.ndarray, multiple: int) -> np.ndarray:
    """The reference: one network call on the image reflect-padded to a multiple of the pooling size."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % multiple), (0, -w % multiple), (0, 0)), mode="reflect")
    return np.asarray(model(padded[None], training=False))[0, :h, :w]


@st.composite
def images(draw, max_side: int = 150):
    channels = draw(st.sampled_from([1, 3]))
    dtype = draw(st.sampled_from(IMAGE_DTYPES))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    raw = rng.normal(100, 40, (h, w, channels))
    if dtype is np.bool_:
        image = raw > 100
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        image = np.clip(raw, info.min, info.max).astype(dtype)
    else:
        image = raw.astype(dtype)
    return image if channels == 3 else image[..., 0]


@st.composite
def tilings(draw):
    tile = 4 * draw(st.integers(2, 40))  # 8..160 pixels
    overlap = draw(st.integers(0, tile // 2 - 1))
    return {"tile_size": tile, "overlap": overlap, "batch_size": draw(st.integers(1, 4))}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image=images(), tiling=tilings())
@example(  # many tiles in both directions, a partial last batch
    image=np.random.default_rng(1).integers(0, 255, (150, 141), dtype=np.uint8),
    tiling={"tile_size": 8, "overlap": 0, "batch_size": 3},
)
def test_tiled_prediction_equals_the_whole_image(image, tiling):
    from napari_unet.core.normalize import as_samples, normalize
    from napari_unet.core.predict import count_tiles, predict_image, predict_probabilities

    channels = 3 if image.ndim == 3 else 1
    cfg = tiny_config(data={"in_channels": channels}, predict=tiling)
    model = sharp_model(channels)
    sample = normalize(as_samples(image, in_channels=channels)[0][0], cfg.data.norm_low, cfg.data.norm_high)
    expected = whole_image(model, sample, cfg.size_multiple)
    tiled = predict_probabilities(model, sample, cfg)
    if image.shape[:2] == (150, 141):
        assert count_tiles(150, 141, cfg) >= 9
    assert tiled.shape == image.shape[:2] + (1,)
    np.testing.assert_allclose(tiled, expected, atol=1e-3, rtol=0)
    # predict_image (any dtype and layout in, normalised inside) gives the same numbers.
    np.testing.assert_allclose(predict_image(model, image, cfg).probabilities, tiled, atol=1e-6, rtol=0)


def test_the_tiling_property_can_fail():
    """Control: the comparison above detects a network with a wrong context (tiles too small for it)."""
    from napari_unet.core import predict

    cfg = tiny_config(predict={"tile_size": 64, "overlap": 0})
    model = sharp_model(1)
    sample = np.random.default_rng(0).random((150, 150, 1), dtype=np.float32)
    expected = whole_image(model, sample, cfg.size_multiple)
    original = predict.tile_geometry
    try:
        predict.tile_geometry = lambda c: (64, 4)  # less context than the network's 23-pixel halo
        wrong = predict.predict_probabilities(model, sample, cfg)
    finally:
        predict.tile_geometry = original
    assert np.abs(wrong - expected).max() > 1e-2
    assert expected.max() - expected.min() > 0.2, "the sharpened head spreads the probabilities"


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(40, 260), st.integers(40, 260)),
    chunks=st.integers(17, 300),
    tile=st.sampled_from([64, 96, 128]),
)
def test_dask_prediction_equals_the_in_memory_one(shape, chunks, tile):
    import dask
    import dask.array as da

    from napari_unet.core.normalize import normalize
    from napari_unet.core.predict import predict_dask, predict_probabilities

    cfg = tiny_config(predict={"tile_size": tile, "overlap": 24})
    model = sharp_model(1)
    image = np.random.default_rng(shape[0] * 1000 + shape[1]).normal(50, 10, shape).astype(np.float32)
    bounds = (20.0, 80.0)
    lazy = predict_dask(model, da.from_array(image, chunks=chunks), cfg, bounds=bounds)
    with dask.config.set(scheduler="threads", num_workers=2):
        result = lazy.compute()
    expected = predict_probabilities(model, normalize(image[..., None], bounds=bounds), cfg)
    np.testing.assert_allclose(result, expected, atol=1e-3, rtol=0)


# ---------------------------------------------------------------- labels <-> targets

LABEL_DTYPES = [np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int64, np.float32, np.bool_]


@st.composite
def label_images(draw):
    dtype = draw(st.sampled_from(LABEL_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=30))
    if dtype is np.bool_:
        return draw(hnp.arrays(dtype, shape, elements=st.booleans()))
    low = -2 if np.issubdtype(dtype, np.signedinteger) or np.issubdtype(dtype, np.floating) else 0
    return draw(hnp.arrays(dtype, shape, elements=st.integers(low, 5)))


@settings(max_examples=80, deadline=None)
@given(lab=label_images(), task=st.sampled_from(["binary", "classes"]), ignore=st.sampled_from([None, 5, -2]))
def test_labels_round_trip_through_targets_for_any_dtype(lab, task, ignore):
    cfg = Config().replace(data={"task": task, "n_classes": 6, "ignore_label": ignore})
    values = lab.astype(np.int64)
    ignored = values == ignore if ignore is not None else np.zeros(values.shape, bool)
    if np.any((values < 0) & ~ignored):
        with pytest.raises(InputError, match="negative value"):
            labels_to_target(lab, cfg.data)
        return
    target = labels_to_target(lab, cfg.data)
    assert target.dtype == np.int32 and target.shape == lab.shape
    # The dtype of the label image never changes the target.
    np.testing.assert_array_equal(target, labels_to_target(values, cfg.data))
    np.testing.assert_array_equal(target == -1, ignored)
    expected = np.where(ignored, 0, values > 0 if task == "binary" else values)
    np.testing.assert_array_equal(target_to_labels(target, cfg), expected)


@settings(max_examples=40, deadline=None)
@given(lab=label_images(), width=st.integers(1, 3))
def test_instance_targets_do_not_depend_on_the_label_dtype(lab, width):
    values = np.abs(lab.astype(np.int64))  # instance ids are non-negative
    cfg = Config().replace(data={"task": "instances", "boundary_width": width})
    reference = labels_to_target(values, cfg.data)
    for dtype in (np.uint16, np.uint32, np.int64, np.float64):
        np.testing.assert_array_equal(labels_to_target(values.astype(dtype), cfg.data), reference)
    assert set(np.unique(reference)) <= {0, 1, 2}
    recovered = target_to_labels(reference, cfg)
    np.testing.assert_array_equal(recovered > 0, values > 0)  # the foreground survives the round trip
