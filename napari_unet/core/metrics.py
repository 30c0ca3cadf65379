"""Stateful Keras metrics (dice, iou, precision, recall, accuracy) that skip ignored pixels.

Each metric accumulates a pixel confusion matrix over the epoch (float64 counts, pixels with
target -1 left out). Predictions are `p > cfg.predict.threshold` for binary models and the argmax
for softmax models. What each score averages:

* binary: the foreground class;
* classes: the mean over the non-background classes (1..K-1) of the per-class score (macro average);
* instances: the foreground (interior and boundary merged against background);
* accuracy: share of non-ignored pixels whose class is right (all classes).

Empty cases follow `scores.py`: a zero denominator gives 1.0 when there is no error, else 0.0.
The numpy scores are re-exported here for convenience.
"""

from __future__ import annotations

import keras
from keras import ops

from .config import Config
from .scores import dice_score, iou_score, object_f1, per_class_dice, precision_recall  # noqa: F401

METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "precision", "recall", "accuracy")


class ConfusionMetric(keras.metrics.Metric):
    """One score computed from an accumulated confusion matrix (rows truth, columns prediction)."""

    def __init__(
        self,
        score: str,
        n_outputs: int,
        threshold: float = 0.5,
        name: str | None = None,
        foreground: bool = False,
        **kwargs,
    ):
        if score not in METRIC_NAMES:
            raise ValueError(f"Unknown score {score!r}; use one of {METRIC_NAMES}.")
        super().__init__(name=name or score, **kwargs)
        self.score = score
        self.n_outputs = int(n_outputs)
        self.n_classes = max(self.n_outputs, 2)
        self.threshold = float(threshold)
        self.foreground = bool(foreground)  # score all non-background classes as one foreground
        self.confusion = self.add_weight(
            name="confusion", shape=(self.n_classes * self.n_classes,), initializer="zeros", dtype="float64"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        probs = ops.cast(y_pred, "float32")
        truth = ops.cast(ops.round(ops.cast(y_true, "float32")), "int32")
        if len(truth.shape) == len(probs.shape):
            truth = ops.squeeze(truth, axis=-1)
        if self.n_outputs == 1:
            pred = ops.cast(probs[..., 0] > self.threshold, "int32")
        else:
            pred = ops.cast(ops.argmax(probs, axis=-1), "int32")
        valid = ops.cast(truth >= 0, "float32")
        if sample_weight is not None:
            valid = valid * ops.reshape(ops.cast(sample_weight, "float32"), ops.shape(valid))
        index = ops.clip(truth, 0, self.n_classes - 1) * self.n_classes + pred
        counts = ops.bincount(ops.reshape(index, (-1,)), weights=ops.reshape(valid, (-1,)), minlength=self.n_classes**2)
        self.confusion.assign_add(ops.cast(counts, "float64"))

    def result(self):
        cm = ops.reshape(self.confusion, (self.n_classes, self.n_classes))
        tp = ops.diagonal(cm)
        fp = ops.sum(cm, axis=0) - tp
        fn = ops.sum(cm, axis=1) - tp
        if self.score == "accuracy":
            correct, total = ops.sum(tp), ops.sum(cm)
            return ops.cast(_ratio(correct, total, total - correct), "float32")
        if self.foreground:  # non-background classes merged: one foreground
            fg = cm[1:, 1:]
            tp, fp, fn = ops.sum(fg)[None], ops.sum(cm[0, 1:])[None], ops.sum(cm[1:, 0])[None]
        else:
            tp, fp, fn = tp[1:], fp[1:], fn[1:]  # foreground class(es) only
        if self.score == "dice":
            per_class = _ratio(2.0 * tp, 2.0 * tp + fp + fn, fp + fn)
        elif self.score == "iou":
            per_class = _ratio(tp, tp + fp + fn, fp + fn)
        elif self.score == "precision":
            per_class = _ratio(tp, tp + fp, fn)
        else:
            per_class = _ratio(tp, tp + fn, fp)
        return ops.cast(ops.mean(per_class), "float32")

    def get_config(self):
        return {
            **super().get_config(),
            "score": self.score,
            "n_outputs": self.n_outputs,
            "threshold": self.threshold,
            "foreground": self.foreground,
        }


def make_metrics(cfg: Config) -> list[keras.metrics.Metric]:
    """Fresh `dice`, `iou`, `precision`, `recall`, `accuracy` metrics for `cfg`'s task.

    For instances the scores are of the foreground (interior and boundary together), which is what
    the masks show; the validation logs of `train.py` add interior and boundary Dice separately.
    """
    foreground = cfg.data.task == "instances"
    return [ConfusionMetric(name, cfg.n_outputs, cfg.predict.threshold, foreground=foreground) for name in METRIC_NAMES]


def _ratio(num, den, errors):
    """num / den; where den is 0: 1.0 without errors, else 0.0 (the scores.py convention)."""
    safe = ops.where(den > 0, den, ops.ones_like(den))
    empty = ops.where(errors > 0, ops.zeros_like(den), ops.ones_like(den))
    return ops.where(den > 0, num / safe, empty)
