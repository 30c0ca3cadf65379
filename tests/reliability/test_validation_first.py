"""Every bad input gets a clear message before any work starts (issue 11, classes 2-4 in the CLI).

Options, the model name, the output locations and the pairing are checked before any image is read
or any training starts; one handler prints `napari-unet: error: ...` (exit 2), or one line naming a
log file for anything unexpected (exit 1). The terminal never shows a traceback.
"""

from __future__ import annotations

import json

import pytest
import tifffile
from reliability_helpers import blob_pair, file_hashes

from napari_unet.core import cli


@pytest.fixture
def folders(tmp_path):
    """d1, d2 with an `a.tif` each (different pictures) and their label folders l1, l2."""
    for i, (d, l) in enumerate((("d1", "l1"), ("d2", "l2"))):
        (tmp_path / d).mkdir()
        (tmp_path / l).mkdir()
        image, labels = blob_pair(64, 64, seed=60 + i)
        tifffile.imwrite(tmp_path / d / "a.tif", image)
        tifffile.imwrite(tmp_path / l / "a.tif", labels)
    return tmp_path


@pytest.fixture
def no_reading(monkeypatch):
    """Fail the test if any image is read (the refusal must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("an image was read before the options were checked")

    monkeypatch.setattr(cli, "read_image", refuse)
    monkeypatch.setattr(cli, "read_labels", refuse)


def _train(folders, *extra):
    return cli.main(["train", "--images", str(folders / "d1"), "--labels", str(folders / "l1"), *map(str, extra)])


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


BAD_TRAIN_OPTIONS = {
    "bad name": (["--name", "a/b"], "cannot be used as a folder name"),
    "name with a leading dot": (["--name", ".hidden"], "cannot be used as a folder name"),
    "patch 0": (["--name", "m", "--patch", "0"], "argument --patch: expected a whole number above 0"),
    "negative patch": (["--name", "m", "--patch", "-64"], "argument --patch"),
    "patch not a multiple": (["--name", "m", "--patch", "50", "--depth", "2"], "must be a multiple of 4"),
    "lr nan": (["--name", "m", "--lr", "nan"], "argument --lr: expected a positive finite number"),
    "lr inf": (["--name", "m", "--lr", "inf"], "argument --lr"),
    "lr negative": (["--name", "m", "--lr", "-1"], "argument --lr"),
    "epochs text": (["--name", "m", "--epochs", "two"], "argument --epochs"),
    "unknown option": (["--name", "m", "--bogus"], "unrecognized arguments: --bogus"),
    "missing name": ([], "the following arguments are required: --name"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_TRAIN_OPTIONS))
def test_bad_train_options_are_refused_before_any_image_is_read(case, folders, no_reading, capsys, tmp_path):
    args, message = BAD_TRAIN_OPTIONS[case]
    code = _train(folders, "--models", tmp_path / "models", *args)
    err = _err(capsys)
    assert code == 2 and err.startswith("napari-unet: error: ") and message in err, err
    assert not (tmp_path / "models").exists()


def test_an_unwritable_models_folder_is_refused_before_training(folders, no_reading, capsys, tmp_path):
    blocker = tmp_path / "models"
    blocker.write_text("a file where the models folder should be")
    assert _train(folders, "--name", "m", "--models", blocker) == 2
    assert "is a file" in _err(capsys) and blocker.read_text().startswith("a file")


CONFIGS = {
    "missing": (None, "does not exist"),
    "garbled": ('{"train": ', "is not valid JSON (line"),
    "a list": ("[1, 2]", "must hold a JSON object"),
    "epochs as text": ('{"train": {"epochs": "2"}}', "train.epochs must be a whole number"),
    "unknown key": ('{"train": {"epoch": 2}}', "Unknown option(s) in train: epoch"),
    "section not an object": ('{"model": 3}', "must be a JSON object"),
    "threshold 9": ('{"predict": {"threshold": 9}}', "predict.threshold must be between 0.0 and 1.0"),
    "NaN learning rate": ('{"train": {"learning_rate": NaN}}', "must be a finite number"),
    "deeply nested": ("[" * 100000 + "]" * 100000, "nested too deeply"),
    "not UTF-8": (b"\xff\xfe{", "not a text"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_config_files_get_a_message_not_a_traceback(case, folders, no_reading, capsys, tmp_path):
    text, message = CONFIGS[case]
    path = tmp_path / "config.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    assert _train(folders, "--name", "m", "--models", tmp_path / "models", "--config", path) == 2
    err = _err(capsys)
    assert message in err, err


def test_labels_equal_to_images_are_refused(folders, no_reading, capsys, tmp_path):
    code = cli.main(["train", "--images", str(folders / "d1"), "--labels", str(folders / "d1"), "--name", "m",
                     "--models", str(tmp_path / "m")])  # fmt: skip
    assert code == 2 and "given both as an image and as its labels" in _err(capsys)


def test_pairing_is_by_relative_path_folder_by_folder(folders, capsys, tmp_path):
    code = cli.main(["train", "--images", str(folders / "d1"), str(folders / "d2"), "--labels", str(folders / "l1"),
                     str(folders / "l2"), "--name", "m", "--models", str(tmp_path / "m"), "--dry-run"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"d1/a: {folders / 'd1' / 'a.tif'} <- labels {folders / 'l1' / 'a.tif'}" in out
    assert f"d2/a: {folders / 'd2' / 'a.tif'} <- labels {folders / 'l2' / 'a.tif'}" in out
    assert not (tmp_path / "m").exists()


def test_ambiguous_pairings_are_refused_with_the_conflicts(folders, no_reading, capsys, tmp_path):
    code = cli.main(["train", "--images", str(folders / "d1"), str(folders / "d2"), "--labels", str(folders / "l1"),
                     "--name", "m", "--models", str(tmp_path / "m")])  # fmt: skip
    err = _err(capsys)
    assert code == 2 and "Cannot tell which label file belongs to which image" in err
    assert str(folders / "d1" / "a.tif") in err and str(folders / "d2" / "a.tif") in err
    (folders / "l1" / "a.png").write_bytes(b"")  # two label files for one image
    code = cli.main(["train", "--images", str(folders / "d1"), "--labels", str(folders / "l1"), "--name", "m",
                     "--models", str(tmp_path / "m")])  # fmt: skip
    assert code == 2 and "all match 'a'" in _err(capsys)


def test_evaluate_scores_each_of_two_same_named_images(trained, folders, capsys):
    code = cli.main(["evaluate", "--model", str(trained.path), "--images", str(folders / "d1"), str(folders / "d2"),
                     "--labels", str(folders / "l1"), str(folders / "l2"), "--json"])  # fmt: skip
    assert code == 0
    scores = json.loads(capsys.readouterr().out)
    assert sorted(scores["images"]) == ["d1/a", "d2/a"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threshold", "5"], "argument --threshold: expected a number between 0 and 1"),
        (["--threshold", "nan"], "argument --threshold"),
        (["--min-size", "-1"], "argument --min-size"),
        (["--axes", "XYZ"], "argument --axes"),
    ],
)
def test_bad_predict_options_are_refused_first(args, message, folders, no_reading, capsys, tmp_path):
    code = cli.main(["predict", "--model", "nowhere", "--images", str(folders / "d1"), "--out", str(tmp_path / "o"), *args])
    err = _err(capsys)
    assert code == 2 and message in err, err


def test_an_unexpected_error_prints_one_line_naming_a_log_file(folders, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("NAPARI_UNET_LOG_DIR", str(tmp_path / "logs"))

    def boom(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_train", boom)
    monkeypatch.setattr(cli, "_parser", _patched_parser(boom))
    before = file_hashes(folders)
    code = cli.main(["train", "--images", str(folders / "d1"), "--labels", str(folders / "l1"), "--name", "m"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    logs = list((tmp_path / "logs").iterdir())
    assert len(logs) == 1 and str(logs[0]) in err
    assert "ZeroDivisionError: a bug" in logs[0].read_text() and "Traceback" in logs[0].read_text()
    assert {k: v for k, v in file_hashes(folders).items() if not k.startswith("logs/")} == before


def _patched_parser(func):
    real = cli._parser

    def make():
        parser = real()
        for action in parser._subparsers._group_actions:
            action.choices["train"].set_defaults(func=func)
        return parser

    return make
