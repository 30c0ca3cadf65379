"""Model selection, the time budget, ETA, post-processing tuning, suggest_task and mixed channels.

Real DSB2018 nuclei (tests/conftest.py fixtures), tiny models: depth 2, 8 filters, 64 px patches.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.config import Config

TINY = {
    "model": {"depth": 2, "base_filters": 8},
    "data": {"task": "instances", "patch_size": 64, "val_fraction": 0.34},
    "train": {"batch_size": 4, "steps_per_epoch": 8, "epochs": 5, "learning_rate": 3e-3},
    "predict": {"tile_size": 128, "overlap": 32},
}


def tiny(**sections) -> Config:
    cfg = Config().replace(**TINY)
    return cfg.replace(**sections) if sections else cfg


def _pairs(raw):
    from napari_unet.core.data import TrainingPair

    return [TrainingPair(image, labels, name) for name, image, labels in raw]


# ---------------------------------------------------------------- the selection rule


def test_selection_keeps_the_best_score_and_ignores_nan():
    from napari_unet.core.train import Selection

    sel = Selection("best", patience=2, min_s=0.0)
    picks = [sel.update(e, s) for e, s in enumerate([0.2, 0.5, float("nan"), 0.5, 0.4, 0.6], start=1)]
    assert picks == [True, True, False, False, False, True]
    assert sel.best_epoch == 6 and sel.selected_epoch == 6 and sel.best == 0.6


def test_selection_keep_last_selects_every_epoch():
    from napari_unet.core.train import Selection

    sel = Selection("last")
    assert all(sel.update(e, s) for e, s in enumerate([0.5, 0.1, 0.3], start=1))
    assert sel.selected_epoch == 3 and sel.best_epoch == 1


def test_early_stopping_needs_patience_and_the_minimum_time():
    from napari_unet.core.train import Selection

    sel = Selection("best", patience=2, min_s=60.0)
    for epoch, score in enumerate([0.5, 0.4, 0.4, 0.3], start=1):
        sel.update(epoch, score)
    assert not sel.should_stop(elapsed_s=10.0)  # 3 epochs without progress, but inside the first minute
    assert sel.should_stop(elapsed_s=61.0)
    sel.update(5, 0.9)
    assert not sel.should_stop(elapsed_s=100.0)
    assert not Selection("best", patience=0).should_stop(1e6)


@pytest.fixture(scope="module")
def run_best(nuclei_pairs):
    """A tiny instance model trained with keep=best, recording every on_best call."""
    from napari_unet.core.train import train

    calls, events = [], []

    def on_best(result):
        calls.append(
            {
                "epoch": result.best_epoch,
                "status": result.status,
                "metrics": dict(result.metrics),
                "history_len": len(result.history["loss"]),
                "weights": [w.copy() for w in result.model.get_weights()],
                "config": result.config,
                "replay": len(result.replay[0]),
            }
        )

    result = train(_pairs(nuclei_pairs[:6]), tiny(), on_event=events.append, on_best=on_best)
    return result, calls, events


def test_the_kept_model_is_the_best_validation_epoch(run_best):
    result, calls, events = run_best
    scores = result.history["val_score"]
    assert len(scores) == 5 and "val_object_f1" in result.history
    best = int(np.nanargmax(scores)) + 1  # first maximum: ties keep the earlier epoch
    assert result.best_epoch == best
    # on_best was called exactly for the epochs that improved, each with that epoch's scores.
    improved = [e for e in range(1, 6) if scores[e - 1] > max([-np.inf] + scores[: e - 1])]
    assert [c["epoch"] for c in calls] == improved
    for c in calls:
        assert c["status"] == "stopped" and c["history_len"] == c["epoch"] and c["replay"] > 0
        assert c["metrics"]["score"] == pytest.approx(scores[c["epoch"] - 1])
        assert c["config"].predict.min_size == calls[0]["config"].predict.min_size > 0  # from the object sizes
    # The returned model holds the weights on_best saw last.
    for a, b in zip(result.model.get_weights(), calls[-1]["weights"]):
        np.testing.assert_array_equal(a, b)
    # Epoch events flag the selected epochs for the preview.
    assert [e.epoch for e in events if e.kind == "epoch" and e.selected] == improved
    assert result.config.predict.tuned and result.metrics["object_f1"] >= 0


def test_instances_log_foreground_dice(run_best):
    result, _, _ = run_best
    h = result.history
    for key in ("dice", "val_dice", "val_interior_dice", "val_boundary_dice"):
        assert key in h
    # Foreground Dice is not the mean of interior and boundary Dice.
    assert not np.allclose(h["val_dice"], (np.array(h["val_interior_dice"]) + np.array(h["val_boundary_dice"])) / 2)


def test_keep_last_reports_every_epoch_and_keeps_the_last(nuclei_pairs):
    from napari_unet.core.train import train

    epochs = []
    result = train(
        _pairs(nuclei_pairs[:4]), tiny(train={"keep": "last", "epochs": 3}), on_best=lambda r: epochs.append(r.best_epoch)
    )
    assert epochs == [1, 2, 3] and result.best_epoch == 3


def test_time_limit_ends_training_like_stop_and_the_eta_is_measured(nuclei_pairs):
    from napari_unet.core.train import train

    events = []
    cfg = tiny(train={"epochs": 1000, "steps_per_epoch": 10, "time_limit_s": 12.0}, predict={"tile_size": 128})
    t0 = time.monotonic()
    result = train(_pairs(nuclei_pairs[:4]), cfg, on_event=lambda e: events.append((time.monotonic(), e)))
    wall = time.monotonic() - t0
    assert result.status == "done" and "time limit" in events[-1][1].message
    assert wall < 12.0 + 15.0  # the last partial epoch is validated, then tuning
    assert 1 <= result.best_epoch <= len(result.history["loss"]) < 1000
    # ETA from step times: early in the run it must not overshoot the real remaining time 2x. The
    # run ends when train() returns: after the last epoch come re-prediction and the tuning search.
    end = t0 + wall
    batches = [(t, e) for t, e in events if e.kind == "batch" and e.eta_s is not None]
    t, e = batches[2]
    assert e.eta_s < 2.0 * (end - t) + 1.0, (e.eta_s, end - t)
    # The last step's ETA is the finishing phase, not "0:00 left" while it runs.
    t, e = batches[-1]
    assert 0.5 * (end - t) - 1.0 < e.eta_s < 2.0 * (end - t) + 1.0, (e.eta_s, end - t)


def test_finetune_does_not_inherit_the_parents_epoch_count(run_best, nuclei_pairs, tmp_path):
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.train import finetune

    result, _, _ = run_best
    result.config = result.config.replace(train={"epochs": 100000, "finetune_epochs": 2})
    parent = load_bundle(result.save(tmp_path, "nuclei"))
    child = finetune(parent, _pairs(nuclei_pairs[6:7]))
    assert len(child.history["loss"]) == 2
    assert "val_replay_dice" in child.history


# ---------------------------------------------------------------- post-processing tuning


def _noisy_probabilities(labels: np.ndarray, seed: int) -> np.ndarray:
    """Blurred ideal probabilities of a real label image plus small false-positive specks."""
    from napari_unet.core.config import DataConfig
    from napari_unet.core.targets import labels_to_target, target_to_probabilities

    target = labels_to_target(labels, DataConfig(task="instances"))
    probs = target_to_probabilities(target, 3)
    probs = np.stack([ndi.gaussian_filter(probs[..., k], 1.0) for k in range(3)], axis=-1)
    rng = np.random.default_rng(seed)
    for _ in range(40):  # 2x2 specks of confident "interior"
        r, c = rng.integers(0, labels.shape[0] - 2), rng.integers(0, labels.shape[1] - 2)
        probs[r : r + 2, c : c + 2] = (0.05, 0.9, 0.05)
    return probs / probs.sum(-1, keepdims=True)


def test_tuning_removes_specks_and_matches_the_post_processing_rule(nuclei_pairs):
    from napari_unet.core.targets import probabilities_to_labels
    from napari_unet.core.tuning import reference_sizes, score_images, tune_postprocessing

    raw = nuclei_pairs[:3]
    labels = [lab for _, _, lab in raw]
    probs = [_noisy_probabilities(lab, i) for i, lab in enumerate(labels)]
    cfg = tiny()
    sizes = reference_sizes([lab for _, _, lab in nuclei_pairs[3:8]])
    tuning = tune_postprocessing(probs, labels, cfg, sizes)
    assert tuning.values["tuned"] and tuning.values["min_size"] > 4  # the 2x2 specks are gone
    assert tuning.score > tuning.default_score
    # The chosen values, applied by the one post-processing rule, give the reported scores.
    tuned = cfg.replace(predict=tuning.values)
    preds = [probabilities_to_labels(p, tuned) for p in probs]
    assert score_images(preds, labels, "instances") == pytest.approx(tuning.scores)
    assert tuning.scores["object_f1"] > 0.8


def test_seed_min_size_merges_a_split_nucleus(nuclei_pairs):
    from napari_unet.core.targets import probabilities_to_labels

    labels = nuclei_pairs[0][2]
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    big = ids[np.argmax(counts)]
    one = np.where(labels == big, 1, 0)
    probs = _noisy_probabilities(one, 0)[..., :]
    probs[labels != big] = (1.0, 0.0, 0.0)  # only the one nucleus
    # Cut its interior probability by a thin line near one end: a small second seed.
    rows = np.nonzero(one.any(axis=1))[0]
    cut = rows[0] + 3
    probs[cut, :, 1], probs[cut, :, 2] = 0.1, 0.8
    cfg = tiny()
    kw = {"threshold": 0.5, "seed_threshold": 0.5}
    split = probabilities_to_labels(probs, cfg, seed_mode="components", seed_min_size=0, **kw)
    assert split.max() == 2  # interior components: the nucleus is cut in two
    merged = probabilities_to_labels(probs, cfg, seed_mode="components", seed_min_size=int(0.3 * counts.max()), **kw)
    assert merged.max() == 1
    # Distance seeds (the default) keep it whole without a seed size...
    assert probabilities_to_labels(probs, cfg, seed_mode="distance", seed_h=0.5, seed_min_size=0, **kw).max() == 1
    # ...and still split two touching nuclei: the real pair of neighbours with the longest contact.
    labels, (a, b) = next((lab, pair) for _, _, lab in nuclei_pairs if (pair := _touching_pair(lab)) is not None)
    pair = np.where(np.isin(labels, [a, b]), labels, 0)
    probs2 = _noisy_probabilities(pair, 1)
    probs2[~np.isin(labels, [a, b])] = (1.0, 0.0, 0.0)
    out = probabilities_to_labels(probs2, cfg, seed_mode="distance", seed_h=0.5, min_size=0, **kw)
    assert out.max() == 2


def _touching_pair(labels: np.ndarray) -> tuple[int, int] | None:
    """The two touching nuclei with the longest contact, or None."""
    lab = labels.astype(np.int64)
    right = np.stack([lab[:, :-1].ravel(), lab[:, 1:].ravel()], 1)
    down = np.stack([lab[:-1].ravel(), lab[1:].ravel()], 1)
    edges = np.concatenate([right, down])
    edges = edges[(edges[:, 0] > 0) & (edges[:, 1] > 0) & (edges[:, 0] != edges[:, 1])]
    if not len(edges):
        return None
    pairs, counts = np.unique(np.sort(edges, 1), axis=0, return_counts=True)
    a, b = pairs[np.argmax(counts)]
    return int(a), int(b)


# ---------------------------------------------------------------- defaults that follow the data


def test_suggest_task_from_real_labels(nuclei_pairs, xray_pairs):
    from napari_unet.core.suggest import suggest_task

    assert all(suggest_task(lab) == "instances" for _, _, lab in nuclei_pairs[:5])
    mask = xray_pairs[0][2]
    assert suggest_task(mask) == "binary"
    assert suggest_task(np.zeros((32, 32), np.uint8)) == "binary"
    # Left and right lung as two classes: two large regions, not objects.
    lungs, _ = ndi.label(mask > 0)
    two = np.where(lungs > 0, 1, 0) + np.where(np.arange(mask.shape[1])[None, :] >= mask.shape[1] // 2, 1, 0) * (lungs > 0)
    assert suggest_task(two) == "classes"
    # A stack of nuclei labels is still instances.
    assert suggest_task(np.stack([nuclei_pairs[0][2], nuclei_pairs[1][2]])) == "instances"


def test_mixed_gray_and_rgb_sets_prepare_and_train(nuclei_pairs, nuclei_rgb_pairs):
    from napari_unet.core.data import prepare_pairs
    from napari_unet.core.train import train

    mixed = _pairs(nuclei_pairs[:3] + nuclei_rgb_pairs[:1])
    for channels in (1, 3):
        images, targets, _ = prepare_pairs(mixed, tiny(data={"in_channels": channels}))
        assert [im.shape[-1] for im in images] == [channels] * 4
        assert all(im.shape[:2] == t.shape for im, t in zip(images, targets))
    # The RGB image is stained tissue (light background): gray by luminance keeps its nuclei dark.
    gray = prepare_pairs(mixed[3:], tiny(data={"in_channels": 1}))[0][0][..., 0]
    fg = nuclei_rgb_pairs[0][2] > 0
    assert gray[fg].mean() < gray[~fg].mean()
    result = train(mixed, tiny(train={"epochs": 1}))
    assert result.status == "done"
