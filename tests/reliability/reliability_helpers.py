"""Helpers of the reliability suite: tiny configs, synthetic images, hashes, thread and memory checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# No TensorFlow import here: viewer tests run in a pytest process of their own that never imports it
# (tests/conftest.py); core tests import it through the core modules.
from napari_unet.core.config import Config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

#: A network and schedule that train in seconds on 2 CPU cores.
TINY: dict[str, dict[str, Any]] = {
    # No batch norm: its moving averages need hundreds of steps before inference is sensible.
    "model": {"depth": 2, "base_filters": 8, "batch_norm": False},
    "data": {"patch_size": 32, "val_fraction": 0.25},
    "train": {
        "epochs": 2,
        "steps_per_epoch": 4,
        "batch_size": 4,
        "learning_rate": 3e-3,
        "early_stopping_patience": 0,
        "reduce_lr_patience": 0,
    },
    "predict": {"tile_size": 96, "overlap": 24},
}
#: Train/stop cycles of test_load.py (started early by conftest.py).
CYCLES = 20
#: Widget "Advanced" settings for a model that trains in a few seconds.
TINY_WIDGET = {"depth": 2, "filters": 8, "patch": 32, "batch": 4, "epochs": 2, "steps": 3}


def tiny_config(**sections: dict[str, Any]) -> Config:
    """`TINY`, with some options changed, e.g. ``tiny_config(data={"task": "classes"})``."""
    cfg = Config().replace(**TINY)
    return cfg.replace(**sections) if sections else cfg


def blob_pair(height: int, width: int, seed: int = 0, radius: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image of bright noisy disks and its uint16 instance labels (at least one object)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.uint16)
    yy, xx = np.ogrid[:height, :width]
    n = max(1, height * width // 400)
    for k in range(1, n + 1):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & (labels == 0)] = k
    if not labels.any():
        labels[height // 2, width // 2] = 1
    image = 30 + 150 * (labels > 0) + rng.normal(0, 12, labels.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def data_hash(array: Any) -> str:
    """SHA-256 of an array's values, shape and dtype (any memory layout)."""
    arr = np.ascontiguousarray(np.asarray(array))
    digest = hashlib.sha256(arr.tobytes())
    digest.update(f"{arr.shape}{arr.dtype}".encode())
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under a folder."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def python_threads() -> set[threading.Thread]:
    """Live non-daemon Python threads (`threading.Thread`s a run could leave behind).

    TensorFlow's pools and Qt's pool threads are not Python threads; when they run Python code they
    appear as daemon dummy threads, so they are left out here and Qt's pool is checked by `wait_idle`.
    """
    return {t for t in threading.enumerate() if t.is_alive() and not t.daemon}


def assert_no_new_threads(before: set[threading.Thread], timeout_s: float = 10.0) -> None:
    """Every non-daemon thread started since `before` has ended (waits up to `timeout_s`)."""
    for thread in python_threads() - before:
        thread.join(timeout_s)
    left = [t.name for t in python_threads() - before]
    assert not left, f"threads left running: {left}"


@dataclass
class Trained:
    """A tiny binary model trained on blob images, saved as `<root>/tiny/v001`."""

    result: Any  # core.train.TrainResult
    path: Path
    root: Path
    pairs: list[Any]  # read-only arrays
    input_hashes: list[tuple[str, str]]  # (image, labels) before training

    @property
    def config(self) -> Config:
        return self.result.config

    @property
    def model(self) -> Any:
        return self.result.model


def start_load_child(mode: str, *options: str) -> subprocess.Popen:
    """`python -m benchmarks.load --child MODE ...` in a fresh process (its peak memory is its own)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "benchmarks.load", "--child", mode, *options]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def load_child_result(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    """The JSON figures a load child printed; fails the test with its stderr when it failed."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(proc.args[2:])} ran past {timeout} s:\n{err[-3000:]}") from None
    assert proc.returncode == 0, f"{' '.join(proc.args[2:])} failed:\n{out[-2000:]}\n{err[-4000:]}"
    return json.loads(out.strip().splitlines()[-1])


def wait_idle(qtbot, timeout_ms: int = 30_000) -> None:
    """Until Qt's global thread pool (napari's thread workers) has no running thread."""
    from qtpy.QtCore import QThreadPool

    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=timeout_ms)


def layer_state(viewer) -> dict[str, str]:
    """Layer name -> hash of its data: what must not change when a widget refuses to work."""
    return {layer.name: data_hash(layer.data) for layer in viewer.layers}


def make_tiny(train_widget: Any, **overrides: int) -> None:
    """Set a Train widget's Advanced fields to a network that trains in seconds."""
    train_widget.settings.advanced.expand(animate=False)
    train_widget.settings.set_advanced(**{**TINY_WIDGET, **overrides})
