"""A whole user session in a fresh napari process, driven through the widgets with the real event loop.

    python -m benchmarks.user_session --model MODEL_VERSION_DIR --images FOLDER --out report.json [--big 4096]

Nothing is imported before napari starts. The session: load a saved model in Predict (the worker
starts), let the worker go, Predict on the 512 x 512 sample (worker cold) and again (warm); Train
for two epochs and Stop; correct the prediction and Fine-tune; optionally predict a `--big` x `--big`
image; Review the images of a folder; close. A 10 ms timer measures every event-loop stall, per phase.
The report (JSON) also says whether TensorFlow was ever imported in this process.
`tests/widgets/test_user_session.py` runs it small; `benchmarks/gui_responsiveness.py` runs it big.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

Wait = Callable[[], bool]
TICK_MS = 10


def session(viewer, args: argparse.Namespace, report: dict, phase: list[str]) -> Iterator[Wait]:  # noqa: ANN001
    """The user's steps; each `yield` waits until the condition holds (the event loop keeps running)."""
    import numpy as np

    from napari_unet.jobs.client import session_client

    import threading

    phase[0] = "dock widgets"
    add = viewer.window.add_plugin_dock_widget
    # One widget at a time from the Plugins menu: the event loop turns (and paints) between docks.
    predict = add("napari-unet", "Predict")[1]
    yield lambda: True
    train = add("napari-unet", "Train", tabify=True)[1]
    yield lambda: True
    finetune = add("napari-unet", "Fine-tune", tabify=True)[1]
    yield lambda: True
    review = add("napari-unet", "Review", tabify=True)[1]
    client = session_client()
    yield lambda: True  # let the docks show

    phase[0] = "load model"
    predict.path_edit.setText(args.model)
    predict.path_edit.returnPressed.emit()  # the user types the folder and presses Enter
    yield lambda: not predict.load_job.running
    report["loaded"] = predict.entry.label if predict.entry is not None else None
    # As after the idle time: the next Predict starts a cold worker (waited for off the GUI thread).
    release = threading.Thread(target=client.release_worker)
    release.start()
    yield lambda: not release.is_alive()

    for kind in ("cold", "warm"):
        phase[0] = f"predict 512 {kind}"
        predict.image_picker.set_layer(viewer.layers["nuclei"])
        n_layers, t0 = len(viewer.layers), time.perf_counter()
        predict.predict_button.click()
        yield lambda: not predict.job.running and len(viewer.layers) > n_layers
        report[f"predict_512_{kind}_s"] = time.perf_counter() - t0
    report["prediction_layer"] = predict.last_record.labels_layer.name

    phase[0] = "train"
    train.settings.advanced.expand(animate=False)
    train.settings.set_advanced(depth=2, filters=8, patch=64, batch=4, epochs=50, steps=5)
    t0 = time.perf_counter()
    train.train_button.click()
    yield lambda: train.monitor.events_seen > 0
    report["train_to_first_step_s"] = time.perf_counter() - t0
    yield lambda: len(train.monitor.history.get("loss", [])) >= 2
    t0 = time.perf_counter()
    train.stop_button.click()
    yield lambda: not train.running
    report["stop_s"] = time.perf_counter() - t0
    report["train_state"] = str(train.status)

    phase[0] = "fine-tune"
    predicted = predict.last_record.labels_layer
    # The user's correction; napari's brush and fill keep the layer's dtype, so does this.
    predicted.data = (viewer.layers["nuclei labels"].data > 0).astype(predicted.data.dtype)
    yield lambda: True  # each of the user's clicks is an event of its own
    finetune.labels_picker.set_layer(predicted)
    finetune.image_picker.set_layer(viewer.layers["nuclei"])
    finetune.add_corrected()
    yield lambda: True
    finetune.epochs.setValue(2)
    finetune.finetune_button.click()
    yield lambda: not finetune.job.running and not finetune.predict_job.running
    report["finetune_state"] = str(finetune.status)

    if args.big:
        phase[0] = f"predict {args.big}"
        tile = viewer.layers["nuclei"].data
        reps = -(-args.big // tile.shape[0]), -(-args.big // tile.shape[1])
        big = viewer.add_image(np.tile(tile, reps)[: args.big, : args.big], name="big")  # File > Open
        yield lambda: True
        predict.image_picker.set_layer(big)
        n_layers, t0 = len(viewer.layers), time.perf_counter()
        predict.predict_button.click()
        yield lambda: not predict.job.running and len(viewer.layers) > n_layers
        report[f"predict_{args.big}_s"] = time.perf_counter() - t0

    phase[0] = "review"
    finished: list[bool] = []
    review.job_finished.connect(lambda: finished.append(True))
    review.inputs.folder_edit.setText(args.images)
    review.inputs.model_edit.setText(args.model)
    review.start_review()
    yield lambda: bool(finished)
    project = review.project
    report["reviewed_predicted"] = sum(1 for n in project.names if project.item(n).predicted)
    review.accept()
    report["review_first_status"] = project.item(project.ranked()[0]).status if project.names else None
    phase[0] = "close"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved model version folder")
    parser.add_argument("--images", required=True, help="a folder of images to review")
    parser.add_argument("--out", required=True, help="JSON report")
    parser.add_argument("--big", type=int, default=0, help="also predict a BIG x BIG image")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    report: dict = {"modules_at_start": "tensorflow" in sys.modules, "error": None}
    start = time.perf_counter()

    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-unet session")
    report["viewer_open_s"] = time.perf_counter() - start
    viewer.open_sample("napari-unet", "nuclei")
    phase = ["start-up"]
    stalls: dict[str, float] = {}
    steps = session(viewer, args, report, phase)
    state: dict = {"wait": None, "last": None}

    def tick() -> None:
        now = time.perf_counter()
        if state["last"] is None:  # the window has just been shown: napari's own start ends here
            report["window_shown_s"] = now - start
        else:
            late = (now - state["last"]) * 1000 - TICK_MS
            stalls[phase[0]] = max(stalls.get(phase[0], 0.0), late)
        state["last"] = now
        if now - start > args.timeout:
            report["error"] = f"timed out in phase {phase[0]!r}"
            viewer.close()
            return
        try:
            if state["wait"] is None or state["wait"]():
                state["wait"] = next(steps)
        except StopIteration:
            timer.stop()
            viewer.close()
        except Exception as exc:  # the report says what broke
            import traceback

            report["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            timer.stop()
            viewer.close()

    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    timer.start()
    napari.run()
    report["stall_ms"] = stalls
    report["worst_stall_ms"] = max(stalls.values()) if stalls else None
    report["tensorflow_imported"] = "tensorflow" in sys.modules
    report["total_s"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if report["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
