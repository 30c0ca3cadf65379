"""Data safety: the user's labels (and images) are never modified by training, prediction or
fine-tuning; fine-tuning never overwrites an earlier version. Widget-level cases (Labels layers,
edited prediction layers) are at the end.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from reliability_helpers import blob_pair, data_hash, file_hashes

from napari_unet.core.data import TrainingPair


def _read_only(*arrays: np.ndarray) -> None:
    for arr in arrays:
        arr.flags.writeable = False


def test_training_neither_writes_nor_changes_the_input_arrays(trained):
    """The shared model was trained on read-only arrays (a write would have raised); values unchanged too."""
    for pair, (image_hash, labels_hash) in zip(trained.pairs, trained.input_hashes):
        assert not pair.image.flags.writeable and not pair.labels.flags.writeable
        assert (data_hash(pair.image), data_hash(pair.labels)) == (image_hash, labels_hash)
    # The description stored with the model is of the data as the user gave it.
    assert [d["labels_sha256"] for d in trained.result.training_data] == [
        __import__("hashlib").sha256(np.ascontiguousarray(p.labels).tobytes()).hexdigest() for p in trained.pairs
    ]


def test_prediction_leaves_the_image_untouched(trained):
    from napari_unet.core.predict import predict_image

    for image in (blob_pair(70, 50, seed=20)[0], blob_pair(70, 50, seed=21)[0].astype(np.float32) / 3):
        before = data_hash(image)
        _read_only(image)
        predict_image(trained.model, image, trained.config)
        assert data_hash(image) == before


def test_finetuning_writes_a_new_version_and_touches_neither_parent_nor_labels(trained, tmp_path):
    from napari_unet.core.bundle import list_versions, load_bundle, load_replay
    from napari_unet.core.train import finetune

    model_dir = tmp_path / "tiny"
    shutil.copytree(trained.path.parent, model_dir)
    v1 = model_dir / "v001"
    v1_files = file_hashes(v1)
    parent = load_bundle(v1)
    parent_weights = [w.copy() for w in parent.model.get_weights()]
    replay_before = load_replay(v1)
    image, labels = blob_pair(96, 96, seed=30)
    labels[40:60, 40:60] = 0  # a "correction"
    hashes = data_hash(image), data_hash(labels)
    _read_only(image, labels)

    result = finetune(parent, [TrainingPair(image, labels, "corrected")], epochs=1)
    v2 = result.save(model_dir.parent, model_dir.name)
    v3 = result.save(model_dir.parent, model_dir.name)  # saving again never replaces v002

    assert (data_hash(image), data_hash(labels)) == hashes
    assert [p.name for p in list_versions(model_dir)] == ["v001", "v002", "v003"] and (v2.name, v3.name) == (
        "v002",
        "v003",
    )
    assert file_hashes(v1) == v1_files
    for now, then in zip(parent.model.get_weights(), parent_weights):
        np.testing.assert_array_equal(now, then)  # the parent in memory is not the model that was trained
    assert load_bundle(v2).parent == str(v1)
    images_before, _ = replay_before
    images_after, _ = load_replay(v1)
    assert len(images_after) == len(images_before) > 0
    assert all(np.array_equal(a, b) for a, b in zip(images_after, images_before))


def test_cli_finetune_of_a_zip_never_touches_the_zip_or_its_folder(trained, tmp_path, capsys):
    """The child of a zipped model goes next to the zip under the model's name, as a new version."""
    import tifffile

    from napari_unet.core import cli
    from napari_unet.core.bundle import export_zip, load_bundle

    exports = tmp_path / "exports"
    exports.mkdir()
    archive = export_zip(trained.path, exports / "shared-model.zip")
    zip_bytes = archive.read_bytes()
    # An unrelated older model of the same name beside the zip: fine-tuning must add, not replace.
    shutil.copytree(trained.path.parent, exports / "tiny")
    old_files = file_hashes(exports / "tiny")
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    image, labels = blob_pair(96, 96, seed=31)
    tifffile.imwrite(tmp_path / "images" / "c.tif", image)
    tifffile.imwrite(tmp_path / "labels" / "c.tif", labels)
    labels_file = (tmp_path / "labels" / "c.tif").read_bytes()

    code = cli.main(["finetune", "--model", str(archive), "--images", str(tmp_path / "images"),
                     "--labels", str(tmp_path / "labels"), "--epochs", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    child = exports / "tiny" / "v002"
    assert f"new version saved: {child}" in out
    assert archive.read_bytes() == zip_bytes
    after = file_hashes(exports / "tiny")  # every old file (v001 and the shared replay patches) unchanged
    assert {k: after.get(k) for k in old_files} == old_files
    assert (tmp_path / "labels" / "c.tif").read_bytes() == labels_file
    assert load_bundle(child).parent == str(archive)


# ---------------------------------------------------------------- in the widgets (real viewer)

@pytest.mark.gui
def test_training_in_the_widget_never_modifies_the_layers(viewer, dock, qtbot):
    """Two pairs of unusual dtypes (int8 image with uint32 labels, a bool image with int8 labels)."""
    from reliability_helpers import layer_state, make_tiny, wait_idle

    image, labels = blob_pair(96, 96, seed=60)
    viewer.add_image((image.astype(np.int16) - 128).astype(np.int8), name="int8 image")
    viewer.add_labels(labels.astype(np.uint32) * 70_000, name="uint32 labels")
    image2, labels2 = blob_pair(96, 96, seed=61)
    viewer.add_image(image2 > 100, name="bool image")
    viewer.add_labels(np.minimum(labels2, 100).astype(np.int8), name="int8 labels")
    widget = dock(viewer, "Train")
    second = widget.add_pair()
    widget.rows[0].image.set_layer(viewer.layers["int8 image"])
    widget.rows[0].labels.set_layer(viewer.layers["uint32 labels"])
    second.image.set_layer(viewer.layers["bool image"])
    second.labels.set_layer(viewer.layers["int8 labels"])
    make_tiny(widget, epochs=1, steps=2)
    before = layer_state(viewer)
    assert widget.start_training()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    qtbot.wait(50)
    wait_idle(qtbot)
    assert widget.status == "done", widget.result_label.text()
    after = layer_state(viewer)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"preview [int8-image-unet]"}


@pytest.mark.gui
def test_prediction_never_replaces_a_user_layer_or_an_edited_prediction(viewer, dock, qtbot, current_model):
    from reliability_helpers import layer_state

    image, labels = blob_pair(96, 96, seed=62)
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    taken = f"cells [{current_model.label}]"
    viewer.add_labels(np.ones_like(labels), name=taken)  # the user's own layer, with the name a prediction gets
    users = layer_state(viewer)
    widget = dock(viewer, "Predict")
    widget.image_picker.set_layer(viewer.layers["cells"])

    def predict() -> None:
        assert widget.start_prediction()
        qtbot.waitUntil(lambda: not widget.job.running, timeout=60_000)
        qtbot.wait(20)

    predict()
    first = widget.last_record.labels_layer
    assert first.name == f"{taken} (2)"
    first.paint((10, 10), 7)  # the user corrects the prediction with the brush
    assert widget.last_record.edited
    edited = data_hash(first.data)
    widget.threshold.setValue(0.8)  # re-applying post-processing must not overwrite the correction
    qtbot.waitUntil(lambda: f"{taken} (3)" in viewer.layers, timeout=5_000)
    predict()  # predicting again neither
    assert f"{taken} (4)" in viewer.layers
    assert data_hash(first.data) == edited and first.data[10, 10] == 7
    now = layer_state(viewer)
    assert {k: now[k] for k in users} == users


@pytest.mark.gui
def test_finetuning_in_the_widget_keeps_the_corrected_layer_and_earlier_versions(
    viewer, dock, qtbot, worker_trained, tmp_path, gui_session
):
    from reliability_helpers import layer_state, wait_idle

    from napari_unet.core.versions import list_versions
    from napari_unet.jobs.models import model_info
    from napari_unet.widgets.models_registry import ModelEntry

    model_dir = tmp_path / "models" / "tiny"
    shutil.copytree(worker_trained.parent, model_dir)
    v1_files = file_hashes(model_dir / "v001")
    entry = gui_session.add(ModelEntry.from_info(model_info(model_dir / "v001"), "loaded"))
    image, labels = blob_pair(96, 96, seed=63)
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    corrected = viewer.add_labels(
        (labels > 0).astype(np.int32), name=f"cells [{entry.label}]", metadata={"napari_unet": {"image": "cells"}}
    )  # a prediction the user corrected
    users = layer_state(viewer)
    widget = dock(viewer, "Fine-tune")
    assert widget.labels_picker.layer() is corrected and widget.image_picker.layer().name == "cells"
    assert widget.add_corrected()
    assert not np.shares_memory(gui_session.pending[0].labels, corrected.data), "a snapshot, not the layer"
    widget.epochs.setValue(1)
    assert widget.start_finetune()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=120_000)
    qtbot.waitUntil(lambda: not widget.predict_job.running, timeout=60_000)
    qtbot.wait(50)
    wait_idle(qtbot)
    assert widget.status == "done", widget.result_label.text()
    assert [p.name for p in list_versions(model_dir)] == ["v001", "v002"]
    assert file_hashes(model_dir / "v001") == v1_files
    now = layer_state(viewer)
    assert {k: now[k] for k in users} == users, "the corrected layer and the user's labels are unchanged"
    assert "cells [tiny v2]" in now and not corrected.visible  # re-predicted into a new layer
