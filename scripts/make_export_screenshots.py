"""Screenshots of "Export for bioimage.io…" for docs/user-guide.md ("Share a model"), from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/make_export_screenshots.py

Opens the nuclei sample, loads the shipped starter model in the Predict widget, opens the export
dialog, fills it in as a user would, and exports (in the compute worker, as the widget does: this
process never imports TensorFlow). Saves docs/images/share-1-export-dialog.png (the filled dialog over
the window), share-2-exported.png (after the export) and share-3-cover.png (the package's cover). The
package goes to a temporary folder.
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import DOCK_WIDTH, PLUGIN, ROOT, WINDOW, Guide  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="napari-unet-share-") as tmp:
        shots = ExportGuide(args.out, quick=False)
        shots.tmp = Path(tmp)
        shots.run()
    assert "tensorflow" not in sys.modules, "TensorFlow entered the viewer's process"
    return 0


class ExportGuide(Guide):
    PREFIX = "share"

    def capture(self):
        """The screen: napari's window with the export dialog over it (napari's screenshot has no dialog)."""
        from PIL import Image

        pixmap = self.app.primaryScreen().grabWindow(0, 0, 0, *WINDOW)
        qimage = pixmap.toImage().convertToFormat(pixmap.toImage().Format.Format_RGB888)
        ptr = qimage.constBits()
        ptr.setsize(qimage.sizeInBytes())
        rows = np.frombuffer(ptr, np.uint8).reshape(qimage.height(), qimage.bytesPerLine())
        return Image.fromarray(rows[:, : qimage.width() * 3].reshape(qimage.height(), qimage.width(), 3).copy())

    def run(self) -> None:
        from qtpy.QtCore import Qt

        from napari_unet.core.starter import starter_model_path

        self.viewer.open_sample(PLUGIN, "nuclei")
        dock, predict = self.viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
        self.settle(0.3)
        self.viewer.window._qt_window.resizeDocks([dock], [DOCK_WIDTH], Qt.Orientation.Horizontal)
        self.viewer.reset_view()
        assert predict.load_model(starter_model_path())
        self.wait(lambda: not predict.load_job.running, 300, "loading the starter model")
        dialog = predict.open_export()
        dialog.authors.setText("Ada Lovelace <ada@example.org>; Charles Babbage")
        dialog.license.setCurrentText("CC-BY-4.0")
        dialog.cite.setText("Caicedo et al. 2019, Nucleus segmentation across imaging experiments, doi:10.1038/s41592-019-0612-7")
        dialog.sample.setCurrentText("nuclei")
        dialog.out.setText(str(Path.home() / "shared-models" / "nuclei-v001.bioimageio.zip"))
        dialog.out.setCursorPosition(0)
        dialog.cite.setCursorPosition(0)
        dialog.move(380, 260)
        dialog.resize(640, dialog.sizeHint().height())
        self.settle(0.5)
        self.shoot("1-export-dialog")
        dialog.out.setText(str(self.tmp / "nuclei-v001.bioimageio.zip"))
        assert dialog.export()
        self.wait(lambda: not dialog.job.running, 600, "the export")
        if dialog.outcome is None:
            raise RuntimeError(f"the export failed: {dialog.status.text()}")
        self.shoot("2-exported")
        with zipfile.ZipFile(dialog.outcome.path) as zf:  # the package's cover: a real prediction of the test image
            (self.out / "share-3-cover.png").write_bytes(zf.read("cover.png"))
        print(f"saved {self.out / 'share-3-cover.png'}", flush=True)
        dialog.close()
        self.viewer.close()


if __name__ == "__main__":
    sys.exit(main())
