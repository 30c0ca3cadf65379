"""Objects across chunk borders (core/chunkobjects.py): chunked instance labels of a real nuclei
mosaic match the whole-image `predict_image` labels object for object, no object is cut at a chunk
border, `min_size` counts an object's pixels in every chunk, and a LocalCluster of 2 workers
writes the labels one process writes."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from zarr_helpers import blobs, save_tiny_model, write_ome_zarr

from napari_unet.core.omezarr import leftovers, open_image, open_labels, plan_labels

CHUNK = 96  # a 512 x 512 mosaic is 6 x 6 chunks (the last ones 32 px)
TINY_INSTANCES = {
    "model": {"depth": 2, "base_filters": 8},
    "data": {"task": "instances", "patch_size": 64, "val_fraction": 0.34},
    "train": {"batch_size": 4, "steps_per_epoch": 10, "epochs": 4, "learning_rate": 3e-3},
    "predict": {"tile_size": 128, "overlap": 32},
}


@pytest.fixture(scope="module")
def instance_model(nuclei_pairs, tmp_path_factory) -> Path:
    """A tiny instance model trained on three real nuclei images, with its tuned post-processing."""
    from napari_unet.core.bundle import ModelBundle, save_bundle
    from napari_unet.core.config import Config
    from napari_unet.core.data import TrainingPair
    from napari_unet.core.train import train

    pairs = [TrainingPair(im, lab, name) for name, im, lab in nuclei_pairs[4:7]]
    result = train(pairs, Config().replace(**TINY_INSTANCES))
    assert result.config.predict.tuned
    return save_bundle(ModelBundle(result.model, result.config), tmp_path_factory.mktemp("models"), "nuclei")


@pytest.fixture(scope="module")
def mosaic(nuclei_pairs) -> np.ndarray:
    """512 x 512: four real 256 x 256 nuclei images the model was not trained on."""
    tiles = [im for _, im, _ in nuclei_pairs[:4]]
    assert all(t.shape == (256, 256) for t in tiles)
    return np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])


def _chunked(model_path: Path, image: np.ndarray, tmp: Path, name: str, predict: dict | None = None) -> np.ndarray:
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.largeimage import predict_to_store

    bundle = load_bundle(model_path)
    cfg = bundle.config.replace(predict=predict) if predict else bundle.config
    store = write_ome_zarr(tmp / f"{name}.zarr", image, chunks=CHUNK)
    target = plan_labels([open_image(store)], "objects")[0]
    path = predict_to_store(bundle.model, image, cfg, target, CHUNK)
    assert leftovers(store) == []
    return np.asarray(open_labels(path)[0])


def _whole(model_path: Path, image: np.ndarray, predict: dict | None = None) -> np.ndarray:
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.predict import predict_image

    bundle = load_bundle(model_path)
    cfg = bundle.config.replace(predict=predict) if predict else bundle.config
    return predict_image(bundle.model, image, cfg).labels


def _pairs_by_iou(ref: np.ndarray, got: np.ndarray) -> dict[int, tuple[int, float]]:
    """For each object of `ref`: the object of `got` it overlaps most, and their IoU."""
    both = (ref > 0) & (got > 0)
    pairs, shared = np.unique(np.stack([ref[both], got[both]]).astype(np.int64), axis=1, return_counts=True)
    size_r, size_g = np.bincount(ref.ravel()), np.bincount(got.ravel().astype(np.int64))
    best: dict[int, tuple[int, float]] = {}
    for (r, g), n in zip(pairs.T, shared):
        iou = n / (size_r[r] + size_g[g] - n)
        if iou > best.get(int(r), (0, 0.0))[1]:
            best[int(r)] = (int(g), float(iou))
    return best


def _cells(shape: tuple[int, int]) -> np.ndarray:
    """The chunk number of each pixel."""
    cy, cx = np.indices(shape) // CHUNK
    return cy * 1000 + cx


def _smallest_piece(cells_of_object: np.ndarray) -> int:
    counts = np.unique(cells_of_object, return_counts=True)[1]
    return int(counts.min())


def _crossing(ref: np.ndarray) -> list[int]:
    """Objects that lie in more than one chunk."""
    ids = ref.ravel()
    keep = ids > 0
    pairs = np.unique(np.stack([ids[keep], _cells(ref.shape).ravel()[keep]]), axis=1)
    objects, n_cells = np.unique(pairs[0], return_counts=True)
    return objects[n_cells > 1].tolist()


def test_instances_match_whole_image_prediction_object_for_object(instance_model, mosaic, tmp_path):
    from napari_unet.core.bundle import load_bundle

    min_size = max(load_bundle(instance_model).config.predict.min_size, 30)
    predict = {"min_size": min_size}
    ref = _whole(instance_model, mosaic, predict)
    t0 = time.perf_counter()
    got = _chunked(instance_model, mosaic, tmp_path, "mosaic", predict)
    print(f"chunked {mosaic.shape} in {CHUNK} px chunks: {time.perf_counter() - t0:.1f} s")
    n_ref, n_got = len(np.unique(ref)) - 1, len(np.unique(got)) - 1
    crossing = _crossing(ref)
    assert n_ref > 50 and len(crossing) > 10, (n_ref, len(crossing))  # a real test: many objects cross borders
    assert n_got == n_ref == int(got.max())  # ids are 1..N
    best = _pairs_by_iou(ref, got)
    assert len(best) == n_ref and len({g for g, _ in best.values()}) == n_ref  # one to one
    ious = np.array([iou for _, iou in best.values()])
    identical = int(np.sum(ious == 1.0))
    print(f"{n_ref} objects, {len(crossing)} across chunk borders, {identical} identical, min IoU {ious.min():.3f}")
    assert ious.min() > 0.9
    # No object is cut: each whole-image object crossing a border is one chunked object on every side.
    for r in crossing:
        inside = got[ref == r]
        assert np.mean(inside == best[r][0]) > 0.9, r
    # min_size counted each object's pixels in all chunks: border objects with a small piece survive.
    cells = _cells(ref.shape)
    small_piece = [r for r in crossing if _smallest_piece(cells[ref == r]) < min_size]
    assert small_piece, "no border object has a piece smaller than min_size; the test would not see per-chunk sizing"


def test_binary_min_size_across_chunks_equals_whole_image(tmp_path):
    """Binary masks with a minimum size: connected components joined across borders, exactly."""
    model = save_tiny_model(tmp_path / "models", threshold_from=blobs(256, 256, seed=1))
    image = blobs(520, 600, seed=3)
    predict = {"min_size": 200}
    ref = _whole(model, image, predict)
    got = _chunked(model, image, tmp_path, "binary", predict)
    plain = _whole(model, image, {"min_size": 0})
    assert (plain != ref).any(), "min_size removed nothing; pick another size"
    assert got.dtype == np.uint8 and set(np.unique(got)) == {0, 1}
    assert np.array_equal(got, ref.astype(np.uint8))


def test_stop_between_chunks_leaves_nothing(instance_model, mosaic, tmp_path):
    import threading

    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.largeimage import predict_to_store
    from napari_unet.core.predict import PredictionStopped

    bundle = load_bundle(instance_model)
    store = write_ome_zarr(tmp_path / "s.zarr", mosaic, chunks=CHUNK)
    target = plan_labels([open_image(store)], "objects")[0]
    stop = threading.Event()
    seen: list[float] = []

    def progress(done: int, total: int) -> None:
        seen.append(done / total)
        if len(seen) == 3:
            stop.set()

    with pytest.raises(PredictionStopped):
        predict_to_store(bundle.model, mosaic, bundle.config, target, CHUNK, progress, stop)
    assert len(seen) == 3 and seen == sorted(seen)
    assert leftovers(store) == [] and not target.path.exists()


def test_cluster_writes_the_labels_one_process_writes(instance_model, mosaic, tmp_path):
    """`napari-unet predict`'s batch run on a LocalCluster of 2 workers: the same instance ids."""
    from napari_unet.core.batch import Run
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.cluster import open_client

    bundle = load_bundle(instance_model)
    store = write_ome_zarr(tmp_path / "c.zarr", mosaic, chunks=CHUNK)
    args = argparse.Namespace(axes=None, overwrite=False, probabilities=False)

    def run(client, name: str) -> np.ndarray:
        target = plan_labels([open_image(store)], name)[0]
        written = Run(str(bundle.path), {}, bundle, bundle.config).execute(client, [open_image(store)], [target], [],
                                                                          args, chunk=CHUNK)  # fmt: skip
        assert written == [target.path]
        return np.asarray(open_labels(target.path)[0])

    here = run(None, "here")
    with open_client(local=2) as client:
        client.wait_for_workers(2, timeout=120)
        there = run(client, "cluster")
        killed: list[int] = []
        killer = threading.Thread(target=_kill_a_busy_worker, args=(client, killed), daemon=True)
        killer.start()
        after_kill = run(client, "killed")
        killer.join(timeout=60)
    assert np.array_equal(here, there) and here.max() > 50
    assert killed, "no worker was busy to be killed"
    assert np.array_equal(here, after_kill)  # retried tasks, the same objects
    assert leftovers(store) == []


def _kill_a_busy_worker(client, killed: list[int]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        busy = [w for w, keys in client.processing().items() if any("-objects-" in str(k) for k in keys)]
        if busy:
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


def test_matching_joins_the_same_object_and_never_chains_a_clump_split_differently():
    from napari_unet.core.chunkobjects import match_pieces

    a = np.zeros((4, 12), np.int32)
    b = np.zeros((4, 12), np.int32)
    a[:, 0:3], b[:, 0:3] = 1, 5  # one object, seen alike from both sides: joined
    a[:, 4:7], a[:, 7:11] = 2, 3  # a clump that one window splits in two...
    b[:, 4:11] = 6  # ...and the other sees whole: joined to the larger piece only
    ia, ib = match_pieces(a, b, binary=False)
    assert sorted(zip(ia.tolist(), ib.tolist())) == [(1, 5), (3, 6)]
    # binary masks: connected components, so any shared pixel joins
    ia, ib = match_pieces(a, b, binary=True)
    assert sorted(zip(ia.tolist(), ib.tolist())) == [(1, 5), (2, 6), (3, 6)]
