"""The live benchmark's simulated annotator paints what a person would: inside objects, away from them."""

from __future__ import annotations

import numpy as np

from benchmarks._common import synthetic_nuclei
from benchmarks.live_annotator import BACKGROUND, Annotator, dice, dice_at, Refresh


def test_strokes_follow_the_ground_truth_and_aim_at_errors():
    _image, labels = synthetic_nuclei(128, seed=3)
    gt = labels > 0
    annotator = Annotator(labels)
    first = annotator.next(None)
    second = annotator.next(None)
    assert set(np.unique(first[2])) <= {0, 1} and (first[2] == 1).any()  # an object line first
    assert (second[2] == BACKGROUND).any()  # then background
    painted = annotator.painted
    assert np.all(gt[painted == 1]) and not np.any(gt[painted == BACKGROUND])
    # A prediction that marks everything as object gets a background stroke where it is wrong.
    top, left, patch = annotator.next(np.ones_like(gt))
    assert (patch == BACKGROUND).any()
    # One that misses everything gets a stroke in an object that has none yet.
    before = {int(v) for v in np.unique(labels[painted == 1])}
    annotator.next(np.zeros_like(gt))
    after = {int(v) for v in np.unique(labels[annotator.painted == 1])}
    assert after - before - {0}
    for _ in range(10):
        annotator.next(None)
    assert np.all(gt[annotator.painted == 1]) and not np.any(gt[annotator.painted == BACKGROUND])


def test_dice_on_screen_at_a_time():
    refreshes = [Refresh(1.0, 0.5), Refresh(3.0, 0.9)]
    assert dice_at(refreshes, 0.5) == 0.0 and dice_at(refreshes, 2.0) == 0.5 and dice_at(refreshes, 60) == 0.9
    assert dice(np.ones((2, 2), bool), np.ones((2, 2), bool)) == 1.0
