"""Interruptions in the core: Stop at the first step, mid-epoch and during validation; a failing
training step; Ctrl+C on the command line. Each run ends cleanly, keeps the last good model on
disk and leaves no thread behind. Widget-level cases (closing the widget or viewer) are at the end.
"""

from __future__ import annotations

import json

import sys
import threading
import time

import numpy as np
import pytest
from reliability_helpers import assert_no_new_threads, blob_pair, file_hashes, python_threads, tiny_config

from napari_unet.core.data import TrainingPair


def _pairs(n: int = 2, size: int = 96) -> list[TrainingPair]:
    return [TrainingPair(*blob_pair(size, size, seed=10 + i), name=f"p{i}") for i in range(n)]


@pytest.fixture
def no_thread_leak():
    before = python_threads()
    yield
    assert_no_new_threads(before)


def test_stop_during_the_first_step(no_thread_leak):
    from napari_unet.core.train import train

    stop = threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if event.kind == "start":
            stop.set()  # the first step is about to run: it completes, nothing after it

    result = train(_pairs(), tiny_config(train={"epochs": 3, "steps_per_epoch": 10}), on_event, stop)
    kinds = [e.kind for e in events]
    assert result.status == "stopped" and kinds == ["start", "batch", "end"]
    assert events[-1].status == "stopped" and "no complete epoch" in events[-1].message
    assert result.history == {} and result.best_epoch is None


def test_stop_mid_epoch_keeps_the_last_complete_epoch(no_thread_leak):
    from napari_unet.core.train import train

    stop = threading.Event()
    events, epoch_weights = [], {}

    def on_event(event):
        events.append(event)
        if event.kind == "epoch":
            epoch_weights[event.epoch] = [w.copy() for w in event.model.get_weights()]
        if event.kind == "batch" and (event.epoch, event.step) == (2, 3):
            stop.set()

    cfg = tiny_config(data={"val_fraction": 0}, train={"epochs": 4, "steps_per_epoch": 6})
    result = train(_pairs(), cfg, on_event, stop)
    batches = [(e.epoch, e.step) for e in events if e.kind == "batch"]
    assert result.status == "stopped" and batches[-1] == (2, 3), "stops within one step of the request"
    assert len(batches) == 6 + 3
    assert list(epoch_weights) == [1] and len(result.history["loss"]) == 1 and result.best_epoch == 1
    for kept, at_epoch_1 in zip(result.model.get_weights(), epoch_weights[1]):
        np.testing.assert_array_equal(kept, at_epoch_1)  # the half-trained epoch 2 is dropped


class StopWhileValidating:
    """A stop flag that turns on at its N-th check during validation (the whole-image validation pass)."""

    def __init__(self, at_batch: int = 2) -> None:
        self.at_batch, self.validation_batches, self.on = at_batch, 0, False

    def is_set(self) -> bool:
        frame, names = sys._getframe(1), set()
        for _ in range(6):
            if frame is None:
                break
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        if "_validate" in names and not self.on:
            self.validation_batches += 1
            self.on = self.validation_batches >= self.at_batch
        return self.on


def test_stop_during_validation_skips_the_rest_of_it(no_thread_leak):
    from napari_unet.core.train import train

    stop = StopWhileValidating(at_batch=2)
    events = []
    val_pairs = _pairs(4, size=128)  # 4 x 16 patches of 32 px: 16 validation batches of 4
    cfg = tiny_config(train={"epochs": 3, "steps_per_epoch": 4})
    t0 = time.monotonic()
    result = train(_pairs(), cfg, events.append, stop, val_pairs=val_pairs)
    assert result.status == "stopped" and events[-1].status == "stopped"
    assert stop.validation_batches == 2, "validation ends at the check where Stop was seen"
    assert [(e.epoch, e.step) for e in events if e.kind == "batch"][-1] == (1, 4)
    # The cut-short validation is not reported as if complete, nor used to pick the best weights.
    assert "val_loss" not in result.history and len(result.history["loss"]) == 1
    assert result.best_epoch is None
    assert time.monotonic() - t0 < 60


def _failing_loss(monkeypatch, at_step: int) -> dict:
    """Make the training loss raise inside the compiled training step number `at_step`."""
    import tensorflow as tf

    from napari_unet.core import train as train_mod

    real_make_loss = train_mod.make_loss
    calls = {"n": 0}

    def make_loss(cfg):
        real = real_make_loss(cfg)

        def tick():
            calls["n"] += 1
            if calls["n"] == at_step:
                raise RuntimeError(f"simulated failure in training step {at_step}")
            return np.float32(0.0)

        def loss(y_true, y_pred):
            return real(y_true, y_pred) + tf.ensure_shape(tf.py_function(tick, [], tf.float32), ())

        return loss

    monkeypatch.setattr(train_mod, "make_loss", make_loss)
    return calls


