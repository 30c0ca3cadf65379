"""The widgets keep each event-loop turn short: heavy parts are built later, one per turn, and progress
bars repaint with the next frame (benchmarks/gui_responsiveness.py measures the whole session)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_docking_imports_neither_pyqtgraph_nor_skimage_morphology():
    code = (
        "import sys, napari\n"
        "import napari_unet.widgets.predict_widget, napari_unet.widgets.train_widget\n"
        "import napari_unet.widgets.finetune_widget, napari_unet.widgets.review_widget\n"
        "heavy = [m for m in ('pyqtgraph', 'skimage.morphology', 'skimage.segmentation') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_progress_bar_repaints_with_the_next_frame(qtbot):
    from qtpy.QtWidgets import QProgressBar

    from napari_unet.widgets._progress import ProgressBar

    def counting(base: type) -> QProgressBar:
        class Counted(base):
            paints = 0

            def paintEvent(self, event):
                type(self).paints += 1
                super().paintEvent(event)

        bar = Counted()
        bar.setRange(0, 1000)
        bar.setTextVisible(False)
        qtbot.addWidget(bar)
        bar.show()
        qtbot.waitExposed(bar)
        qtbot.wait(50)
        return bar

    plain = counting(QProgressBar)
    before = plain.paints
    plain.setValue(500)
    assert plain.paints > before, "Qt's own bar repaints inside setValue (what ProgressBar avoids)"

    bar = counting(ProgressBar)
    values: list[int] = []
    bar.valueChanged.connect(values.append)
    before = bar.paints
    bar.setValue(500)
    assert bar.value() == 500 and values == [500]
    assert bar.paints == before  # not inside the caller's turn
    qtbot.waitUntil(lambda: bar.paints > before, timeout=2000)  # but with the next frame
    bar.setValue(500)
    assert values == [500]


def test_training_curves_are_built_after_the_monitor_shows(qtbot):
    from napari_unet.jobs.messages import TrainUpdate
    from napari_unet.widgets._monitor import TrainingMonitor

    monitor = TrainingMonitor()
    qtbot.addWidget(monitor)
    assert monitor.plots == {} and monitor.curves == {}  # nothing heavy at construction
    monitor.begin()
    for epoch, (loss, dice) in enumerate([(0.9, 0.3), (0.5, 0.6)], start=1):
        logs = {"loss": loss, "val_loss": loss + 0.1, "dice": dice, "val_dice": dice - 0.1}
        monitor.show(TrainUpdate(job="j", kind="epoch", epoch=epoch, epochs=5, step=10, steps=10, logs=logs))
    assert monitor.history["loss"] == [0.9, 0.5] and monitor.plots == {}
    monitor.setVisible(True)
    qtbot.waitUntil(lambda: set(monitor.plots) == {"loss", "dice"}, timeout=5000)
    x, y = monitor.curves["val_dice"].getData()
    assert list(x) == [1.0, 2.0] and np.allclose(y, [0.2, 0.5])  # epochs seen before the curves existed

    logs = {"loss": 0.4, "val_loss": 0.45, "dice": 0.7, "val_dice": 0.65}
    monitor.show(TrainUpdate(job="j", kind="epoch", epoch=3, epochs=5, step=10, steps=10, logs=logs))
    assert list(monitor.curves["loss"].getData()[1]) == [0.9, 0.5, 0.4]
    monitor.begin()  # a new run clears them
    assert len(monitor.curves["loss"].getData()[0] or []) == 0


def test_review_layers_come_one_per_turn_and_at_once_when_needed(make_napari_viewer, qtbot):
    from napari_unet.widgets.review_layers import (
        IMAGE_LAYER,
        LABELS_LAYER,
        ReviewLayers,
    )

    viewer = make_napari_viewer()
    panel = ReviewLayers(viewer)
    image = np.random.default_rng(0).integers(0, 255, (64, 80), dtype=np.uint8)
    mask = np.zeros((64, 80), np.int32)
    mask[10:20, 10:30] = 3

    panel.show("a", image, mask, None)
    assert IMAGE_LAYER in viewer.layers and LABELS_LAYER not in viewer.layers  # the labels get their own turn
    qtbot.waitUntil(lambda: LABELS_LAYER in viewer.layers, timeout=2000)
    np.testing.assert_array_equal(viewer.layers[LABELS_LAYER].data, mask)
    assert viewer.layers.selection.active is viewer.layers[LABELS_LAYER]

    # Same shapes: both layers are updated in place, in the same turn.
    labels_layer = viewer.layers[LABELS_LAYER]
    panel.show("b", image[::-1].copy(), mask[::-1].copy(), None)
    assert viewer.layers[LABELS_LAYER] is labels_layer
    np.testing.assert_array_equal(labels_layer.data, mask[::-1])

    # New shapes, and the labels asked for before their turn: they are there at once.
    big_image, big_mask = np.zeros((96, 96), np.uint8), np.ones((96, 96), np.int32)
    panel.show("c", big_image, big_mask, None)
    np.testing.assert_array_equal(panel.labels(), big_mask)
    assert viewer.layers[IMAGE_LAYER].data.shape == (96, 96)
    panel.show("d", np.zeros((50, 50), np.uint8), None, None)
    panel.show("e", np.ones((50, 50), np.uint8), mask[:50, :50].copy(), None)  # before "d"'s labels came
    np.testing.assert_array_equal(viewer.layers[LABELS_LAYER].data, mask[:50, :50])
    qtbot.wait(50)
    np.testing.assert_array_equal(viewer.layers[LABELS_LAYER].data, mask[:50, :50])  # "d" never comes back
    assert panel.shown == "e"
