"""The Review dock widget with a real viewer: predict a folder, review worst first, resume, fine-tune, re-predict.

Run under Xvfb: `xvfb-run -a .venv/bin/pytest tests/widgets/test_review_widget.py -x -q`.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt

from napari_unet.widgets.review_widget import (
    COL_STATUS,
    COL_UNCERTAINTY,
    IMAGE_LAYER,
    LABELS_LAYER,
    UNCERTAINTY_LAYER,
    ReviewWidget,
)

N_IMAGES = 12
WAIT_MS = 180_000


@pytest.fixture
def image_folder(image_folder_of):
    return image_folder_of(N_IMAGES)


def _open(viewer, qtbot) -> ReviewWidget:
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Review")
    return widget


def _run(widget: ReviewWidget, qtbot, action) -> bool:
    started = action()
    if started and widget.busy:
        with qtbot.waitSignal(widget.job_finished, timeout=WAIT_MS):
            pass
    return started


def _press(viewer, qtbot, key: int, modifier=Qt.NoModifier) -> None:
    """A key press on the canvas, as a user reviewing with the keyboard would do it."""
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, key, modifier)


def test_review_a_folder_then_resume_finetune_and_repredict(
    make_napari_viewer, qtbot, tmp_path, image_folder, tiny_model
):
    viewer = make_napari_viewer()
    widget = _open(viewer, qtbot)
    widget.inputs.folder_edit.setText(str(image_folder))
    assert widget.inputs.review_edit.text() == str(image_folder / "review")
    widget.inputs.model_edit.setText(str(tiny_model))

    streamed = []
    def scored_rows() -> int:
        return sum(bool(widget.table.item(r, COL_UNCERTAINTY).text()) for r in range(widget.table.rowCount()))

    widget.item_predicted.connect(lambda name: streamed.append(scored_rows()))
    assert _run(widget, qtbot, widget.start_review)
    assert streamed == list(range(1, N_IMAGES + 1))  # rows filled one by one as results came in
    project = widget.project
    assert all(project.item(n).status == "unreviewed" and project.item(n).predicted for n in project.names)

    # Worst first: the table is sorted by uncertainty, highest on top, and the top image is shown.
    order = widget.row_names()
    values = [project.item(n).uncertainty for n in order]
    assert values == sorted(values, reverse=True) and len(set(values)) > 1
    assert widget.current == order[0]
    labels = viewer.layers[LABELS_LAYER]
    np.testing.assert_array_equal(labels.data, project.prediction(order[0]))
    np.testing.assert_array_equal(viewer.layers[IMAGE_LAYER].data, tifffile.imread(image_folder / f"{order[0]}.tif"))
    assert viewer.layers.selection.active is labels  # ready for the brush

    # Keys: A accepts and moves on, N / Shift-N step, R rejects.
    _press(viewer, qtbot, Qt.Key_A)
    assert project.item(order[0]).status == "accepted" and widget.current == order[1]
    _press(viewer, qtbot, Qt.Key_N)
    assert widget.current == order[2]
    _press(viewer, qtbot, Qt.Key_N, Qt.ShiftModifier)
    assert widget.current == order[1]
    widget.accept()  # the button does the same
    assert project.item(order[1]).status == "accepted" and widget.current == order[2]

    # Correct order[2] with napari's tools: paint a new object and erase another one.
    corrected = order[2]
    labels = viewer.layers[LABELS_LAYER]
    before = labels.data.copy()
    labels.brush_size = 9
    labels.paint((30, 30), 77)
    labels.fill(tuple(np.argwhere(before > 0)[0]), 0)
    edited = labels.data.copy()
    assert not np.array_equal(edited, before)
    qtbot.waitUntil(lambda: project.item(corrected).status == "corrected", timeout=2000)
    np.testing.assert_array_equal(project.mask(corrected), edited)
    assert widget.table.item(widget.table.row_of(corrected), COL_STATUS).text() == "corrected"

    widget.next()
    rejected = widget.current
    _press(viewer, qtbot, Qt.Key_R)
    assert project.item(rejected).status == "rejected"

    widget.show_uncertainty.setChecked(True)
    umap = viewer.layers[UNCERTAINTY_LAYER]
    assert umap.visible and umap.data.shape == (256, 256) and 0 <= umap.data.min() <= umap.data.max() <= 1

    # Close the widget (keys are released), then reopen the folder in a new viewer: everything is there.
    widget.close()
    assert "A" not in {str(k) for k in viewer.keymap}
    viewer.close()
    viewer2 = make_napari_viewer()
    again = _open(viewer2, qtbot)
    again.inputs.review_edit.setText(str(image_folder / "review"))
    assert _run(again, qtbot, again.start_review)
    assert not again.busy  # nothing left to predict
    p2 = again.project
    statuses = {n: p2.item(n).status for n in p2.names}
    assert [statuses[n] for n in (order[0], order[1], corrected, rejected)] == [
        "accepted", "accepted", "corrected", "rejected"
    ]
    assert list(statuses.values()).count("unreviewed") == N_IMAGES - 4
    np.testing.assert_array_equal(p2.mask(corrected), edited)
    again.select(corrected)
    np.testing.assert_array_equal(viewer2.layers[LABELS_LAYER].data, edited)
    assert again.inputs.model_edit.text() == str(tiny_model)  # the model that made the masks, from the index

    # Fine-tune on the corrected image: a new version becomes the current model.
    again.epochs_spin.setValue(1)
    assert _run(again, qtbot, again.finetune)
    assert again.model.version == 2 and (tiny_model.parent / "v002" / "model.keras").is_file()
    assert again.registry.current.version == 2

    # Re-predict the unreviewed ones with it; reviewed images keep their masks and model version.
    unreviewed = p2.with_status("unreviewed")
    assert _run(again, qtbot, again.repredict_unreviewed)
    assert all(p2.item(n).model_version == 2 for n in unreviewed)
    assert p2.item(corrected).model_version == 1
    np.testing.assert_array_equal(p2.mask(corrected), edited)

    written = again.export_masks(tmp_path / "export")
    assert sorted(p.name for p in written) == sorted(f"{n}.tif" for n in (order[0], order[1], corrected))


def test_bad_files_are_listed_with_their_reason_and_the_rest_is_reviewable(
    make_napari_viewer, qtbot, tmp_path, nuclei_pairs, nuclei_rgb_pairs, tiny_model, messages
):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, image, _ in (nuclei_pairs[0], nuclei_pairs[20]):  # 256x256 and a larger image
        tifffile.imwrite(folder / f"{name}.tif", image)
    tifffile.imwrite(folder / "stained_rgb.tif", nuclei_rgb_pairs[0][1])  # 3 channels, 1-channel model
    (folder / "broken.tif").write_bytes(b"II*\x00 truncated")
    viewer = make_napari_viewer()
    widget = _open(viewer, qtbot)
    widget.inputs.folder_edit.setText(str(folder))
    widget.inputs.model_edit.setText(str(tiny_model))
    assert _run(widget, qtbot, widget.start_review)

    project = widget.project
    assert project.item("broken").status == "error" and "broken.tif" in project.item("broken").error
    assert project.item("stained_rgb").status == "error" and "RGB" in project.item("stained_rgb").error
    good = [n for n in project.names if project.item(n).status == "unreviewed"]
    assert len(good) == 2 and all(project.item(n).predicted for n in good)
    assert {tuple(project.item(n).shape) for n in good} == {(256, 256), tuple(nuclei_pairs[20][1].shape)}
    warning = [m for m in messages("warning") if "left out" in m]
    assert warning and "stained_rgb" in warning[0]
    assert widget.row_names()[-1] in ("broken", "stained_rgb")  # errors sort last
    # Stepping skips them; the good images can be reviewed.
    widget.select(good[0])
    widget.next()
    assert widget.current == good[1]
    widget.accept()
    assert project.item(good[1]).status == "accepted"


def test_empty_folder_and_unwritable_review_folder_are_explained(
    make_napari_viewer, qtbot, tmp_path, image_folder, tiny_model, messages
):
    viewer = make_napari_viewer()
    widget = _open(viewer, qtbot)
    widget.inputs.model_edit.setText(str(tiny_model))

    empty = tmp_path / "empty"
    empty.mkdir()
    widget.inputs.folder_edit.setText(str(empty))
    assert not widget.start_review()
    assert any("No image files" in m for m in messages("error"))

    # Root ignores chmod, so use a folder nobody can create: one below a regular file.
    blocker = tmp_path / "a_file.txt"
    blocker.write_text("x")
    widget.inputs.folder_edit.setText(str(image_folder))
    widget.inputs.review_edit.setText(str(blocker / "review"))
    assert not widget.start_review()
    error = messages("error")[-1]
    assert "Cannot write to the review folder" in error and "Choose another folder" in error
    assert "Suggested instead" in error and widget.inputs.review_edit.text() != str(blocker / "review")

    widget.inputs.review_edit.setText(str(tmp_path / "writable"))
    assert _run(widget, qtbot, widget.start_review)
    assert len(widget.project) == N_IMAGES and widget.project.counts()["unreviewed"] == N_IMAGES


def test_layers_as_input_stack_and_separate_images(make_napari_viewer, qtbot, tmp_path, nuclei_pairs, tiny_model):
    viewer = make_napari_viewer()
    stack = np.stack([p[1] for p in nuclei_pairs[:3]])
    viewer.add_image(stack, name="plate")
    viewer.add_image(nuclei_pairs[3][1], name="extra")
    widget = _open(viewer, qtbot)
    widget.set_layers(["plate", "extra"])
    widget.inputs.review_edit.setText(str(tmp_path / "review"))
    widget.inputs.model_edit.setText(str(tiny_model))
    assert _run(widget, qtbot, widget.start_review)
    names = sorted(widget.project.names)
    assert names == ["extra", "plate[000]", "plate[001]", "plate[002]"]
    np.testing.assert_array_equal(widget.project.load_image("plate[001]"), stack[1])
    assert (tmp_path / "review" / "images" / "plate[001].tif").is_file()  # survives closing napari


def test_a_killed_worker_is_reported_the_layers_stay_and_the_next_start_works(
    make_napari_viewer, qtbot, image_folder, tiny_model, messages, monkeypatch
):
    from napari_unet.jobs.client import ComputeClient
    from napari_unet.jobs.messages import ReviewItemDone

    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((64, 64), np.int32), name="my notes")
    widget = _open(viewer, qtbot)
    widget.inputs.folder_edit.setText(str(image_folder))
    widget.inputs.model_edit.setText(str(tiny_model))

    # SIGKILL the worker the moment it reports its first image, as a crash or the OOM killer would.
    killed: list[str] = []
    submit = ComputeClient.submit

    def submit_and_kill(client, source, listener=None):
        def listen(event):
            if isinstance(event, ReviewItemDone) and not killed:
                killed.append(event.name)
                client.kill_worker()
            listener(event)

        return submit(client, source, listen)

    monkeypatch.setattr(ComputeClient, "submit", submit_and_kill)
    shown: dict[str, np.ndarray] = {}

    def snapshot(_name: str) -> None:  # the layers as the last streamed result left them
        widget.layers.finish_showing()  # (the labels of a first image come one event-loop turn after it)
        shown.clear()
        shown.update({layer.name: np.array(layer.data, copy=True) for layer in viewer.layers})

    widget.item_predicted.connect(snapshot)
    assert _run(widget, qtbot, widget.start_review)
    widget.item_predicted.disconnect(snapshot)

    assert killed
    error = [m for m in messages("error") if "compute worker was killed" in m]
    assert error and "SIGKILL" in error[0] and "layers are untouched" in error[0]
    assert widget.status_label.text() == error[0]
    assert [layer.name for layer in viewer.layers] == list(shown)
    for layer in viewer.layers:
        np.testing.assert_array_equal(layer.data, shown[layer.name])
    predicted = [n for n in widget.project.names if widget.project.item(n).predicted]
    assert 0 < len(predicted) < N_IMAGES  # what arrived before the crash is kept in the index
    assert not widget.busy and widget.start_button.isEnabled()

    # The next Start runs in a fresh worker and predicts the rest.
    assert _run(widget, qtbot, widget.start_review)
    project = widget.project
    assert all(project.item(n).predicted and project.item(n).status == "unreviewed" for n in project.names)
    assert widget.current == widget.row_names()[0]


def test_stop_ends_the_predictions_and_start_resumes_them(
    make_napari_viewer, qtbot, image_folder, tiny_model, messages
):
    from napari_unet.core.states import JobState
    from napari_unet.jobs.models import model_info
    from napari_unet.widgets.models_registry import ModelEntry

    viewer = make_napari_viewer()
    widget = _open(viewer, qtbot)
    widget.registry.add(ModelEntry.from_info(model_info(tiny_model), "loaded"))  # a model of this session
    assert widget.inputs.model_edit.text() == str(tiny_model)
    widget.inputs.folder_edit.setText(str(image_folder))
    with qtbot.waitSignal(widget.job_finished, timeout=WAIT_MS):
        assert widget.start_review()
        assert widget.busy and widget.stop_button.isEnabled() and not widget.start_button.isEnabled()
        widget.stop()
    assert widget.job.state == JobState.STOPPED and not messages("error")
    assert "stopped" in widget.status_label.text()
    assert not widget.busy and widget.start_button.isEnabled()
    assert widget.project.to_predict()

    assert _run(widget, qtbot, widget.start_review)
    assert not widget.project.to_predict()
    assert widget.model.source == "loaded" and widget.registry.current is widget.model


def test_a_closed_review_ignores_what_a_later_review_shows_in_the_same_layer(make_napari_viewer, qtbot):
    """After close, the labels layer another review fills is not an edit of the closed one's image
    (it was saved as that image's corrected mask: a race seen in test_cluster_widgets)."""
    from napari_unet.widgets.review_layers import ReviewLayers

    viewer = make_napari_viewer()
    first = ReviewLayers(viewer)
    image = np.zeros((64, 64), np.uint8)
    first.show("a", image, np.zeros((64, 64), np.int32), None)
    first.finish_showing()
    edits: list[str] = []
    first.edited.connect(edits.append)
    first.release()
    ReviewLayers(viewer).show("b", image, np.ones((64, 64), np.int32), None)  # the next review, same layers
    viewer.layers[LABELS_LAYER].data = np.full((64, 64), 2, np.uint16)  # and an edit made there
    qtbot.wait(50)
    assert edits == [] and first.take_edit() is None
