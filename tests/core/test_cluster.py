"""Batch prediction on a real dask LocalCluster of 2 worker processes: 20 images and one
8192 x 8192 OME-Zarr image give the labels single-process prediction gives, and a worker killed
mid-run costs a retried task, never a wrong or half-written result."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.core.omezarr import leftovers, open_image, open_labels, plan_labels
from napari_unet.core.outputs import TEMP_PREFIX, plan_outputs

from zarr_helpers import blobs, save_tiny_model, write_ome_zarr  # noqa: E402  (tests/core is on sys.path)

N_IMAGES = 20


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    model = save_tiny_model(root / "models", threshold_from=blobs(256, 256, seed=1))
    images = root / "images"
    images.mkdir()
    for i in range(N_IMAGES):
        tifffile.imwrite(images / f"img{i:02d}.tif", blobs(96 + 8 * (i % 3), 128, seed=10 + i))
    big = np.tile(blobs(1024, 1024, seed=5), (8, 8))  # 8192 x 8192, cheap to make, real content
    store = write_ome_zarr(root / "big.zarr", big, chunks=2048)
    return model, images, store


@pytest.fixture(scope="module")
def client():
    from napari_unet.core.cluster import open_client

    with open_client(local=2) as c:
        c.wait_for_workers(2, timeout=120)
        yield c


def _args(overwrite: bool = False) -> argparse.Namespace:
    return argparse.Namespace(axes=None, overwrite=overwrite, probabilities=False)


def _run(model: Path, images: Path, store: Path, out: Path, client, name: str, chunk: int, kill=None):
    from napari_unet.core.batch import Run
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.io import list_images

    bundle = load_bundle(model)
    files = list_images([images])
    plans = plan_outputs(files, out, protected=files)
    image = open_image(store)
    target = plan_labels([image], name)[0]
    run = Run(str(bundle.path), {}, bundle, bundle.config)
    killer = None
    if kill is not None:
        killer = threading.Thread(target=kill, args=(client,), daemon=True)
        killer.start()
    written = run.execute(client, [image], [target], plans, _args(), chunk=chunk)
    if killer is not None:
        killer.join(timeout=60)
    return written, target.path


def _check(written, labels_path, out, images, reference_out, reference_labels):
    names = sorted(p.name for p in images.glob("*.tif"))
    assert sorted(p.name for p in out.glob("*.tif")) == names
    for name in names:
        assert np.array_equal(tifffile.imread(out / name), tifffile.imread(reference_out / name)), name
    assert labels_path in written
    got = np.asarray(open_labels(labels_path)[0])
    assert got.shape == (8192, 8192)
    assert np.array_equal(got, reference_labels)
    assert not list(out.glob(f"{TEMP_PREFIX}*"))
    assert leftovers(labels_path.parent.parent) == []


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """Single-process prediction: the same command without a cluster."""
    model, images, store = inputs
    out = tmp_path_factory.mktemp("ref") / "out"
    written, labels_path = _run(model, images, store, out, None, "reference", chunk=2048)
    labels = np.asarray(open_labels(labels_path)[0])
    assert 0.02 < labels.mean() < 0.98  # both values: a real prediction, not a constant
    return out, labels


def test_two_workers_predict_like_one_process(inputs, client, reference, tmp_path):
    model, images, store = inputs
    assert len(client.scheduler_info()["workers"]) == 2
    out = tmp_path / "out"
    t0 = time.perf_counter()
    written, labels_path = _run(model, images, store, out, client, "two-workers", chunk=2048)
    print(f"cluster run: {time.perf_counter() - t0:.1f} s")
    _check(written, labels_path, out, images, *reference)
    # each worker loaded the model once (the cache is keyed by version folder)
    loaded = client.run(lambda: len(importlib.import_module("napari_unet.core.cluster")._MODELS))
    assert sorted(loaded.values()) == [1, 1]


def test_a_killed_worker_means_retried_tasks_and_correct_outputs(inputs, client, reference, tmp_path):
    model, images, store = inputs
    killed: list[int] = []

    def kill(c) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            busy = {w: keys for w, keys in c.processing().items() if keys}
            if busy:
                worker = next(iter(busy))
                pid = c.run(os.getpid, workers=[worker])[worker]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    out = tmp_path / "out"
    written, labels_path = _run(model, images, store, out, client, "killed", chunk=2048, kill=kill)
    assert killed, "no worker was busy to be killed"
    _check(written, labels_path, out, images, *reference)
    assert killed[0] not in client.run(os.getpid).values()  # the nanny started a fresh worker


def test_cli_on_an_existing_scheduler(inputs, client, tmp_path, capsys):
    from napari_unet.core.cli import main

    model, images, _ = inputs
    small = write_ome_zarr(tmp_path / "small.zarr", blobs(300, 260, seed=4))
    out = tmp_path / "out"
    code = main(["predict", "--model", str(model), "--images", str(images), str(small), "--out", str(out),
                 "--scheduler", client.scheduler.address])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "dask dashboard:" in err and "predicting" in err
    assert len(list(out.glob("*.tif"))) == N_IMAGES
    assert np.asarray(open_labels(out / "small.zarr" / "labels" / "napari-unet")[0]).shape == (300, 260)
    assert not (small / "labels").exists()
