"""bioimage.io export: real packages of tiny trained models, checked by bioimageio.core and bioimageio.spec."""

from __future__ import annotations

import contextlib
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bioimageio_helpers import TASKS, TINY  # noqa: E402  (tests/core is on sys.path)
from napari_unet.core import bioimageio_export as bx  # noqa: E402
from napari_unet.core.config import Config  # noqa: E402
from napari_unet.core.errors import BundleError, InputError, OutputError  # noqa: E402

#: Warnings bioimageio.spec may give on our packages, and why they are accepted:
#: bioimage.io wants a maintainer with a GitHub user name, which the export cannot know (the dialog and
#: the CLI take names, and checking a GitHub name needs the network).
ALLOWED_WARNINGS = ("Missing `maintainers` or any author in `authors` with a specified `github_user` name.",)


def _labels_for(task: str, labels: np.ndarray) -> np.ndarray:
    """Nuclei instance labels as labels of `task` (classes: two kinds of nuclei by id parity)."""
    return np.where(labels > 0, 1 + labels % 2, 0) if task == "classes" else labels


@contextlib.contextmanager
def _cwd(path: Path):
    """bioimageio.core unzips SavedModel weights into a folder relative to the working directory."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def packages(nuclei_pairs, tmp_path_factory) -> dict[str, tuple[Path, Path, np.ndarray]]:
    """task -> (version folder, exported package, held-out sample image), one tiny model per task."""
    from napari_unet.core.data import TrainingPair
    from napari_unet.core.train import train

    root = tmp_path_factory.mktemp("models")
    out = tmp_path_factory.mktemp("packages")
    sample = nuclei_pairs[4][1]
    made = {}
    for task in TASKS:
        pairs = [TrainingPair(img, _labels_for(task, lab), name) for name, img, lab in nuclei_pairs[:3]]
        version = train(pairs, Config().replace(**TINY).replace(data={"task": task})).save(root, task)
        package = bx.export_package(
            version, out / f"{task}.zip", authors=[{"name": "Ada Tester"}], sample=sample
        )
        made[task] = (version, package, sample)
    return made


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bioimageio-work")


@pytest.mark.parametrize("task", TASKS)
def test_bioimageio_core_test_model_passes(packages, work_dir, task):
    from bioimageio.core import test_model

    with _cwd(work_dir):
        summary = test_model(packages[task][1])
    failed = [(d.name, [e.msg[:300] for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    tested = {d.name for d in summary.details}
    for fmt in bx.WEIGHT_FORMATS:
        assert f"Reproduce test outputs from test inputs ({fmt})" in tested


@pytest.mark.parametrize("task", TASKS)
def test_spec_validation_has_no_errors_and_only_documented_warnings(packages, task):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    descr = load_description(packages[task][1], perform_io_checks=True)
    summary = descr.validation_summary
    assert isinstance(descr, ModelDescr), summary.display()
    assert descr.format_version == ModelDescr.implemented_format_version == bx.spec_format_version()
    assert summary.status in ("valid-format", "passed")
    assert [e.msg for d in summary.details for e in d.errors] == []
    warnings = {w.msg for d in summary.details for w in d.warnings}
    assert warnings <= set(ALLOWED_WARNINGS), warnings - set(ALLOWED_WARNINGS)


@pytest.mark.parametrize("task", TASKS)
def test_every_weight_format_reproduces_keras(packages, work_dir, task):
    """Each format's raw network output on the normalised test input equals Keras' within the spec tolerance."""
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ReproducibilityTolerance

    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.normalize import normalize

    version, package, _ = packages[task]
    bundle = load_bundle(version)
    descr = load_description(package)
    raw = np.load(zipfile.Path(package, "test_input.npy").open("rb"))
    x = normalize(raw[0], bundle.config.data.norm_low, bundle.config.data.norm_high)[None]
    expected = bundle.model.predict(x, verbose=0)
    tol = ReproducibilityTolerance()
    dims = ("batch", "y", "x", "channel")
    formats = sorted(descr.weights.available_formats)
    assert formats == sorted(bx.WEIGHT_FORMATS)
    for fmt in formats:
        with _cwd(work_dir):
            pipeline = create_prediction_pipeline(descr, weight_format=fmt)
            sample = Sample(members={"raw": Tensor.from_numpy(x, dims=dims)}, stat={}, id="t")
            result = pipeline.predict_sample_without_blocking(
                sample, skip_preprocessing=True, skip_postprocessing=True, skip_input_padding=True, skip_output_cropping=True
            )
            pipeline.unload()
        got = result.members["prediction"].data.transpose(*dims).values
        np.testing.assert_allclose(got, expected, rtol=tol.relative_tolerance, atol=tol.absolute_tolerance, err_msg=fmt)


def test_preprocessing_reproduces_the_plugin_normalisation(packages):
    """bioimageio.core's scale_range of the test input against normalize.normalize: the only difference is
    the spec's eps (1e-6) in the denominator, a relative error of eps / (high - low)."""
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline
    from bioimageio.spec import load_description

    from napari_unet.core.normalize import normalize, percentiles

    version, package, _ = packages["binary"]
    cfg = json.loads((version / "metadata.json").read_text())["config"]["data"]
    descr = load_description(package)
    raw = np.load(zipfile.Path(package, "test_input.npy").open("rb"))
    pipeline = create_prediction_pipeline(descr, weight_format="onnx")
    sample = Sample(members={"raw": Tensor.from_numpy(raw, dims=("batch", "y", "x", "channel"))}, stat={}, id="t")
    pipeline.apply_preprocessing(sample)
    theirs = sample.members["raw"].data.transpose("batch", "y", "x", "channel").values[0]
    ours = normalize(raw[0], cfg["norm_low"], cfg["norm_high"])
    lo, hi = percentiles(raw[0], cfg["norm_low"], cfg["norm_high"])
    bound = np.abs(ours).max() * 1e-6 / (hi - lo) + 1e-6
    assert np.abs(theirs - ours).max() <= bound


