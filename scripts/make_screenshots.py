"""Screenshots of the whole napari-unet loop for docs/user-guide.md, taken from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/make_screenshots.py

Drives the dock widgets the way a user does and saves docs/images/guide-*.png: train on the
nuclei sample, open a new image (a DSB2018 image from ../shared/data, or $NAPARI_UNET_SHARED_DATA;
the sample itself when that is absent), predict it, correct the prediction as a user would with
the brush and eraser (from the image's ground truth), fine-tune, and a lung model on the chest
X-ray sample. Models go to a temporary folder. `--quick` uses tiny settings to check the layout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NAPARI_UNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
#: The new image predicted and corrected: fluorescence nuclei larger than the sample's.
NEW_IMAGE = "dsb2018_s1test_38_7bdb668e"
MODELS = Path(tempfile.gettempdir()) / "napari-unet-guide" / "models"
PLUGIN = "napari-unet"
WINDOW = (1500, 1000)
DOCK_WIDTH = 470
MAX_BYTES = 300_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--quick", action="store_true", help="tiny models: check the layout, not the results")
    args = parser.parse_args(argv)

    # No TensorFlow here: as in a user's napari, the widgets' jobs run in the compute worker.
    shutil.rmtree(MODELS, ignore_errors=True)
    os.environ["NAPARI_UNET_MODEL_DIR"] = str(MODELS)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        Guide(args.out, args.quick).run()
    finally:
        shutil.rmtree(MODELS.parent, ignore_errors=True)
    return 0


class Guide:
    """One napari window; each step sets the scene, waits for the widgets, then captures."""

    PREFIX = "guide"  # file names: docs/images/<PREFIX>-<name>.png

    def __init__(self, out: Path, quick: bool) -> None:
        import napari
        from qtpy.QtWidgets import QApplication

        self.out, self.quick = out, quick
        self.viewer = napari.Viewer(title="napari-unet")
        self.app = QApplication.instance()
        self.viewer.window.resize(*WINDOW)
        self.viewer.window._qt_window.move(0, 0)
        self.docks: dict[str, object] = {}
        self.widgets: dict[str, object] = {}

    # ------------------------------------------------------------------ helpers
    def settle(self, seconds: float = 0.5) -> None:
        """Let Qt handle events (layouts, repaints, queued worker messages) for a while."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.app.processEvents()
            time.sleep(0.01)

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
            self.app.processEvents()
            time.sleep(0.02)
        self.settle(0.3)

    def dock(self, name: str) -> object:
        dock, widget = self.viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=bool(self.docks))
        self.docks[name], self.widgets[name] = dock, widget
        return widget

    def widen_docks(self) -> None:
        from qtpy.QtCore import Qt

        self.settle(0.3)
        docks = list(self.docks.values())
        self.viewer.window._qt_window.resizeDocks(docks, [DOCK_WIDTH] * len(docks), Qt.Orientation.Horizontal)

    def show_dock(self, name: str) -> None:
        self.settle(0.3)  # the tab bar of tabified docks exists once the window has laid them out
        self.docks[name].raise_()
        self.settle(0.5)

    def capture(self):
        """The whole window (canvas and docks) as a PIL image."""
        from PIL import Image

        rgba = self.viewer.screenshot(canvas_only=False, flash=False)
        return Image.fromarray(np.asarray(rgba)[..., :3])

    def shoot(self, name: str) -> Path:
        """Capture and save `<PREFIX>-<name>.png` under MAX_BYTES (palette, then smaller)."""
        from PIL import Image

        self.settle(1.0)
        image = self.capture()
        path = self.out / f"{self.PREFIX}-{name}.png"
        width = image.width
        while True:
            shown = image if width == image.width else image.resize(
                (width, round(image.height * width / image.width)), Image.LANCZOS
            )
            shown.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                path, optimize=True
            )
            if path.stat().st_size <= MAX_BYTES or width < 900:
                break
            width = int(width * 0.9)
        print(f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
              f"({shown.width}x{shown.height}, {path.stat().st_size // 1024} KB)", flush=True)
        return path

    def hide(self, *names: str) -> None:
        for layer in self.viewer.layers:
            if layer.name in names:
                layer.visible = False

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        self.viewer.open_sample(PLUGIN, "nuclei")
        train = self.dock("Train")
        self.dock("Predict")
        self.dock("Fine-tune")
        self.dock("Review")  # as scripts/napari.sh docks them: four tabs, Train in front
        self.widen_docks()
        self.show_dock("Train")
        self.viewer.reset_view()
        self.train_nuclei(train)
        image, truth = self.open_new_image()
        record = self.predict(image)
        self.correct(record, truth)
        self.finetune()
        self.chest_xray()
        self.viewer.close()

    def train_nuclei(self, train) -> None:
        settings = train.settings
        settings.task.setCurrentText("instances")  # the sample's labels are separate nuclei
        settings.apply_preset("Fast (CPU)")
        settings.advanced.expand(animate=False)
        if self.quick:
            settings.set_advanced(depth=2, filters=8, patch=64, batch=4, epochs=3, steps=5)
        self.settle(1.0)
        self.shoot("1-train-pairs")

        settings.advanced.collapse(animate=False)
        self.hide("nuclei labels")  # so the preview layer is what one sees
        assert train.start_training(), train.result_label.text()
        mid = 2 if self.quick else 4
        self.wait(lambda: len(train.monitor.history.get("loss", [])) >= mid, 600, "training epochs")
        self.settle(1.5)  # the preview of that epoch
        self.shoot("2-training")
        self.wait(lambda: not train.running, 900, "end of training")
        assert train.status == "done", train.result_label.text()
        print(f"training: {train.monitor.eta_label.text()}", flush=True)
        self.shoot("3-trained")

    def open_new_image(self):
        """File > Open of an image the model has not seen; returns its layer and its ground truth."""
        import tifffile

        path = SHARED_DATA / "nuclei" / "images" / f"{NEW_IMAGE}.tif"
        if not path.is_file():
            print(f"{path} not found: predicting and correcting the nuclei sample instead", flush=True)
            return self.viewer.layers["nuclei"], np.asarray(self.viewer.layers["nuclei labels"].data)
        previews = [lyr.name for lyr in self.viewer.layers if lyr.name.startswith("preview")]
        self.hide("nuclei", "nuclei labels", *previews)
        short = MODELS.parent / "new_nuclei.tif"  # a shorter file (and layer) name than the data set's
        short.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, short)
        (layer,) = self.viewer.open(short)
        layer.colormap = "gray"
        self.viewer.reset_view()
        return layer, tifffile.imread(SHARED_DATA / "nuclei" / "labels" / path.name)

    def predict(self, image):
        predict = self.widgets["Predict"]
        self.show_dock("Predict")
        self.hide(*[lyr.name for lyr in self.viewer.layers if lyr.name.startswith("preview")])
        predict.image_picker.set_layer(image)
        assert predict.start_prediction()
        self.wait(lambda: not predict.job.running, 300, "prediction")
        assert predict.status == "done", predict.status_label.text()
        predict.min_size.setValue(30)  # drop specks: re-applied without running the network
        self.settle(1.0)
        record = predict.last_record
        print(f"predicted {int(record.labels_layer.data.max())} objects", flush=True)
        self.viewer.layers.selection.active = record.labels_layer
        self.shoot("4-predict")
        return record

    def correct(self, record, truth: np.ndarray) -> None:
        """Edit the prediction as a user would with the brush and eraser, from the image's ground truth."""
        layer = record.labels_layer
        pred = np.array(layer.data)
        painted = _missed_objects(pred, truth)
        erased = _false_objects(pred, truth)
        centres = [np.argwhere(truth == obj).mean(axis=0) for obj in painted]
        centres += [np.argwhere(pred == obj).mean(axis=0) for obj in erased]
        finetune = self.widgets["Fine-tune"]
        self.show_dock("Fine-tune")
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        next_id = int(pred.max()) + 1
        layer.selected_label = next_id
        if centres:  # zoom on the place with the most corrections
            near = [sum(np.hypot(*(c - o)) < 120 for o in centres) for c in centres]
            centre = centres[int(np.argmax(near))]
            camera = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera
            camera.zoom *= 2.0
            # keep the zoomed view inside the image where it can be
            half = np.array(self.viewer.window._qt_viewer.canvas.size) / (2 * camera.zoom)
            shape = np.array(truth.shape, dtype=float)
            centre = np.where(2 * half >= shape, shape / 2, np.clip(centre, half, shape - half))
            camera.center = (float(centre[0]), float(centre[1]))
        self.shoot("5-correct-before")

        for offset, obj in enumerate(painted):
            layer.data_setitem(tuple(np.nonzero(truth == obj)), next_id + offset)  # a brush stroke
        for obj in erased:
            layer.data_setitem(tuple(np.nonzero(pred == obj)), 0)  # the eraser
        print(f"correction: painted {len(painted)} nuclei (missed, merged or cut up), erased {len(erased)} "
              "false objects", flush=True)
        finetune.labels_picker.set_layer(layer)
        assert finetune.add_corrected()
        layer.selected_label = next_id + len(painted)
        self.shoot("5-correct-after")
        layer.mode = "pan_zoom"

    def finetune(self) -> None:
        finetune = self.widgets["Fine-tune"]
        if self.quick:
            finetune.epochs.setValue(1)
        assert finetune.start_finetune()
        self.wait(lambda: not finetune.job.running, 900, "fine-tuning")
        self.wait(lambda: not finetune.predict_job.running, 300, "re-prediction")
        assert finetune.status == "done", finetune.result_label.text()
        print(f"fine-tuning: {finetune.monitor.eta_label.text()} {finetune.result_label.text()}", flush=True)
        self.viewer.reset_view()
        self.shoot("6-finetuned")

    def chest_xray(self) -> None:
        self.viewer.layers.clear()
        self.viewer.open_sample(PLUGIN, "chest_xray")
        train = self.widgets["Train"]
        self.show_dock("Train")
        train.settings.task.setCurrentText("binary")
        train.settings.apply_preset("Fast (CPU)")
        # With one image the validation data is a strip along one edge: the bottom of this
        # radiograph, which holds no lung (0.15) or 63 lung pixels (0.3), so its Dice would say
        # nothing (docs/user-guide.md, troubleshooting). Train without validation instead.
        train.settings.val_fraction.setValue(0.0)
        if self.quick:
            train.settings.set_advanced(depth=2, filters=8, patch=64, batch=4, epochs=2, steps=5)
        train.preview_picker.set_layer(None)
        assert train.start_training(), train.result_label.text()
        self.wait(lambda: not train.running, 900, "chest X-ray training")
        assert train.status == "done", train.result_label.text()
        predict = self.widgets["Predict"]
        self.show_dock("Predict")
        predict.image_picker.set_layer(self.viewer.layers["chest x-ray"])
        predict.with_probabilities.setChecked(False)
        predict.min_size.setValue(500)
        assert predict.start_prediction()
        self.wait(lambda: not predict.job.running, 300, "chest X-ray prediction")
        self.hide("lung mask")
        self.viewer.layers.selection.active = predict.last_record.labels_layer
        self.viewer.reset_view()
        self.shoot("7-chest-xray")


def _best_iou(obj_mask: np.ndarray, other: np.ndarray) -> float:
    ids, counts = np.unique(other[obj_mask], return_counts=True)
    best = 0.0
    for i, inter in zip(ids, counts):
        if i == 0:
            continue
        union = obj_mask.sum() + (other == i).sum() - inter
        best = max(best, inter / union)
    return best


def _missed_objects(pred: np.ndarray, truth: np.ndarray) -> list[int]:
    """True nuclei no predicted object matches (IoU < 0.5): missed, merged or cut up. Largest first."""
    found = []
    for obj in np.unique(truth[truth > 0]):
        mask = truth == obj
        if _best_iou(mask, pred) < 0.5:
            found.append((int(mask.sum()), int(obj)))
    return [obj for _, obj in sorted(found, reverse=True)]


def _false_objects(pred: np.ndarray, truth: np.ndarray) -> list[int]:
    """Predicted objects that touch no true nucleus."""
    return [int(obj) for obj in np.unique(pred[pred > 0]) if not np.any(truth[pred == obj])]


if __name__ == "__main__":
    sys.exit(main())
