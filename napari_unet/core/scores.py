"""Numpy segmentation scores (no TensorFlow): pixel Dice/IoU/precision/recall and object F1.

Conventions, shared with the Keras metrics in `metrics.py`:

* masks are "positive where non-zero"; `ignore` is a boolean mask of pixels left out;
* a ratio whose denominator is zero is 1.0 when nothing was missed or invented (both empty)
  and 0.0 otherwise, e.g. Dice of an empty prediction against an empty truth is 1.0;
  precision with no predicted positives is 1.0 only if the truth is empty too.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def confusion_counts(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) pixel counts of two masks, excluding `ignore` pixels."""
    pred, gt = _pair(pred, gt)
    keep = np.ones(gt.shape, dtype=bool) if ignore is None else ~np.asarray(ignore, dtype=bool)
    p, g = pred[keep], gt[keep]
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    return tp, fp, fn, int(p.size - tp - fp - fn)


def dice_score(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """2|P∩G| / (|P| + |G|); 1.0 when both masks are empty."""
    tp, fp, fn, _ = confusion_counts(pred, gt, ignore)
    return ratio(2 * tp, 2 * tp + fp + fn, fp + fn)


def iou_score(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """|P∩G| / |P∪G|; 1.0 when both masks are empty."""
    tp, fp, fn, _ = confusion_counts(pred, gt, ignore)
    return ratio(tp, tp + fp + fn, fp + fn)


def precision_recall(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> tuple[float, float]:
    """(precision, recall) of a mask; each is 1.0 when its denominator and its error count are 0."""
    tp, fp, fn, _ = confusion_counts(pred, gt, ignore)
    return ratio(tp, tp + fp, fn), ratio(tp, tp + fn, fp)


def per_class_dice(
    pred_classes: np.ndarray, gt_classes: np.ndarray, n_classes: int, ignore_mask: np.ndarray | None = None
) -> np.ndarray:
    """Dice of each class id 0..n_classes-1 (float64 array); gt pixels < 0 are ignored too."""
    pred_classes, gt_classes = np.asarray(pred_classes), np.asarray(gt_classes)
    if pred_classes.shape != gt_classes.shape:
        raise InputError(f"Shapes differ: prediction {pred_classes.shape}, truth {gt_classes.shape}.")
    keep = gt_classes >= 0
    if ignore_mask is not None:
        keep &= ~np.asarray(ignore_mask, dtype=bool)
    p, g = pred_classes[keep], gt_classes[keep]
    return np.array([dice_score(p == k, g == k) for k in range(n_classes)], dtype=np.float64)


def match_objects(pred_labels: np.ndarray, gt_labels: np.ndarray, iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """One-to-one matching of objects with IoU > threshold: (TP, FP, FN).

    Pairs are taken greedily by decreasing IoU, which is the optimal matching for
    thresholds >= 0.5 (each object then has at most one partner above the threshold).
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise InputError(f"Shapes differ: prediction {pred_labels.shape}, truth {gt_labels.shape}.")
    pred_ids, p = np.unique(pred_labels.ravel(), return_inverse=True)
    gt_ids, g = np.unique(gt_labels.ravel(), return_inverse=True)
    # Index 0 stands for background only when the label 0 occurs; shift so background is row/col 0.
    p = p + (0 if pred_ids[0] == 0 else 1)
    g = g + (0 if gt_ids[0] == 0 else 1)
    n_pred = int(np.count_nonzero(pred_ids))
    n_gt = int(np.count_nonzero(gt_ids))
    if n_pred == 0 or n_gt == 0:
        return 0, n_pred, n_gt
    overlap = np.bincount(g * (n_pred + 1) + p, minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, n_pred + 1)
    inter = overlap[1:, 1:].astype(np.float64)
    gt_area = overlap[1:, :].sum(axis=1, keepdims=True)
    pred_area = overlap[:, 1:].sum(axis=0, keepdims=True)
    iou = inter / (gt_area + pred_area - inter)
    rows, cols = np.nonzero(iou > iou_threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_gt, used_pred, tp = set(), set(), 0
    for r, c in zip(rows[order].tolist(), cols[order].tolist()):
        if r not in used_gt and c not in used_pred:
            used_gt.add(r)
            used_pred.add(c)
            tp += 1
    return tp, n_pred - tp, n_gt - tp


def object_f1(pred_labels: np.ndarray, gt_labels: np.ndarray, iou_threshold: float = 0.5) -> float:
    """Object-level F1 = 2TP / (2TP + FP + FN) at an IoU threshold; 1.0 when neither has objects."""
    tp, fp, fn = match_objects(pred_labels, gt_labels, iou_threshold)
    return ratio(2 * tp, 2 * tp + fp + fn, fp + fn)


def ratio(num: float, den: float, errors: float) -> float:
    """num / den, or the empty-case convention (1.0 without errors, else 0.0) when den is 0."""
    if den == 0:
        return 1.0 if errors == 0 else 0.0
    return float(num) / float(den)


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise InputError(f"Shapes differ: prediction {pred.shape}, truth {gt.shape}.")
    return pred != 0, gt != 0
