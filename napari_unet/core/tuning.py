"""Post-processing tuned on validation data after training, as StarDist tunes its thresholds.

No TensorFlow here: the caller predicts the validation images once and passes the probabilities.
The rules that turn probabilities into labels live in `targets.py`; this module only searches
their parameters and scores the result the way the benchmarks do (per-image mean):

* binary: foreground `threshold` and `min_size`, by foreground Dice;
* instances: foreground `threshold`, `seed_threshold`, `seed_h`, `seed_min_size` and `min_size`, by object
  F1 at IoU 0.5 plus half the foreground Dice (both are what users look at; F1 leads);
* classes: nothing to tune (argmax).

The search is coordinate-wise (threshold, then seeds, then sizes), so it costs about fifteen
post-processing passes per validation image. Size candidates are fractions of the training
objects' areas (`object_sizes`), so they scale with the data's magnification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import Config
from .scores import dice_score, object_f1
from .targets import _remove_small, instance_objects, object_sizes, probabilities_to_labels, suggested_min_size

THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
SEED_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: Seed and object size candidates, as fractions of the training objects' 5th-percentile area.
SEED_SIZE_FRACTIONS: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5)
#: h-maxima heights (pixels of distance) for seed_mode "distance".
SEED_HEIGHTS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
MIN_SIZE_FRACTIONS: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75)
#: Weight of foreground Dice next to object F1 in the instance score.
DICE_WEIGHT = 0.5


@dataclass
class Tuning:
    """Chosen `cfg.predict` values, the validation score they reach and the defaults' score."""

    values: dict[str, Any] = field(default_factory=dict)
    score: float = float("nan")
    default_score: float = float("nan")
    scores: dict[str, float] = field(default_factory=dict)  # dice and object_f1 at the chosen values


def reference_sizes(labels: Sequence[np.ndarray]) -> np.ndarray:
    """Areas of all objects of the training label images (see `targets.object_sizes`)."""
    sizes = [object_sizes(np.asarray(lab)) for lab in labels]
    return np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)


def default_postprocessing(cfg: Config, train_sizes: np.ndarray) -> dict[str, Any]:
    """Post-processing values known before any model exists: a minimum size from the training objects."""
    if cfg.data.task == "classes" or not cfg.train.tune_postprocessing or cfg.predict.tuned:
        return {}
    return {"min_size": max(cfg.predict.min_size, suggested_min_size(train_sizes))}


def score_images(
    preds: Sequence[np.ndarray], labels: Sequence[np.ndarray], task: str, valid: Sequence[np.ndarray] | None = None
) -> dict[str, float]:
    """Per-image mean foreground Dice and object F1@0.5 (binary: connected components)."""
    from skimage.measure import label as components

    dices, f1s = [], []
    for i, (pred, gt) in enumerate(zip(preds, labels)):
        if valid is not None and valid[i] is not None:
            pred, gt = np.where(valid[i], pred, 0), np.where(valid[i], gt, 0)
        dices.append(dice_score(pred > 0, gt > 0))
        if task == "instances":
            f1s.append(object_f1(pred, gt, 0.5))
        else:
            gt_objects = gt if gt.max(initial=0) > 1 else components(gt > 0)
            f1s.append(object_f1(components(pred > 0), gt_objects, 0.5))
    return {"dice": float(np.mean(dices)) if dices else float("nan"), "object_f1": float(np.mean(f1s)) if f1s else float("nan")}


def objective(scores: dict[str, float], task: str) -> float:
    """The number tuning maximises."""
    if task == "instances":
        return scores["object_f1"] + DICE_WEIGHT * scores["dice"]
    return scores["dice"]


