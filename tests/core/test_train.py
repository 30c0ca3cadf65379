"""Training and fine-tuning on real nuclei with tiny models."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_unet.core.config import Config

TINY = {
    "model": {"depth": 2, "base_filters": 8},
    "data": {"patch_size": 64, "val_fraction": 0.2},
    "train": {"batch_size": 8, "steps_per_epoch": 20, "epochs": 6, "learning_rate": 3e-3},
    "predict": {"tile_size": 128, "overlap": 32},
}


def tiny_config(**sections) -> Config:
    cfg = Config().replace(**TINY)
    return cfg.replace(**sections) if sections else cfg


def _pairs(nuclei_pairs, idx):
    from napari_unet.core.data import TrainingPair

    return [TrainingPair(nuclei_pairs[i][1], nuclei_pairs[i][2], nuclei_pairs[i][0]) for i in idx]


@pytest.fixture(scope="module")
def trained(nuclei_pairs, tmp_path_factory):
    """A tiny binary model trained on four 256x256 nuclei images, saved as v001."""
    from napari_unet.core.train import train

    events = []
    result = train(_pairs(nuclei_pairs, [0, 1, 2, 3]), tiny_config(), on_event=events.append)
    root = tmp_path_factory.mktemp("models")
    path = result.save(root, "nuclei")
    return result, events, path


def test_training_lowers_the_loss_and_reports_progress(trained):
    result, events, _ = trained
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and events[-1].status == "done"
    assert kinds.count("batch") >= 20 and kinds.count("epoch") == len(result.history["loss"])
    loss = result.history["loss"]
    assert loss[-1] < 0.7 * loss[0]
    assert "val_loss" in result.history and "val_dice" in result.history
    batch = [e for e in events if e.kind == "batch"]
    assert batch[-1].eta_s is not None and 0 < batch[-1].fraction <= 1


def test_trained_model_segments_held_out_nuclei_well_above_chance(trained, nuclei_pairs):
    from napari_unet.core.evaluate import evaluate_pairs

    result, _, _ = trained
    scores = evaluate_pairs(result.model, result.config, _pairs(nuclei_pairs, [4, 5, 6]))["mean"]
    # Chance (everything foreground) is about 0.2 on these images.
    assert scores["dice"] > 0.6, scores


def test_stop_on_request_stops_within_one_step(nuclei_pairs):
    from napari_unet.core.train import train

    stop = threading.Event()
    batches = []

    def on_event(event):
        if event.kind == "batch":
            batches.append(event.step)
            if len(batches) == 3:
                stop.set()

    cfg = tiny_config(train={"epochs": 3, "steps_per_epoch": 50})
    result = train(_pairs(nuclei_pairs, [0, 1]), cfg, on_event=on_event, stop=stop)
    assert result.status == "stopped"
    assert len(batches) == 3


def test_stop_before_start_trains_nothing(nuclei_pairs):
    from napari_unet.core.train import train

    stop = threading.Event()
    stop.set()
    events = []
    result = train(_pairs(nuclei_pairs, [0]), tiny_config(), on_event=events.append, stop=stop)
    assert result.status == "stopped" and not [e for e in events if e.kind == "batch"]


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_finetuning_improves_the_new_image_and_keeps_the_old_version(trained, nuclei_pairs):
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.evaluate import evaluate_pairs
    from napari_unet.core.train import finetune

    _, _, v1 = trained
    before_files = _hashes(v1)
    parent = load_bundle(v1)
    # A 512x640 image of another kind than the 256x256 training images.
    new = next(i for i, p in enumerate(nuclei_pairs) if p[1].shape != (256, 256))
    new_pair = _pairs(nuclei_pairs, [new])
    before = evaluate_pairs(parent.model, parent.config, new_pair)["mean"]["dice"]
    result = finetune(parent, new_pair, epochs=4)
    v2 = result.save(v1.parent.parent, v1.parent.name)
    after = evaluate_pairs(result.model, result.config, new_pair)["mean"]["dice"]
    assert after > before, (before, after)
    assert v2 != v1 and v2.parent == v1.parent
    assert _hashes(v1) == before_files
    child = load_bundle(v2)
    assert child.parent == str(v1) and child.version == parent.version + 1
    # The lineage stores each replay patch once: the round added only the patches of its new pair.
    old, kept = parent.metadata["replay"]["patches"], child.metadata["replay"]["patches"]
    assert set(old) & set(kept) and len(list((v1.parent / "replay").glob("*.npz"))) == len(set(old) | set(kept))
    assert {"dice", "before_dice"} <= set(result.metrics)


def test_finetune_anchor_pulls_every_weight_back_toward_the_parent(trained, nuclei_pairs):
    """train.finetune_anchor = 1 undoes every step (the weights stay the parent's); 0.5 keeps them
    nearer the parent than no anchor does, on the same data and seed."""
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.train import finetune

    _, _, v1 = trained
    new_pair = _pairs(nuclei_pairs, [next(i for i, p in enumerate(nuclei_pairs) if p[1].shape != (256, 256))])
    distances = {}
    for share in (0.0, 0.5, 1.0):
        parent = load_bundle(v1)
        parent.config = parent.config.replace(train={"finetune_anchor": share})
        result = finetune(parent, new_pair, epochs=1)
        trainable = {id(v) for v in result.model.trainable_weights}
        pairs = [(w, p) for v, w, p in zip(result.model.weights, result.model.get_weights(), parent.model.get_weights())
                 if id(v) in trainable]  # fmt: skip
        distances[share] = float(sum(np.abs(w - p).sum() for w, p in pairs))
    assert distances[1.0] < 1e-6 < distances[0.5] < distances[0.0], distances
