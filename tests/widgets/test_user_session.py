"""The user's path end to end: napari in a fresh process, the real event loop, nothing pre-imported.

`benchmarks/user_session.py` drives the widgets as a user clicks: load a saved model and predict,
train two epochs and Stop, correct and fine-tune, review a folder of 10 images, close. This test
process itself never imports TensorFlow either (the tests/conftest.py guard checks it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import tifffile

REPO = Path(__file__).resolve().parents[2]


def test_a_whole_session_in_a_fresh_napari_process(tiny_model, nuclei_sample, tmp_path):
    image, _ = nuclei_sample
    images = tmp_path / "to-review"
    images.mkdir()
    for i in range(10):  # ten different 128 x 128 crops
        y, x = divmod(i, 4)
        tifffile.imwrite(images / f"crop{i:02d}.tif", image[y * 40 : y * 40 + 128, x * 40 : x * 40 + 128])
    out = tmp_path / "report.json"
    env = {**os.environ, "NAPARI_UNET_MODEL_DIR": str(tmp_path / "models")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.user_session", "--model", str(tiny_model), "--images", str(images),
         "--out", str(out), "--timeout", "500"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["error"] is None, report["error"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["modules_at_start"] is False and report["tensorflow_imported"] is False
    assert report["loaded"] == "tiny v1" and report["prediction_layer"].startswith("nuclei [tiny v1]")
    assert report["stop_s"] < 2.0 and report["train_state"] == "stopped"
    assert report["finetune_state"] == "done"
    assert report["reviewed_predicted"] == 10 and report["review_first_status"] == "accepted"
    assert report["predict_512_warm_s"] < report["predict_512_cold_s"]
