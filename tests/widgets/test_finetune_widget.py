"""The human-in-the-loop round: predict, correct, add to the set, fine-tune, compare, roll back."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred > 0, truth > 0
    return float(2 * np.sum(pred & truth) / max(np.sum(pred) + np.sum(truth), 1))


def test_correct_finetune_compare_and_roll_back(sample_viewer, qtbot, tiny_model, tmp_path, dock):
    from napari_unet.jobs import arrays
    from napari_unet.jobs.client import session_client
    from napari_unet.widgets._tasks import predict_request
    from napari_unet.widgets.models_registry import session_registry

    def labels_of(entry, image):
        return arrays.take(session_client().run(predict_request(entry, image, False), 120).labels)

    parent_dir = tmp_path / "user-models" / "tiny" / "v001"
    shutil.copytree(tiny_model.parent, parent_dir.parent)  # the model folder: versions and replay/
    parent_files = _digest(parent_dir)
    predict = dock(sample_viewer, "Predict")
    finetune = dock(sample_viewer, "Fine-tune")
    registry = session_registry()

    # 1. predict with the loaded model into a new layer
    assert predict.load_model(parent_dir)
    qtbot.waitUntil(lambda: not predict.load_job.running, timeout=60_000)
    qtbot.wait(20)
    predict.image_picker.set_layer(sample_viewer.layers["nuclei"])
    assert predict.start_prediction()
    qtbot.waitUntil(lambda: not predict.job.running, timeout=60_000)
    qtbot.wait(20)
    predicted = sample_viewer.layers["nuclei [tiny v1]"]

    # 2. the user corrects the prediction (here: programmatically, to the true nuclei)
    truth = (sample_viewer.layers["nuclei labels"].data > 0).astype(np.int32)
    predicted.data = truth.copy()
    assert finetune.labels_picker.layer() is predicted  # the prediction is what one corrects
    assert finetune.image_picker.layer().name == "nuclei"  # found from the layer's metadata

    # 3. one click takes it into the current model's fine-tuning set
    assert finetune.add_corrected()
    assert len(registry.pending) == 1 and finetune.pair_list.count() == 1
    np.testing.assert_array_equal(registry.pending[0].labels, truth)

    # 4. fine-tune in the background, with progress and curves
    finetune.epochs.setValue(3)
    assert finetune.start_finetune()
    assert not finetune.finetune_button.isEnabled()
    qtbot.waitUntil(lambda: finetune.monitor.events_seen > 0, timeout=60_000)
    qtbot.waitUntil(lambda: not finetune.job.running, timeout=180_000)
    qtbot.waitUntil(lambda: not finetune.predict_job.running, timeout=60_000)
    qtbot.wait(50)
    assert finetune.status == "done", finetune.result_label.text()
    assert len(finetune.monitor.history["loss"]) == 3

    child_dir = parent_dir.parent / "v002"
    assert (child_dir / "model.keras").is_file()
    meta = json.loads((child_dir / "metadata.json").read_text())
    assert meta["parent"] == str(parent_dir)
    assert _digest(parent_dir) == parent_files, "the parent version must stay untouched"
    current = registry.current
    assert current.path == child_dir and current.label == "tiny v2" and current.source == "fine-tuned"
    round_ = registry.rounds[-1]
    assert round_.before_dice is not None and round_.after_dice is not None
    text = finetune.result_label.text()
    assert f"{round_.before_dice:.3f} → {round_.after_dice:.3f}" in text
    assert registry.pending == []

    # the new version scores at least as well on the corrected image
    image = sample_viewer.layers["nuclei"].data
    old_dice = _dice(labels_of(round_.parent, image), truth)
    new_dice = _dice(labels_of(current, image), truth)
    assert new_dice >= old_dice - 0.02, (old_dice, new_dice)

    # 5. re-predicted into a new layer; the corrected one is kept (hidden)
    repredicted = sample_viewer.layers["nuclei [tiny v2]"]
    assert repredicted.data.shape == truth.shape and repredicted.visible
    assert not predicted.visible
    np.testing.assert_array_equal(predicted.data, truth)

    # 6. roll back: the parent is current again and the corrections return to the set
    assert finetune.roll_back()
    assert registry.current.path == parent_dir and len(registry.pending) == 1
    assert "tiny v1" in finetune.model_label.text()
    assert child_dir.is_dir(), "rolling back never deletes a version"
    assert predict.entry is registry.current


def test_finetune_needs_a_model_and_corrections(sample_viewer, dock, messages):
    widget = dock(sample_viewer, "Fine-tune")
    assert not widget.add_corrected()
    assert not widget.start_finetune()
    assert any("No current model" in m for m in messages("error"))
    assert not widget.roll_back()


def test_finetune_a_model_just_trained_in_the_widget(sample_viewer, qtbot, tmp_path, dock, make_tiny):
    train = dock(sample_viewer, "Train")
    finetune = dock(sample_viewer, "Fine-tune")
    make_tiny(train, epochs=1)
    train.settings.task.setCurrentText("instances")
    train.preview_picker.set_layer(None)
    assert train.start_training()
    qtbot.waitUntil(lambda: not train.running, timeout=120_000)
    qtbot.wait(20)
    assert "nuclei-unet v1" in finetune.model_label.text()
    finetune.labels_picker.set_layer(sample_viewer.layers["nuclei labels"])
    finetune.repredict.setChecked(False)
    finetune.epochs.setValue(1)
    assert finetune.add_corrected() and finetune.start_finetune()
    qtbot.waitUntil(lambda: not finetune.job.running, timeout=120_000)
    qtbot.wait(20)
    assert finetune.status == "done", finetune.result_label.text()
    assert (tmp_path / "models" / "nuclei-unet" / "v002" / "model.keras").is_file()