def test_package_contents(packages):
    from PIL import Image

    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.normalize import normalize
    from napari_unet.core.targets import probabilities_to_labels

    for task in TASKS:
        version, package, sample = packages[task]
        bundle = load_bundle(version)
        with zipfile.ZipFile(package) as zf:
            names = set(zf.namelist())
            readme = zf.read("README.md").decode()
            cover = Image.open(zf.open("cover.png"))
            test_in = np.load(zf.open("test_input.npy"))
            test_out = np.load(zf.open("test_output.npy"))
        assert {"rdf.yaml", "weights.h5", "weights.onnx", "weights_saved_model.zip", "README.md", "cover.png"} <= names
        # Test tensors from the held-out real image (centre crop), the output from the Keras model.
        assert test_in.shape == (1, 256, 256, 1) and np.array_equal(test_in[0, ..., 0], sample.astype(np.float32))
        probs = bundle.model.predict(normalize(test_in[0], bundle.config.data.norm_low, bundle.config.data.norm_high)[None], verbose=0)
        if task == "binary":
            assert test_out.dtype == np.uint8 and np.array_equal(test_out, (probs > bundle.config.predict.threshold).astype(np.uint8))
            assert f"probability > {bundle.config.predict.threshold}" in readme
        else:
            assert test_out.dtype == np.float32 and test_out.shape == (1, 256, 256, bundle.config.n_outputs)
        if task == "instances":
            assert "watershed" in readme and "h-maxima" in readme
        if task == "classes":
            assert "argmax" in readme
        # The cover is the image beside it with the plugin's own labels overlaid: 2:1, and coloured where
        # (and only where) the labels have objects.
        assert cover.size == (512, 256)
        rgb = np.asarray(cover.convert("RGB")).astype(int)
        left, right = rgb[:, :256], rgb[:, 256:]
        labels = probabilities_to_labels(probs[0], bundle.config)
        assert labels.any()
        changed = np.any(np.abs(left - right) > 1, axis=-1)
        assert not changed[labels == 0].any()
        assert changed[labels > 0].mean() > 0.5
        # Validation section: the held-out scores from the metadata and the training images.
        assert "## Validation" in readme
        for key, value in bundle.metrics.items():
            if isinstance(value, float):
                assert f"| {key} | {value:.4f} |" in readme
        for entry in bundle.training_data:
            assert entry["name"] in readme


