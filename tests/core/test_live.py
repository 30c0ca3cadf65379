"""Live training: the stroke store, the field of view, the trainer, and the worker protocol end to end."""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from napari_unet.core.errors import InputError
from napari_unet.core.strokes import StrokeStore, View, clip_view, context_window

BG = 255


def test_store_indexes_only_painted_pixels_and_balances_classes():
    labels = np.zeros((1, 300, 300), np.int32)
    store = StrokeStore(labels, BG)
    assert store.annotated == 0
    with pytest.raises(InputError, match="Nothing is painted"):
        store.sample(4, np.random.default_rng(0))
    store.paint(0, 10, 10, np.ones((2, 50), np.int32))  # 100 object pixels
    store.paint(0, 200, 100, np.full((1, 3), BG, np.int32))  # 3 background pixels
    assert store.counts() == (100, 3)
    picks = store.sample(200, np.random.default_rng(1))
    is_bg = labels[0][picks[:, 1], picks[:, 2]] == BG
    assert 80 <= is_bg.sum() <= 120  # half background although it is 3 % of the painted pixels
    store.paint(0, 10, 10, np.zeros((2, 50), np.int32))  # erased
    assert store.counts() == (0, 3)
    with pytest.raises(InputError, match="outside"):
        store.paint(0, 299, 299, np.ones((2, 2), np.int32))


def test_store_reads_labels_given_at_start():
    labels = np.zeros((2, 100, 100), np.int32)
    labels[1, 70:72, 5:9] = 3
    assert StrokeStore(labels, BG).counts() == (8, 0)


def test_view_is_clipped_and_grown_by_the_halo():
    shape = (1, 5000, 300)
    view = clip_view(View(0, -50, 100, 4000, 200), shape, max_side=1024)
    assert view.shape == (1024, 100) and view.left == 100  # at most 1024 rows, around the centre
    window = context_window(view, shape, halo=51, quantum=64)
    assert window.top <= view.top - 51 and window.bottom >= view.bottom + 51
    assert window.right - window.left == 256  # 100 + 2 * 51 rounded up to 64
    assert window.left <= 100 - 51 and window.right >= 200 + 51
    assert context_window(View(0, 0, 250, 50, 300), shape, 51, 64).right == 300  # never past the image
    assert (window.bottom - window.top) % 64 == 0
    assert clip_view(View(0, 9000, 9000, 9100, 9100), shape).bottom == 5000  # off the image: its nearest part


@pytest.fixture(scope="module")
def nuclei(nuclei_pairs):
    name, image, labels = nuclei_pairs[0]
    return image, labels


def test_trainer_learns_from_strokes_and_freezes(nuclei, tmp_path):
    from benchmarks.live_annotator import Annotator
    from napari_unet.core.bundle import load_bundle, save_bundle
    from napari_unet.core.live import LiveTrainer
    from napari_unet.core.live_defaults import live_config
    from napari_unet.core.scores import dice_score

    image, gt = nuclei
    labels = np.zeros((1,) + gt.shape, np.int32)
    trainer = LiveTrainer(image, labels, live_config(background_label=BG))
    weights = [w.copy() for w in trainer.model.get_weights()]
    trainer.warm_up(View(0, 0, 0, *gt.shape))
    assert all(np.array_equal(a, b) for a, b in zip(weights, trainer.model.get_weights()))  # warm-up learns nothing
    assert trainer.step() is None  # nothing painted yet
    annotator = Annotator(gt)  # the live benchmark's: strokes aimed at the current mistakes
    pred = None
    for stroke in range(12):
        trainer.paint(0, *annotator.next(pred))
        if stroke == 1:
            x, y = trainer.batch()
            assert x.shape == (8, 96, 96, 1) and np.all((y >= 0).sum(axis=(1, 2, 3)) > 0)  # patches hold strokes
        for _ in range(25):
            trainer.step()
        pred = trainer.predict(View(0, 0, 0, *gt.shape))[1] > 0
    view, pred, probs = trainer.predict(View(0, 0, 0, *gt.shape))
    assert pred.shape == gt.shape and probs.shape == gt.shape + (1,)
    assert dice_score(pred > 0, gt > 0) > 0.6
    # A view predicted alone equals that part of the whole image's prediction (halo, no seams).
    _, part, _ = trainer.predict(View(0, 40, 50, 140, 170))
    np.testing.assert_array_equal(part, pred[40:140, 50:170])
    path = save_bundle(trainer.bundle("live"), tmp_path, "live", replay=trainer.replay())
    loaded = load_bundle(path)
    assert loaded.config.data.sparse and loaded.config.data.background_label == BG