def tune_postprocessing(
    probs: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    cfg: Config,
    train_sizes: np.ndarray | None = None,
    valid: Sequence[np.ndarray] | None = None,
) -> Tuning:
    """Best post-processing for validation probabilities `(H, W, K)` against their label images.

    `labels` are the ground-truth label images (instance ids or masks), `valid` optional masks of
    annotated pixels, `train_sizes` the training objects' areas (default: the validation ones).
    """
    task = cfg.data.task
    if task == "classes" or not probs:
        return Tuning()
    probs = [np.asarray(p, dtype=np.float32) for p in probs]
    labels = [np.asarray(lab) for lab in labels]
    sizes = reference_sizes(labels) if train_sizes is None or len(train_sizes) == 0 else np.asarray(train_sizes)
    small = float(np.percentile(sizes, 5)) if sizes.size else 0.0
    size_options = sorted({int(f * small) for f in MIN_SIZE_FRACTIONS})
    p = cfg.predict

    def run(values: dict[str, Any]) -> tuple[float, dict[str, float], list[np.ndarray]]:
        preds = [_labels(pr, cfg, values) for pr in probs]
        scores = score_images(preds, labels, task, valid)
        return objective(scores, task), scores, preds

    current = {
        "threshold": p.threshold,
        "seed_threshold": p.seed_threshold,
        "seed_min_size": p.seed_min_size,
        "seed_h": p.seed_h,
        "min_size": p.min_size,
    }
    default_score = run(current)[0]
    best = dict(current, min_size=int(suggested_min_size(sizes)))
    if task == "binary":
        for key in ("seed_threshold", "seed_min_size", "seed_h"):
            best.pop(key)
    # 1. foreground threshold (seeds follow it).
    best_score, best_scores = -np.inf, {}
    for t in THRESHOLDS:
        trial = dict(best, threshold=t)
        if task == "instances":
            trial["seed_threshold"] = None
        score, scores, _ = run(trial)
        if score > best_score + 1e-9:
            best_score, best_scores, best = score, scores, trial
    if task == "instances":
        # 2. seed threshold, 3. seed height (distance seeds), 4. seed size.
        searches = [("seed_threshold", SEED_THRESHOLDS)]
        if p.seed_mode == "distance":
            searches.append(("seed_h", SEED_HEIGHTS))
        else:  # distance seeds already ignore ragged interiors; measured: seed_min_size then never helps
            searches.append(("seed_min_size", sorted({int(f * small) for f in SEED_SIZE_FRACTIONS})))
        for key, options in searches:
            for value in options:
                trial = dict(best, **{key: value})
                score, scores, _ = run(trial)
                if score > best_score + 1e-9:
                    best_score, best_scores, best = score, scores, trial
    # 5. minimum object size: the objects are computed once, sizes filtered after.
    unfiltered = [_labels(pr, cfg, dict(best, min_size=0)) for pr in probs]
    for size in size_options:
        preds = [_remove_small(u, size) if size > 1 else u for u in unfiltered]
        scores = score_images(preds, labels, task, valid)
        score = objective(scores, task)
        if score > best_score + 1e-9:
            best_score, best_scores, best = score, scores, dict(best, min_size=size)
    values = {k: v for k, v in best.items()}
    if task == "instances" and values.get("seed_threshold") is None:
        values["seed_threshold"] = float(values["threshold"])
    values["min_size"] = int(values["min_size"])
    values["tuned"] = True
    return Tuning(values=values, score=float(best_score), default_score=float(default_score), scores=best_scores)


def tuning_passes(cfg: Config) -> int:
    """Post-processing passes over the validation images `tune_postprocessing` makes (for ETAs)."""
    task = cfg.data.task
    if task == "classes":
        return 0
    # Defaults, thresholds and the unfiltered objects; the size candidates only filter those (cheap).
    passes = 1 + len(THRESHOLDS) + 1
    if task == "instances":
        seeds = SEED_HEIGHTS if cfg.predict.seed_mode == "distance" else SEED_SIZE_FRACTIONS
        passes += len(SEED_THRESHOLDS) + len(seeds)
    return passes


def _labels(probs: np.ndarray, cfg: Config, values: dict[str, Any]) -> np.ndarray:
    if cfg.data.task == "instances":
        objects = instance_objects(
            probs,
            float(values["threshold"]),
            cfg.predict.split_touching,
            values.get("seed_threshold"),
            int(values.get("seed_min_size") or 0),
            cfg.predict.seed_mode,
            float(values.get("seed_h", cfg.predict.seed_h)),
        )
        size = int(values.get("min_size") or 0)
        return _remove_small(objects, size) if size > 1 else objects
    return probabilities_to_labels(probs, cfg, threshold=values["threshold"], min_size=int(values.get("min_size") or 0))
