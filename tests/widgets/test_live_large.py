"""Live mode on a 20000 x 20000 zarr-backed image (cost follows the screen), and undo/redo reaching training."""

from __future__ import annotations

import numpy as np
import pytest

#: Worker start (TensorFlow import) plus a few seconds of training on 2 shared cores (as test_live_widget).
FIRST_FRAME_MS = 90_000

SIDE = 20_000
CHUNK = 1024
#: Where the nuclei sample is written into the large image (the rest is never written: fill value 0).
AT = 10_000


@pytest.fixture
def large_zarr(tmp_path, nuclei_sample):
    """A 20000 x 20000 uint16 zarr pyramid on disk with the nuclei sample written at (AT, AT)."""
    import zarr

    image, _ = nuclei_sample
    group = zarr.open_group(str(tmp_path / "large.zarr"), mode="w")
    levels = []
    for level in range(6):
        side = SIDE // 2**level
        levels.append(group.create_array(str(level), shape=(side, side), chunks=(CHUNK, CHUNK), dtype="uint16",
                                         fill_value=0))  # fmt: skip
        y = AT // 2**level
        levels[-1][y : y + image.shape[0] // 2**level, y : y + image.shape[1] // 2**level] = (
            image[:: 2**level, :: 2**level].astype(np.uint16) * 100
        )
    return levels


def test_large_zarr_image_is_read_where_needed(viewer, dock, qtbot, nuclei_sample, large_zarr, monkeypatch, messages):
    from napari_unet.jobs import arrays
    from napari_unet.widgets import live_widget
    from napari_unet.widgets.live_widget import viewer_camera

    _image, gt = nuclei_sample
    requests, puts = [], []
    real_request, real_put = live_widget.LiveRequest, arrays.put

    def record_request(*args, **kwargs):
        requests.append(real_request(*args, **kwargs))
        return requests[-1]

    def record_put(folder, array, *args, **kwargs):
        puts.append(int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize)
        return real_put(folder, array, *args, **kwargs)

    monkeypatch.setattr(live_widget, "LiveRequest", record_request)
    monkeypatch.setattr(arrays, "put", record_put)
    layer = viewer.add_image(large_zarr, multiscale=True, name="large", contrast_limits=(0, 25_500))
    camera = viewer_camera(viewer)
    camera.center = (0, AT + 128, AT + 128)
    camera.zoom = 2.0  # about 400 x 300 image pixels on the test canvas
    live = dock(viewer, "Live")
    live.image_picker.set_layer(layer)
    live.labels_picker.set_layer(None)
    strokes = live._strokes_layer(create=True)  # painted before Live: sent as its painted blocks
    strokes.paint((AT + 5, AT + 5), live.background.value())
    assert live.start_live(), messages("error")

    ids = np.unique(gt[gt > 0])[:4]
    for i in ids:
        r, c = np.argwhere(gt == i).mean(axis=0).astype(int)
        strokes.paint((AT + r, AT + c), 1)
    strokes.paint((AT + 240, AT + 10), live.background.value())
    qtbot.waitUntil(lambda: live.frames >= 1 and live.learnt == live.sent, timeout=FIRST_FRAME_MS)

    request = requests[-1]
    assert request.image is None and request.source is not None and request.source.endswith("0")
    # The dab painted before Live (and strokes painted since, when the request was built after them):
    # their blocks only, not a 20000^2 array.
    assert 1 <= len(request.regions) <= 6 and all(max(r.labels.shape) <= 512 for r in request.regions)
    assert max(puts) < 8 * 2**20, puts  # nothing near the image's 800 MB crossed to the worker
    shown = live.live_layer.data
    assert shown.shape[0] < 2048 and shown.shape[1] < 2048  # the field of view, not the image
    top, left = np.asarray(live.live_layer.translate)[-2:]
    assert top <= AT + 128 <= top + shown.shape[0] and left <= AT + 128 <= left + shown.shape[1]
    live.stop_live()
    qtbot.waitUntil(lambda: not live.running, timeout=5_000)
    assert not messages("error")


def test_undo_and_redo_reach_training(sample_viewer, dock, qtbot, nuclei_sample, messages):
    """napari's undo/redo change pixels without a paint event: Live sends those regions as strokes."""
    _image, gt = nuclei_sample
    live = dock(sample_viewer, "Live")
    live.image_picker.set_layer(sample_viewer.layers["nuclei"])
    live.labels_picker.set_layer(None)
    assert live.start_live(), messages("error")
    strokes = live.labels_picker.layer()
    sent: list[tuple[int, int, np.ndarray]] = []
    real_send = live.job.send

    def record(message):
        if hasattr(message, "labels") and hasattr(message, "seq"):
            from napari_unet.jobs import arrays

            sent.append((message.top, message.left, np.array(arrays.view(message.labels))))
        return real_send(message)

    live.job.send = record
    strokes.brush_size = 5
    strokes.paint((40, 40), 1)
    live.flush_strokes()
    assert sent and (sent[-1][2] == 1).any()
    strokes.undo()
    assert not strokes.data.any()
    live.flush_strokes()
    top, left, region = sent[-1]
    assert top <= 40 < top + region.shape[0] and left <= 40 < left + region.shape[1]
    assert not region.any()  # the undone stroke: the worker now reads 0 (not annotated) there
    strokes.redo()
    live.flush_strokes()
    assert (sent[-1][2] == 1).any()  # redone
    live.stop_live()
    qtbot.waitUntil(lambda: not live.running, timeout=5_000)
    assert not messages("error")
