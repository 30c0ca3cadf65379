"""Model files: round trips, versions, atomic saves, zips, replay data and every refusal."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
from keras import layers  # noqa: E402

from napari_unet.core import bundle as bmod  # noqa: E402
from napari_unet.core.bundle import (  # noqa: E402
    FORMAT_VERSION,
    ModelBundle,
    check_compatible,
    default_model_root,
    describe_data,
    export_zip,
    latest_version,
    list_models,
    list_versions,
    load_bundle,
    load_replay,
    save_bundle,
)
from napari_unet.core.config import Config  # noqa: E402
from napari_unet.core.errors import BundleError  # noqa: E402


def tiny_unet(channels: int = 1, outputs: int = 1, seed: int = 0) -> keras.Model:
    """A depth-1 U-Net from built-in layers only (independent of model.py)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, channels))
    a = layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    a = layers.BatchNormalization()(a)
    b = layers.MaxPooling2D()(a)
    b = layers.Conv2D(8, 3, padding="same", activation="relu")(b)
    u = layers.Conv2DTranspose(4, 2, strides=2, padding="same")(b)
    x = layers.Concatenate()([a, u])
    out = layers.Conv2D(outputs, 1, activation="sigmoid" if outputs == 1 else "softmax", dtype="float32")(x)
    return keras.Model(inp, out)


def tiny_config(channels: int = 1) -> Config:
    return Config().replace(
        model={"depth": 1, "base_filters": 4}, data={"patch_size": 32, "in_channels": channels}
    )


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return tiny_unet()


@pytest.fixture()
def bundle(model) -> ModelBundle:
    rng = np.random.default_rng(0)
    image, labels = rng.integers(0, 255, (40, 48), np.uint8), rng.integers(0, 3, (40, 48), np.uint16)
    return ModelBundle(
        model=model,
        config=tiny_config(),
        history={"loss": [np.float32(0.9), 0.5], "val_dice": [0.1, 0.4], "lr": [1e-3, 1e-3]},
        training_data=[describe_data("cells_01", image, labels)],
        metrics={"best_val_dice": np.float64(0.4)},
        metadata={"notes": "unit test"},
    )


@pytest.fixture()
def x() -> np.ndarray:
    return np.random.default_rng(1).random((2, 24, 32, 1), dtype=np.float32)


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(model_dir: Path) -> list[str]:
    return [p.name for p in model_dir.iterdir() if p.name.startswith(".")]


