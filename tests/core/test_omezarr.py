"""OME-Zarr in and out: reading images lazily, writing labels images that the ome-zarr tools open,
the output policy for stores, and the CLI's one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_unet.core.cli import main
from napari_unet.core.errors import InputError, OutputError
from napari_unet.core.omezarr import (
    StagedLabels,
    image_yxc,
    leftovers,
    open_image,
    open_labels,
    plan_labels,
    written_by_us,
)

from zarr_helpers import blobs, save_tiny_model, write_ome_zarr  # noqa: E402  (tests/core is on sys.path)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models"), threshold_from=blobs(256, 256, seed=1))


def _whole_labels(model_path: Path, image: np.ndarray) -> np.ndarray:
    """Single-process reference: one whole-image model call, then the pixel-wise label rule."""
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.largeimage import pixel_labels
    from napari_unet.core.normalize import normalize
    from napari_unet.core.predict import subsample_bounds

    bundle = load_bundle(model_path)
    cfg = bundle.config
    low, high = subsample_bounds(image, cfg)
    x = normalize(image[..., None], bounds=(low, high))
    m = cfg.size_multiple
    h, w = image.shape
    padded = np.pad(x, ((0, -h % m), (0, -w % m), (0, 0)), mode="reflect")
    probs = np.asarray(bundle.model.predict_on_batch(padded[None]))[0, :h, :w]
    return pixel_labels(probs, cfg)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_cli_writes_labels_beside_the_source_equal_to_whole_image_prediction(model, tmp_path, zarr_format, capsys):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    image = blobs(600, 520, seed=2)
    store = write_ome_zarr(tmp_path / "img.zarr", image, zarr_format=zarr_format, chunks=256)
    before = sorted(p.relative_to(store) for p in store.rglob("*") if "labels" not in p.parts)
    # 128 px chunks (+24 context) force 5 x 5 windows: the stitched result must equal one whole call.
    from napari_unet.core import tiling

    original = tiling.chunk_size
    tiling.chunk_size = lambda cfg, budget=None, parallel=1: 128
    try:
        assert main(["predict", "--model", str(model), "--images", str(store)]) == 0
    finally:
        tiling.chunk_size = original
    out = store / "labels" / "napari-unet"
    labels = open_labels(out)
    full = np.asarray(labels[0])
    assert full.shape == image.shape and full.dtype == np.uint8
    assert set(np.unique(full)) == {0, 1}
    assert np.array_equal(full, _whole_labels(model, image))
    assert [lvl.shape for lvl in labels] == [(600, 520), (300, 260)]
    assert np.array_equal(np.asarray(labels[1]), full[::2, ::2])  # nearest-neighbour pyramid
    # the source is untouched, nothing temporary is left, and ome-zarr's reader finds the labels
    assert sorted(p.relative_to(store) for p in store.rglob("*") if "labels" not in p.parts) == before
    assert leftovers(store) == [] and written_by_us(out)
    nodes = list(Reader(parse_url(str(store)))())
    assert any(n.zarr.path.rstrip("/").endswith("labels/napari-unet") for n in nodes), [n.zarr.path for n in nodes]
    label_node = next(n for n in nodes if n.zarr.path.rstrip("/").endswith("labels/napari-unet"))
    assert any(isinstance(spec, Label) for spec in label_node.specs)
    assert np.array_equal(np.asarray(label_node.data[0]), full)

    # an existing labels image is never replaced without --overwrite; with it, it is
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--images", str(store)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["predict", "--model", str(model), "--images", str(store), "--overwrite", "--threshold", "0.99"]) == 0
    assert np.asarray(open_labels(out)[0]).sum() < full.sum()
    assert leftovers(store) == []


def test_labels_under_an_output_folder_and_the_policy(model, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    store = write_ome_zarr(inputs / "a.ome.zarr", blobs(200, 300, seed=3))
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), "--images", str(store), "--out", str(out)]) == 0
    result = out / "a.zarr" / "labels" / "napari-unet"
    assert np.asarray(open_labels(result)[0]).shape == (200, 300)
    assert not (store / "labels").exists()
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--images", str(store), "--out", str(inputs)]) == 2
    assert "holds input images" in capsys.readouterr().err
    # a labels image napari-unet did not write is never replaced, even with --overwrite
    foreign = write_ome_zarr(tmp_path / "b.zarr", blobs(64, 64))
    zarr.open_group(str(foreign / "labels" / "napari-unet"), mode="w", zarr_format=2)
    with pytest.raises(OutputError, match="did not write"):
        plan_labels([open_image(foreign)], "napari-unet", overwrite=True)
    with pytest.raises(OutputError, match="more than once"):
        plan_labels([open_image(store), open_image(store)], "twice")


def test_bad_inputs_get_one_line_errors_before_any_work(model, tmp_path, capsys):
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w", zarr_format=2).create_array("x", shape=(4, 4), dtype="uint8")
    stack = write_ome_zarr(tmp_path / "stack.zarr", np.zeros((3, 64, 64), np.uint8), axes="zyx", chunks=64)
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    cases = [
        (["--images", str(plain)], "without OME-NGFF multiscales"),
        (["--images", str(stack)], "3 planes along z"),
        (["--images", str(empty)], "not a zarr store"),
        (["--images", str(plain), "--cluster", "local:0"], "N must be a whole number"),
        (["--images", str(plain), "--cluster", "remote"], "use local or local:N"),
        (["--images", str(plain), "--scheduler", "no-port"], "not a scheduler address"),
    ]
    for extra, wanted in cases:
        assert main(["predict", "--model", str(model), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert wanted in err and len(err.splitlines()) == 1, err
    assert not (stack / "labels").exists()


def test_image_axes_and_staged_chunks(tmp_path):
    image = open_image(write_ome_zarr(tmp_path / "c.zarr", np.zeros((2, 1, 40, 30), np.uint8), axes="czyx", chunks=64))
    assert image_yxc(image).shape == (40, 30, 2)
    target = plan_labels([image], "x")[0]
    assert target.shape == (1, 40, 30)
    staged = StagedLabels.create(target, chunk=16)
    staged.write_chunk(0, 0, np.ones((16, 16), np.uint8))
    assert len(staged.missing()) == 3 * 2 - 1
    with pytest.raises(OutputError, match="not written"):
        staged.publish()
    staged.discard()
    assert leftovers(image.path) == [] and not target.path.exists()


def test_open_image_refuses_a_file(tmp_path):
    f = tmp_path / "x.zarr"
    f.write_text("no")
    with pytest.raises(InputError, match="is a file"):
        open_image(f)


def test_a_folder_of_ome_zarr_images(model, tmp_path):
    folder = tmp_path / "plate"
    folder.mkdir()
    stores = [write_ome_zarr(folder / f"w{i}.zarr", blobs(96, 128, seed=20 + i)) for i in range(2)]
    assert main(["predict", "--model", str(model), "--images", str(folder), "--dry-run"]) == 0
    assert not any((s / "labels").exists() for s in stores)
    assert main(["predict", "--model", str(model), "--images", str(folder)]) == 0
    for store in stores:
        assert np.asarray(open_labels(store / "labels" / "napari-unet")[0]).shape == (96, 128)
