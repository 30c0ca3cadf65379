"""Small model files: replay data once per lineage (core/replay.py), exact and compressed, old layouts
still read; no optimizer state in model.keras."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import tifffile

import keras  # noqa: E402

from napari_unet.core import replay  # noqa: E402
from napari_unet.core.bundle import (  # noqa: E402
    ModelBundle,
    export_zip,
    load_bundle,
    load_replay,
    save_bundle,
    save_checkpoint,
)
from napari_unet.core.errors import BundleError  # noqa: E402
from napari_unet.core.versions import promote_checkpoint  # noqa: E402

from test_bundle import tiny_config, tiny_unet  # noqa: E402  (tests/core is on sys.path)


@pytest.fixture(scope="module")
def model():
    return tiny_unet()


@pytest.fixture()
def bundle(model) -> ModelBundle:
    return ModelBundle(model=model, config=tiny_config())


def _patches(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Patches like the trainer's: uint8 images normalised to float32, targets in -1..2."""
    rng = np.random.default_rng(seed)
    images = [((rng.integers(0, 256, (32, 32, 1)) - 3) / 250.0).astype(np.float32) for _ in range(n)]
    targets = [rng.integers(-1, 3, (32, 32)).astype(np.int32) for _ in range(n)]
    return images, targets


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


def test_encoding_is_exact_and_small():
    images, targets = _patches(1)
    enc = replay._encode(images[0], targets[0])
    assert enc["codes"].dtype == np.uint8 and enc["target"].dtype == np.int8 and "image" not in enc
    # Values that need float32 bits (and -0.0, which np.unique merges with 0.0) are stored as they are.
    rough = np.random.default_rng(1).random((300, 300, 1), dtype=np.float32)
    assert "image" in replay._encode(rough, np.zeros((300, 300), np.int32))
    signed = np.array([[[0.0], [-0.0]]], np.float32)
    assert "image" in replay._encode(signed, np.zeros((1, 2), np.int32))
    wide = np.zeros((4, 4), np.int32)
    wide[0, 0] = 40_000
    assert replay._encode(np.zeros((4, 4, 1), np.float32), wide)["target"].dtype == np.int32


def test_versions_share_patches_and_read_back_exactly(bundle, tmp_path):
    images, targets = _patches(10)
    v1 = save_bundle(bundle, tmp_path, "m", replay=(images, targets))
    new_images, new_targets = _patches(3, seed=9)
    child = (new_images + images[:7], new_targets + targets[:7])  # what finetune keeps
    v2 = save_bundle(bundle, tmp_path, "m", replay=child)
    store = tmp_path / "m" / "replay"
    assert len(list(store.glob("*.npz"))) == 13  # not 20
    assert not (v1 / "replay").exists() and not (v2 / "replay").exists()
    assert _same(load_replay(v1)[0], images) and _same(load_replay(v1)[1], targets)
    assert _same(load_replay(v2)[0], child[0]) and _same(load_replay(v2)[1], child[1])
    meta = json.loads((v2 / "metadata.json").read_text())
    assert meta["replay"]["format"] == 1 and len(meta["replay"]["patches"]) == 10
    # Compressed: smaller than the float32 + int32 arrays.
    raw = sum(i.nbytes + t.nbytes for i, t in zip(images + new_images, targets + new_targets))
    assert sum(p.stat().st_size for p in store.iterdir()) < raw / 2
    assert not list(store.glob(".replay-tmp-*"))


def test_missing_or_damaged_patch_gets_a_clear_message(bundle, tmp_path):
    images, targets = _patches(2)
    v1 = save_bundle(bundle, tmp_path, "m", replay=(images, targets))
    files = sorted((tmp_path / "m" / "replay").glob("*.npz"))
    other = replay._encode(*[a[0] for a in _patches(1, seed=4)])
    np.savez_compressed(files[0], **other)  # a patch whose content no longer matches its hash
    with pytest.raises(BundleError, match="does not match its name"):
        load_replay(v1)
    files[0].unlink()
    with pytest.raises(BundleError, match="missing from .*replay.*Copy that folder too"):
        load_replay(v1)
    load_bundle(v1)  # the model itself still loads


