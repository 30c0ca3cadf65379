"""The Predict widget: model list and loading, prediction into new layers, cheap post-processing."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _load(widget, qtbot, path) -> None:
    assert widget.load_model(path)
    qtbot.waitUntil(lambda: not widget.load_job.running, timeout=60_000)
    qtbot.wait(20)


def _predict(widget, qtbot) -> None:
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=60_000)
    qtbot.wait(20)


def test_predict_into_new_layers_never_overwriting(sample_viewer, qtbot, tiny_model, dock):
    from napari_unet.widgets.models_registry import session_registry

    widget = dock(sample_viewer, "Predict")
    assert widget.entry is None and "No model yet" in widget.model_info.text()
    _load(widget, qtbot, tiny_model)
    entry = session_registry().current
    assert entry is not None and entry.label == "tiny v1" and entry.source == "loaded"
    assert widget.entry is entry and "binary" in widget.model_info.text()
    widget.image_picker.set_layer(sample_viewer.layers["nuclei"])
    widget.with_probabilities.setChecked(True)
    progress = []
    widget.progress.valueChanged.connect(progress.append)

    _predict(widget, qtbot)
    layer = sample_viewer.layers["nuclei [tiny v1]"]
    assert widget.status == "done" and progress and progress[-1] == 1000
    assert layer.data.shape == (256, 256) and layer.data.max() == 1
    assert "nuclei [tiny v1] probability" in sample_viewer.layers
    truth = sample_viewer.layers["nuclei labels"].data > 0
    dice = 2 * np.sum((layer.data > 0) & truth) / (np.sum(layer.data > 0) + np.sum(truth))
    assert dice > 0.5, f"the tiny model should find the nuclei (Dice {dice:.2f})"

    # predicting again makes a second layer; the first stays as it was
    first = layer.data.copy()
    _predict(widget, qtbot)
    assert "nuclei [tiny v1] (2)" in sample_viewer.layers
    np.testing.assert_array_equal(layer.data, first)


def test_postprocessing_reapplies_without_the_network(sample_viewer, qtbot, tiny_model, dock, monkeypatch):
    from napari_unet.widgets import predict_widget

    widget = dock(sample_viewer, "Predict")
    _load(widget, qtbot, tiny_model)
    widget.image_picker.set_layer(sample_viewer.layers["nuclei"])
    _predict(widget, qtbot)
    layer = widget.last_record.labels_layer
    before = int(np.count_nonzero(layer.data))

    def no_network(*_args, **_kwargs):
        raise AssertionError("post-processing must not run the network")

    monkeypatch.setattr(predict_widget, "predict_request", no_network)
    widget.threshold.setValue(0.9)
    qtbot.waitUntil(lambda: int(np.count_nonzero(layer.data)) < before, timeout=3_000)
    widget.threshold.setValue(0.5)
    widget.min_size.setValue(10_000)  # bigger than any nucleus: everything goes
    qtbot.waitUntil(lambda: not np.any(layer.data), timeout=3_000)
    assert not widget.job.running and len(sample_viewer.layers) == 3

    # once the user edits the layer, a post-processing change goes to a new layer instead
    layer.data_setitem((np.array([5]), np.array([5])), 1)
    assert widget.last_record.edited
    widget.min_size.setValue(0)
    qtbot.waitUntil(lambda: "nuclei [tiny v1] (2)" in sample_viewer.layers, timeout=3_000)
    assert layer.data[5, 5] == 1 and np.count_nonzero(layer.data) == 1
    assert np.count_nonzero(sample_viewer.layers["nuclei [tiny v1] (2)"].data) > 0


def test_predict_stack_and_lazy_image(viewer, qtbot, tiny_model, nuclei_sample, dock, tmp_path):
    image, _ = nuclei_sample
    stack = np.stack([image[:128, :128], image[128:, 128:], image[:128, 128:]])
    viewer.add_image(stack, name="stack")
    viewer.add_image(da.from_array(image, chunks=(128, 128)), name="lazy")
    widget = dock(viewer, "Predict")
    _load(widget, qtbot, tiny_model)
    widget.image_picker.set_layer(viewer.layers["stack"])
    _predict(widget, qtbot)
    assert viewer.layers["stack [tiny v1]"].data.shape == (3, 128, 128)
    widget.image_picker.set_layer(viewer.layers["lazy"])
    _predict(widget, qtbot)
    lazy = viewer.layers["lazy [tiny v1]"].data  # written to an OME-Zarr store by the worker, read lazily
    assert not isinstance(lazy, np.ndarray) and lazy.shape == (256, 256) and np.asarray(lazy).any()
    assert str(tmp_path / "predictions") in viewer.layers["lazy [tiny v1]"].metadata["napari_unet"]["store"]


def test_stop_prediction(viewer, qtbot, tiny_model, nuclei_sample, dock):
    image, _ = nuclei_sample
    viewer.add_image(np.tile(image, (8, 8)), name="big")  # 2048 x 2048: many tiles
    widget = dock(viewer, "Predict")
    _load(widget, qtbot, tiny_model)
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=60_000)
    widget.stop_button.click()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=5_000)
    qtbot.wait(20)
    assert widget.status == "stopped"
    assert [lyr.name for lyr in viewer.layers] == ["big"]


def test_model_list_is_shared_between_widgets(sample_viewer, qtbot, tiny_model, dock):
    predict = dock(sample_viewer, "Predict")
    finetune = dock(sample_viewer, "Fine-tune")
    _load(predict, qtbot, tiny_model)
    assert "tiny v1" in finetune.model_label.text()
    assert predict.model_combo.count() == 1


def test_prediction_layers_carry_the_whole_transform_of_the_image(viewer, nuclei_sample, qtbot, tiny_model, dock):
    """A rotated, sheared, scaled and shifted image gets labels exactly on its pixels."""
    image, _ = nuclei_sample
    layer = viewer.add_image(image, name="tilted", scale=(0.5, 2.0), translate=(10, -4), rotate=30, shear=[0.2])
    widget = dock(viewer, "Predict")
    _load(widget, qtbot, tiny_model)
    widget.image_picker.set_layer(layer)
    _predict(widget, qtbot)
    labels = widget.last_record.labels_layer
    np.testing.assert_allclose(labels.affine.affine_matrix, layer.affine.affine_matrix)
    for point in ((0, 0), (5, 7), (200, 31)):  # the same pixel lands at the same world position
        np.testing.assert_allclose(labels.data_to_world(point), layer.data_to_world(point))


def test_the_starter_model_gives_a_mask_before_anything_is_painted(viewer, nuclei_sample, qtbot, dock, tmp_path):
    """Load… > Starter model: nuclei are found in an image nobody labelled, and nothing is written
    into the installed package."""
    from napari_unet.core.starter import starter_model_path

    starter = starter_model_path()
    before = sorted(p.name for p in starter.parent.iterdir())
    image, labels = nuclei_sample
    viewer.add_image(image, name="unlabelled")
    widget = dock(viewer, "Predict")
    assert widget.load_starter()
    qtbot.waitUntil(lambda: not widget.load_job.running, timeout=120_000)
    assert widget.entry is not None and widget.entry.config.data.task == "instances"
    _predict(widget, qtbot)
    found = widget.last_record.labels_layer.data
    truth = labels > 0
    dice = 2 * np.sum((found > 0) & truth) / (np.sum(found > 0) + np.sum(truth))
    assert dice > 0.7 and len(np.unique(found)) > 10, dice
    assert sorted(p.name for p in starter.parent.iterdir()) == before
