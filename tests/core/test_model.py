"""U-Net builders: every variant builds, runs on odd sizes, reloads in safe mode; halo; devices."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from napari_unet.core.config import Config
from napari_unet.core.errors import ConfigError
from napari_unet.core.model import build_model, configure_devices, cpu_has_bfloat16, device_info, float32_model, halo, training_scope

VARIANTS = [
    # depth, batch_norm, dropout, upsampling, in_channels, task
    (1, False, 0.0, "transpose", 1, "binary"),
    (2, True, 0.0, "transpose", 1, "binary"),
    (2, False, 0.3, "bilinear", 3, "classes"),
    (3, True, 0.5, "bilinear", 4, "instances"),
    (3, True, 0.0, "transpose", 3, "instances"),
    (4, False, 0.2, "transpose", 1, "classes"),
]


def _cfg(depth=2, batch_norm=True, dropout=0.0, upsampling="transpose", in_channels=1, task="binary", **model):
    return Config().replace(
        model={"depth": depth, "base_filters": 4, "batch_norm": batch_norm, "dropout": dropout,
               "upsampling": upsampling, **model},
        data={"task": task, "n_classes": 4, "in_channels": in_channels, "patch_size": 64},
        predict={"tile_size": 128, "overlap": 16},
    )


def _count(model: keras.Model, kind: type) -> int:
    return sum(isinstance(layer, kind) for layer in model.layers)


@pytest.mark.parametrize(("depth", "batch_norm", "dropout", "upsampling", "channels", "task"), VARIANTS)
def test_variants_build_and_run_on_odd_sizes(depth, batch_norm, dropout, upsampling, channels, task):
    cfg = _cfg(depth, batch_norm, dropout, upsampling, channels, task)
    model = build_model(cfg)
    assert model.input_shape == (None, None, None, channels)
    assert model.output_shape == (None, None, None, cfg.n_outputs)
    assert model.input.name == "image"
    assert _count(model, keras.layers.MaxPooling2D) == depth
    assert (_count(model, keras.layers.BatchNormalization) > 0) == batch_norm
    assert _count(model, keras.layers.Dropout) == (2 if dropout else 0)
    assert _count(model, keras.layers.Conv2DTranspose) == (depth if upsampling == "transpose" else 0)
    assert _count(model, keras.layers.UpSampling2D) == (depth if upsampling == "bilinear" else 0)
    m = cfg.size_multiple
    rng = np.random.default_rng(depth)
    # Several sizes: the third makes Keras retrace predict with unknown height and width.
    for batch, h, w in ((2, 3 * m, 5 * m), (1, 5 * m, 3 * m), (3, 7 * m, m)):
        x = rng.uniform(size=(batch, h, w, channels)).astype(np.float32)
        y = np.asarray(model.predict_on_batch(x))
        assert y.shape == (batch, h, w, cfg.n_outputs) and y.dtype == np.float32
        assert np.all((y >= 0) & (y <= 1))
        if cfg.n_outputs > 1:
            np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)


def test_bilinear_upsampling_matches_image_resize():
    model = build_model(_cfg(2, False, 0.0, "bilinear"))
    up = keras.Sequential([model.get_layer("up1"), model.get_layer("up1_bilinear")])
    x = np.random.default_rng(0).normal(size=(2, 10, 14, 16)).astype(np.float32)
    expected = tf.image.resize(x, (20, 28), "bilinear").numpy()
    np.testing.assert_allclose(np.asarray(up(x))[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5)
    assert not model.get_layer("up1_bilinear").trainable


@pytest.mark.parametrize("architecture", ["unet", "mobilenetv2"])
def test_safe_mode_roundtrip(tmp_path, architecture):
    if architecture == "unet":
        cfg = _cfg(3, True, 0.4, "bilinear", 1, "classes")
    else:
        cfg = _cfg(in_channels=3, task="instances", architecture="mobilenetv2").replace(
            data={"patch_size": 64}, predict={"tile_size": 128}
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    x = np.random.default_rng(0).uniform(size=(1, 64, 96, cfg.data.in_channels)).astype(np.float32)
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), atol=1e-6)


def _mobilenet_cfg(weights=None) -> Config:
    return Config().replace(
        model={"architecture": "mobilenetv2", "encoder_weights": weights},
        data={"in_channels": 3, "task": "binary", "patch_size": 64},
        predict={"tile_size": 128, "overlap": 32},
    )


def test_mobilenet_without_weights_warns_and_runs():
    with pytest.warns(UserWarning, match="untrained"):
        model = build_model(_mobilenet_cfg())
    y = model(np.zeros((1, 96, 160, 3), np.float32), training=False)
    assert tuple(y.shape) == (1, 96, 160, 1)
    assert model.get_layer("block_16_project") is not None


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_mobilenet_loads_local_encoder_weights(tmp_path, suffix):
    encoder = keras.applications.MobileNetV2(input_shape=(None, None, 3), include_top=False, weights=None)
    # Give the file recognisable values, unlike any fresh initialisation.
    kernel = encoder.get_layer("block_3_depthwise").get_weights()
    encoder.get_layer("block_3_depthwise").set_weights([np.full_like(kernel[0], 0.125)])
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".keras":
        encoder.save(path)
    else:
        encoder.save_weights(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "untrained" warning with weights
        model = build_model(_mobilenet_cfg(str(path)))
    names = {layer.name for layer in model.layers}
    compared = 0
    for layer in encoder.layers:
        if layer.weights and layer.name in names:
            for a, b in zip(layer.get_weights(), model.get_layer(layer.name).get_weights(), strict=True):
                np.testing.assert_array_equal(a, b)
            compared += 1
    assert compared > 50
    assert np.all(model.get_layer("block_3_depthwise").get_weights()[0] == 0.125)


def test_mobilenet_bad_weights_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no file"):
        build_model(_mobilenet_cfg(str(tmp_path / "missing.weights.h5")))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file")
    with pytest.raises(ConfigError, match="could not be read"):
        build_model(_mobilenet_cfg(str(garbage)))


def _measured_reach(model: keras.Model, size_multiple: int, n: int = 192) -> int:
    """Farthest output pixel a single-pixel input change reaches (over all pooling phases)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, n, n, 1)).astype(np.float32)
    base = model.predict_on_batch(x)
    reach = 0
    for offset in range(size_multiple):
        c = n // 2 + offset
        changed = x.copy()
        changed[0, c, c, 0] += 10.0
        diff = np.abs(model.predict_on_batch(changed) - base)[0].max(axis=-1)
        rows = np.nonzero(diff.max(axis=1) > 0)[0]
        cols = np.nonzero(diff.max(axis=0) > 0)[0]
        reach = max(reach, int(np.abs(rows - c).max()), int(np.abs(cols - c).max()))
    return reach


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_halo_bounds_the_measured_receptive_field(upsampling):
    keras.utils.set_random_seed(0)
    cfg = _cfg(2, False, 0.0, upsampling)
    reach = _measured_reach(build_model(cfg), cfg.size_multiple)
    assert reach <= halo(cfg)
    assert reach >= halo(cfg) - 2  # computed, not a loose guess