def test_old_layout_with_tiffs_in_the_version_stays_readable(bundle, tmp_path):
    images, targets = _patches(3)
    v1 = save_bundle(bundle, tmp_path, "old", replay=None)
    folder = v1 / "replay"  # exactly what napari-unet wrote before replay stores
    folder.mkdir()
    for name, arrays in (("images.tif", images), ("targets.tif", targets)):
        with tifffile.TiffWriter(folder / name) as tw:
            for arr in arrays:
                tw.write(arr, photometric="minisblack")
    assert _same(load_replay(v1)[0], images) and _same(load_replay(v1)[1], targets)
    # Its child (fine-tuning writes the replay it kept) moves to the shared store.
    v2 = save_bundle(bundle, tmp_path, "old", replay=load_replay(v1))
    assert _same(load_replay(v2)[0], images) and len(list((tmp_path / "old" / "replay").glob("*.npz"))) == 3


def test_zip_export_carries_the_patches_it_uses(bundle, tmp_path):
    images, targets = _patches(4)
    save_bundle(bundle, tmp_path, "m", replay=(images[:2], targets[:2]))
    # A patch listed twice (fine-tuning on an image the model was trained on) is exported once.
    v2 = save_bundle(bundle, tmp_path, "m", replay=(images[2:] + images[2:3], targets[2:] + targets[2:3]))
    archive = export_zip(v2, tmp_path / "m.zip")
    with zipfile.ZipFile(archive) as zf:
        assert sum(n.endswith(".npz") for n in zf.namelist()) == 2  # v2's patches only
    assert _same(load_replay(archive)[0], images[2:] + images[2:3])


def test_later_checkpoints_keep_the_jobs_replay(bundle, tmp_path):
    images, targets = _patches(3)
    save_checkpoint(bundle, tmp_path, "m", "job1", replay=(images, targets))
    save_checkpoint(bundle, tmp_path, "m", "job1")  # as the worker does for later epochs
    version = promote_checkpoint(tmp_path / "m", "job1")
    assert version is not None and _same(load_replay(version)[0], images)


def test_a_loaded_bundles_replay_entry_is_not_copied_to_another_model(bundle, tmp_path):
    v1 = save_bundle(bundle, tmp_path, "a", replay=_patches(2))
    loaded = load_bundle(v1)
    other = save_bundle(loaded, tmp_path, "b")
    assert "replay" not in json.loads((other / "metadata.json").read_text())
    assert load_replay(other) == ([], [])


def test_disk_full_while_writing_a_patch_leaves_no_version_and_no_temp_file(bundle, tmp_path, monkeypatch):
    images, targets = _patches(3)
    save_bundle(bundle, tmp_path, "m", replay=(images[:1], targets[:1]))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", full)
    with pytest.raises(BundleError, match="No space left on device.*Earlier versions are unchanged"):
        save_bundle(bundle, tmp_path, "m", replay=(images, targets))
    store = tmp_path / "m" / "replay"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["replay", "v001"]
    assert [p.suffix for p in store.iterdir()] == [".npz"]  # the first version's patch only


def test_model_file_holds_no_optimizer_state_and_predicts_the_same(model, tmp_path):
    import zipfile as zf

    compiled = keras.models.clone_model(model)
    compiled.set_weights(model.get_weights())
    compiled.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(3).random((2, 32, 32, 1), dtype=np.float32)
    compiled.fit(x, (x > 0.5).astype(np.float32), epochs=1, verbose=0)  # the optimizer now has state
    version = save_bundle(ModelBundle(model=compiled, config=tiny_config()), tmp_path, "m")
    with zf.ZipFile(version / "model.keras") as archive:
        weights = archive.read("model.weights.h5")
    assert b"optimizer" not in weights
    loaded = load_bundle(version)
    assert np.array_equal(loaded.model.predict_on_batch(x), compiled.predict_on_batch(x))
    assert compiled.optimizer is not None  # the caller's model is left as it was
