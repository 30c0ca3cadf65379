"""Live widget with a real viewer: strokes painted through the Labels layer's paint API reach the
compute worker, the live layer follows, Freeze saves a version that Predict lists."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Worker start (TensorFlow import) plus a few seconds of training on 2 shared cores.
FIRST_FRAME_MS = 90_000


def _stroke_points(gt: np.ndarray, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Centres of the `n` largest objects, and background pixels far from every object."""
    ids, sizes = np.unique(gt[gt > 0], return_counts=True)
    centres = ndi.center_of_mass(gt > 0, gt, ids[np.argsort(-sizes)[:n]])
    far = np.argwhere(ndi.distance_transform_edt(gt == 0) > 12)
    picks = far[np.linspace(0, len(far) - 1, n).astype(int)]
    return [(int(r), int(c)) for r, c in centres], [(int(r), int(c)) for r, c in picks]


def test_paint_live_freeze_predict(sample_viewer, dock, qtbot, nuclei_sample, messages):
    viewer = sample_viewer
    _image, gt = nuclei_sample
    live = dock(viewer, "Live")
    predict = dock(viewer, "Predict")
    live.image_picker.set_layer(viewer.layers["nuclei"])
    live.labels_picker.set_layer(None)  # paint into a new, empty strokes layer
    assert live.start_live(), messages("error")
    strokes = live.labels_picker.layer()
    assert strokes is not None and strokes.data.shape == gt.shape and not strokes.data.any()
    assert live.live_layer is not None and live.live_layer.name.startswith("live")

    objects, background = _stroke_points(gt, 6)
    strokes.brush_size = 3
    live.choose_brush(background=False)
    for r, c in objects:
        strokes.paint((r, c), strokes.selected_label)  # fires labels_update, as a brush dab does
    live.choose_brush(background=True)
    assert strokes.selected_label == live.background.value()
    strokes.brush_size = 7
    for r, c in background:
        strokes.paint((r, c), strokes.selected_label)
    assert live.running

    # The live layer follows: a frame that has learnt every stroke sent so far, with objects in it.
    qtbot.waitUntil(lambda: live.frames >= 1, timeout=FIRST_FRAME_MS)
    qtbot.waitUntil(lambda: live.sent >= 1 and live.learnt == live.sent, timeout=60_000)
    qtbot.waitUntil(lambda: live.live_layer.data.any(), timeout=30_000)
    # More strokes later: they are sent on their own and a later frame has learnt them too.
    first_sent, first_frames = live.sent, live.frames
    more_objects, _ = _stroke_points(gt, 12)
    live.choose_brush(background=False)
    for r, c in more_objects[6:]:
        strokes.paint((r, c), strokes.selected_label)
    qtbot.waitUntil(lambda: live.sent > first_sent and live.learnt == live.sent, timeout=60_000)
    assert live.frames > first_frames
    shown = live.live_layer.data
    assert shown.shape == gt.shape  # the whole 256 x 256 sample is on screen
    assert not viewer.layers["nuclei labels"].data.size == 0  # the user's layers are untouched
    np.testing.assert_array_equal(viewer.layers["nuclei labels"].data, gt)

    # Zoomed in, the next frames cover the field of view only (plus nothing outside it): cost follows the screen.
    from napari_unet.widgets.live_widget import viewer_camera

    camera = viewer_camera(viewer)
    camera.center = (0, 64, 64)
    camera.zoom *= 4
    view = live.viewport()
    assert view.bottom - view.top < gt.shape[0], (view, camera.zoom, camera.center)
    qtbot.waitUntil(lambda: live.live_layer.data.shape[0] < gt.shape[0], timeout=30_000)
    assert live.live_layer.translate[0] >= view.top - 1

    live.freeze()
    qtbot.waitUntil(lambda: not live.running, timeout=60_000)
    outcome = live.last_outcome
    assert outcome is not None and outcome.model is not None, live.status_label.text()
    assert outcome.model.path.endswith("v001")
    items = [predict.model_combo.itemText(i) for i in range(predict.model_combo.count())]
    assert any(outcome.model.label in item for item in items), items
    assert not messages("error")


def test_stop_within_two_seconds(sample_viewer, dock, qtbot, messages):
    import time

    live = dock(sample_viewer, "Live")
    live.image_picker.set_layer(sample_viewer.layers["nuclei"])
    live.labels_picker.set_layer(None)
    assert live.start_live()
    strokes = live.labels_picker.layer()
    strokes.paint((128, 128), 1)
    strokes.paint((10, 10), live.background.value())
    qtbot.waitUntil(lambda: live.frames >= 1, timeout=FIRST_FRAME_MS)
    start = time.monotonic()
    live.stop_live()
    qtbot.waitUntil(lambda: not live.running, timeout=5_000)
    assert time.monotonic() - start < 2.0
    assert live.last_outcome is not None and live.last_outcome.model is None
    assert not messages("error")


def _sparse_strokes(gt: np.ndarray, background: int) -> np.ndarray:
    """Strokes in a grid of small windows: object cores and background far from objects; 0 elsewhere."""
    strokes = np.zeros(gt.shape, np.int32)
    cores = ndi.binary_erosion(gt > 0, iterations=2)
    far = ndi.distance_transform_edt(gt == 0) > 6
    for top in range(0, gt.shape[0], 32):
        for left in range(0, gt.shape[1], 32):
            window = (slice(top, top + 12), slice(left, left + 12))
            strokes[window][cores[window]] = 1
            strokes[window][far[window]] = background
    return strokes


def test_sparse_labels_in_train_and_finetune(sample_viewer, dock, qtbot, nuclei_sample, make_tiny, tmp_path, messages):
    """Train and Fine-tune with "Sparse labels (0 = not annotated)": the models record the sparse reading."""
    from napari_unet.core.config import Config
    from napari_unet.widgets._tasks import finetune_request
    from napari_unet.widgets.models_registry import session_registry

    _image, gt = nuclei_sample
    strokes = sample_viewer.add_labels(_sparse_strokes(gt, 200), name="strokes")
    train = dock(sample_viewer, "Train")
    finetune = dock(sample_viewer, "Fine-tune")
    train.rows[0].labels.set_layer(strokes)
    make_tiny(train, epochs=1)
    train.settings.sparse.check.setChecked(True)
    train.settings.sparse.background.setValue(200)
    train.preview_picker.set_layer(None)
    cfg = train.settings.config(1)
    assert cfg.data.sparse and cfg.data.background_label == 200
    assert train.start_training(), messages("error")
    qtbot.waitUntil(lambda: not train.running, timeout=120_000)
    assert train.status == "done", train.result_label.text()
    entry = session_registry().current
    assert entry.config.data.sparse and entry.config.data.background_label == 200

    finetune.labels_picker.set_layer(strokes)
    finetune.sparse.check.setChecked(True)
    finetune.sparse.background.setValue(200)
    finetune.repredict.setChecked(False)
    finetune.epochs.setValue(1)
    assert finetune.add_corrected(), messages("error")
    request = finetune_request(entry, session_registry().pending, 1, tmp_path, None, finetune.sparse.background_label())(tmp_path)
    assert request.sparse_background == 200
    assert finetune.start_finetune()
    qtbot.waitUntil(lambda: not finetune.job.running, timeout=180_000)
    assert finetune.status == "done", finetune.result_label.text()
    child = session_registry().current
    assert child.version == 2 and child.config.data.sparse
    assert isinstance(child.config, Config) and not messages("error")
