"""Does the review's uncertainty ranking put the bad predictions first?

A binary nuclei model is trained on the first 8 grayscale 256x256 DSB2018 images (by name) and
predicts the other 32 grayscale images, which it never saw (sizes 256x256 to 520x696, sparse and
dense). For every held-out image we compute each per-image uncertainty score of
`napari_unet.core.review` (entropy; disagreement under a flip; under a contrast change; all three
= "tta") and the foreground Dice of its prediction against the ground truth.

Printed per model and score: Spearman rank correlation between uncertainty and Dice (negative =
the more uncertain, the worse; -1 is a perfect ranking), and the mean Dice of the worst-ranked
third versus the best-ranked third. Models: the "Fast (CPU)" preset (depth 3, 16 filters) and the
tiny test model (depth 2, 8 filters, 15 epochs of 20 steps) over three seeds.
Also printed: the prediction time per image of each score (it costs 1 to 4 network passes).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks import presets
from benchmarks._common import Report, bench_main, read_pairs, training_pairs

N_TRAIN = 8


def nuclei_review_split(n_train: int = N_TRAIN) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(train, held out): the first `n_train` gray 256x256 images by name, and all other gray images."""
    gray = [p for p in read_pairs("nuclei", "labels") if p[1].ndim == 2]
    small = [p for p in gray if p[1].shape == (256, 256)]
    train = small[:n_train]
    names = {p[0] for p in train}
    return train, [p for p in gray if p[0] not in names]


def tiny_config(seed: int = 0, epochs: int = 15):
    """The model the test of the ranking trains (tests/core/test_review.py)."""
    from napari_unet.core.config import Config

    return Config().replace(
        model={"depth": 2, "base_filters": 8},
        data={"patch_size": 64, "val_fraction": 0.2},
        train={"batch_size": 8, "steps_per_epoch": 20, "epochs": epochs, "learning_rate": 3e-3, "seed": seed},
        predict={"tile_size": 256, "overlap": 32},
    )


def score_images(
    model: Any, cfg: Any, held: Sequence[tuple[str, Any, Any]]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Foreground Dice per image and every method's uncertainty per image."""
    from napari_unet.core import review as rv
    from napari_unet.core.normalize import normalize
    from napari_unet.core.predict import predict_probabilities
    from napari_unet.core.scores import dice_score
    from napari_unet.core.targets import probabilities_to_labels

    dice, scores = [], {m: [] for m in rv.METHODS}
    for name, image, gt in held:
        sample = rv.review_sample(image, cfg.data.in_channels, name)
        x = normalize(sample, cfg.data.norm_low, cfg.data.norm_high)
        probs = predict_probabilities(model, x, cfg)
        augmented = rv.augmented_predictions(model, x, cfg, rv.AUGMENTATIONS)
        dice.append(dice_score(probabilities_to_labels(probs, cfg) > 0, gt > 0))
        for method in rv.METHODS:
            scores[method].append(rv.uncertainty_score(probs, method, augmented, cfg.predict.threshold)[0])
    return np.array(dice), {m: np.array(v) for m, v in scores.items()}


def ranking(uncertainty: np.ndarray, dice: np.ndarray) -> tuple[float, float, float]:
    """(Spearman rho, mean Dice of the most uncertain third, mean Dice of the least uncertain third)."""
    from scipy.stats import spearmanr

    order = np.argsort(-uncertainty, kind="stable")
    third = max(1, len(order) // 3)
    rho = float(spearmanr(uncertainty, dice).statistic)
    return rho, float(dice[order[:third]].mean()), float(dice[order[-third:]].mean())


def _report_model(report: Report, label: str, dice: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, float]:
    report.add(f"{label}: mean Dice of held-out images", float(dice.mean()))
    rhos = {}
    for method, values in scores.items():
        rho, worst, best = ranking(values, dice)
        rhos[method] = rho
        report.add(f"{label}: {method} Spearman rho (uncertainty vs Dice)", rho, target="< 0")
        report.add(f"{label}: {method} Dice worst third / best third", f"{worst:.3f} / {best:.3f}")
    return rhos


def _time_methods(report: Report, model: Any, cfg: Any, held: Sequence[tuple[str, Any, Any]]) -> None:
    from napari_unet.core import review as rv

    sizes = [image.size for _, image, _ in held]
    for method in rv.METHODS:
        t0 = time.perf_counter()
        for name, image, _ in held:
            rv.predict_for_review(model, image, cfg, method, name=name)
        per_mpx = (time.perf_counter() - t0) / (sum(sizes) / 1e6)
        report.add(f"fast preset: {method} review prediction time", per_mpx, "s per megapixel")


def run(quick: bool = False) -> Report:
    """Rank correlation between the review's uncertainty scores and Dice on held-out nuclei."""
    report = Report("uncertainty_ranking")
    train_raw, held = nuclei_review_split()
    if not train_raw:
        report.skipped = "real data not found (../shared/data/nuclei)"
        return report
    from napari_unet.core.train import train

    if quick:
        held = held[:12]
    report.note(f"trained on {len(train_raw)} images, ranked {len(held)} held-out images")
    pairs = training_pairs(train_raw)
    all_rhos: dict[str, list[float]] = {}
    seeds = (0,) if quick else (0, 1, 2)
    for seed in seeds:
        cfg = tiny_config(seed, epochs=6 if quick else 15)
        result = train(pairs, cfg)
        dice, scores = score_images(result.model, cfg, held)
        for method, rho in _report_model(report, f"tiny seed {seed}", dice, scores).items():
            all_rhos.setdefault(method, []).append(rho)
    if not quick:
        cfg = presets.fast_cpu("binary", train={"epochs": 25, "seed": 0})
        t0 = time.perf_counter()
        result = train(pairs, cfg)
        epochs = len(result.history.get("loss", []))
        report.note(f"fast preset trained {epochs} epochs in {time.perf_counter() - t0:.0f} s")
        dice, scores = score_images(result.model, cfg, held)
        for method, rho in _report_model(report, "fast preset", dice, scores).items():
            all_rhos.setdefault(method, []).append(rho)
        _time_methods(report, result.model, cfg, held)
    for method, rhos in all_rhos.items():
        report.add(f"mean Spearman rho over models: {method}", float(np.mean(rhos)), target="< 0")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("uncertainty_ranking", run, argv)


if __name__ == "__main__":
    sys.exit(main())
