"""Losses and Keras metrics: perfect/inverted predictions, ignored pixels, class weights, fit."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from napari_unet.core.config import LOSSES, Config
from napari_unet.core.losses import make_loss
from napari_unet.core.metrics import METRIC_NAMES, make_metrics
from napari_unet.core.scores import dice_score, iou_score, per_class_dice, precision_recall
from napari_unet.core.targets import target_to_probabilities

CASES = [("binary", loss) for loss in ("bce", "dice", "bce_dice", "focal")] + [
    (task, loss) for task in ("classes", "instances") for loss in LOSSES
]


def _cfg(task: str, loss: str = "auto", **train) -> Config:
    return Config().replace(data={"task": task, "n_classes": 4}, train={"loss": loss, **train})


def _targets(cfg: Config, seed: int = 0, shape=(2, 16, 16)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, max(cfg.n_outputs, 2), shape)
    t[rng.random(shape) < 0.2] = -1
    return t[..., None].astype(np.int32)


def _inverted(target: np.ndarray, k: int) -> np.ndarray:
    t = np.maximum(target[..., 0], 0)
    if k == 1:
        return 1.0 - target_to_probabilities(t, 1)
    return target_to_probabilities((t + 1) % k, k)


@pytest.mark.parametrize("task,loss", CASES)
def test_perfect_low_inverted_high_ignored_free(task, loss):
    cfg = _cfg(task, loss)
    fn = make_loss(cfg)
    assert fn.__name__ == f"{loss}_loss"
    y = _targets(cfg)
    k = cfg.n_outputs
    perfect = target_to_probabilities(y[..., 0], k)
    inverted = _inverted(y, k)
    rng = np.random.default_rng(1)
    random = rng.random(perfect.shape).astype(np.float32)
    random = random if k == 1 else random / random.sum(-1, keepdims=True)
    low, high, mid = (float(fn(y, p)) for p in (perfect, inverted, random))
    assert low < 1e-3
    assert high > 0.9
    assert low < mid < high
    # Whatever the network says at ignored pixels must not change the loss.
    scrambled = np.where(y == -1, inverted, perfect).astype(np.float32)
    assert float(fn(y, scrambled)) == pytest.approx(low, abs=1e-6)
    changed = np.where(y == -1, perfect, random).astype(np.float32)
    assert float(fn(y, changed)) == pytest.approx(float(fn(y, np.where(y == -1, inverted, random))), rel=1e-5)


def test_class_weights_scale_their_pixels():
    y = _targets(_cfg("binary"))
    pred = np.full(y.shape, 0.3, np.float32)  # foreground under-predicted
    plain = make_loss(_cfg("binary", "bce"))(y, pred)
    same = make_loss(_cfg("binary", "bce", class_weights=[1.0, 1.0]))(y, pred)
    heavy_fg = make_loss(_cfg("binary", "bce", class_weights=[1.0, 5.0]))(y, pred)
    assert float(same) == pytest.approx(float(plain))
    valid = y >= 0
    fg, bg = (y == 1) & valid, (y == 0) & valid
    expected = (5 * fg.sum() * -np.log(0.3) + bg.sum() * -np.log(0.7)) / valid.sum()
    assert float(heavy_fg) == pytest.approx(expected, rel=1e-4)
    cfg = _cfg("instances", "cce", class_weights=[0.0, 1.0, 1.0])
    yi = _targets(cfg)
    wrong_bg = np.where(yi == 0, _inverted(yi, 3), target_to_probabilities(yi[..., 0], 3))
    assert float(make_loss(cfg)(yi, wrong_bg)) < 1e-3, "weight 0 removes the background class"


def test_mixed_precision_predictions_and_float_targets():
    cfg = _cfg("classes", "cce_dice")
    y = _targets(cfg)
    p = target_to_probabilities(y[..., 0], 4)
    out = make_loss(cfg)(y.astype(np.float32), p.astype(np.float16))
    assert keras.backend.standardize_dtype(out.dtype) == "float32" and float(out) < 1e-3


@pytest.mark.parametrize("task", ["binary", "classes", "instances"])
def test_metrics_match_numpy_scores(task):
    cfg = _cfg(task).replace(predict={"threshold": 0.4})
    k = cfg.n_outputs
    metrics = {m.name: m for m in make_metrics(cfg)}
    assert tuple(metrics) == METRIC_NAMES
    rng = np.random.default_rng(3)
    ys, ps = [_targets(cfg, seed=s) for s in (5, 6)], []
    for y in ys:  # two batches: the state must accumulate
        p = rng.random(y.shape[:-1] + (k,)).astype(np.float32)
        p = p if k == 1 else p / p.sum(-1, keepdims=True)
        ps.append(p)
        for m in metrics.values():
            m.update_state(y, p)
    y = np.concatenate(ys)[..., 0]
    p = np.concatenate(ps)
    pred = (p[..., 0] > 0.4).astype(int) if k == 1 else p.argmax(-1)
    ignore = y < 0
    if task == "binary":
        expected = {"dice": dice_score(pred, y == 1, ignore), "iou": iou_score(pred, y == 1, ignore)}
        expected["precision"], expected["recall"] = precision_recall(pred, y == 1, ignore)
    elif task == "instances":  # foreground scores: interior and boundary are one foreground
        fg_pred, fg_true = pred > 0, y > 0
        expected = {"dice": dice_score(fg_pred, fg_true, ignore), "iou": iou_score(fg_pred, fg_true, ignore)}
        expected["precision"], expected["recall"] = precision_recall(fg_pred, fg_true, ignore)
    else:
        classes = range(1, k)
        expected = {
            "dice": np.mean(per_class_dice(pred, y, k)[1:]),
            "iou": np.mean([iou_score(pred == c, y == c, ignore) for c in classes]),
            "precision": np.mean([precision_recall(pred == c, y == c, ignore)[0] for c in classes]),
            "recall": np.mean([precision_recall(pred == c, y == c, ignore)[1] for c in classes]),
        }
    expected["accuracy"] = np.mean(pred[~ignore] == y[~ignore])
    for name, value in expected.items():
        assert float(metrics[name].result()) == pytest.approx(value, abs=1e-5), name
    for m in metrics.values():
        m.reset_state()
        assert float(m.result()) == 1.0  # nothing seen: no errors (scores.py convention)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_compile_and_fit_with_ignored_pixels(policy):
    cfg = _cfg("instances")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        inputs = keras.Input((None, None, 1))
        # Under mixed precision this head outputs float16: the loss and metrics must cast.
        outputs = keras.layers.Conv2D(3, 3, padding="same", activation="softmax")(inputs)
        model = keras.Model(inputs, outputs)
    finally:
        keras.config.set_dtype_policy(previous)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=make_loss(cfg), metrics=make_metrics(cfg))
    y = _targets(cfg, shape=(8, 16, 16))
    x = np.where(y == 1, 1.0, 0.0).astype(np.float32)  # a learnable signal
    history = model.fit(x, y, batch_size=4, epochs=3, verbose=0, validation_data=(x, y))
    logs = history.history
    for name in ("loss", *METRIC_NAMES, "val_loss", "val_dice"):
        assert name in logs and np.all(np.isfinite(logs[name])), name
    assert logs["loss"][-1] < logs["loss"][0]
