"""Config and model metadata are type- and range-checked on creation and on load (issue 11, class 3);
imported zips are refused when encrypted, oddly compressed or self-colliding."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest

from napari_unet.core.config import Config, ModelConfig
from napari_unet.core.errors import BundleError, ConfigError, OutputError

BAD_CONFIGS = {
    "epochs as text": ({"train": {"epochs": "2"}}, "train.epochs must be a whole number"),
    "patch 0": ({"data": {"patch_size": 0}}, "data.patch_size must be between"),
    "negative patch": ({"data": {"patch_size": -16}}, "data.patch_size must be between"),
    "NaN learning rate": ({"train": {"learning_rate": float("nan")}}, "must be a finite number"),
    "inf learning rate": ({"train": {"learning_rate": float("inf")}}, "must be a finite number"),
    "zero learning rate": ({"train": {"learning_rate": 0}}, "train.learning_rate must be a positive number"),
    "threshold 5": ({"predict": {"threshold": 5}}, "predict.threshold must be between 0.0 and 1.0"),
    "negative threshold": ({"predict": {"threshold": -0.1}}, "predict.threshold"),
    "bool for int": ({"model": {"depth": True}}, "model.depth must be a whole number"),
    "int for bool": ({"data": {"flips": 1}}, "data.flips must be true or false"),
    "list of wrong items": ({"data": {"class_names": ["a", 2]}}, "data.class_names[1] must be a string"),
    "fraction as text": ({"data": {"val_fraction": "0.1"}}, "data.val_fraction must be a number"),
    "section a list": ({"train": [1]}, "The config section 'train' must be a JSON object"),
    "not a dict": ([1, 2], "A config must be a JSON object"),
    "negative seed": ({"train": {"seed": -1}}, "train.seed"),
    "zero tile": ({"predict": {"tile_size": 0}}, "predict.tile_size"),
    "negative class weight": ({"train": {"class_weights": [1.0, -2.0]}}, "train.class_weights must be finite"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_values_raise_config_error(case):
    raw, message = BAD_CONFIGS[case]
    with pytest.raises(ConfigError) as info:
        Config.from_dict(raw).validate()
    assert message in str(info.value)


def test_directly_built_sections_are_checked_by_validate():
    with pytest.raises(ConfigError, match="model.depth must be a whole number"):
        Config(model=ModelConfig(depth="4")).validate()  # type: ignore[arg-type]


def test_json_numbers_are_normalised_not_refused():
    cfg = Config.from_dict({"train": {"epochs": 3.0, "learning_rate": 1}}).validate()
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)


def test_every_field_has_a_type_check():
    """Fields added later are checked too: each field refuses a value of an unrelated type."""
    import dataclasses

    for section in ("model", "data", "train", "predict"):
        part = getattr(Config(), section)
        for f in dataclasses.fields(part):
            with pytest.raises(ConfigError, match=f"{section}.{f.name}"):
                Config.from_dict({section: {f.name: {"not": "a value"}}}).validate()


# ---------------------------------------------------------------- model metadata on load


@pytest.fixture
def version(trained, tmp_path):
    model_dir = tmp_path / "tiny"
    shutil.copytree(trained.path.parent, model_dir)
    return model_dir / trained.path.name


def _edit(version, change):
    path = version / "metadata.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


BAD_METADATA = {
    "format_version -3": (lambda m: m.update(format_version=-3), "format_version -3"),
    "format_version text": (lambda m: m.update(format_version="1"), "no valid format_version"),
    "threshold 9": (lambda m: m["config"]["predict"].update(threshold=9), "predict.threshold must be between"),
    "epochs text": (lambda m: m["config"]["train"].update(epochs="2"), "train.epochs must be a whole number"),
    "version text": (lambda m: m.update(version="one"), "'version' must be a whole number"),
    "version 0": (lambda m: m.update(version=0), "'version' must be 1 or more"),
    "training_data a string": (lambda m: m.update(training_data="abc"), "'training_data' must be a list"),
    "metrics a list": (lambda m: m.update(metrics=[1]), "'metrics' must be an object"),
    "class_names of numbers": (lambda m: m.update(class_names=[0, 1]), "'class_names' must be a list of strings"),
    "parent a number": (lambda m: m.update(parent=3), "'parent' must be a string or null"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_bad_metadata_is_refused_on_load(case, version):
    from napari_unet.core.bundle import load_bundle

    change, message = BAD_METADATA[case]
    _edit(version, change)
    with pytest.raises(BundleError) as info:
        load_bundle(version)
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["metadata.json", "history.json"])
def test_deeply_nested_json_gives_a_bundle_error_not_recursion_error(name, version):
    from napari_unet.core.bundle import load_bundle

    (version / name).write_text("[" * 200000 + "]" * 200000)
    with pytest.raises(BundleError, match="nested too deeply"):
        load_bundle(version)


# ---------------------------------------------------------------- zip import


def _zip_of(version, tmp_path, mutate):
    from napari_unet.core.bundle import export_zip

    good = export_zip(version, tmp_path / "good.zip")
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        infos = src.infolist()
        for info in infos:
            dst.writestr(info, src.read(info.filename))
        mutate(dst, infos[0].filename.split("/")[0])
    return bad


def test_a_zip_with_a_file_folder_collision_is_refused(version, tmp_path):
    from napari_unet.core.bundle import load_bundle

    bad = _zip_of(version, tmp_path, lambda zf, top: zf.writestr(f"{top}/metadata.json/x", b"x"))
    with pytest.raises(BundleError, match="both as a file and as a folder"):
        load_bundle(bad)


def test_a_zip_with_a_duplicate_entry_is_refused(version, tmp_path):
    import warnings

    from napari_unet.core.bundle import load_bundle

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name while writing it
        bad = _zip_of(version, tmp_path, lambda zf, top: zf.writestr(f"{top}/metadata.json", b"{}"))
    with pytest.raises(BundleError, match="twice"):
        load_bundle(bad)


def _patch_zip_header(path, name: bytes, field: str):
    """Set the encryption flag or an unknown compression method on one entry (both headers)."""
    data = bytearray(path.read_bytes())
    for sig, flag_off, method_off in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (pos := data.find(sig, start)) != -1:
            name_off = 30 if sig == b"PK\x03\x04" else 46
            length = int.from_bytes(data[pos + (26 if sig == b"PK\x03\x04" else 28) :][:2], "little")
            if bytes(data[pos + name_off : pos + name_off + length]) == name:
                if field == "encrypted":
                    data[pos + flag_off] |= 0x1
                else:
                    data[pos + method_off : pos + method_off + 2] = (99).to_bytes(2, "little")
            start = pos + 4
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("field, message", [("encrypted", "encrypted entry"), ("method", "compression method 99")])
def test_encrypted_or_oddly_compressed_zip_entries_are_refused(field, message, version, tmp_path):
    from napari_unet.core.bundle import export_zip, load_bundle

    archive = export_zip(version, tmp_path / "m.zip")
    with zipfile.ZipFile(archive) as zf:
        name = next(i.filename for i in zf.infolist() if i.filename.endswith("metadata.json"))
    _patch_zip_header(archive, name.encode(), field)
    with pytest.raises(BundleError, match=message):
        load_bundle(archive)


def test_a_failed_zip_export_leaves_no_partial_file(version, tmp_path, monkeypatch):
    from napari_unet.core.bundle import export_zip

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "write", full)
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="No space left"):
        export_zip(version, tmp_path / "out" / "m.zip")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_zip_export_never_replaces_an_existing_file(version, tmp_path):
    from napari_unet.core.bundle import export_zip, load_bundle

    target = tmp_path / "m.zip"
    target.write_bytes(b"the user's own file")
    with pytest.raises(OutputError, match="already exists"):
        export_zip(version, target)
    assert target.read_bytes() == b"the user's own file"
    export_zip(version, target, overwrite=True)
    assert load_bundle(target).metadata["name"]
