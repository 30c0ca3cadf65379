"""Sparse annotation (0 = not annotated, a dedicated background label): targets, loss, gradients, sampling."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from napari_unet.core.config import IGNORE_TARGET, LOSSES, Config
from napari_unet.core.data import PatchSampler
from napari_unet.core.errors import ConfigError
from napari_unet.core.losses import make_loss
from napari_unet.core.targets import labels_to_target

BG = 255
CASES = [("binary", loss) for loss in ("bce", "dice", "bce_dice", "focal")] + [
    (task, loss) for task in ("classes", "instances") for loss in LOSSES
]


def _sparse(task: str, loss: str = "auto") -> Config:
    return Config().replace(data={"task": task, "n_classes": 3, "sparse": True, "background_label": BG},
                            train={"loss": loss}, model={"depth": 1})  # fmt: skip


def _strokes(task: str, seed: int = 0, shape=(2, 24, 24)) -> np.ndarray:
    """Random strokes: most pixels unpainted (0), the rest background or objects/classes."""
    rng = np.random.default_rng(seed)
    values = np.array([BG, 1, 2]) if task != "binary" else np.array([BG, 1, 7])
    lab = values[rng.integers(0, 3, shape)]
    lab[rng.random(shape) < 0.6] = 0
    return lab.astype(np.int32)


def test_sparse_mapping_binary_classes_instances():
    lab = np.array([[0, BG, 1], [2, 2, 0]])
    binary = labels_to_target(lab, _sparse("binary").data)
    np.testing.assert_array_equal(binary, [[IGNORE_TARGET, 0, 1], [1, 1, IGNORE_TARGET]])
    classes = labels_to_target(lab, _sparse("classes").data)
    np.testing.assert_array_equal(classes, [[IGNORE_TARGET, 0, 1], [2, 2, IGNORE_TARGET]])


def test_instances_boundary_only_where_both_sides_are_annotated():
    cfg = _sparse("instances").replace(data={"boundary_width": 1}).data
    lab = np.zeros((9, 12), np.int32)
    lab[2:7, 1:5] = 3  # an object stroke next to unpainted pixels only
    lab[2:7, 7:10] = 4  # an object stroke with background painted on its right
    lab[2:7, 10:12] = BG
    t = labels_to_target(lab, cfg)
    assert set(np.unique(t[2:7, 1:5])) == {1}  # its edge says nothing: all interior
    assert np.all(t[2:7, 9] == 2) and np.all(t[2:7, 7:9] == 1)  # boundary against painted background only
    assert np.all(t[2:7, 10:12] == 0) and np.all(t[lab == 0] == IGNORE_TARGET)


def test_sparse_config_checks():
    with pytest.raises(ConfigError, match="class id"):
        Config().replace(data={"task": "classes", "n_classes": 4, "sparse": True, "background_label": 2}).validate()
    with pytest.raises(ConfigError, match="ignore_label"):
        Config().replace(data={"sparse": True, "ignore_label": 9}).validate()


@pytest.mark.parametrize("task,loss", CASES)
def test_ignored_pixels_do_not_change_loss_or_gradients(task, loss):
    """Predictions at unpainted pixels can be anything: same loss, zero gradient there."""
    cfg = _sparse(task, loss)
    target = np.stack([labels_to_target(plane, cfg.data) for plane in _strokes(task)])[..., None]
    ignored = target[..., 0] == IGNORE_TARGET
    assert ignored.any() and (~ignored).any()
    k = cfg.n_outputs

    def probs(seed: int) -> np.ndarray:
        p = np.random.default_rng(seed).random(target.shape[:3] + (k,)).astype(np.float32) + 0.05
        return p if k == 1 else p / p.sum(-1, keepdims=True)

    a, b = probs(2), probs(3)
    b[~ignored] = a[~ignored]  # differ only where nothing is painted
    fn = make_loss(cfg)

    def loss_and_grad(p: np.ndarray) -> tuple[float, np.ndarray]:
        var = tf.Variable(p)
        with tf.GradientTape() as tape:
            value = fn(tf.constant(target), var)
        return float(value), tape.gradient(value, var).numpy()

    (la, ga), (lb, gb) = loss_and_grad(a), loss_and_grad(b)
    assert la == pytest.approx(lb, rel=1e-6, abs=1e-7)
    np.testing.assert_allclose(ga, gb, atol=1e-7)
    assert np.all(ga[ignored] == 0)
    assert np.abs(ga[~ignored]).sum() > 0


def _pixelwise_model(cfg: Config) -> keras.Model:
    """1x1 convolutions only: a pixel's output depends on that pixel alone."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(4, 1, activation="relu")(inputs)
    act = "sigmoid" if cfg.n_outputs == 1 else "softmax"
    return keras.Model(inputs, keras.layers.Conv2D(cfg.n_outputs, 1, activation=act)(x))


@pytest.mark.parametrize("task", ["binary", "classes", "instances"])
def test_unpainted_image_pixels_do_not_change_loss_or_weight_gradients(task):
    """Through a model: change the image where nothing is painted; the loss and weight gradients stay."""
    cfg = _sparse(task)
    strokes = _strokes(task, seed=4)
    target = np.stack([labels_to_target(plane, cfg.data) for plane in strokes])[..., None]
    ignored = target[..., 0] == IGNORE_TARGET
    rng = np.random.default_rng(5)
    image = rng.random(strokes.shape + (1,)).astype(np.float32)
    other = image.copy()
    other[ignored] = rng.random((int(ignored.sum()), 1)).astype(np.float32) * 10
    model, fn = _pixelwise_model(cfg), make_loss(cfg)

    def run(x: np.ndarray) -> tuple[float, list[np.ndarray]]:
        with tf.GradientTape() as tape:
            value = fn(tf.constant(target), model(x, training=True))
        return float(value), [g.numpy() for g in tape.gradient(value, model.trainable_weights)]

    (la, ga), (lb, gb) = run(image), run(other)
    assert la == pytest.approx(lb, rel=1e-6)
    for g1, g2 in zip(ga, gb):
        np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)


def test_sparse_sampling_centres_patches_on_painted_pixels():
    cfg = _sparse("binary").replace(data={"patch_size": 16, "foreground_fraction": 0.5})
    lab = np.zeros((200, 200), np.int32)
    lab[20:24, 20:24] = 1
    lab[150:154, 150:154] = BG
    target = labels_to_target(lab, cfg.data)
    sampler = PatchSampler([np.zeros((200, 200, 1), np.float32)], [target], cfg)
    rng = np.random.default_rng(0)
    for _ in range(40):
        _i, top, left, _fg = sampler.window(rng)
        assert np.any(target[top : top + 16, left : left + 16] >= 0)  # never a patch without strokes
