"""CLI conventions: --help shows every default, --time, Ctrl-C keeps the best epoch, quiet logs, `models`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.core import cli

EXE = str(Path(sys.executable).parent / "napari-unet")
REPO = Path(__file__).resolve().parents[2]
STARTER = REPO / "napari_unet" / "starter" / "nuclei" / "v001"
#: A native TensorFlow/absl log line, or absl's preamble.
NATIVE_LOG = re.compile(r"^([IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\]|WARNING: All log messages before absl)", re.M)
TINY = ["--task", "binary", "--depth", "1", "--filters", "4", "--patch", "32", "--batch", "2", "--steps", "3"]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    """Three 64x64 images of bright disks with their labels, in images/ and labels/."""
    root = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for sub in ("images", "labels"):
        (root / sub).mkdir()
    for i in range(3):
        labels = np.zeros((64, 64), np.uint16)
        for k in range(1, 5):
            cy, cx = rng.integers(8, 56, 2)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = k
        image = (labels > 0) * 150 + rng.integers(0, 60, (64, 64))
        tifffile.imwrite(root / "images" / f"b{i}.tif", image.astype(np.uint8))
        tifffile.imwrite(root / "labels" / f"b{i}.tif", labels)
    (root / "endless.json").write_text(json.dumps({"train": {"early_stopping_patience": 0, "epochs": 100000}}))
    return root


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL")}
    return {**env, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


# ---------------------------------------------------------------- --help


def test_every_option_of_every_subcommand_has_help_and_a_default():
    parser = cli._parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"train", "finetune", "predict", "evaluate", "models"} <= set(commands)
    formatter = cli._HelpFormatter("napari-unet")
    missing = []
    for name, sub in commands.items():
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            text = formatter._get_help_string(action)
            if not (action.help or "").strip() or not re.search(r"\(default|default:|\(required\)", text):
                missing.append(f"{name} {action.option_strings[0]}: {text!r}")
    assert not missing, "options without help or default:\n" + "\n".join(missing)


def test_help_output_shows_defaults():
    out = subprocess.run([EXE, "train", "--help"], capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    assert "--time TIME" in text and "(default: the --config file's train.epochs, else 200)" in text
    assert "--verbose" in text and "(default: off)" in text and "(required)" in text


# ---------------------------------------------------------------- --time


def test_time_budget_ends_training_and_is_recorded(blobs, tmp_path, capsys):
    data = ["--images", str(blobs / "images"), "--labels", str(blobs / "labels")]
    started = time.monotonic()
    code = cli.main(["train", *data, "--name", "t", "--models", str(tmp_path), "--config", str(blobs / "endless.json"),
                     *TINY, "--time", "4s"])  # fmt: skip
    elapsed = time.monotonic() - started
    assert code == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "t" / "v001" / "metadata.json").read_text())
    assert meta["config"]["train"]["time_limit_s"] == 4.0
    assert "(time limit)" in capsys.readouterr().out
    assert elapsed < 60  # 100000 epochs without the budget


@pytest.mark.parametrize("text, seconds", [("300", 300.0), ("90s", 90.0), ("5m", 300.0), ("1.5h", 5400.0)])
def test_durations(text, seconds):
    assert cli._duration(text) == seconds


def test_bad_duration_is_a_usage_error(capsys):
    assert cli.main(["train", "--images", "x", "--labels", "y", "--name", "n", "--time", "soon"]) == 2
    assert "not a duration" in capsys.readouterr().err


# ---------------------------------------------------------------- Ctrl-C


def _train_until_checkpoint(blobs: Path, models: Path, command: list[str] | None = None) -> subprocess.Popen:
    data = ["--images", str(blobs / "images"), "--labels", str(blobs / "labels")]
    cmd = [EXE, *(command or ["train", "--name", "c", "--models", str(models), "--config", str(blobs / "endless.json"),
                              *TINY]), *data]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 240
    while not list((models / "c").glob(f".checkpoint-cli-{proc.pid}/.complete")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no checkpoint appeared (rc {proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.2)
    return proc


def test_ctrl_c_publishes_the_best_epoch_and_says_so(blobs, tmp_path):
    proc = _train_until_checkpoint(blobs, tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    match = re.search(r"Interrupted: saved the best epoch \(epoch (\d+)(, val [a-z_]+ [\d.]+)+\) as (\S+)", err)
    assert match, err[-3000:]
    version = Path(match.group(3))
    assert version == tmp_path / "c" / "v001" and (version / "model.keras").is_file()
    meta = json.loads((version / "metadata.json").read_text())
    assert len(meta["replay"]["patches"]) > 0  # fine-tuning can start from it
    assert not list((tmp_path / "c").glob(".checkpoint-*"))
    assert "Traceback" not in err and "model saved" not in out

    # Fine-tuning: the same, as the next version.
    proc = _train_until_checkpoint(blobs, tmp_path, ["finetune", "--model", str(version), "--epochs", "100000"])
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert f") as {tmp_path / 'c' / 'v002'}" in err and "Interrupted: saved the best epoch (epoch " in err, err[-3000:]
    assert json.loads((tmp_path / "c" / "v002" / "metadata.json").read_text())["parent"] == str(version)


def test_second_ctrl_c_quits_at_once_without_traceback(blobs, tmp_path):
    proc = _train_until_checkpoint(blobs, tmp_path)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    # Quitting still keeps what the checkpoint held (or says that no epoch had ended).
    assert "Interrupted: saved the best epoch" in err or "nothing was saved" in err
    if "saved the best epoch" in err:
        assert (tmp_path / "c" / "v001" / "model.keras").is_file()
    assert not list((tmp_path / "c").glob(".checkpoint-*"))


# ---------------------------------------------------------------- quiet logs


def test_tensorflow_noise_is_silenced_unless_verbose(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        tifffile.imwrite(images / f"i{i}.tif", np.random.default_rng(i).integers(0, 255, (64, 80), np.uint8))
    base = [EXE, "predict", "--model", str(STARTER), "--images", str(images)]
    quiet = subprocess.run([*base, "--out", str(tmp_path / "q")], capture_output=True, text=True, timeout=180, env=_env())
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert not NATIVE_LOG.search(quiet.stderr), quiet.stderr[-3000:]
    assert not re.search(r"cuda|oneDNN|absl|Warning", quiet.stderr, re.I), quiet.stderr[-3000:]
    loud = subprocess.run([*base, "--out", str(tmp_path / "v"), "--verbose"], capture_output=True, text=True,
                          timeout=180, env=_env())  # fmt: skip
    assert loud.returncode == 0 and NATIVE_LOG.search(loud.stderr), loud.stderr[-3000:]


# ---------------------------------------------------------------- napari-unet models


def _version(folder: Path, number: int, **meta) -> None:
    path = folder / f"v{number:03d}"
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(json.dumps({"format_version": 1, "version": number, **meta}))


def test_models_lists_versions_without_importing_tensorflow(tmp_path):
    nuclei = tmp_path / "nuclei"
    _version(nuclei, 1, task="instances", created="2026-12-01T10:00:00+00:00", parent=None,
             metrics={"dice": 0.81, "object_f1": 0.7, "loss": 0.3})  # fmt: skip
    _version(nuclei, 2, task="instances", created="2026-12-01T11:30:00+00:00", parent=str(nuclei / "v001"),
             metrics={"dice": 0.85, "before_dice": 0.8})  # fmt: skip
    (nuclei / "current.json").write_text(json.dumps({"current": "v001"}))
    _version(tmp_path / "lungs", 1, task="binary", created="2026-11-30T09:00:00+00:00", parent="/elsewhere/v004")
    (tmp_path / "lungs" / "v002").mkdir()  # a damaged version is listed, not fatal
    (tmp_path / "not-a-model").mkdir()
    probe = (
        "import sys; from napari_unet.core.cli import main; code = main(sys.argv[1:]); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'; sys.exit(code)"
    )
    out = subprocess.run([sys.executable, "-c", probe, "models", "--models", str(tmp_path)], capture_output=True,
                         text=True, timeout=60, env=_env())  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"Models in {tmp_path}:"
    assert "lungs  (binary; 2 versions)" in lines and "nuclei  (instances; 2 versions)" in lines
    assert " *v001  2026-12-01 10:00  parent -  object_f1 0.700, dice 0.810" in lines
    assert "  v002  2026-12-01 11:30  parent v001  dice 0.850, before_dice 0.800" in lines
    assert any("parent /elsewhere/v004  no validation scores" in line for line in lines)
    assert " *v002  unreadable metadata.json (FileNotFoundError)" in lines  # the newest is current
    assert "not-a-model" not in out.stdout
    as_json = subprocess.run([EXE, "models", "--models", str(tmp_path), "--json"], capture_output=True, text=True,
                             timeout=60, env=_env())  # fmt: skip
    listing = json.loads(as_json.stdout)
    assert [m["name"] for m in listing] == ["lungs", "nuclei"] and listing[1]["versions"][1]["parent"] == "v001"


def test_models_in_an_empty_folder_says_what_to_do(tmp_path, capsys):
    assert cli.main(["models", "--models", str(tmp_path / "none")]) == 0
    assert "No models in" in capsys.readouterr().out
