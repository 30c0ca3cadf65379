"""Open napari with a sample image and the napari-unet widgets docked (README command 1).

`python -m napari_unet.launch [--sample nuclei|chest_xray] [--exit-after-show] [--screenshot PNG]`.
The environment variables NAPARI_UNET_EXIT_AFTER_SHOW=1 and NAPARI_UNET_SCREENSHOT=path do the same
as the flags, so the README command can be checked headless.
"""

from __future__ import annotations

import argparse
import os
import sys

PLUGIN = "napari-unet"
WIDGETS = ("Train", "Predict", "Fine-tune", "Review", "Live")


def open_viewer(sample: str = "nuclei"):
    """A napari viewer holding `sample` with the plugin's widgets docked on the right."""
    import napari

    viewer = napari.Viewer(title="napari-unet")
    viewer.open_sample(PLUGIN, sample)
    docks = [viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)[0] for name in WIDGETS]
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, docks[0].raise_)  # the loop starts with Train (once tabs exist)
    qt_window = viewer.window._qt_window  # napari has no public API for the window size
    screen = qt_window.screen().availableGeometry()
    qt_window.resize(min(1600, screen.width()), min(1000, screen.height()))
    viewer.reset_view()
    return viewer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_unet.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--sample", default="nuclei", choices=("nuclei", "chest_xray"))
    parser.add_argument("--exit-after-show", action="store_true", default=os.environ.get("NAPARI_UNET_EXIT_AFTER_SHOW") == "1")
    parser.add_argument("--screenshot", default=os.environ.get("NAPARI_UNET_SCREENSHOT"))
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtCore import QTimer

    viewer = open_viewer(args.sample)
    print(f"napari-unet: viewer open with sample {args.sample!r} and widgets {', '.join(WIDGETS)} docked", flush=True)

    def after_show() -> None:
        if args.screenshot:
            viewer.screenshot(args.screenshot, canvas_only=False)
            print(f"napari-unet: screenshot saved to {args.screenshot}", flush=True)
        if args.exit_after_show:
            print("napari-unet: window shown; exiting as requested", flush=True)
            viewer.close()

    if args.screenshot or args.exit_after_show:
        QTimer.singleShot(1500, lambda: (viewer.reset_view(), QTimer.singleShot(300, after_show)))
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