def rewrite_config_json(model_file: Path, edit) -> None:
    """Rewrite config.json inside a .keras archive through ``edit(config_dict)``."""
    with zipfile.ZipFile(model_file) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    config = json.loads(entries["config.json"])
    edit(config)
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(model_file, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


# ---------------------------------------------------------------- round trips and versions


def test_save_load_round_trip_is_bit_identical(bundle, model, x, tmp_path):
    path = save_bundle(bundle, tmp_path, "nuclei")
    assert path == tmp_path / "nuclei" / "v001"
    assert sorted(p.name for p in path.iterdir()) == ["history.json", "metadata.json", "model.keras"]
    assert (bundle.path, bundle.version) == (path, 1)

    loaded = load_bundle(path)
    assert np.array_equal(model.predict(x, verbose=0), loaded.model.predict(x, verbose=0))
    assert loaded.config.to_dict() == bundle.config.to_dict()
    assert loaded.history == {"loss": [pytest.approx(0.9), 0.5], "val_dice": [0.1, 0.4], "lr": [1e-3, 1e-3]}
    assert loaded.training_data == bundle.training_data
    assert (loaded.version, loaded.parent, loaded.metrics) == (1, None, {"best_val_dice": 0.4})

    meta = json.loads((path / "metadata.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert (meta["task"], meta["in_channels"], meta["class_names"]) == ("binary", 1, ["background", "foreground"])
    assert set(meta["libraries"]) >= {"napari_unet", "tensorflow", "keras", "numpy", "python"}
    assert meta["created"] and meta["notes"] == "unit test"
    assert meta["config"]["predict"]["tile_size"] == bundle.config.predict.tile_size
    assert loaded.metadata == meta


def test_versions_increment_and_earlier_versions_stay_untouched(bundle, tmp_path):
    v1 = save_bundle(bundle, tmp_path, "lungs")
    before = file_hashes(v1)
    child = ModelBundle(tiny_unet(seed=3), tiny_config(), parent=str(v1), metrics={"best_val_dice": 0.8})
    v2 = save_bundle(child, tmp_path, "lungs")
    v3 = save_bundle(child, tmp_path, "lungs")

    model_dir = tmp_path / "lungs"
    assert [p.name for p in list_versions(model_dir)] == ["v001", "v002", "v003"]
    assert latest_version(model_dir) == v3 and list_models(tmp_path) == [model_dir]
    assert file_hashes(v1) == before
    assert file_hashes(v2)["model.keras"] != before["model.keras"]
    latest = load_bundle(model_dir)  # a model folder means its newest version
    assert (latest.path, latest.version, latest.parent) == (v3, 3, str(v1))
    assert load_bundle(v1).version == 1
    assert leftovers(model_dir) == []


def test_racing_writer_gets_the_next_free_number(bundle, tmp_path, monkeypatch):
    save_bundle(bundle, tmp_path, "m")
    v2 = save_bundle(bundle, tmp_path, "m")
    before = file_hashes(v2)
    monkeypatch.setattr(bmod, "next_version", lambda model_dir: 1)  # as if another writer took 1 and 2
    path = save_bundle(bundle, tmp_path, "m")
    assert path.name == "v003"
    assert json.loads((path / "metadata.json").read_text())["version"] == 3
    assert file_hashes(v2) == before


def test_crash_mid_save_keeps_previous_versions_and_leaves_no_partial_version(bundle, tmp_path, monkeypatch):
    v1 = save_bundle(bundle, tmp_path, "m")
    before = file_hashes(v1)

    def crash(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"PK\x03\x04 half a model")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", crash)
    with pytest.raises(BundleError, match="disk full.*Earlier versions are unchanged"):
        save_bundle(bundle, tmp_path, "m")
    model_dir = tmp_path / "m"
    assert [p.name for p in model_dir.iterdir()] == ["v001"]
    assert file_hashes(v1) == before
    monkeypatch.undo()
    assert save_bundle(bundle, tmp_path, "m").name == "v002"


def test_zip_round_trip_includes_replay(bundle, model, x, tmp_path):
    images = [np.random.default_rng(2).random((16, 16, 1), dtype=np.float32)]
    targets = [np.full((16, 16), -1, np.int32)]
    version = save_bundle(bundle, tmp_path / "models", "nuclei", replay=(images, targets))
    archive = export_zip(tmp_path / "models" / "nuclei", tmp_path / "nuclei.zip")
    with zipfile.ZipFile(archive) as zf:
        assert "nuclei-v001/metadata.json" in zf.namelist()
    loaded = load_bundle(archive)
    assert loaded.path == archive and loaded.version == 1
    assert np.array_equal(model.predict(x, verbose=0), loaded.model.predict(x, verbose=0))
    assert loaded.metadata == json.loads((version / "metadata.json").read_text())
    imgs, tgts = load_replay(archive)
    assert np.array_equal(imgs[0], images[0]) and np.array_equal(tgts[0], targets[0])


# ---------------------------------------------------------------- replay data


def test_replay_round_trip(bundle, tmp_path):
    rng = np.random.default_rng(5)
    images = [rng.random((32, 32, 1), dtype=np.float32) * 4 - 1, rng.random((24, 40, 1), dtype=np.float32)]
    targets = [rng.integers(-1, 3, (32, 32)).astype(np.int64), rng.integers(0, 2, (24, 40)).astype(np.uint8)]
    path = save_bundle(bundle, tmp_path, "m", replay=(images, targets))
    assert not (path / "replay").exists()  # the patches live once per model folder (core/replay.py)
    assert len(list((tmp_path / "m" / "replay").glob("*.npz"))) == 2
    out_images, out_targets = load_replay(path)
    assert len(out_images) == len(out_targets) == 2
    for a, b in zip(out_images, images):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    for a, b in zip(out_targets, targets):
        assert a.dtype == np.int32 and np.array_equal(a, b)
    assert load_replay(save_bundle(bundle, tmp_path, "m")) == ([], [])


def test_replay_with_mismatched_shapes_is_refused_before_writing(bundle, tmp_path):
    from napari_unet.core.errors import InputError

    with pytest.raises(InputError, match="replay item 0"):
        save_bundle(bundle, tmp_path, "m", replay=([np.zeros((8, 8, 1))], [np.zeros((8, 9), int)]))
    assert list_versions(tmp_path / "m") == []


def test_no_pickle_anywhere(bundle, tmp_path, monkeypatch):
    path = save_bundle(bundle, tmp_path, "m", replay=([np.zeros((8, 8, 1))], [np.zeros((8, 8), int)]))
    archive = export_zip(path, tmp_path / "m.zip")

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    load_bundle(path), load_bundle(archive), load_replay(path)
    suffixes = {p.suffix for p in path.parent.rglob("*") if p.is_file()}
    assert suffixes == {".json", ".keras", ".npz"}


# ---------------------------------------------------------------- unsafe model files


@pytest.mark.parametrize(
    "model_opts, data_opts, policy",
    [
        ({"depth": 2, "base_filters": 4}, {}, "float32"),
        (
            {"depth": 2, "base_filters": 4, "upsampling": "bilinear", "dropout": 0.2},
            {"task": "instances"},
            "mixed_float16",
        ),
        ({"architecture": "mobilenetv2"}, {"in_channels": 3, "task": "classes", "n_classes": 3}, "float32"),
    ],
)
def test_project_models_pass_the_safety_check(model_opts, data_opts, policy, tmp_path):
    """Every network model.py builds must load through the allow-list (skipped without model.py)."""
    from napari_unet.core import model as model_mod
    cfg = Config().replace(model=model_opts, data={"patch_size": 64, **data_opts})
    keras.mixed_precision.set_global_policy(policy)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the untrained-encoder warning
            net = model_mod.build_model(cfg)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    loaded = load_bundle(save_bundle(ModelBundle(net, cfg), tmp_path, "m"))
    x = np.random.default_rng(0).random((1, 64, 64, cfg.data.in_channels), dtype=np.float32)
    # A mixed-precision network is saved in float32 (model.float32_model): the same weights, full precision.
    assert {layer.dtype_policy.name for layer in loaded.model.layers} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(net.get_weights(), loaded.model.get_weights()))
    same = np.array_equal if policy == "float32" else lambda a, b: np.abs(a - b).max() < 0.05
    assert same(net.predict(x, verbose=0), loaded.model.predict(x, verbose=0))


def test_lambda_layer_is_refused_and_never_runs(bundle, tmp_path):
    sentinel = tmp_path / "lambda_ran.txt"

    def make_fn(flag_path: str):
        return lambda t: (open(flag_path, "a").write("ran"), t)[1]

    inp = keras.Input((None, None, 1))
    out = layers.Conv2D(1, 1, activation="sigmoid")(layers.Lambda(make_fn(str(sentinel)))(inp))
    evil = keras.Model(inp, out)
    assert sentinel.exists()  # building calls the function: the sentinel works
    # save_bundle will not even write such a model
    with pytest.raises(BundleError, match="Lambda layer"):
        save_bundle(ModelBundle(evil, tiny_config()), tmp_path, "evil")
    assert list_versions(tmp_path / "evil") == [] and leftovers(tmp_path / "evil") == []

    # a hand-made bundle holding it is refused at load time
    version = save_bundle(bundle, tmp_path, "m")
    evil.save(str(version / "model.keras"))
    sentinel.unlink()
    with pytest.raises(BundleError, match=r"contains a Lambda layer \(arbitrary code\); refusing to load"):
        load_bundle(version)
    assert not sentinel.exists()
    # control: an unsafe load does run it, so the check above could fail
    keras.saving.load_model(str(version / "model.keras"), compile=False, safe_mode=False)
    assert sentinel.exists()


@pytest.mark.parametrize(
    "module, class_name",
    [("mypackage.layers", "Conv2D"), ("keras.config", "enable_unsafe_deserialization"), ("keras.layers", "TFSMLayer")],
)
def test_non_builtin_classes_are_refused(bundle, tmp_path, module, class_name):
    version = save_bundle(bundle, tmp_path, "m")

    def edit(config):
        layer = config["config"]["layers"][1]
        layer["module"], layer["class_name"] = module, class_name

    rewrite_config_json(version / "model.keras", edit)
    with pytest.raises(BundleError, match=f"uses '{class_name}'.*refusing to load"):
        load_bundle(version)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_model_file(bundle, tmp_path, damage):
    version = save_bundle(bundle, tmp_path, "m")
    model_file = version / "model.keras"
    data = bytearray(model_file.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # a flipped byte in the middle of the stored weights
        data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt or truncated"):
        load_bundle(version)


def test_unsafe_zip_entries_are_refused(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # '../x' would land in tmp_path
    for entry in ("../escaped.txt", "/abs/escaped.txt"):
        archive = tmp_path / "bad.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("m-v001/metadata.json", "{}")
            zf.writestr(entry, "boom")
        with pytest.raises(BundleError, match="unsafe path"):
            load_bundle(archive)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/abs/escaped.txt").exists()
    assert list((tmp_path / "tmp").iterdir()) == []  # extraction folder removed


# ---------------------------------------------------------------- other refusals


def test_path_errors(bundle, tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a napari-unet model folder"):
        load_bundle(tmp_path / "empty")
    version = save_bundle(bundle, tmp_path, "m")
    bundle.model.save(str(tmp_path / "loose.keras"))
    with pytest.raises(BundleError, match="bare Keras file"):
        load_bundle(tmp_path / "loose.keras")
    assert load_bundle(version / "model.keras").path == version  # a file inside a version means the version
    with pytest.raises(BundleError, match="cannot be used as a folder name"):
        save_bundle(bundle, tmp_path, "../up")


def test_metadata_errors(bundle, tmp_path):
    version = save_bundle(bundle, tmp_path, "m")
    meta_file = version / "metadata.json"
    good = meta_file.read_text()

    meta_file.write_text('{"format_version": 1, "config": ')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(version)

    meta = json.loads(good)
    meta["format_version"] = FORMAT_VERSION + 1
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="made by a newer napari-unet.*upgrade"):
        load_bundle(version)

    meta_file.unlink()
    with pytest.raises(BundleError, match="missing metadata.json"):
        load_bundle(version)
    with pytest.raises(BundleError, match="missing metadata.json"):
        load_bundle(tmp_path / "m")


def test_channel_mismatch(bundle, tmp_path):
    version = save_bundle(bundle, tmp_path, "m")
    loaded = load_bundle(version)
    check_compatible(loaded, in_channels=1, task="binary")
    with pytest.raises(BundleError, match="expects images with 1 channel.*this image has 3"):
        check_compatible(loaded, in_channels=3)
    with pytest.raises(BundleError, match="trained for the 'binary' task, not 'instances'"):
        check_compatible(loaded, task="instances")

    meta = json.loads((version / "metadata.json").read_text())
    meta["config"]["data"]["in_channels"] = meta["in_channels"] = 3
    (version / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="takes 1 input channel.*in_channels=3"):
        load_bundle(version)
    with pytest.raises(BundleError, match="in_channels=3"):  # refused at save time as well
        save_bundle(ModelBundle(bundle.model, tiny_config(channels=3)), tmp_path, "m")


# ---------------------------------------------------------------- helpers


def test_describe_data_hashes_pixels():
    image, labels = np.arange(12, dtype=np.uint8).reshape(3, 4), np.zeros((3, 4), np.int32)
    entry = describe_data("a", image, labels)
    assert entry["shape"] == [3, 4] and entry["dtype"] == "uint8"
    assert entry["image_sha256"] == hashlib.sha256(image.tobytes()).hexdigest()
    assert describe_data("a", image.T.copy().T, labels) == entry  # layout in memory does not matter
    labels[0, 0] = 1
    changed = describe_data("a", image, labels)
    assert changed["labels_sha256"] != entry["labels_sha256"] and changed["image_sha256"] == entry["image_sha256"]


def test_default_model_root(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_UNET_MODEL_DIR", str(tmp_path / "elsewhere"))
    assert default_model_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("NAPARI_UNET_MODEL_DIR")
    assert default_model_root() == Path.home() / ".napari-unet" / "models"
