"""The Predict widget opens a bioimage.io package and predicts with it through the compute worker."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tiny_package(tiny_model, nuclei_sample, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The tiny model exported as a package, and the labels in-process prediction gives with it.

    Both are made in a subprocess: TensorFlow never enters the viewer's process.
    """
    out = tmp_path_factory.mktemp("package")
    np.save(out / "image.npy", nuclei_sample[0])
    code = f"""
import numpy as np
from napari_unet.core.bioimageio_export import export_package
from napari_unet.core.bundle import load_bundle
from napari_unet.core.predict import predict_image
image = np.load({str(out / "image.npy")!r})
package = export_package({str(tiny_model)!r}, {str(out / "tiny-nuclei.zip")!r}, authors=[{{"name": "Tester"}}],
                         formats=("keras_hdf5",), sample=image)
np.save({str(out / "expected.npy")!r}, predict_image(load_bundle(package), image).labels)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "tiny-nuclei.zip", np.load(out / "expected.npy")


def _load(widget, qtbot, path) -> None:
    assert widget.load_model(path)
    qtbot.waitUntil(lambda: not widget.load_job.running, timeout=120_000)
    qtbot.wait(20)


def test_predict_with_a_bioimageio_package(sample_viewer, qtbot, tiny_package, dock, messages):
    from napari_unet.widgets.models_registry import session_registry

    package, expected = tiny_package
    widget = dock(sample_viewer, "Predict")
    _load(widget, qtbot, package)
    entry = session_registry().current
    assert messages("error") == []
    assert entry is not None and entry.label == "tiny-nuclei" and entry.path == package
    assert "binary" in widget.model_info.text() and str(package) in widget.model_info.text()
    widget.image_picker.set_layer(sample_viewer.layers["nuclei"])
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=120_000)
    qtbot.wait(20)
    layer = sample_viewer.layers["nuclei [tiny-nuclei]"]
    assert widget.status == "done" and expected.max() == 1
    np.testing.assert_array_equal(layer.data, expected)
    assert "tensorflow" not in sys.modules


def test_an_unsupported_package_is_refused_with_its_reason(sample_viewer, qtbot, tiny_package, dock, messages, tmp_path):
    package, _ = tiny_package
    folder = tmp_path / "with-time"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["inputs"][0]["axes"].insert(1, {"type": "time", "id": "t", "size": 1})
    rdf["outputs"][0]["axes"].insert(1, {"type": "time", "id": "t", "size": {"tensor_id": "raw", "axis_id": "t"}})
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    widget = dock(sample_viewer, "Predict")
    _load(widget, qtbot, folder)
    errors = messages("error")
    assert len(errors) == 1 and "time axis" in errors[0] and "Traceback" not in errors[0]
    assert widget.entry is None
