"""Fuzz: CLI arguments, config dicts and model metadata never give a traceback, and no file outside
the output folder changes (issue 11, "Done when"). No training runs: every train/finetune/predict
command carries --dry-run or fails validation, and evaluate gets no real model."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import blob_pair, file_hashes

from napari_unet.core import cli
from napari_unet.core.config import Config
from napari_unet.core.errors import BundleError, ConfigError

#: NAPARI_UNET_FUZZ_EXAMPLES=500 for a longer search; the default keeps the suite fast.
FAST = settings(max_examples=int(os.environ.get("NAPARI_UNET_FUZZ_EXAMPLES", "40")), deadline=None,
                suppress_health_check=list(HealthCheck), derandomize="NAPARI_UNET_FUZZ_EXAMPLES" not in os.environ)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    for sub in ("images", "labels", "other"):
        (root / sub).mkdir()
    image, labels = blob_pair(64, 64, seed=90)
    tifffile.imwrite(root / "images" / "a.tif", image)
    tifffile.imwrite(root / "labels" / "a.tif", labels)
    tifffile.imwrite(root / "other" / "a.tif", image)
    (root / "config.json").write_text('{"train": {"epochs": 1}}')
    (root / "garbage.json").write_text("{nope")
    (root / "out").mkdir()
    return root


NUMBERS = st.sampled_from(["0", "1", "-1", "2", "64", "nan", "inf", "-inf", "1e300", "0.5", "5", "x", "", "1.5"])
PATH_KEYS = st.sampled_from(["images", "labels", "other", "images/a.tif", "labels/a.tif", "missing", "config.json",
                             "garbage.json", "out", "out/sub", "images/a.tif/x", ""])  # fmt: skip
OPTIONS = {
    "--images": PATH_KEYS, "--labels": PATH_KEYS, "--out": PATH_KEYS, "--model": PATH_KEYS, "--models": PATH_KEYS,
    "--config": PATH_KEYS, "--name": st.sampled_from(["m", "a/b", ".x", "", " m", "ok-1", "con"]),
    "--patch": NUMBERS, "--lr": NUMBERS, "--epochs": NUMBERS, "--steps": NUMBERS, "--batch": NUMBERS,
    "--depth": NUMBERS, "--filters": NUMBERS, "--classes": NUMBERS, "--threshold": NUMBERS, "--min-size": NUMBERS,
    "--task": st.sampled_from(["binary", "classes", "instances", "other"]),
    "--loss": st.sampled_from(["auto", "dice", "cce", "bogus"]),
    "--axes": st.sampled_from(["YX", "YXC", "CYX", "ZYX", "TYX", "XY", "Q", "yx", "YYX"]),
    "--overwrite": st.none(), "--probabilities": st.none(), "--json": st.none(), "--bogus": st.none(),
}  # fmt: skip


@st.composite
def argv(draw):
    command = draw(st.sampled_from(["train", "finetune", "predict", "evaluate", "nonsense", "--help"]))
    args = [command]
    for option in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=8)):
        args.append(option)
        value = draw(OPTIONS[option])
        if value is not None:
            args.append(value)
    if command in ("train", "finetune", "predict", "evaluate"):
        args.append("--dry-run")  # never train or predict for real
    return args


def _resolve(args, root):
    paths = {"images", "labels", "other", "missing", "config.json", "garbage.json", "out", "out/sub"}
    out = []
    for a in args:
        out.append(str(root / a) if (a in paths or "/" in a) and a else a)
    return out


@FAST
@given(args=argv())
def test_cli_arguments_never_give_a_traceback_or_touch_user_files(world, args, capsys):
    before = {k: v for k, v in file_hashes(world).items() if not k.startswith("out/")}
    code = cli.main(_resolve(args, world))
    captured = capsys.readouterr()
    assert code in (0, 2), (args, captured.err)
    assert "Traceback" not in captured.err and "internal error" not in captured.err, (args, captured.err)
    if code == 2:
        assert captured.err.strip().splitlines()[-1].startswith("napari-unet: error: "), captured.err
    after = {k: v for k, v in file_hashes(world).items() if not k.startswith("out/")}
    assert after == before, args


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)  # fmt: skip
FIELDS = {s: [f.name for f in __import__("dataclasses").fields(getattr(Config(), s))] for s in ("model", "data", "train", "predict")}


@st.composite
def config_dicts(draw):
    raw = {}
    for section in draw(st.lists(st.sampled_from([*FIELDS, "bogus"]), max_size=3, unique=True)):
        names = FIELDS.get(section, ["x"])
        raw[section] = draw(st.dictionaries(st.sampled_from(names), JSON, max_size=4))
    return draw(st.one_of(st.just(raw), JSON)) if draw(st.booleans()) else raw


@FAST
@given(raw=config_dicts())
def test_config_dicts_give_config_error_or_a_valid_config(raw):
    try:
        cfg = Config.from_dict(raw).validate()
    except ConfigError:
        return
    assert Config.from_dict(cfg.to_dict()).validate() == cfg  # what is accepted round-trips


@pytest.fixture(scope="module")
def metadata_version(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-meta") / "tiny"
    shutil.copytree(trained.path.parent, folder)
    return folder / trained.path.name


@FAST
@given(key=st.sampled_from(["format_version", "version", "name", "parent", "in_channels", "n_outputs", "task",
                            "class_names", "training_data", "metrics", "config"]),  # fmt: skip
       value=JSON)
def test_model_metadata_gives_bundle_error_or_loads(metadata_version, key, value):
    from napari_unet.core.bundle import _config_from_metadata, _read_metadata

    original = (metadata_version / "metadata.json").read_text()
    meta = json.loads(original)
    meta[key] = value
    try:
        (metadata_version / "metadata.json").write_text(json.dumps(meta))
        try:
            _config_from_metadata(_read_metadata(metadata_version), metadata_version)
        except BundleError:
            pass
    finally:
        (metadata_version / "metadata.json").write_text(original)
