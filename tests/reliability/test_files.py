"""Model files: crashes mid-save keep the previous version; damaged, foreign, incompatible or unsafe
files are refused with a clear message at the entry points users reach (command line, widgets).

The loader's own unit tests are in tests/core/test_bundle.py (atomic save with a failing
`model.save`, no pickle anywhere, Lambda never runs, each refusal of `load_bundle`); here the
same files go through the command line, the Predict widget and a process killed while saving.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from reliability_helpers import REPO, blob_pair, file_hashes

from napari_unet.core.bundle import FORMAT_VERSION, latest_version, list_versions, load_bundle, load_replay


@pytest.fixture
def model_copy(trained, tmp_path) -> Path:
    """A private copy of the trained model folder: `<tmp>/models/tiny/v001`."""
    dest = tmp_path / "models" / "tiny"
    shutil.copytree(trained.path.parent, dest)
    return dest / "v001"


@pytest.fixture
def image_dir(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", blob_pair(64, 80, seed=7)[0])
    return folder


# ---------------------------------------------------------------- crashes while saving


def test_process_killed_mid_save_leaves_the_previous_version_loadable(model_copy, tmp_path):
    """SIGKILL while v002 is being written: v001 is intact, v002 never appears, the next save works."""
    model_dir = model_copy.parent
    before = file_hashes(model_dir)
    code = (
        "import sys, time\n"
        "from napari_unet.core import bundle\n"
        "b = bundle.load_bundle(sys.argv[1])\n"
        "real = bundle._fsync_tree\n"
        "def hang(folder):\n"
        "    real(folder)\n"
        "    print('WRITTEN', flush=True)\n"
        "    time.sleep(120)\n"
        "bundle._fsync_tree = hang\n"
        "bundle.save_bundle(b, sys.argv[2], 'tiny')\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(model_copy), str(model_dir.parent)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "WRITTEN"  # every file of v002 is written, not yet published
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert [p.name for p in list_versions(model_dir)] == ["v001"]
    leftovers = [p for p in model_dir.iterdir() if p.name.startswith(".saving-")]
    assert len(leftovers) == 1 and (leftovers[0] / "model.keras").is_file()  # the unpublished attempt
    assert {k: v for k, v in file_hashes(model_dir).items() if not k.startswith(".saving-")} == before
    assert load_bundle(model_dir).version == 1
    assert latest_version(model_dir) == model_copy
    # The leftover does not confuse the next save either.
    from napari_unet.core.bundle import save_bundle

    assert save_bundle(load_bundle(model_copy), model_dir.parent, "tiny").name == "v002"


def test_disk_full_while_saving_a_training_result_keeps_earlier_versions(trained, tmp_path, monkeypatch):
    """The save the widgets and the CLI use (TrainResult.save, with replay data) fails half-way."""
    from napari_unet.core.errors import BundleError

    root = tmp_path / "models"
    first = trained.result.save(root, "m")
    before = file_hashes(first)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # The model file is written, then the metadata write fails (the replay patches are already shared).
    monkeypatch.setattr("napari_unet.core.bundle._write_json", full)
    with pytest.raises(BundleError, match="No space left on device.*Earlier versions are unchanged"):
        trained.result.save(root, "m")
    # No partial version, no temp folder; the lineage's replay store is intact.
    assert sorted(p.name for p in (root / "m").iterdir()) == ["replay", "v001"]
    assert file_hashes(first) == before and len(load_replay(first)[0]) == len(trained.result.replay[0])
    monkeypatch.undo()
    assert trained.result.save(root, "m").name == "v002"


# ---------------------------------------------------------------- damaged and foreign files


def _edit_metadata(version: Path, edit) -> None:
    path = version / "metadata.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _truncate(version: Path) -> None:
    data = (version / "model.keras").read_bytes()
    (version / "model.keras").write_bytes(data[: len(data) // 3])


def _flip_byte(version: Path) -> None:
    data = bytearray((version / "model.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (version / "model.keras").write_bytes(bytes(data))


def _newer_format(version: Path) -> None:
    _edit_metadata(version, lambda m: m.update(format_version=FORMAT_VERSION + 1))


def _other_task(version: Path) -> None:
    def edit(meta):
        meta["task"] = meta["config"]["data"]["task"] = "instances"

    _edit_metadata(version, edit)


def _other_channels(version: Path) -> None:
    def edit(meta):
        meta["in_channels"] = meta["config"]["data"]["in_channels"] = 3

    _edit_metadata(version, edit)


def _lambda_model(version: Path) -> None:
    import keras

    sentinel = version.parent.parent / "lambda_ran.txt"

    def make(flag: str):
        return lambda t: (open(flag, "a").write("ran"), t)[1]

    inp = keras.Input((None, None, 1))
    out = keras.layers.Conv2D(1, 1, activation="sigmoid")(keras.layers.Lambda(make(str(sentinel)))(inp))
    keras.Model(inp, out).save(str(version / "model.keras"))
    sentinel.unlink()  # building the model ran it once; loading must not run it again


def _foreign_layer(version: Path) -> None:
    model_file = version / "model.keras"
    with zipfile.ZipFile(model_file) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    config = json.loads(entries["config.json"])
    layer = config["config"]["layers"][1]
    layer["module"], layer["class_name"] = "evil.layers", "Backdoor"
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(model_file, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def _pickle_instead(version: Path) -> None:
    (version / "model.keras").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))


DAMAGE = {
    "truncated model file": (_truncate, r"corrupt or truncated"),
    "flipped byte in the weights": (_flip_byte, r"corrupt or truncated"),
    "missing metadata": (lambda v: (v / "metadata.json").unlink(), r"missing metadata.json"),
    "missing model file": (lambda v: (v / "model.keras").unlink(), r"has no model.keras; the model folder is incomplete"),
    "metadata not JSON": (lambda v: (v / "metadata.json").write_text("{oops"), r"metadata.json is not valid JSON"),
    "newer format version": (_newer_format, r"made by a newer napari-unet .*upgrade napari-unet"),
    "model of another task": (_other_task, r"has 1 output channel\(s\) but a instances task needs 3"),
    "model of another channel count": (_other_channels, r"takes 1 input channel\(s\) but its config says data.in_channels=3"),
    "Lambda layer": (_lambda_model, r"contains a Lambda layer \(arbitrary code\); refusing to load"),
    "layer class from another package": (_foreign_layer, r"uses 'Backdoor' from module 'evil.layers'.*refusing to load"),
    "pickle renamed .keras": (_pickle_instead, r"corrupt or truncated"),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_cli_refuses_damaged_or_unsafe_model_files(damage, model_copy, image_dir, tmp_path, capsys, monkeypatch):
    from napari_unet.core import cli

    spoil, message = DAMAGE[damage]
    spoil(model_copy)
    monkeypatch.setattr(pickle, "loads", _no_pickle)
    monkeypatch.setattr(pickle, "load", _no_pickle)
    out = tmp_path / "out"
    code = cli.main(["predict", "--model", str(model_copy.parent), "--images", str(image_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("napari-unet: error: ") and str(model_copy) in err
    assert __import__("re").search(message, err), err
    assert not out.exists(), "nothing is written after a refusal"
    assert not (model_copy.parent.parent / "lambda_ran.txt").exists(), "code from the file ran"


def _no_pickle(*args, **kwargs):
    raise AssertionError("a model file was unpickled")


def test_cli_loads_an_intact_model_without_unpickling(model_copy, image_dir, tmp_path, capsys, monkeypatch):
    """The control for the refusals above: the same copy, undamaged, predicts."""
    from napari_unet.core import cli

    monkeypatch.setattr(pickle, "loads", _no_pickle)
    monkeypatch.setattr(pickle, "load", _no_pickle)
    out = tmp_path / "out"
    assert cli.main(["predict", "--model", str(model_copy.parent), "--images", str(image_dir), "--out", str(out)]) == 0
    assert tifffile.imread(out / "a.tif").shape == (64, 80)


def test_cli_refuses_a_zip_that_is_not_a_model(tmp_path, image_dir, capsys):
    from napari_unet.core import cli

    fake = tmp_path / "model.zip"
    fake.write_bytes(b"PK\x03\x04" + os.urandom(200))
    code = cli.main(["predict", "--model", str(fake), "--images", str(image_dir), "--out", str(tmp_path / "o")])
    assert code == 2 and "is neither a model folder nor a model .zip" in capsys.readouterr().err


def test_cli_converts_an_rgb_image_for_a_gray_model_and_says_so(model_copy, tmp_path, capsys):
    """The model's in_channels decides (docs/reliability.md): RGB becomes gray by luminance, said on stderr."""
    from napari_unet.core import cli

    folder = tmp_path / "rgb"
    folder.mkdir()
    image = blob_pair(64, 64, seed=8)[0]
    tifffile.imwrite(folder / "rgb.tif", np.stack([image] * 3, axis=-1), photometric="rgb")
    out = tmp_path / "out"
    code = cli.main(["predict", "--model", str(model_copy), "--images", str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "rgb.tif: RGB converted to gray (luminance) for a 1-channel model" in err
    assert "read as YXC (from TIFF RGB tag)" in err
    assert tifffile.imread(out / "rgb.tif").shape == (64, 64)


def test_cli_refuses_an_image_whose_channels_cannot_be_converted(model_copy, tmp_path, capsys):
    from napari_unet.core import cli

    folder = tmp_path / "two"
    folder.mkdir()
    tifffile.imwrite(folder / "two.tif", np.zeros((64, 64, 2), np.uint8))
    out = tmp_path / "out"
    code = cli.main(["predict", "--model", str(model_copy), "--images", str(folder), "--out", str(out), "--axes", "YXC"])
    assert code == 2
    assert "two.tif: An image with 2 channel(s) cannot be converted to 1 channel(s)" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
