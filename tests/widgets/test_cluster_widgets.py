"""The widgets on a dask LocalCluster of 2 workers (real viewer, `-m gui`). Review's batch step: the
same prediction files and scores as the compute worker alone, the dashboard link shown, the bar
moving with every image, Stop within 2 s, and the choice remembered for the next session.
Predict on an OME-Zarr layer: the same labels store as the compute worker alone writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_unet.widgets.review_widget import ReviewWidget

N_IMAGES = 4
WAIT_MS = 240_000


@pytest.fixture
def image_folder(image_folder_of):
    return image_folder_of(N_IMAGES)


def _review(viewer, qtbot, images, review, model, cluster: str | None) -> ReviewWidget:
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name=f"Review {cluster}")
    widget.inputs.folder_edit.setText(str(images))
    widget.inputs.review_edit.setText(str(review))
    widget.inputs.model_edit.setText(str(model))
    widget.inputs.cluster.set_value(cluster)
    widget.inputs.cluster._changed()  # as a user's pick does: remembered
    bars: list[int] = []
    widget.item_predicted.connect(lambda _name: bars.append(widget.progress.value()))
    with qtbot.waitSignal(widget.job_finished, timeout=WAIT_MS):
        assert widget.start_review()
    assert bars == list(range(1, N_IMAGES + 1))  # the bar moved with every image
    return widget


def test_review_batch_on_a_local_cluster_equals_the_worker_alone(make_napari_viewer, qtbot, tmp_path, image_folder,
                                                                 tiny_model, messages):  # fmt: skip
    viewer = make_napari_viewer()
    alone = _review(viewer, qtbot, image_folder, tmp_path / "alone", tiny_model, None)
    assert alone.inputs.cluster.dashboard.text() == ""
    alone.close_review()  # two reviews in one viewer would share its review layers
    on_cluster = _review(viewer, qtbot, image_folder, tmp_path / "cluster", tiny_model, "local:2")
    assert not messages("error"), messages("error")
    assert "dask dashboard" in on_cluster.inputs.cluster.dashboard.text()
    a, b = alone.project, on_cluster.project
    assert sorted(a.names) == sorted(b.names) and len(a.names) == N_IMAGES
    for name in a.names:
        assert b.item(name).predicted and b.item(name).status == "unreviewed"
        np.testing.assert_array_equal(b.prediction(name), a.prediction(name))
        np.testing.assert_array_equal(b.uncertainty_map(name), a.uncertainty_map(name))
        for field in ("uncertainty", "foreground", "objects", "shape"):
            assert getattr(b.item(name), field) == getattr(a.item(name), field), (name, field)
    assert b.prediction(b.names[0]).max() > 0  # a real prediction
    # The choice is remembered: a new Review widget starts with it.
    assert json.loads((tmp_path / "settings.json").read_text())["review.cluster"] == "local:2"
    assert ReviewWidget(viewer).inputs.cluster.value() == "local:2"


def test_a_bad_scheduler_address_is_refused_before_any_work(make_napari_viewer, qtbot, tmp_path, image_folder,
                                                           tiny_model, messages):  # fmt: skip
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Review")
    widget.inputs.folder_edit.setText(str(image_folder))
    widget.inputs.model_edit.setText(str(tiny_model))
    widget.inputs.cluster.set_value("not an address")
    assert not widget.start_review()
    assert not widget.busy
    assert any("not a scheduler address" in m for m in messages("error")), messages("error")


def test_stop_on_a_cluster_ends_the_batch_within_2_s(make_napari_viewer, qtbot, tmp_path, nuclei_pairs, tiny_model,
                                                     messages):  # fmt: skip
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        name, image, _ = nuclei_pairs[i % len(nuclei_pairs)]
        tifffile.imwrite(folder / f"{i:02d}-{name}.tif", image)
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Review")
    widget.inputs.folder_edit.setText(str(folder))
    widget.inputs.model_edit.setText(str(tiny_model))
    widget.inputs.cluster.set_value("local:2")
    assert widget.start_review()
    qtbot.waitUntil(lambda: widget.progress.value() >= 2, timeout=WAIT_MS)
    with qtbot.waitSignal(widget.job_finished, timeout=10_000):
        t0 = time.monotonic()
        widget.stop()
    took = time.monotonic() - t0
    print(f"stopped after {took:.2f} s")
    assert took < 2.0
    assert widget.job.failure is None, widget.job.failure  # a clean stop, not a killed worker
    assert not messages("error"), messages("error")
    predicted = [n for n in widget.project.names if widget.project.item(n).predicted]
    assert 2 <= len(predicted) < 30


def test_predict_widget_on_an_ome_zarr_layer_runs_its_chunks_on_a_local_cluster(viewer, qtbot, tiny_model,
                                                                             nuclei_sample, dock, messages):  # fmt: skip
    from pathlib import Path

    import zarr
    from ome_zarr.writer import write_image

    from napari_unet.core.omezarr import leftovers, open_labels

    image, _ = nuclei_sample
    store = Path(str(tiny_model)).parents[2] / "cluster-nuclei.zarr"
    write_image(np.tile(image, (4, 5)), zarr.open_group(str(store), mode="w", zarr_format=2), axes="yx",
                storage_options={"chunks": (512, 512)})  # fmt: skip
    source = viewer.open(str(store), plugin="napari-ome-zarr")[0]
    widget = dock(viewer, "Predict")
    assert widget.load_model(tiny_model)
    qtbot.waitUntil(lambda: widget.entry is not None, timeout=120_000)
    widget.image_picker.set_layer(source)
    results = []
    for cluster in (None, "local:2"):
        widget.cluster.set_value(cluster)
        assert widget.start_prediction()
        qtbot.waitUntil(lambda: not widget.job.running, timeout=WAIT_MS)
        assert widget.status == "done", widget.status_label.text()
        results.append(Path(viewer.layers[-1].metadata["napari_unet"]["store"]))
    assert "dask dashboard" in widget.cluster.dashboard.text()
    assert not messages("error"), messages("error")
    alone, on_cluster = (np.asarray(open_labels(p)[0]) for p in results)
    assert results[0] != results[1] and np.array_equal(alone, on_cluster) and 0 < on_cluster.mean() < 1
    assert leftovers(store) == []
