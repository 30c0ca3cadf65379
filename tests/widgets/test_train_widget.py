"""The Train widget driven as a user would, in a real napari viewer."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_train_tiny_model_end_to_end(sample_viewer, qtbot, tmp_path, dock, make_tiny):
    from napari_unet.jobs.models import model_info
    from napari_unet.widgets.models_registry import session_registry

    widget = dock(sample_viewer, "Train")
    row = widget.rows[0]
    assert row.image.layer().name == "nuclei" and row.labels.layer().name == "nuclei labels"
    assert widget.name_edit.text() == "nuclei-unet"
    assert widget.folder_edit.text() == str(tmp_path / "models")
    make_tiny(widget)
    assert widget.settings.preset.currentText() == "Custom"

    events = []
    assert widget.start_training()
    widget.job._relay.event.connect(events.append)  # beside the widget's own handler
    assert not widget.train_button.isEnabled() and widget.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    qtbot.wait(50)

    kinds = [e.kind for e in events if type(e).__name__ == "TrainUpdate"]
    assert "batch" in kinds and kinds.count("epoch") == 2 and kinds[-1] == "end"
    assert any(type(e).__name__ == "Started" and e.device for e in events)
    assert widget.status == "done", widget.result_label.text()
    assert widget.monitor.device_label.text().startswith("Device: ")
    assert len(widget.monitor.history["loss"]) == 2 and len(widget.monitor.history["val_loss"]) == 2
    assert widget.monitor.progress.value() == widget.monitor.progress.maximum()
    # the preview layer was updated at each epoch end, on the chosen image
    preview = sample_viewer.layers["preview [nuclei-unet]"]
    assert preview.data.shape == (256, 256)
    # saved as a new version that is now the current model of the session
    folder = tmp_path / "models" / "nuclei-unet" / "v001"
    assert (folder / "model.keras").is_file()
    current = session_registry().current
    assert current is not None and current.path == folder and current.label == "nuclei-unet v1"
    assert str(folder) in widget.result_label.text()
    assert model_info(folder).config["model"]["depth"] == 2
    assert widget.train_button.isEnabled() and not widget.stop_button.isEnabled()


def test_stop_within_two_seconds_keeps_best_epoch(sample_viewer, qtbot, tmp_path, dock, make_tiny):
    widget = dock(sample_viewer, "Train")
    make_tiny(widget, epochs=200, steps=10)
    widget.preview_picker.set_layer(None)
    assert widget.start_training()
    qtbot.waitUntil(lambda: len(widget.monitor.history.get("loss", [])) >= 1, timeout=120_000)
    widget.stop_button.click()
    pressed = time.monotonic()
    qtbot.waitUntil(lambda: widget.status == "stopped", timeout=5_000)
    assert time.monotonic() - pressed < 2.0
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert widget.status == "stopped"
    assert widget.last_outcome.state == "stopped" and widget.last_outcome.model is not None
    assert (tmp_path / "models" / "nuclei-unet" / "v001" / "model.keras").is_file()
    assert widget.monitor.history["loss"] and len(widget.monitor.history["loss"]) < 200


def test_pickers_follow_layers_added_removed_renamed(viewer, nuclei_sample, dock):
    image, labels = nuclei_sample
    widget = dock(viewer, "Train")
    row = widget.rows[0]
    assert row.image.layer() is None and row.image.count() == 0
    img = viewer.add_image(image, name="a")
    lab = viewer.add_labels(labels, name="a labels")
    viewer.add_labels(np.zeros((10, 10), np.uint8), name="wrong shape")
    assert row.image.layer() is img
    assert row.labels.layer() is lab  # the labels of the image's shape are preferred
    img.name = "renamed"
    assert row.image.currentText() == "renamed"
    assert widget.preview_picker.layer() is img
    viewer.layers.remove(lab)
    assert row.labels.layer().name == "wrong shape"
    assert "labels must cover the image" in row.hint.text()
    assert row.hint.isVisibleTo(widget)
    second = widget.add_pair()
    assert len(widget.rows) == 2 and second.image.layer() is img
    widget.remove_pair(second)
    assert len(widget.rows) == 1


def test_presets_and_advanced_settings_make_the_config(viewer, dock):
    widget = dock(viewer, "Train")
    settings = widget.settings
    settings.apply_preset("Quality (GPU)")
    cfg = settings.config()
    assert (cfg.model.depth, cfg.model.base_filters, cfg.data.patch_size, cfg.train.epochs) == (4, 32, 256, 50)
    settings.apply_preset("Fast (CPU)")
    cfg = settings.config()
    assert (cfg.model.depth, cfg.model.base_filters, cfg.data.patch_size) == (4, 8, 256)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.steps_per_epoch) == (4, 8, 40)
    settings.task.setCurrentText("classes")
    settings.n_classes.setValue(4)
    settings.class_weights.setText("1, 2, 2, 5")
    settings.elastic.setChecked(True)
    settings.loss.setCurrentText("cce")
    cfg = settings.config(in_channels=3)
    assert cfg.n_outputs == 4 and cfg.train.class_weights == [1.0, 2.0, 2.0, 5.0]
    assert cfg.data.elastic and cfg.data.in_channels == 3 and cfg.train.loss == "cce"


def test_the_task_follows_the_labels_until_the_user_picks_one(viewer, nuclei_sample, dock):
    image, labels = nuclei_sample
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="one id per nucleus")
    widget = dock(viewer, "Train")
    assert widget.settings.task.currentText() == "instances"
    viewer.add_labels((labels > 0).astype(np.uint8), name="a mask")
    widget.rows[0].labels.set_layer(viewer.layers["a mask"])
    assert widget.settings.task.currentText() == "binary"
    widget.settings.task.setCurrentText("classes")
    widget.settings.task.activated.emit(1)  # as a user's choice in the combo box
    widget.rows[0].labels.set_layer(viewer.layers["one id per nucleus"])
    assert widget.settings.task.currentText() == "classes"
