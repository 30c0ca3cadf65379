"""Fixtures for widget tests: a real napari viewer (run under Xvfb), the shipped nuclei sample, tiny models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

PLUGIN = "napari-unet"
#: Advanced settings that make a model train in a few seconds on 2 CPU cores.
TINY = {"depth": 2, "filters": 8, "patch": 64, "batch": 4, "epochs": 2, "steps": 5}
#: The sample is cropped so validation and previews stay quick.
CROP = 256


@pytest.fixture(autouse=True)
def _fresh_session(monkeypatch, tmp_path):
    """Each test gets an empty session model list and its own model folder."""
    from napari_unet.widgets.models_registry import session_registry

    monkeypatch.setenv("NAPARI_UNET_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("NAPARI_UNET_PREDICTIONS_DIR", str(tmp_path / "predictions"))
    monkeypatch.setenv("NAPARI_UNET_SETTINGS", str(tmp_path / "settings.json"))  # never the user's choices
    session_registry().clear()
    yield
    session_registry().clear()


@pytest.fixture(scope="session")
def nuclei_sample() -> tuple[np.ndarray, np.ndarray]:
    """The shipped nuclei sample (uint8 image, instance labels), cropped to 256 x 256."""
    from napari_unet.samples import load_sample

    image, labels = load_sample("nuclei")
    return image[:CROP, :CROP].copy(), labels[:CROP, :CROP].copy()


@pytest.fixture
def notes():
    """Notifications (napari Notification objects) dispatched during the test."""
    from napari.utils.notifications import notification_manager

    got: list[Any] = []

    def keep(notification: Any) -> None:
        got.append(notification)

    notification_manager.notification_ready.connect(keep)
    yield got
    notification_manager.notification_ready.disconnect(keep)


@pytest.fixture
def messages(notes):
    """`messages("error")`: texts of the notifications of one severity (all with None) so far."""

    def texts(severity: str | None = None) -> list[str]:
        return [n.message for n in notes if severity is None or str(n.severity).lower() == severity]

    return texts


@pytest.fixture
def dock():
    """`dock(viewer, "Train")` docks a plugin widget by display name, as the Plugins menu does."""

    def add(viewer: Any, name: str) -> Any:
        _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        return widget

    return add


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def sample_viewer(viewer, nuclei_sample):
    image, labels = nuclei_sample
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="nuclei labels")
    return viewer


@pytest.fixture
def make_tiny():
    """`make_tiny(train_widget, epochs=...)` sets the Advanced fields for a model that trains in seconds."""

    def apply(train_widget: Any, **overrides: int) -> None:
        train_widget.settings.advanced.expand(animate=False)
        train_widget.settings.set_advanced(**{**TINY, **overrides})

    return apply


@pytest.fixture(scope="session")
def tiny_model(nuclei_sample, tmp_path_factory) -> Path:
    """A tiny binary model trained on the sample in the compute worker, saved as <root>/tiny/v001.

    The viewer's process never imports TensorFlow, so this fixture trains the way the widgets do.
    """
    from napari_unet.core.config import Config
    from napari_unet.jobs.client import ComputeClient
    from napari_unet.widgets._tasks import train_request
    from napari_unet.widgets.models_registry import CorrectedPair

    image, labels = nuclei_sample
    cfg = Config().replace(
        model={"depth": 2, "base_filters": 8},
        data={"patch_size": 64},
        train={"batch_size": 8, "steps_per_epoch": 20, "epochs": 6, "learning_rate": 3e-3},
    )
    root = tmp_path_factory.mktemp("tiny-models")
    client = ComputeClient()
    try:
        outcome = client.run(train_request([CorrectedPair(image, labels, "nuclei")], cfg, root, "tiny", None), 600)
    finally:
        client.close()
    return Path(outcome.model.path)


@pytest.fixture
def image_folder_of(tmp_path, nuclei_pairs):
    """`write(n)`: the first n real 256x256 nuclei images in a folder, as a microscope would leave them."""
    import tifffile

    def write(n: int) -> Path:
        folder = tmp_path / "day1"
        folder.mkdir()
        for name, image, _ in nuclei_pairs[:n]:
            tifffile.imwrite(folder / f"{name}.tif", image)
        return folder

    return write
