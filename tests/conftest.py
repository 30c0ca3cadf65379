"""Shared fixtures: real labelled images from ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import napari_unet  # noqa: F401,E402  (sets KERAS_BACKEND before any test imports bioimageio.core)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Fixtures that mean "this test shows a napari viewer".
_VIEWER_FIXTURES = {"make_napari_viewer", "viewer", "sample_viewer", "qtbot"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that shows a viewer `gui`. scripts/test.sh runs them in a pytest process of their
    own, in which TensorFlow is never imported: a user's napari never imports it either (the compute
    worker does), and the guard below fails any such test that does."""
    for item in items:
        if _VIEWER_FIXTURES & set(getattr(item, "fixturenames", ())) or "widgets" in item.path.parts:
            item.add_marker(pytest.mark.gui)


class _NoTensorFlow:
    """Import hook of the viewer process: importing TensorFlow there fails the test with a clear error
    instead of crashing the whole run (TensorFlow's LLVM beside Mesa's segfaults)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras"):
            raise ImportError(f"{name} imported in the viewer's process; it belongs in the compute worker.")
        return None


def pytest_configure(config):
    if config.option.markexpr == "gui":
        sys.meta_path.insert(0, _NoTensorFlow())


def pytest_ignore_collect(collection_path, config):
    """In the viewer process (`-m gui`), modules without a viewer test are not even imported: many
    import TensorFlow at their top, which must never happen beside a viewer."""
    if config.option.markexpr != "gui" or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    if "widgets" in collection_path.parts:
        return None
    text = collection_path.read_text(encoding="utf-8")
    return not any(name in text for name in _VIEWER_FIXTURES) or None


@pytest.fixture(autouse=True)
def _no_tensorflow_beside_a_viewer(request):
    yield
    if request.node.get_closest_marker("gui") is not None and "tensorflow" in sys.modules:
        pytest.fail("TensorFlow was imported in the viewer's process; it must run in the compute worker.")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NAPARI_UNET_SHARED_DATA", REPO.parent / "shared" / "data"))


def _pairs(folder: str, label_dir: str, pattern: str = "*.tif") -> list[tuple[str, np.ndarray, np.ndarray]]:
    root = SHARED_DATA / folder
    if not (root / "images").is_dir():
        pytest.skip(f"real data not found at {root} (set NAPARI_UNET_SHARED_DATA)")
    out = []
    for img_path in sorted((root / "images").glob(pattern)):
        out.append((img_path.stem, tifffile.imread(img_path), tifffile.imread(root / label_dir / img_path.name)))
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def nuclei_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Grayscale DSB2018 nuclei (name, uint8 image, uint16 instance labels), 256x256 ones first."""
    pairs = [p for p in _pairs("nuclei", "labels") if p[1].ndim == 2]
    return sorted(pairs, key=lambda p: (p[1].shape != (256, 256), p[0]))


@pytest.fixture(scope="session")
def nuclei_rgb_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    return [p for p in _pairs("nuclei", "labels") if p[1].ndim == 3]


@pytest.fixture(scope="session")
def xray_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    return _pairs("xray", "masks")
