"""Screenshots of Live mode for docs/user-guide.md, taken from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/make_live_screenshots.py

Opens a DSB2018 fluorescence image from ../shared/data, docks Live and Predict, presses Live with
a new strokes layer and paints strokes through the Labels layer's paint API (brush dabs, as the
mouse makes them), aimed at the live prediction's mistakes by the benchmark's simulated annotator
(`benchmarks/live_annotator.py`). Saves docs/images/guide-live-1-first-strokes.png (the first strokes
and the first prediction), guide-live-2-following.png (zoomed in: the prediction of the field of
view follows) and guide-live-3-frozen.png (after Freeze: the version in Predict's model list).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from make_screenshots import MODELS, SHARED_DATA, Guide  # noqa: E402

from napari_unet.widgets.live_widget import viewer_camera  # noqa: E402

IMAGE = "dsb2018_s1test_38_7bdb668e"
PACE_S = 2.0


class LiveGuide(Guide):
    def run(self) -> None:
        import tifffile

        from benchmarks.live_annotator import Annotator

        image = tifffile.imread(SHARED_DATA / "nuclei" / "images" / f"{IMAGE}.tif")
        truth = tifffile.imread(SHARED_DATA / "nuclei" / "labels" / f"{IMAGE}.tif")
        self.viewer.add_image(image, name="nuclei image")
        live = self.dock("Live")
        self.dock("Predict")
        self.widen_docks()
        self.show_dock("Live")
        self.viewer.reset_view()
        live.labels_picker.set_layer(None)
        assert live.start_live()
        strokes = live.labels_picker.layer()
        self.wait(lambda: "paint object" in live.status_label.text(), 180, "the live network getting ready")
        annotator = Annotator(truth)
        for _ in range(4):
            self.stroke(live, strokes, annotator)
        self.wait(lambda: live.learnt == live.sent and live.frames > 0, 60, "a frame that learnt the strokes")
        self.shoot("live-1-first-strokes")
        for _ in range(14):
            self.stroke(live, strokes, annotator)
        camera = viewer_camera(self.viewer)
        camera.zoom *= 2.5
        camera.center = (0, image.shape[0] * 0.35, image.shape[1] * 0.6)
        for _ in range(3):
            self.stroke(live, strokes, annotator)
        self.wait(lambda: live.learnt == live.sent, 60, "a frame of the zoomed view")
        self.shoot("live-2-following")
        live.freeze()
        self.wait(lambda: not live.running, 60, "Freeze")
        self.show_dock("Predict")
        self.shoot("live-3-frozen")
        self.viewer.close()

    def stroke(self, live, strokes, annotator) -> None:
        """One stroke every PACE_S, painted dab by dab with the brush the Live widget chose."""
        start = time.monotonic()
        pred = None
        layer = live.live_layer
        if layer is not None and layer.data.shape == annotator.gt.shape:
            pred = np.asarray(layer.data) > 0
        before = annotator.painted.copy()
        annotator.next(pred)
        new = (annotator.painted != before) & (annotator.painted > 0)
        if not new.any():  # the line lay on pixels painted before
            self.settle(max(0.1, PACE_S - (time.monotonic() - start)))
            return
        live.choose_brush(background=bool(annotator.painted[new].max() != 1))
        strokes.brush_size = 1
        for r, c in np.argwhere(new):
            strokes.paint((int(r), int(c)), strokes.selected_label, refresh=False)
        strokes.refresh()
        self.settle(max(0.1, PACE_S - (time.monotonic() - start)))


def main() -> int:
    shutil.rmtree(MODELS, ignore_errors=True)
    os.environ["NAPARI_UNET_MODEL_DIR"] = str(MODELS)
    out = ROOT / "docs" / "images"
    try:
        guide = LiveGuide(out, quick=False)
        guide.run()
    finally:
        shutil.rmtree(MODELS.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
