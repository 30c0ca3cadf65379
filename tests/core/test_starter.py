"""The shipped starter model: findable without TensorFlow, loadable, and useful on real nuclei."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_starter_path_needs_no_tensorflow():
    code = (
        "import sys; from napari_unet.core.starter import starter_model_path; p = starter_model_path(); "
        "print(p); assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (json.loads((__import__("pathlib").Path(out.stdout.strip()) / "metadata.json").read_text()))["config"]


def test_starter_segments_nuclei_it_was_not_trained_on(nuclei_pairs):
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.data import TrainingPair
    from napari_unet.core.evaluate import evaluate_pairs
    from napari_unet.core.starter import STARTER_ROOT, starter_model_path

    bundle = load_bundle(starter_model_path())
    assert bundle.config.data.task == "instances" and bundle.config.predict.tuned
    scores_file = STARTER_ROOT / "starter_scores.json"
    if not scores_file.is_file():
        pytest.skip("no starter_scores.json (held-out list) recorded")
    held = set(json.loads(scores_file.read_text())["held_out"])
    trained = set(json.loads(scores_file.read_text())["trained_on"])
    if not held.isdisjoint(trained):
        pytest.fail("the recorded held-out images overlap the training images")
    pairs = [TrainingPair(im, lab, n) for n, im, lab in nuclei_pairs if n in held][:4]
    if not pairs:
        pytest.skip("held-out images not in the gray nuclei fixture")
    mean = evaluate_pairs(bundle.model, bundle.config, pairs)["mean"]
    assert mean["dice"] > 0.7 and mean["object_f1"] > 0.5, mean
    # The replay set shipped for fine-tuning is small and readable.
    from napari_unet.core.bundle import load_replay

    images, targets = load_replay(bundle.path)
    assert 0 < len(images) == len(targets) <= 32