def test_exception_inside_a_training_step_keeps_the_last_good_version(trained, monkeypatch, no_thread_leak):
    from napari_unet.core.bundle import list_versions, load_bundle
    from napari_unet.core.train import finetune

    model_dir = trained.path.parent
    before_files = file_hashes(model_dir)
    parent = load_bundle(trained.path)
    parent_weights = [w.copy() for w in parent.model.get_weights()]
    calls = _failing_loss(monkeypatch, at_step=3)
    events = []
    with pytest.raises(Exception, match="simulated failure in training step 3") as info:
        finetune(parent, _pairs(1), on_event=events.append, epochs=2)
    assert calls["n"] == 3
    assert not isinstance(info.value, AssertionError)
    end = events[-1]
    assert end.kind == "end" and end.status == "crashed" and "simulated failure" in end.message
    assert [e.step for e in events if e.kind == "batch"] == [1, 2]
    # The parent on disk and in memory is untouched, and nothing half-written appeared.
    assert file_hashes(model_dir) == before_files
    assert list_versions(model_dir) == [trained.path]
    for now, then in zip(parent.model.get_weights(), parent_weights):
        np.testing.assert_array_equal(now, then)
    assert load_bundle(model_dir).version == 1


def test_ctrl_c_on_the_command_line_saves_nothing(tmp_path, monkeypatch, capsys, no_thread_leak):
    import tifffile

    from napari_unet.core import cli

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for i, pair in enumerate(_pairs(2)):
        tifffile.imwrite(tmp_path / "images" / f"p{i}.tif", pair.image)
        tifffile.imwrite(tmp_path / "labels" / f"p{i}.tif", pair.labels)

    def interrupt(self, event):
        if event.kind == "batch" and event.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._TerminalProgress, "__call__", interrupt)
    args = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
            "--name", "m", "--models", str(tmp_path / "models"),
            "--depth", "2", "--filters", "8", "--patch", "32", "--batch", "4", "--epochs", "2", "--steps", "5"]  # fmt: skip
    assert cli.main(args) == 130
    assert "Interrupted before the first epoch ended; nothing was saved." in capsys.readouterr().err
    assert not (tmp_path / "models" / "m").exists() or not any((tmp_path / "models" / "m").iterdir())


# ---------------------------------------------------------------- in the widgets (real viewer)


def _add_pair(viewer, size: int = 96, seed: int = 50):
    image, labels = blob_pair(size, size, seed=seed)
    return viewer.add_image(image, name="cells"), viewer.add_labels(labels, name="cells labels")


@pytest.mark.gui
def test_a_killed_worker_during_training_leaves_the_viewer_and_the_next_training_works(
    viewer, dock, qtbot, messages, worker_trained, tmp_path, gui_session
):
    import shutil
    import signal

    from reliability_helpers import layer_state, make_tiny, wait_idle

    from napari_unet.core.versions import list_versions
    from napari_unet.jobs.client import session_client

    model_dir = tmp_path / "models" / "tiny"
    shutil.copytree(worker_trained.parent, model_dir)
    before_files = file_hashes(model_dir)
    _add_pair(viewer)
    widget = dock(viewer, "Train")
    make_tiny(widget, epochs=50, steps=50)
    widget.name_edit.setText("tiny")  # the next version of an existing model
    before = layer_state(viewer)
    assert widget.start_training()
    qtbot.waitUntil(lambda: widget.monitor.events_seen >= 2, timeout=120_000)  # inside the first epoch
    session_client().kill_worker(signal.SIGKILL)
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    qtbot.wait(50)
    wait_idle(qtbot)
    assert widget.status == "crashed"
    assert any("compute worker was killed by SIGKILL" in m and "layers are untouched" in m for m in messages("error"))
    assert widget.train_button.isEnabled() and not widget.stop_button.isEnabled()
    assert {k: v for k, v in layer_state(viewer).items() if k in before} == before
    assert file_hashes(model_dir) == before_files and list_versions(model_dir) == [model_dir / "v001"]
    assert not list(model_dir.glob(".checkpoint-*"))
    # the next job starts a fresh worker and works
    make_tiny(widget, epochs=1, steps=3)
    assert widget.start_training()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget.status == "done", widget.result_label.text()
    assert [p.name for p in list_versions(model_dir)] == ["v001", "v002"]


