"""Fixtures of the reliability suite: one tiny trained model shared by every module."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import CYCLES, Trained, blob_pair, data_hash, start_load_child, tiny_config


@pytest.fixture(scope="session", autouse=True)
def load_children(request):
    """Slow single-process load measurements, started when the session begins so they overlap other tests."""
    names = {item.originalname for item in request.session.items}
    procs = {}
    if "test_twenty_train_stop_cycles_leak_no_threads_and_no_memory" in names:
        procs["cycles"] = start_load_child("cycles", "--cycles", str(CYCLES))
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    from napari_unet.core.data import TrainingPair
    from napari_unet.core.train import train

    pairs = [TrainingPair(*blob_pair(96, 96, seed), name=f"blobs{seed}") for seed in (1, 2)]
    hashes = [(data_hash(p.image), data_hash(p.labels)) for p in pairs]
    for pair in pairs:  # any write into the user's arrays would raise
        pair.image.flags.writeable = pair.labels.flags.writeable = False
    result = train(pairs, tiny_config(train={"epochs": 3, "steps_per_epoch": 8, "learning_rate": 1e-2}))
    root = tmp_path_factory.mktemp("reliability-models")
    path = Path(result.save(root, "tiny"))
    return Trained(result, path, root, pairs, hashes)


# ---------------------------------------------------------------- widgets (real viewer, under Xvfb)


@pytest.fixture
def gui_session(monkeypatch, tmp_path):
    """An empty session model list and a private model folder (as tests/widgets/conftest.py does)."""
    from napari_unet.widgets.models_registry import session_registry

    monkeypatch.setenv("NAPARI_UNET_MODEL_DIR", str(tmp_path / "models"))
    session_registry().clear()
    yield session_registry()
    session_registry().clear()


@pytest.fixture
def viewer(make_napari_viewer, gui_session):
    return make_napari_viewer()


@pytest.fixture
def dock():
    """`dock(viewer, "Train")` docks a plugin widget by display name, as the Plugins menu does."""

    def add(viewer, name: str):
        return viewer.window.add_plugin_dock_widget("napari-unet", name)[1]

    return add


@pytest.fixture
def notes():
    """Notifications dispatched during the test."""
    from napari.utils.notifications import notification_manager

    got: list = []
    notification_manager.notification_ready.connect(got.append)
    yield got
    notification_manager.notification_ready.disconnect(got.append)


@pytest.fixture
def messages(notes):
    """`messages("error")`: texts of the notifications of one severity (all with None)."""

    def texts(severity: str | None = None) -> list[str]:
        return [n.message for n in notes if severity is None or str(n.severity).lower() == severity]

    return texts


@pytest.fixture(scope="session")
def worker_trained(tmp_path_factory) -> Path:
    """The same tiny model, trained in the compute worker (for tests with a viewer: no TensorFlow here)."""
    from napari_unet.jobs.client import ComputeClient
    from napari_unet.widgets._tasks import train_request
    from napari_unet.widgets.models_registry import CorrectedPair

    pairs = [CorrectedPair(*blob_pair(96, 96, seed), name=f"blobs{seed}") for seed in (1, 2)]
    cfg = tiny_config(train={"epochs": 3, "steps_per_epoch": 8, "learning_rate": 1e-2})
    root = tmp_path_factory.mktemp("reliability-worker-models")
    client = ComputeClient()
    try:
        outcome = client.run(train_request(pairs, cfg, root, "tiny", None), 600)
    finally:
        client.close()
    return Path(outcome.model.path)


@pytest.fixture
def current_model(gui_session, worker_trained):
    """Make the worker-trained tiny model the session's current model; returns its entry."""
    from napari_unet.jobs.models import model_info
    from napari_unet.widgets.models_registry import ModelEntry

    return gui_session.add(ModelEntry.from_info(model_info(worker_trained), "loaded"), make_current=True)
