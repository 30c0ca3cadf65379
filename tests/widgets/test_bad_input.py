"""Every bad input ends in a clear napari notification; nothing crashes, nothing is lost."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _press_train(widget) -> bool:
    started = widget.start_training()
    assert not widget.running or started
    return started


def test_no_layers_open(viewer, dock, messages):
    train = dock(viewer, "Train")
    predict = dock(viewer, "Predict")
    assert not _press_train(train)
    assert any("No image and labels layers are open" in m for m in messages("error"))
    assert not predict.start_prediction()
    assert any("No model yet" in m for m in messages("error"))


def test_image_without_labels_layer(viewer, nuclei_sample, dock, messages):
    viewer.add_image(nuclei_sample[0], name="nuclei")
    train = dock(viewer, "Train")
    assert not _press_train(train)
    assert any("no labels layer" in m for m in messages("error"))


def test_labels_all_zero(viewer, nuclei_sample, dock, messages):
    viewer.add_image(nuclei_sample[0], name="nuclei")
    viewer.add_labels(np.zeros((256, 256), np.uint8), name="empty")
    train = dock(viewer, "Train")
    assert not _press_train(train)
    assert any("'empty' are all zero" in m for m in messages("error"))


def test_labels_of_another_shape(viewer, nuclei_sample, dock, messages):
    image, labels = nuclei_sample
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels[:200, :180], name="cropped labels")
    train = dock(viewer, "Train")
    assert "200 x 180" in train.rows[0].hint.text()  # explained as soon as the pair is picked
    assert not _press_train(train)
    assert any("have shape 200 x 180 but image 'nuclei' is 256 x 256" in m for m in messages("error"))


def test_image_smaller_than_a_patch_offers_a_smaller_patch(viewer, nuclei_sample, dock, notes):
    image, labels = nuclei_sample
    viewer.add_image(image[:40, :52], name="small")
    viewer.add_labels(labels[:40, :52], name="small labels")
    train = dock(viewer, "Train")  # Fast (CPU) preset: 256-pixel patches, depth 4
    assert not _press_train(train)
    offer = [n for n in notes if "smaller than the 256-pixel training patch" in n.message]
    assert offer and "patch size of 32" in offer[0].message
    ((text, action),) = offer[0].actions
    assert text == "Use 32-pixel patches"
    action(None)  # the user presses the button on the notification
    assert train.settings.patch.value() == 32


def test_float_image_with_nans(viewer, nuclei_sample, dock, messages):
    image, labels = nuclei_sample
    bad = image.astype(np.float32)
    bad[10:12, 10:13] = np.nan
    viewer.add_image(bad, name="nan image")
    viewer.add_labels(labels, name="labels")
    train = dock(viewer, "Train")
    assert not _press_train(train)
    assert any("6 NaN or infinite pixel(s)" in m for m in messages("error"))


def test_3d_labels_for_a_2d_image(viewer, nuclei_sample, dock, messages):
    image, labels = nuclei_sample
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(np.stack([labels, labels]), name="3d labels")
    train = dock(viewer, "Train")
    assert not _press_train(train)
    assert any("Labels '3d labels' are 3D" in m and "single 2D image" in m for m in messages("error"))


def test_corrupt_model_file(viewer, qtbot, tiny_model, tmp_path, dock, messages):
    import shutil

    from napari_unet.widgets.models_registry import session_registry

    broken = tmp_path / "broken" / "v001"
    shutil.copytree(tiny_model, broken)
    data = (broken / "model.keras").read_bytes()
    (broken / "model.keras").write_bytes(data[: len(data) // 2])  # truncated download
    predict = dock(viewer, "Predict")
    assert predict.load_model(broken)
    qtbot.waitUntil(lambda: not predict.load_job.running, timeout=60_000)
    qtbot.wait(20)
    assert any("corrupt or truncated" in m for m in messages("error"))
    assert session_registry().entries == [] and predict.status == "idle"
    assert predict.load_model(tmp_path / "nowhere")
    qtbot.waitUntil(lambda: not predict.load_job.running, timeout=60_000)
    qtbot.wait(20)
    assert any("does not exist" in m for m in messages("error"))


def test_model_trained_on_another_channel_count(viewer, qtbot, tiny_model, nuclei_sample, dock, messages):
    image, _ = nuclei_sample
    viewer.add_image(np.stack([image] * 3, axis=-1), name="rgb", rgb=True)
    predict = dock(viewer, "Predict")
    assert predict.load_model(tiny_model)
    qtbot.waitUntil(lambda: not predict.load_job.running, timeout=60_000)
    qtbot.wait(20)
    assert not predict.start_prediction()
    assert any("has 3 channel(s) but the model was trained on 1" in m for m in messages("error"))
    assert [lyr.name for lyr in viewer.layers] == ["rgb"]


def test_pressing_train_twice(sample_viewer, qtbot, dock, make_tiny, messages):
    train = dock(sample_viewer, "Train")
    make_tiny(train, epochs=50)
    train.preview_picker.set_layer(None)
    assert train.start_training()
    assert not train.train_button.isEnabled()
    assert not train.start_training()  # a second press is ignored with a message
    assert any("already running" in m for m in messages("info"))
    train.stop_training()
    qtbot.waitUntil(lambda: not train.running, timeout=60_000)
    qtbot.wait(20)
    assert train.train_button.isEnabled()


def test_closing_the_widget_while_training(sample_viewer, qtbot, dock, make_tiny):
    from napari_unet.widgets.models_registry import session_registry

    train = dock(sample_viewer, "Train")
    make_tiny(train, epochs=100)
    train.preview_picker.set_layer(None)
    assert train.start_training()
    qtbot.waitUntil(lambda: len(train.monitor.history.get("loss", [])) >= 1, timeout=120_000)
    start = time.monotonic()
    sample_viewer.window.remove_dock_widget(train)  # the dock's close button does this
    assert not train.job.running, "closing waits for the worker to stop"
    assert time.monotonic() - start < 30
    assert train.job.failure is None
    # the best epoch so far was saved and joined the session's model list: nothing is lost
    entry = session_registry().current
    assert entry is not None and (entry.path / "model.keras").is_file()


def test_closing_the_viewer_while_training(make_napari_viewer, nuclei_sample, qtbot, dock, make_tiny):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_sample[0], name="nuclei")
    viewer.add_labels(nuclei_sample[1], name="nuclei labels")
    train = dock(viewer, "Train")
    make_tiny(train, epochs=100)
    assert train.start_training()
    qtbot.waitUntil(lambda: train.monitor.events_seen > 1, timeout=120_000)
    job = train.job
    viewer.close()
    assert not job.running
    assert job.failure is None
