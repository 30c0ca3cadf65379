"""OME-Zarr in napari: a labels store napari-unet writes opens with napari-ome-zarr, and the Predict
widget on an OME-Zarr layer writes its labels beside the source in the worker and shows them lazily.
(TensorFlow is blocked in this process: everything that predicts runs in the compute worker.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from napari.layers import Labels


def _ome_zarr(path: Path, image: np.ndarray) -> Path:
    from ome_zarr.writer import write_image

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    write_image(image, group, axes="yx", storage_options={"chunks": (512, 512)})
    return path


def _labels_store(store: Path, labels: np.ndarray) -> Path:
    from napari_unet.core.omezarr import StagedLabels, chunk_grid, open_image, plan_labels

    target = plan_labels([open_image(store)], "napari-unet")[0]
    staged = StagedLabels.create(target, chunk=512)
    for iy, ix, (y0, y1, x0, x1) in chunk_grid(target.yx_shape, 512):
        staged.write_chunk(iy, ix, labels[y0:y1, x0:x1])
    return staged.publish()


def test_a_labels_store_opens_in_napari(viewer, tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1500, 1100), dtype=np.uint8)
    labels = (rng.random((1500, 1100)) > 0.7).astype(np.uint8)
    store = _ome_zarr(tmp_path / "img.zarr", image)
    path = _labels_store(store, labels)
    layers = viewer.open(str(store), plugin="napari-ome-zarr")
    label_layers = [layer for layer in layers if isinstance(layer, Labels)]
    assert len(label_layers) == 1, [type(layer).__name__ for layer in layers]
    layer = label_layers[0]
    assert layer.multiscale and len(layer.data) == 3  # 1500 -> 750 -> 375
    assert np.array_equal(np.asarray(layer.data[0]), labels)
    assert np.array_equal(np.asarray(layer.data[1]), labels[::2, ::2])
    assert path == store / "labels" / "napari-unet"


def test_predict_widget_writes_an_ome_zarr_layer_into_its_store(viewer, qtbot, tiny_model, nuclei_sample, dock):
    from napari_unet.core.omezarr import leftovers, open_labels, written_by_us

    image, _ = nuclei_sample
    big = np.tile(image, (4, 5))  # 1024 x 1280
    store = _ome_zarr(Path(str(tiny_model)).parents[2] / "nuclei.zarr", big)
    layers = viewer.open(str(store), plugin="napari-ome-zarr")
    source = layers[0]
    assert source.multiscale
    widget = dock(viewer, "Predict")
    assert widget.load_model(tiny_model)
    qtbot.waitUntil(lambda: widget.entry is not None, timeout=120_000)
    widget.image_picker.set_layer(source)
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=180_000)
    assert widget.status == "done", widget.status_label.text()
    layer = viewer.layers[-1]
    assert isinstance(layer, Labels) and layer.multiscale
    assert not isinstance(layer.data[0], np.ndarray) and layer.data[0].shape == big.shape
    written = Path(layer.metadata["napari_unet"]["store"])
    assert written.parent == store / "labels" and written_by_us(written) and leftovers(store) == []
    values = np.asarray(open_labels(written)[0])
    assert set(np.unique(values)) <= {0, 1} and 0 < values.mean() < 1
    # a second prediction never replaces the first: it gets a name of its own
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=180_000)
    second = Path(viewer.layers[-1].metadata["napari_unet"]["store"])
    assert second != written and written.is_dir() and second.is_dir()
    assert np.array_equal(np.asarray(open_labels(second)[0]), values)


def test_stopping_a_store_prediction_leaves_nothing_behind(viewer, qtbot, tiny_model, nuclei_sample, dock, tmp_path):
    import dask.array as da

    image, _ = nuclei_sample
    big = da.tile(da.from_array(image, chunks=(256, 256)), (32, 32))  # 8192 x 8192, lazy
    viewer.add_image(big, name="big")
    widget = dock(viewer, "Predict")
    assert widget.load_model(tiny_model)
    qtbot.waitUntil(lambda: widget.entry is not None, timeout=120_000)
    widget.image_picker.set_layer(viewer.layers["big"])
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=180_000)
    widget.stop_button.click()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=5_000)
    assert widget.status == "stopped" and len(viewer.layers) == 1
    predictions = tmp_path / "predictions"
    assert not predictions.exists() or not any(predictions.iterdir()), list(predictions.iterdir())
