"""How long napari's event loop stalls over a whole user session, start-up included (target < 50 ms).

`benchmarks/user_session.py` runs in a fresh napari process, as a user starts it: load a saved model
in Predict, predict a 512 x 512 image with the worker cold and warm, train and Stop, fine-tune,
predict a 4096 x 4096 image, review 10 images, close. A 10 ms Qt timer on the GUI thread measures
every stall, per phase. All TensorFlow work runs in the compute worker process. Also reported: Train
pressed to the first step, Predict pressed to labels shown (cold and warm worker), Stop latency.

Run: `python -m benchmarks.gui_responsiveness [--quick]` (under xvfb-run without a display).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import tifffile

from benchmarks._common import REPO, Report, bench_main

#: Figures of the previous design (TensorFlow on Qt threads in napari's process), for comparison.
BEFORE = {"training": 58.0, "start-up": 260.0}


def _tiny_model(root: Path) -> Path:
    from napari_unet.core.config import Config
    from napari_unet.jobs.client import ComputeClient
    from napari_unet.samples import load_sample
    from napari_unet.widgets._tasks import train_request
    from napari_unet.widgets.models_registry import CorrectedPair

    image, labels = load_sample("nuclei")
    cfg = Config().replace(model={"depth": 3, "base_filters": 8}, data={"patch_size": 128},
                           train={"epochs": 2, "steps_per_epoch": 10})  # fmt: skip
    client = ComputeClient()
    try:
        outcome = client.run(train_request([CorrectedPair(image, labels, "nuclei")], cfg, root, "bench", None), 900)
    finally:
        client.close()
    return Path(outcome.model.path)


def run(quick: bool = False) -> Report:
    """Worst event-loop stall over a whole session in a fresh napari process (target < 50 ms)."""
    from napari_unet.samples import load_sample

    report = Report("gui_responsiveness")
    big = 1024 if quick else 4096
    with tempfile.TemporaryDirectory(prefix="napari-unet-gui-bench-") as tmp:
        folder = Path(tmp)
        model = _tiny_model(folder / "models")
        images = folder / "review"
        images.mkdir()
        image, _ = load_sample("nuclei")
        for i in range(10):
            tifffile.imwrite(images / f"crop{i:02d}.tif", image[(i % 4) * 60 :][:256, (i // 4) * 60 :][:, :256])
        out = folder / "report.json"
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.user_session", "--model", str(model), "--images", str(images),
             "--out", str(out), "--big", str(big)],
            cwd=REPO, capture_output=True, text=True, timeout=1800,
            env={**os.environ, "NAPARI_UNET_MODEL_DIR": str(folder / "user-models")},  # not the user's folder
        )  # fmt: skip
        if not out.is_file():
            raise RuntimeError(f"the session did not report:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        result = json.loads(out.read_text())
    if result["error"]:
        raise RuntimeError(result["error"])
    stalls = result["stall_ms"]
    report.add("worst event-loop stall, whole session", result["worst_stall_ms"], "ms", "< 50 ms")
    for phase, ms in stalls.items():
        report.add(f"worst stall: {phase}", ms, "ms")
    report.add("Train pressed -> first step", result["train_to_first_step_s"], "s")
    report.add("Predict pressed -> labels shown, 512x512, worker cold", result["predict_512_cold_s"], "s")
    report.add("Predict pressed -> labels shown, 512x512, worker warm", result["predict_512_warm_s"], "s")
    report.add(f"Predict pressed -> labels shown, {big}x{big}", result[f"predict_{big}_s"], "s")
    report.add("Stop pressed -> stopped", result["stop_s"], "s", "< 2 s")
    report.add("TensorFlow imported in napari's process", result["tensorflow_imported"], "", "False")
    report.note(
        "Before the compute worker (TensorFlow on Qt threads in napari's process): worst stall "
        f"{BEFORE['training']:.0f} ms while training only, {BEFORE['start-up']:.0f} ms at every TensorFlow start."
    )
    report.note(f"napari's own window took {result.get('window_shown_s', 0):.1f} s to show (not counted as a stall).")
    return report


def main(argv: list[str] | None = None) -> int:
    return bench_main("gui_responsiveness", run, argv)


if __name__ == "__main__":
    sys.exit(main())