def test_halo_values():
    assert [halo(_cfg(depth=d).replace(data={"patch_size": 128})) for d in (1, 2, 3, 4)] == [9, 23, 51, 107]
    assert halo(_cfg(depth=3, upsampling="bilinear")) == 65
    assert halo(_mobilenet_cfg()) == 276
    assert halo(Config()) <= Config().predict.overlap  # the default model tiles exactly with the default overlap


def test_configure_devices_on_cpu_resets_policy_and_mixed_precision_output_is_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(_cfg())
        assert model.layers[-1].dtype_policy.compute_dtype == "float32"
        assert model.output.dtype == "float32"
        assert model.get_layer("enc0_conv1").dtype_policy.compute_dtype == "float16"
        y = np.asarray(model.predict_on_batch(np.ones((1, 16, 16, 1), np.float32)))
        assert y.dtype == np.float32 and np.isfinite(y).all()
        strategy = configure_devices(_cfg())
        expected = "mixed_bfloat16" if cpu_has_bfloat16() else "float32"  # no GPU here
        assert keras.mixed_precision.global_policy().name == expected
        assert strategy.num_replicas_in_sync == 1
        configure_devices(_cfg().replace(train={"mixed_precision": "off"}))
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_training_scope_restores_the_global_policy_and_built_layers_keep_theirs():
    expected = "mixed_bfloat16" if cpu_has_bfloat16() else "float32"
    with training_scope(_cfg()):
        assert keras.mixed_precision.global_policy().name == expected
        model = build_model(_cfg())
    assert keras.mixed_precision.global_policy().name == "float32"
    assert model.get_layer("enc0_conv1").dtype_policy.name == expected
    with pytest.raises(RuntimeError), training_scope(_cfg()):
        raise RuntimeError("a failed build")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_cpu_bfloat16_detection_reads_the_cpu_flags():
    flags = open("/proc/cpuinfo", encoding="ascii", errors="replace").read().split()
    assert cpu_has_bfloat16() == ("amx_bf16" in flags or "avx512_bf16" in flags)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_float32_model_keeps_the_weights_and_computes_in_float32(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        mixed = build_model(_cfg())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    plain = float32_model(mixed, _cfg())
    assert plain is not mixed
    assert {layer.dtype_policy.name for layer in plain.layers} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(mixed.get_weights(), plain.get_weights()))
    x = np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)
    low, full = np.asarray(mixed.predict_on_batch(x)), np.asarray(plain.predict_on_batch(x))
    assert np.abs(low - full).max() < 0.05  # the same network, at 16-bit rounding
    assert keras.mixed_precision.global_policy().name == "float32"
    assert float32_model(plain, _cfg()) is plain


def test_device_info_is_cheap_and_readable():
    info = device_info()
    assert info.startswith(("CPU (", "GPU: "))
    assert device_info() is info  # cached
