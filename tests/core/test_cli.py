"""The command line on real files: train, predict, finetune, evaluate."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile

from napari_unet.core.cli import main

TINY_ARGS = ["--depth", "2", "--filters", "8", "--patch", "64", "--batch", "4", "--epochs", "2", "--steps", "5"]


@pytest.fixture(scope="module")
def folders(shared_data, tmp_path_factory):
    """Three 256x256 nuclei pairs copied into images/ and labels/ folders of a temp dir."""
    root = tmp_path_factory.mktemp("cli")
    src = shared_data / "nuclei"
    names = sorted(p.name for p in (src / "images").glob("*.tif") if tifffile.imread(p).shape == (256, 256))[:3]
    for sub in ("images", "labels"):
        (root / sub).mkdir()
        for name in names:
            shutil.copy(src / sub / name, root / sub / name)
    return root


def test_train_predict_finetune_evaluate(folders, tmp_path, capsys):
    models = tmp_path / "models"
    data = ["--images", str(folders / "images"), "--labels", str(folders / "labels")]
    assert main(["train", *data, "--name", "cli", "--models", str(models), *TINY_ARGS]) == 0
    v1 = models / "cli" / "v001"
    assert (v1 / "model.keras").is_file() and (v1 / "metadata.json").is_file()
    assert "model saved" in capsys.readouterr().out

    out = tmp_path / "pred"
    assert main(["predict", "--model", str(models / "cli"), "--images", str(folders / "images"), "--out", str(out)]) == 0
    written = sorted(p.name for p in out.glob("*.tif"))
    assert written == sorted(p.name for p in (folders / "images").glob("*.tif"))
    assert tifffile.imread(out / written[0]).shape == (256, 256)

    assert main(["finetune", "--model", str(v1), *data, "--epochs", "1"]) == 0
    assert (models / "cli" / "v002" / "model.keras").is_file()
    assert "kept unchanged" in capsys.readouterr().out

    assert main(["evaluate", "--model", str(models / "cli"), *data, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert 0 <= scores["mean"]["dice"] <= 1 and len(scores["images"]) == 3


def test_missing_labels_give_a_clear_error(folders, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    first = sorted((folders / "labels").glob("*.tif"))[0]
    shutil.copy(first, labels / first.name)
    code = main(["train", "--images", str(folders / "images"), "--labels", str(labels), "--name", "x",
                 "--models", str(tmp_path / "m"), *TINY_ARGS])
    assert code == 2
    assert "No label file with the same name" in capsys.readouterr().err


def test_unreadable_model_gives_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    code = main(["predict", "--model", str(bad), "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "error" in capsys.readouterr().err


def test_entry_point_is_installed():
    exe = Path(sys.executable).parent / "napari-unet"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout and "finetune" in result.stdout