def test_authors_licence_and_citation_from_arguments_and_metadata(packages, tmp_path):
    import shutil

    from bioimageio.spec import load_description

    version, _, sample = packages["binary"]
    copy = tmp_path / "m" / "v001"
    shutil.copytree(version, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta.update(
        authors=[{"name": "Meta Author", "affiliation": "Lab"}],
        license="MIT",
        cite=[{"text": "Our paper", "doi": "10.1234/abcd"}],
    )
    (copy / "metadata.json").write_text(json.dumps(meta))
    descr = load_description(bx.export_package(copy, tmp_path / "meta.zip", sample=sample, formats=("keras_hdf5",)))
    assert [a.name for a in descr.authors] == ["Meta Author"] and descr.authors[0].affiliation == "Lab"
    assert str(descr.license) == "MIT" and str(descr.cite[0].doi) == "10.1234/abcd"
    assert sorted(descr.weights.available_formats) == ["keras_hdf5"]
    # Arguments (the export dialog, the CLI) win over the metadata.
    descr = load_description(
        bx.export_package(
            copy, tmp_path / "args.zip", sample=sample, formats=("keras_hdf5",), license="BSD-3-Clause",
            authors=[bx.parse_author("Dialog Author <d@example.org>")], cite=[bx.parse_cite("Other work https://example.org/x")],
        )
    )
    assert descr.authors[0].name == "Dialog Author" and descr.authors[0].email == "d@example.org"
    assert str(descr.license) == "BSD-3-Clause" and str(descr.cite[0].url) == "https://example.org/x"


def test_parsing_and_checks():
    assert bx.check_license("CC-BY-4.0") == "CC-BY-4.0"
    with pytest.raises(InputError, match="Did you mean MIT"):
        bx.check_license("mit")
    with pytest.raises(InputError, match="SPDX"):
        bx.check_license("my own licence")
    assert bx.parse_cite("Smith et al. 2020, doi:10.1000/xyz123.") == {"text": "Smith et al. 2020", "doi": "10.1000/xyz123"}
    assert bx.parse_cite("https://doi.org/10.1000/xyz123")["doi"] == "10.1000/xyz123"
    with pytest.raises(InputError, match="DOI"):
        bx.parse_cite("just some words")
    assert bx.parse_author("Ada Lovelace") == {"name": "Ada Lovelace"}
    with pytest.raises(InputError):
        bx.parse_author("a/b")


def test_export_refusals_before_any_work(packages, tmp_path):
    version, package, _ = packages["binary"]
    by = {"authors": [{"name": "Ada"}]}
    with pytest.raises(BundleError, match="no model"):
        bx.check_export(tmp_path / "missing", tmp_path / "p.zip", **by)
    with pytest.raises(InputError, match=".zip"):
        bx.check_export(version, tmp_path / "p.tar", **by)
    with pytest.raises(OutputError, match="already exists"):
        bx.check_export(version, package, **by)
    assert bx.check_export(version, package, overwrite=True, **by)[1] == package  # our own package: replaceable
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("rdf.yaml", "name: someone else's model\n")
    with pytest.raises(OutputError, match="never replaced"):
        bx.check_export(version, foreign, overwrite=True, **by)
    with pytest.raises(OutputError, match="inside the model folder"):
        bx.check_export(version, version.parent / "p.zip", **by)
    with pytest.raises(InputError, match="at least one author"):
        bx.check_export(version, tmp_path / "p.zip")
    with pytest.raises(InputError, match="keras_hdf5"):
        bx.check_export(version, tmp_path / "p.zip", formats=("onnx",), **by)
    imported = tmp_path / "imported" / "v001"
    imported.mkdir(parents=True)
    meta = json.loads((version / "metadata.json").read_text())
    meta["config"]["data"]["preprocessing"] = [{"id": "zero_mean_unit_variance", "kwargs": {}}]
    (imported / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="imported from a bioimage.io package"):
        bx.check_export(imported, tmp_path / "p.zip", **by)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        # root writes through permission bits; /proc refuses every new file, root's too
        unwritable = Path("/proc") if os.access(read_only, os.W_OK) else read_only
        with pytest.raises(OutputError, match="not writable|Cannot write"):
            bx.check_export(version, unwritable / "p.zip", **by)
    finally:
        read_only.chmod(0o755)


def test_overwrite_replaces_only_our_package_and_leaves_nothing_behind(packages, tmp_path):
    import shutil

    version, package, sample = packages["binary"]
    target = tmp_path / "p.zip"
    shutil.copy(package, target)
    before = target.read_bytes()
    bx.export_package(version, target, authors=[{"name": "B"}], sample=sample, formats=("keras_hdf5",), overwrite=True)
    assert target.read_bytes() != before and bx.written_by_us(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zip"]


def test_stop_between_steps_writes_nothing(packages, tmp_path):
    import threading

    version, _, sample = packages["binary"]
    stop, seen = threading.Event(), []

    def progress(done, total):
        seen.append((done, total))
        if done == 2:
            stop.set()

    with pytest.raises(bx.ExportStopped):
        bx.export_package(version, tmp_path / "p.zip", authors=[{"name": "B"}], sample=sample, progress=progress, stop=stop)
    assert seen == [(1, 6), (2, 6)] and list(tmp_path.iterdir()) == []


def test_cli_export_writes_a_valid_package(packages, tmp_path, capsys):
    import tifffile
    from bioimageio.spec import load_description

    from napari_unet.core.cli import main

    version, _, sample = packages["instances"]
    sample_file = tmp_path / "sample.tif"
    tifffile.imwrite(sample_file, sample)
    out = tmp_path / "shared" / "nuclei.zip"
    argv = ["export", "--bioimageio", "--model", str(version.parent), "--out", str(out), "--author", "Ada <ada@example.org>",
            "--license", "MIT", "--cite", "Our paper, doi:10.1000/xyz1", "--sample", str(sample_file)]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    descr = load_description(out)
    assert descr.authors[0].email == "ada@example.org" and str(descr.license) == "MIT"
    assert str(descr.cite[0].doi) == "10.1000/xyz1" and descr.config.model_dump()["napari_unet"]["task"] == "instances"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no model", "There is no model at"),
        ("exists", "already exists; choose another file or pass --overwrite"),
        ("unwritable", "Cannot write to the package folder|is not writable"),
        ("licence", "is not an SPDX licence identifier"),
        ("no author", "Give at least one author"),
        ("citation", "needs a DOI"),
    ],
)
def test_cli_export_errors_are_one_line_and_come_before_any_work(packages, tmp_path, capsys, monkeypatch, case, expected):
    from napari_unet.core import bioimageio_cli
    from napari_unet.core.cli import main

    def no_work(*args, **kwargs):
        raise AssertionError("the export started despite bad input")

    monkeypatch.setattr(bioimageio_cli, "export_package", no_work)
    version, package, _ = packages["binary"]
    model, out, extra = str(version), str(tmp_path / "p.zip"), ["--author", "Ada"]
    if case == "no model":
        model = str(tmp_path / "nothing")
    elif case == "exists":
        out = str(package)
    elif case == "unwritable":
        out = "/proc/napari-unet-test/p.zip"
    elif case == "licence":
        extra += ["--license", "GPL"]
    elif case == "no author":
        extra = []
    elif case == "citation":
        extra += ["--cite", "a paper without a link"]
    assert main(["export", "--bioimageio", "--model", model, "--out", out, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-unet: error: ") and "\n" not in err and re.search(expected, err), err
    assert not (tmp_path / "p.zip").exists()


@pytest.mark.parametrize("depth, side", [(2, 20), (4, 300), (5, 256)])
def test_test_image_has_sides_the_network_takes(nuclei_pairs, depth, side):
    """A centre crop of at most 256 pixels (a multiple of the size step), mirrored up to the network's minimum."""
    cfg = Config().replace(model={"depth": depth}, data={"patch_size": 64})
    image = nuclei_pairs[0][1][:side, :side] if side <= 256 else np.tile(nuclei_pairs[0][1], (2, 2))[:side, :side]
    out = bx._test_image(image, cfg)
    smallest = bx._min_size(cfg)
    assert out.shape[0] == out.shape[1] >= smallest and out.shape[0] % cfg.size_multiple == 0
    assert out.shape[0] == (max(smallest, 256 // cfg.size_multiple * cfg.size_multiple) if side >= 256 else smallest)
    if side >= out.shape[0]:  # a crop of the image itself
        y0 = (side - out.shape[0]) // 2
        assert np.array_equal(out[..., 0], image[y0 : y0 + out.shape[0], y0 : y0 + out.shape[0]].astype(np.float32))
    else:  # the image, mirrored at its bottom and right edges
        assert np.array_equal(out[:side, :side, 0], image.astype(np.float32))