def test_worker_live_job_strokes_view_freeze(nuclei, tmp_path):
    """Through the ComputeClient, as the widget drives it: strokes after start, a view change, Freeze."""
    from napari_unet.core.live_defaults import live_config
    from napari_unet.jobs import arrays
    from napari_unet.jobs.client import ComputeClient
    from napari_unet.jobs.live_messages import LiveFrame, LiveFreeze, LiveRequest, LiveStroke, LiveView, LiveViewport

    image, gt = nuclei
    frames: list[LiveFrame] = []
    client = ComputeClient()
    try:
        def build(scratch):
            return LiveRequest(arrays.put(scratch, image), False, None, live_config().to_dict(), None,
                               str(tmp_path), "live", BG, LiveViewport(0, 0, 0, *gt.shape))  # fmt: skip

        job = client.submit(build, lambda e: frames.append(e) if isinstance(e, LiveFrame) else None)
        r, c = np.argwhere(gt > 0)[0]
        obj = np.where(gt[r : r + 3, c : c + 3] > 0, 1, 0).astype(np.int32)
        assert client.send(job, LiveStroke(1, 0, int(r), int(c), arrays.put(client.session_dir, obj)))  # before it runs
        bg = np.full((2, 10), BG, np.int32)
        far = np.argwhere(gt[:-2, :-10] == 0)[0]
        assert client.send(job, LiveStroke(2, 0, int(far[0]), int(far[1]), arrays.put(client.session_dir, bg)))
        deadline = time.monotonic() + 120
        while not any(f.strokes == 2 for f in frames) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert any(f.strokes == 2 for f in frames), "no frame learnt the strokes"
        client.send(job, LiveView(LiveViewport(0, 10, 20, 60, 90)))
        deadline = time.monotonic() + 30
        while not any((f.top, f.left) == (10, 20) for f in frames) and time.monotonic() < deadline:
            time.sleep(0.1)
        small = [f for f in frames if (f.top, f.left) == (10, 20)]
        assert small and arrays.view(small[-1].labels).shape == (50, 70)  # the view, not the image
        client.send(job, LiveFreeze())
        assert job.wait(60)
        assert job.failure is None, job.failure
        assert job.result.model is not None and (tmp_path / "live" / "v001").is_dir()
        assert not client.send(job, LiveFreeze())  # the job has ended
    finally:
        client.close()


def test_lazy_planes_read_regions_of_a_zarr_image(tmp_path):
    """A zarr image is read region by region (patches, views, a window grid for percentiles)."""
    import zarr

    from napari_unet.core.live import as_planes
    from napari_unet.core.live_source import LazyPlanes, open_source

    z = zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=(3000, 2000), chunks=(500, 500), dtype="uint16",
                        fill_value=7)  # fmt: skip
    z[100:110, 200:210] = 1000
    source = open_source(tmp_path / "big.zarr")
    planes = as_planes(source, rgb=False)
    assert isinstance(planes, LazyPlanes) and planes.shape == (1, 3000, 2000, 1)
    region = planes[0, 95:115, 195:215]
    assert isinstance(region, np.ndarray) and region.shape == (20, 20, 1) and region.max() == 1000
    sample = planes.sample(0)
    assert sample.shape[-1] == 1 and 0 < sample.size <= 16 * 16 * 64 * 64
    with pytest.raises(InputError, match="not a zarr folder"):
        open_source(tmp_path / "missing.zarr")


def test_store_without_scan_never_reads_the_labels():
    class Untouchable(np.ndarray):
        count = 0  # reads of the labels

        def __getitem__(self, key):
            type(self).count += 1
            return super().__getitem__(key)

    labels = np.zeros((1, 4000, 4000), np.int32).view(Untouchable)
    store = StrokeStore(labels, BG, scan=False)
    assert Untouchable.count == 0 and store.annotated == 0
    store.paint(0, 10, 10, np.ones((3, 3), np.int32))
    assert store.counts() == (9, 0)


def test_shown_weights_are_a_moving_average(nuclei):
    """Live predicts with an exponential moving average of the trained weights, in bfloat16 on a CPU that has it."""
    from napari_unet.core.live import LiveTrainer
    from napari_unet.core.live_defaults import live_config
    from napari_unet.core.model import cpu_has_bfloat16

    image, gt = nuclei
    labels = np.zeros((1,) + gt.shape, np.int32)
    labels[0][gt > 0] = 1
    labels[0][:5] = BG
    trainer = LiveTrainer(image, labels, live_config(background_label=BG), ema_decay=0.9)
    before = trainer.shown.model.get_weights()
    trainer.step()
    trained, shown = trainer.model.get_weights(), trainer.shown.model.get_weights()
    rate = 1 - min(0.9, 2 / 11)  # the first update follows the trained weights closely
    for b, t, s in zip(before, trained, shown):
        np.testing.assert_allclose(s, b + (t - b) * rate, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(t, s) for t, s in zip(trained, shown))
    expected = "mixed_bfloat16" if cpu_has_bfloat16() else "float32"
    assert trainer.model.layers[1].dtype_policy.name == expected
