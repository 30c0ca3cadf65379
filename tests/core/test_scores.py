"""Numpy scores: known values, empty-case conventions, object matching against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_unet.core.errors import InputError
from napari_unet.core.scores import (
    dice_score,
    iou_score,
    match_objects,
    object_f1,
    per_class_dice,
    precision_recall,
)


def test_pixel_scores_known_values():
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True  # 4 px
    pred = np.zeros((4, 4), np.uint8)
    pred[:2, :3] = 7  # 6 px, 4 of them right
    assert dice_score(pred, gt) == pytest.approx(2 * 4 / (6 + 4))
    assert iou_score(pred, gt) == pytest.approx(4 / 6)
    assert precision_recall(pred, gt) == pytest.approx((4 / 6, 1.0))
    ignore = np.zeros((4, 4), bool)
    ignore[:, 2] = True  # hides the two false positives
    assert dice_score(pred, gt, ignore) == 1.0
    with pytest.raises(InputError, match="Shapes differ"):
        dice_score(pred, gt[:3])


def test_empty_conventions():
    empty, full = np.zeros((3, 3)), np.ones((3, 3))
    assert dice_score(empty, empty) == 1.0 and iou_score(empty, empty) == 1.0
    assert dice_score(empty, full) == 0.0 and dice_score(full, empty) == 0.0
    assert precision_recall(empty, empty) == (1.0, 1.0)
    assert precision_recall(empty, full) == (0.0, 0.0)  # nothing predicted, everything missed
    assert precision_recall(full, empty) == (0.0, 0.0)  # everything invented, nothing to find
    assert object_f1(np.zeros((5, 5), int), np.zeros((5, 5), int)) == 1.0
    assert object_f1(np.ones((5, 5), int), np.zeros((5, 5), int)) == 0.0


def test_per_class_dice_ignores_negative_truth():
    gt = np.array([[0, 1, 2], [2, 2, -1]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    np.testing.assert_allclose(per_class_dice(pred, gt, 3), [1.0, 2 / 3, 0.8])
    np.testing.assert_allclose(per_class_dice(pred, gt, 4)[3], 1.0)  # absent in both
    mask = np.array([[False, False, True], [False, False, False]])
    np.testing.assert_allclose(per_class_dice(pred, gt, 3, ignore_mask=mask), [1.0, 1.0, 1.0])


def test_object_f1_known_cases():
    gt = np.zeros((20, 20), np.uint16)
    gt[1:5, 1:5] = 3
    gt[10:14, 10:14] = 9
    gt[15:19, 1:5] = 4
    pred = np.zeros_like(gt, dtype=np.int32)
    pred[1:5, 1:5] = 100  # perfect
    pred[10:14, 11:15] = 5  # shifted by one: IoU 12/20 = 0.6
    pred[0:2, 15:20] = 6  # invented
    pred[15:19, 1:3] = 7  # half of object 4: IoU exactly 0.5, not a match at 0.5
    assert match_objects(pred, gt) == (2, 2, 1)
    assert object_f1(pred, gt) == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert match_objects(pred, gt, iou_threshold=0.45) == (3, 1, 0)
    assert match_objects(pred, gt, iou_threshold=0.7) == (1, 3, 2)
    assert object_f1(gt, gt) == 1.0
    relabelled = np.where(gt > 0, 1000 - gt.astype(np.int64), 0)
    assert object_f1(relabelled, gt) == 1.0


def _brute_force_tp(pred: np.ndarray, gt: np.ndarray, threshold: float) -> int:
    pairs = []
    for g in np.unique(gt[gt > 0]):
        for p in np.unique(pred[pred > 0]):
            inter = np.count_nonzero((gt == g) & (pred == p))
            union = np.count_nonzero((gt == g) | (pred == p))
            if inter / union > threshold:
                pairs.append((g, p))
    # Above 0.5 each object has at most one partner, so the pairs are already one-to-one.
    assert len({g for g, _ in pairs}) == len(pairs) == len({p for _, p in pairs})
    return len(pairs)


@settings(max_examples=60, deadline=None)
@given(
    gt=hnp.arrays(np.uint16, (12, 12), elements=st.integers(0, 4)),
    noise=hnp.arrays(np.int32, (12, 12), elements=st.integers(-6, 6)),
    threshold=st.sampled_from([0.5, 0.6, 0.8]),
)
def test_matching_agrees_with_brute_force(gt, noise, threshold):
    # The prediction is the truth (renamed) with some pixels changed, so matches do occur.
    pred = np.where(noise < 0, -noise, gt.astype(np.int32) * 10)
    tp, fp, fn = match_objects(pred, gt, threshold)
    assert tp == _brute_force_tp(pred, gt, threshold)
    assert tp + fp == len(np.unique(pred[pred > 0]))
    assert tp + fn == len(np.unique(gt[gt > 0]))
