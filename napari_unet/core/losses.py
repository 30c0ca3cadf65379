"""Segmentation losses for Keras 3: BCE, Dice, BCE+Dice, sparse CCE, focal, CCE+Dice.

Every loss takes `y_true` int `(B, H, W, 1)` (class ids, `IGNORE_TARGET` = -1 for pixels that
must not count) and `y_pred` probabilities `(B, H, W, K)` (sigmoid K=1 for binary, softmax
otherwise). Ignored pixels get weight 0 in every term. `train.class_weights` (one per class;
binary: background, foreground) become per-pixel weights, as in the Keras MobileNetV2 U-Net
tutorial. Pixel-wise losses are sum(weight * loss) / number of non-ignored pixels.
The result is a plain function, so models saved with `compile=False` need no custom objects.
"""

from __future__ import annotations

from collections.abc import Callable

from keras import ops

from .config import LOSSES, Config
from .errors import ConfigError

EPSILON = 1e-7
DICE_SMOOTH = 1.0
FOCAL_GAMMA = 2.0

LossFn = Callable[[object, object], object]


def make_loss(cfg: Config) -> LossFn:
    """The loss `cfg.loss` names, as a function `(y_true, y_pred) -> scalar float32`."""
    name = cfg.loss
    if name not in LOSSES:
        raise ConfigError(f"Unknown loss {name!r}; use one of {', '.join(LOSSES)}.")
    n_outputs = cfg.n_outputs
    weights = cfg.train.class_weights
    if weights is not None and len(weights) != max(n_outputs, 2):
        raise ConfigError(
            f"train.class_weights has {len(weights)} values; the {cfg.data.task} task needs {max(n_outputs, 2)}."
        )
    parts = {
        "bce": (_bce,),
        "dice": (_dice,),
        "bce_dice": (_bce, _dice),
        "cce": (_cce,),
        "focal": (_focal,),
        "cce_dice": (_cce, _dice),
    }[name]

    def loss(y_true, y_pred):
        probs, labels, pixel_weight, n_valid = _prepare(y_true, y_pred, weights)
        total = parts[0](probs, labels, pixel_weight, n_valid)
        for part in parts[1:]:
            total = total + part(probs, labels, pixel_weight, n_valid)
        return total

    loss.__name__ = f"{name}_loss"
    loss.__qualname__ = loss.__name__
    return loss


def _prepare(y_true, y_pred, weights):
    """float32 probabilities, class ids with ignored pixels at 0, per-pixel weights, valid count."""
    probs = ops.cast(y_pred, "float32")
    # Keras casts y_true to the loss dtype (float); round back to class ids.
    labels = ops.cast(ops.round(ops.cast(y_true, "float32")), "int32")
    if len(labels.shape) == len(probs.shape):
        labels = ops.squeeze(labels, axis=-1)
    valid = ops.cast(labels >= 0, "float32")
    labels = ops.maximum(labels, 0)
    pixel_weight = valid
    if weights is not None:
        table = ops.convert_to_tensor([float(w) for w in weights], dtype="float32")
        pixel_weight = valid * ops.take(table, labels)
    n_valid = ops.maximum(ops.sum(valid), 1.0)
    return probs, labels, pixel_weight, n_valid


def _one_hot(labels, probs):
    k = probs.shape[-1]
    if k == 1:
        return ops.expand_dims(ops.cast(labels > 0, "float32"), -1)
    return ops.one_hot(labels, k, dtype="float32")


def _bce(probs, labels, pixel_weight, n_valid):
    p = ops.clip(probs, EPSILON, 1.0 - EPSILON)
    y = _one_hot(labels, probs)
    per_pixel = -ops.mean(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p), axis=-1)
    return ops.sum(pixel_weight * per_pixel) / n_valid


def _cce(probs, labels, pixel_weight, n_valid):
    p_true = ops.sum(_one_hot(labels, probs) * probs, axis=-1)
    per_pixel = -ops.log(ops.clip(p_true, EPSILON, 1.0))
    return ops.sum(pixel_weight * per_pixel) / n_valid


def _focal(probs, labels, pixel_weight, n_valid):
    """Focal loss (gamma 2): sigmoid form for K=1, categorical form otherwise."""
    y = _one_hot(labels, probs)
    if probs.shape[-1] == 1:
        p_true = ops.squeeze(y * probs + (1.0 - y) * (1.0 - probs), axis=-1)
    else:
        p_true = ops.sum(y * probs, axis=-1)
    p_true = ops.clip(p_true, EPSILON, 1.0)
    per_pixel = -ops.power(1.0 - p_true, FOCAL_GAMMA) * ops.log(p_true)
    return ops.sum(pixel_weight * per_pixel) / n_valid


def _dice(probs, labels, pixel_weight, n_valid):
    """1 - soft Dice over the batch: of the foreground for K=1, mean over all classes otherwise."""
    y = _one_hot(labels, probs)
    w = ops.expand_dims(pixel_weight, -1)
    axes = tuple(range(len(probs.shape) - 1))
    intersection = ops.sum(w * probs * y, axis=axes)
    denominator = ops.sum(w * (probs + y), axis=axes)
    dice = (2.0 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
    return 1.0 - ops.mean(dice)