@pytest.mark.gui
def test_stop_before_the_first_epoch_in_the_train_widget_saves_nothing(viewer, dock, qtbot, tmp_path, gui_session):
    from reliability_helpers import make_tiny, wait_idle

    _add_pair(viewer)
    widget = dock(viewer, "Train")
    make_tiny(widget, epochs=5, steps=50)
    threads = python_threads()
    assert widget.start_training()
    qtbot.waitUntil(lambda: widget.monitor.events_seen >= 1 or not widget.running, timeout=60_000)
    widget.stop_button.click()  # during the first step at the latest
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    qtbot.wait(50)
    wait_idle(qtbot)
    assert widget.status == "stopped"
    assert widget.last_outcome.model is None and "nothing was saved" in widget.result_label.text()
    assert not (tmp_path / "models" / "cells-unet").exists() and gui_session.entries == []
    assert widget.train_button.isEnabled()
    assert_no_new_threads(threads)


def _start_long_prediction(viewer, dock, qtbot):
    image = np.tile(blob_pair(256, 256, seed=51)[0], (6, 6))  # 1536 x 1536: hundreds of tiles
    layer = viewer.add_image(image, name="big")
    widget = dock(viewer, "Predict")
    widget.image_picker.set_layer(layer)
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=60_000)
    return widget


@pytest.mark.gui
def test_closing_the_predict_widget_while_predicting(viewer, dock, qtbot, current_model):
    from reliability_helpers import wait_idle

    threads = python_threads()
    widget = _start_long_prediction(viewer, dock, qtbot)
    job = widget.job
    t0 = time.monotonic()
    viewer.window.remove_dock_widget(widget)
    assert not job.running and time.monotonic() - t0 < 5
    assert job.state == "stopped" and job.failure is None
    qtbot.wait(50)
    wait_idle(qtbot)
    assert [lyr.name for lyr in viewer.layers] == ["big"], "no half-built prediction layer"
    assert_no_new_threads(threads)


@pytest.mark.gui
def test_closing_the_viewer_while_predicting(make_napari_viewer, dock, qtbot, current_model):
    from reliability_helpers import wait_idle

    viewer = make_napari_viewer()
    threads = python_threads()
    widget = _start_long_prediction(viewer, dock, qtbot)
    job = widget.job
    viewer.close()
    assert not job.running
    assert job.state == "stopped" and job.failure is None
    wait_idle(qtbot)
    assert_no_new_threads(threads)


@pytest.mark.gui
def test_closing_the_finetune_widget_while_finetuning(viewer, dock, qtbot, worker_trained, tmp_path, gui_session):
    import shutil

    from reliability_helpers import wait_idle

    from napari_unet.core.versions import list_versions
    from napari_unet.jobs.models import model_info
    from napari_unet.widgets.models_registry import CorrectedPair, ModelEntry

    model_dir = tmp_path / "models" / "tiny"
    shutil.copytree(worker_trained.parent, model_dir)
    v1_files = file_hashes(model_dir / "v001")
    gui_session.add(ModelEntry.from_info(model_info(model_dir / "v001"), "loaded"))
    image, labels = blob_pair(96, 96, seed=52)
    gui_session.add_pair(CorrectedPair(image, labels, "corrected"))
    widget = dock(viewer, "Fine-tune")
    widget.repredict.setChecked(False)
    widget.epochs.setValue(3)
    threads = python_threads()
    assert widget.start_finetune()
    qtbot.waitUntil(lambda: len(widget.monitor.history.get("loss", [])) >= 1, timeout=120_000)
    job = widget.job
    viewer.window.remove_dock_widget(widget)
    assert not job.running and job.failure is None
    wait_idle(qtbot)
    # The epoch that finished was kept as a new version; the parent is untouched.
    assert [p.name for p in list_versions(model_dir)] == ["v001", "v002"]
    assert file_hashes(model_dir / "v001") == v1_files
    assert job.result.state == "stopped" and gui_session.current.path == model_dir / "v002"
    assert_no_new_threads(threads)


@pytest.mark.gui
def test_closing_the_viewer_while_training_keeps_the_best_epoch_and_no_thread(
    make_napari_viewer, dock, qtbot, tmp_path, gui_session
):
    from reliability_helpers import make_tiny, wait_idle


    viewer = make_napari_viewer()
    _add_pair(viewer)
    widget = dock(viewer, "Train")
    make_tiny(widget, epochs=50, steps=4)
    widget.preview_picker.set_layer(None)
    threads = python_threads()
    assert widget.start_training()
    qtbot.waitUntil(lambda: len(widget.monitor.history.get("loss", [])) >= 1, timeout=120_000)
    job = widget.job
    viewer.close()
    assert not job.running and job.failure is None and job.result.state == "stopped"
    wait_idle(qtbot)
    assert_no_new_threads(threads)
    saved = tmp_path / "models" / "cells-unet" / "v001"  # the best epoch so far is on disk
    history = json.loads((saved / "history.json").read_text())
    assert 1 <= len(history["loss"]) < 50 and gui_session.current.path == saved
