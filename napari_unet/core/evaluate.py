"""Scores of a model's whole-image predictions against ground-truth label images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from skimage.measure import label

from .config import Config
from .data import TrainingPair
from .normalize import as_samples
from .predict import predict_image
from .scores import dice_score, iou_score, object_f1, precision_recall


def score_labels(pred_labels: np.ndarray, gt_labels: np.ndarray, cfg: Config) -> dict[str, float]:
    """Foreground Dice, IoU, precision, recall; object F1@0.5 (binary: connected components)."""
    if cfg.data.ignore_label is not None:
        valid = gt_labels != cfg.data.ignore_label
        gt_labels = np.where(valid, gt_labels, 0)
        pred_labels = np.where(valid, pred_labels, 0)
    pred_fg, gt_fg = pred_labels > 0, gt_labels > 0
    precision, recall = precision_recall(pred_fg, gt_fg)
    out = {
        "dice": float(dice_score(pred_fg, gt_fg)),
        "iou": float(iou_score(pred_fg, gt_fg)),
        "precision": float(precision),
        "recall": float(recall),
    }
    if cfg.data.task == "instances":
        out["object_f1"] = float(object_f1(pred_labels, gt_labels, 0.5))
    elif cfg.data.task == "binary":
        # Objects of a binary mask are its connected components.
        out["object_f1"] = float(object_f1(label(pred_fg), gt_labels if gt_labels.max() > 1 else label(gt_fg), 0.5))
    return out


def evaluate_pairs(model: Any, cfg: Config, pairs: Sequence[TrainingPair]) -> dict[str, Any]:
    """Per-image and mean scores; stacks count slice by slice."""
    per_image: dict[str, dict[str, float]] = {}
    for pair in pairs:
        result = predict_image(model, pair.image, cfg)
        _, gt_list = as_samples(pair.image, pair.labels, cfg.data.in_channels, pair.name)
        preds = result.labels if result.labels.ndim == 3 else result.labels[None]
        for i, (pred, gt) in enumerate(zip(preds, gt_list)):
            key = pair.name if len(gt_list) == 1 else f"{pair.name}[{i}]"
            per_image[key] = score_labels(pred, gt, cfg)
    keys = next(iter(per_image.values())).keys() if per_image else []
    mean = {k: float(np.mean([s[k] for s in per_image.values()])) for k in keys}
    return {"mean": mean, "images": per_image}
