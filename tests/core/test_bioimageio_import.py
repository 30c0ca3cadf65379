"""bioimage.io import: packages written with bioimageio.spec's own API, our own exports, fine-tuning, refusals."""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bioimageio_helpers import TASKS, TINY  # noqa: E402  (tests/core is on sys.path)
from napari_unet.core import bioimageio_import as bi  # noqa: E402
from napari_unet.core.config import Config  # noqa: E402
from napari_unet.core.errors import BundleError  # noqa: E402



# ---------------------------------------------------------------- packages another tool writes


def _foreign_network(in_channels: int, outputs: int, activation: str | None, seed: int = 0):
    """A small Keras network that is not napari-unet's U-Net (a foreign architecture)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, in_channels))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inp)
    y = keras.layers.MaxPooling2D()(x)
    y = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(y)
    y = keras.layers.UpSampling2D()(y)
    x = keras.layers.Concatenate()([x, y])
    out = keras.layers.Conv2D(outputs, 1, activation=activation)(x)
    return keras.Model(inp, out)


def _write_package(
    folder: Path,
    weights: dict,
    *,
    in_channels: int = 1,
    outputs: int = 1,
    axes: str = "byxc",
    out_axes: str | None = None,
    preprocessing: list | None = None,
    postprocessing: list | None = None,
    test_input: np.ndarray,
    test_output: np.ndarray,
) -> Path:
    """A .zip package written with bioimageio.spec's own API (as another tool would)."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.common import FileDescr
    from bioimageio.spec.model import v0_5 as m

    size = m.ParameterizedSize(min=16, step=16)
    ref = {a: m.SizeReference(tensor_id=m.TensorId("raw"), axis_id=m.AxisId(a)) for a in "yx"}

    def axis(letter: str, out: bool, channels: int):
        if letter == "b":
            return m.BatchAxis()
        if letter == "c":
            return m.ChannelAxis(channel_names=[m.Identifier(f"ch{i}") for i in range(channels)])
        cls = m.SpaceOutputAxis if out else m.SpaceInputAxis
        return cls(id=m.AxisId(letter), size=ref[letter] if out else size)

    np.save(folder / "test_input.npy", test_input)
    np.save(folder / "test_output.npy", test_output)
    (folder / "README.md").write_text("# A model from another tool\n")
    descr = m.ModelDescr(
        name="other tool nuclei model",
        description="written with bioimageio.spec in a napari-unet test",
        authors=[m.Author(name="Another Tool")],
        cite=[m.CiteEntry(text="test", doi=m.Doi("10.1234/abcd"))],
        license=m.LicenseId("MIT"),
        documentation=FileDescr(source=folder / "README.md"),
        inputs=[
            m.InputTensorDescr(
                id=m.TensorId("raw"),
                axes=[axis(a, False, in_channels) for a in axes],
                test_tensor=FileDescr(source=folder / "test_input.npy"),
                preprocessing=preprocessing or [],
            )
        ],
        outputs=[
            m.OutputTensorDescr(
                id=m.TensorId("out"),
                axes=[axis(a, True, outputs) for a in (out_axes or axes)],
                test_tensor=FileDescr(source=folder / "test_output.npy"),
                postprocessing=postprocessing or [],
            )
        ],
        weights=m.WeightsDescr(**weights),
        version="1.2.0",
    )
    return save_bioimageio_package(descr, output_path=folder / "package.zip")


def _h5_weights(network, folder: Path) -> dict:
    import tensorflow as tf
    from bioimageio.spec.model import v0_5 as m

    network.save(folder / "weights.h5")
    return {"keras_hdf5": m.KerasHdf5WeightsDescr(source=folder / "weights.h5", tensorflow_version=m.Version(tf.__version__))}


def _scale_range(low: float = 1.0, high: float = 99.8):
    from bioimageio.spec.model import v0_5 as m

    return m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(axes=[m.AxisId("y"), m.AxisId("x")], min_percentile=low,
                                                       max_percentile=high))  # fmt: skip


@pytest.fixture(scope="module")
def image(nuclei_pairs) -> np.ndarray:
    """A real nuclei image, not a multiple of 16 pixels, so prediction pads and tiles."""
    return nuclei_pairs[4][1][:200, :184]


@pytest.fixture(scope="module")
def foreign_binary(tmp_path_factory, image) -> tuple[Path, object]:
    """A binary keras_hdf5 package (scale_range, binarize 0.4) written with bioimageio.spec, and its network."""
    from bioimageio.spec.model import v0_5 as m

    from napari_unet.core.normalize import normalize

    folder = tmp_path_factory.mktemp("foreign-binary")
    net = _foreign_network(1, 1, "sigmoid")
    raw = image[:64, :64, None].astype(np.float32)[None]
    expected = net.predict(normalize(raw[0], 1.0, 99.8)[None], verbose=0)
    package = _write_package(
        folder, _h5_weights(net, folder), preprocessing=[_scale_range()],
        postprocessing=[m.BinarizeDescr(kwargs=m.BinarizeKwargs(threshold=0.4))],
        test_input=raw, test_output=(expected > 0.4).astype(np.float32),
    )  # fmt: skip
    return package, net


def test_foreign_keras_package_predicts_like_keras(foreign_binary, image):
    """Imported and predicted in napari-unet's tiles: the network's own output on the same normalised input."""
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.normalize import normalize
    from napari_unet.core.predict import predict_image

    package, net = foreign_binary
    bundle = load_bundle(package)
    cfg = bundle.config
    assert cfg.model.architecture == "imported" and cfg.data.task == "binary"
    assert (cfg.data.norm_low, cfg.data.norm_high, cfg.data.preprocessing) == (1.0, 99.8, [])
    assert cfg.predict.threshold == pytest.approx(0.4)
    assert bundle.metadata["imported_from"]["bioimageio"]["weights"] == "keras_hdf5"
    # Small tiles, so the image takes several with context: the result still equals the whole image's.
    cfg = cfg.replace(predict={"tile_size": 96, "overlap": 32})
    pred = predict_image(bundle.model, image, cfg)
    x = normalize(image[..., None], 1.0, 99.8)
    padded = np.pad(x, ((0, 8), (0, 8), (0, 0)), mode="reflect")  # to multiples of 16, as predict does
    expected = net.predict(padded[None], verbose=0)[0, :200, :184]
    np.testing.assert_allclose(pred.probabilities, expected, atol=1e-5)
    assert np.array_equal(pred.labels, (expected[..., 0] > 0.4).astype(pred.labels.dtype))


def test_other_processing_matches_bioimageio_core(tmp_path, image):
    """zero_mean_unit_variance per channel, clip, scale_linear and softmax: napari-unet's numpy steps give
    bioimageio.core's own prediction pipeline's output (2 channels in, 3 classes out)."""
    from bioimageio.core import predict
    from bioimageio.spec import load_description
    from bioimageio.spec.model import v0_5 as m

    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.predict import predict_image

    net = _foreign_network(2, 3, None, seed=3)  # logits: the package applies softmax
    two = np.stack([image[:64, :64], image[:64, :64][::-1]], axis=-1).astype(np.float32)
    pre = [
        m.ZeroMeanUnitVarianceDescr(kwargs=m.ZeroMeanUnitVarianceKwargs(axes=[m.AxisId("y"), m.AxisId("x")])),
        m.ClipDescr(kwargs=m.ClipKwargs(min=-2.0, max=2.5)),
        m.ScaleLinearDescr(kwargs=m.ScaleLinearKwargs(gain=0.5, offset=0.1)),
    ]
    post = [m.SoftmaxDescr(kwargs=m.SoftmaxKwargs(axis=m.AxisId("channel")))]
    package = _write_package(
        tmp_path, _h5_weights(net, tmp_path), in_channels=2, outputs=3, preprocessing=pre, postprocessing=post,
        test_input=two[None], test_output=np.full((1, 64, 64, 3), 1 / 3, np.float32),
    )  # fmt: skip
    bundle = load_bundle(package)
    assert bundle.config.data.task == "classes" and bundle.config.data.in_channels == 2
    assert [s["id"] for s in bundle.config.data.preprocessing] == ["zero_mean_unit_variance", "clip", "scale_linear"]
    ours = predict_image(bundle.model, two, bundle.config).probabilities
    theirs = predict(model=load_description(package), inputs=two[None]).members["out"].data.values[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    np.testing.assert_allclose(ours.sum(axis=-1), 1.0, atol=1e-5)


def test_onnx_package_with_channels_first_axes(tmp_path, image):
    """ONNX weights (tf2onnx) whose tensors are batch, channel, y, x: transposed in and out, same output."""
    import tensorflow as tf
    import tf2onnx
    from bioimageio.spec.model import v0_5 as m

    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.normalize import normalize
    from napari_unet.core.predict import predict_image

    net = _foreign_network(1, 1, "sigmoid", seed=5)
    spec = (tf.TensorSpec((None, None, None, 1), tf.float32, name="raw"),)
    tf2onnx.convert.from_keras(
        net, input_signature=spec, opset=17, inputs_as_nchw=["raw"], output_path=str(tmp_path / "weights.onnx")
    )
    raw = image[:64, :64].astype(np.float32)[None, None]
    package = _write_package(
        tmp_path, {"onnx": m.OnnxWeightsDescr(source=tmp_path / "weights.onnx", opset_version=17)}, axes="bcyx",
        out_axes="byxc", preprocessing=[_scale_range()], test_input=raw, test_output=np.full((1, 64, 64, 1), 0.5, np.float32),
    )  # fmt: skip
    bundle = load_bundle(package)
    assert isinstance(bundle.model, bi.PackageModel)
    assert (bundle.model.in_axes, bundle.model.out_axes) == ("bcyx", "byxc")
    pred = predict_image(bundle.model, image, bundle.config)
    x = normalize(image[..., None], 1.0, 99.8)
    expected = net.predict(np.pad(x, ((0, 8), (0, 8), (0, 0)), mode="reflect")[None], verbose=0)[0, :200, :184]
    np.testing.assert_allclose(pred.probabilities, expected, atol=1e-4)
    from napari_unet.core.review import predict_for_review
    from napari_unet.core.train import finetune

    item = predict_for_review(bundle.model, image, bundle.config)  # tta: flips and intensity changes
    assert np.array_equal(item.labels, pred.labels) and np.isfinite(item.uncertainty)

    with pytest.raises(BundleError, match="cannot be fine-tuned: ONNX"):
        finetune(bundle, [])


def test_keras_v3_weights_and_a_0_4_description(foreign_binary, image, tmp_path):
    """keras_v3 (.keras) weights load too, and so does an old 0.4 description, upgraded by bioimageio.spec."""
    import keras
    import tensorflow as tf
    from bioimageio.spec.model import v0_5 as m

    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.predict import predict_image

    package, net = foreign_binary
    expected = predict_image(load_bundle(package), image).probabilities
    net.save(tmp_path / "weights.keras")
    raw = image[:64, :64, None].astype(np.float32)[None]
    v3 = {"keras_v3": m.KerasV3WeightsDescr(source=tmp_path / "weights.keras", keras_version=m.Version(keras.__version__),
                                            backend=("tensorflow", m.Version(tf.__version__)))}  # fmt: skip
    v3_package = _write_package(tmp_path, v3, preprocessing=[_scale_range()], test_input=raw,
                                test_output=np.full((1, 64, 64, 1), 0.5, np.float32))  # fmt: skip
    bundle = load_bundle(v3_package)
    assert bundle.metadata["imported_from"]["bioimageio"]["weights"] == "keras_v3"
    np.testing.assert_allclose(predict_image(bundle, image).probabilities, expected, atol=1e-6)

    old = tmp_path / "old"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(old)
    (old / "rdf.yaml").write_text(yaml.safe_dump({
        "format_version": "0.4.10", "type": "model", "name": "old format model", "description": "0.4",
        "authors": [{"name": "Old Tool"}], "cite": [{"text": "test", "doi": "10.1234/abcd"}], "license": "MIT",
        "documentation": "README.md", "timestamp": "2023-01-01T00:00:00", "tags": ["segmentation"],
        "test_inputs": ["test_input.npy"], "test_outputs": ["test_output.npy"],
        "inputs": [{"name": "raw", "axes": "byxc", "data_type": "float32", "data_range": [-1e9, 1e9],
                    "shape": {"min": [1, 16, 16, 1], "step": [0, 16, 16, 0]},
                    "preprocessing": [{"name": "scale_range", "kwargs": {
                        "mode": "per_sample", "axes": "xy", "min_percentile": 1.0, "max_percentile": 99.8}}]}],
        "outputs": [{"name": "prob", "axes": "byxc", "data_type": "float32", "data_range": [0, 1],
                     "shape": {"reference_tensor": "raw", "scale": [1, 1, 1, 1], "offset": [0, 0, 0, 0]},
                     "postprocessing": [{"name": "binarize", "kwargs": {"threshold": 0.4}}]}],
        "weights": {"keras_hdf5": {"source": "weights.h5", "tensorflow_version": "2.21"}},
    }))  # fmt: skip
    with warnings.catch_warnings():  # bioimageio.spec: "Conversion of channel size ... may be wrong"
        warnings.simplefilter("ignore", UserWarning)
        upgraded = load_bundle(old)
    assert upgraded.config.predict.threshold == pytest.approx(0.4)
    np.testing.assert_allclose(predict_image(upgraded, image).probabilities, expected, atol=1e-6)


# ---------------------------------------------------------------- our own packages: export, import, predict


@pytest.fixture(scope="module")
def exported(nuclei_pairs, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """task -> (version folder, exported package), one tiny model per task."""
    from napari_unet.core import bioimageio_export as bx
    from napari_unet.core.data import TrainingPair
    from napari_unet.core.train import train

    root, out = tmp_path_factory.mktemp("models"), tmp_path_factory.mktemp("packages")
    made = {}
    for task in TASKS:
        labels = (lambda lab: np.where(lab > 0, 1 + lab % 2, 0)) if task == "classes" else (lambda lab: lab)
        pairs = [TrainingPair(img, labels(lab), name) for name, img, lab in nuclei_pairs[:3]]
        version = train(pairs, Config().replace(**TINY).replace(data={"task": task})).save(root, task)
        made[task] = (version, bx.export_package(version, out / f"{task}.zip", authors=[{"name": "A"}],
                                                 sample=nuclei_pairs[4][1]))  # fmt: skip
    return made


@pytest.mark.parametrize("task", TASKS)
def test_round_trip_gives_identical_labels(exported, nuclei_pairs, task):
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.predict import predict_image

    version, package = exported[task]
    original, imported = load_bundle(version), load_bundle(package)
    assert imported.config.to_dict() == original.config.to_dict()  # task, classes, tuned post-processing
    assert imported.metadata["imported_from"]["bioimageio"]["napari_unet"]["model"] == task
    image = nuclei_pairs[5][1]
    expected = predict_image(original, image).labels
    got = predict_image(imported, image).labels
    assert expected.max() > 0
    assert np.array_equal(got, expected)


def test_round_trip_of_every_weight_format(exported, nuclei_pairs, tmp_path):
    """The package's ONNX and SavedModel weights alone give the same labels as its Keras weights."""
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.predict import predict_image

    version, package = exported["binary"]
    image = nuclei_pairs[5][1]
    expected = predict_image(load_bundle(version), image)
    for fmt in ("onnx", "tensorflow_saved_model_bundle"):
        only = _only_weights(package, fmt, tmp_path / fmt)
        bundle = load_bundle(only)
        assert bundle.metadata["imported_from"]["bioimageio"]["weights"] == fmt
        got = predict_image(bundle, image)
        np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-4)
        assert np.mean(got.labels != expected.labels) < 1e-4, fmt
        # Smaller than the package's smallest input: mirrored out to it, the result cropped back.
        assert bundle.model.info.min_side > 16
        assert predict_image(bundle, image[:16, :16]).labels.shape == (16, 16)


def _only_weights(package: Path, fmt: str, folder: Path) -> Path:
    """The package unpacked into a folder whose rdf.yaml keeps only `fmt` weights."""
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["weights"] = {fmt: {k: v for k, v in rdf["weights"][fmt].items() if k != "parent"}}
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    return folder


# ---------------------------------------------------------------- fine-tuning an imported package


def test_finetune_imported_keras_package_records_the_package(foreign_binary, nuclei_pairs, tmp_path):
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.data import TrainingPair
    from napari_unet.core.paths import child_location
    from napari_unet.core.train import finetune

    package, _ = foreign_binary
    parent = load_bundle(package)
    parent.config = parent.config.replace(
        data={"patch_size": 64, "val_fraction": 0.34}, train={"batch_size": 2, "steps_per_epoch": 3}
    )
    pairs = [TrainingPair(img, lab, name) for name, img, lab in nuclei_pairs[:3]]
    result = finetune(parent, pairs, epochs=1)
    root, name = child_location(package, tmp_path, "unused")
    assert (root, name) == (tmp_path, "package")
    child = load_bundle(result.save(root, name))
    source = child.metadata["imported_from"]["bioimageio"]
    assert source["source"] == str(package.resolve()) and source["name"] == "other tool nuclei model"
    assert source["version"] == "1.2.0" and len(source["sha256"]) == 64
    assert child.parent == str(package) and child.config.model.architecture == "imported"
    assert child.config.data.norm_high == 99.8 and child.version == 1
    # The child is a napari-unet version: fine-tuned again, it still names the package.
    grandchild = finetune(child, pairs[:2], epochs=1).to_bundle()
    assert grandchild.metadata["imported_from"] == child.metadata["imported_from"]
    assert any(not np.array_equal(a, b) for a, b in zip(child.model.get_weights(), parent.model.get_weights()))


# ---------------------------------------------------------------- refusals


@pytest.fixture
def unpacked(foreign_binary, tmp_path) -> Path:
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(foreign_binary[0]) as zf:
        zf.extractall(folder)
    return folder


def _edit_rdf(folder: Path, edit) -> Path:
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    edit(rdf)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    return folder


def test_refuses_3d_input(unpacked):
    def add_z(rdf):
        for tensor, size in ((rdf["inputs"][0], {"min": 16, "step": 16}), (rdf["outputs"][0], None)):
            z = {"type": "space", "id": "z", "size": size or {"tensor_id": "raw", "axis_id": "z"}}
            tensor["axes"].insert(1, z)

    with pytest.raises(bi.PackageError, match="axis 'z' besides y and x; napari-unet runs 2D models only"):
        bi.describe_package(_edit_rdf(unpacked, add_z))


def test_refuses_pytorch_only_weights(unpacked):
    (unpacked / "weights.pt").write_bytes(b"not loaded")
    (unpacked / "unet.py").write_text("class UNet: pass\n")

    def pytorch(rdf):
        rdf["weights"] = {"pytorch_state_dict": {
            "source": "weights.pt", "pytorch_version": "2.0",
            "architecture": {"source": "unet.py", "callable": "UNet", "kwargs": {}},
        }}  # fmt: skip

    with pytest.raises(bi.PackageError, match="only pytorch_state_dict weights.*never runs"):
        bi.describe_package(_edit_rdf(unpacked, pytorch))


def test_refuses_two_inputs(unpacked):
    def second_input(rdf):
        other = yaml.safe_load(yaml.safe_dump(rdf["inputs"][0]))
        other["id"] = "mask"
        rdf["inputs"].append(other)

    with pytest.raises(bi.PackageError, match="2 input\\(s\\) and 1 output\\(s\\)"):
        bi.describe_package(_edit_rdf(unpacked, second_input))


def test_refuses_unsupported_processing_and_fixed_sizes(unpacked):
    def stardist_like(rdf):
        rdf["outputs"][0]["postprocessing"] = [{"id": "scale_range", "kwargs": {"max_percentile": 99.0}}]

    with pytest.raises(bi.PackageError, match="post-processing 'scale_range'"):
        bi.describe_package(_edit_rdf(unpacked, stardist_like))

    def fixed(rdf):
        rdf["outputs"][0]["postprocessing"] = []
        for axis in rdf["inputs"][0]["axes"]:
            if axis.get("type") == "space":
                axis["size"] = 256

    with pytest.raises(bi.PackageError, match="fixed size 256"):
        bi.describe_package(_edit_rdf(unpacked, fixed))


def test_refuses_broken_zip_and_missing_rdf(foreign_binary, tmp_path):
    package = foreign_binary[0]
    broken = tmp_path / "broken.zip"
    data = bytearray(package.read_bytes())
    data[200:400] = bytes(200)  # a damaged entry, the central directory intact
    broken.write_bytes(bytes(data))
    with pytest.raises(bi.PackageError, match="damaged zip"):
        bi.describe_package(broken)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(package.read_bytes()[:3000])
    with pytest.raises(BundleError):
        from napari_unet.core.bundle import load_bundle

        load_bundle(truncated)
    no_rdf = tmp_path / "no_rdf.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(no_rdf, "w") as dst:
        for name in src.namelist():
            if name != "rdf.yaml":
                dst.writestr(name, src.read(name))
    with pytest.raises(bi.PackageError, match="holds no rdf.yaml"):
        bi.describe_package(no_rdf)
    assert not bi.is_package(no_rdf)


def test_refuses_keras_file_with_code(unpacked):
    """A Lambda layer (Python code) in the .h5 weights is refused before Keras sees the file."""
    import keras

    from napari_unet.core.bundle import load_bundle

    inp = keras.Input((None, None, 1))
    out = keras.layers.Lambda(lambda t: t * 2)(inp)
    keras.Model(inp, out).save(unpacked / "weights.h5")

    def new_hash(rdf):
        rdf["weights"]["keras_hdf5"].pop("sha256", None)

    with pytest.raises(bi.PackageError, match="Lambda layer"):
        load_bundle(_edit_rdf(unpacked, new_hash))


def test_refuses_a_saved_model_that_reads_files(tmp_path, image):
    """A SavedModel whose serving graph reads a file is refused before it runs."""
    import tensorflow as tf
    from bioimageio.spec.model import v0_5 as m

    from napari_unet.core.bundle import load_bundle

    class Spy(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32, name="raw")])
        def serve(self, x):
            leak = tf.strings.length(tf.io.read_file(str(tmp_path / "secret.txt")))
            return {"out": tf.sigmoid(x) + 0.0 * tf.cast(leak, tf.float32)}

    (tmp_path / "secret.txt").write_text("secret")
    spy = Spy()
    tf.saved_model.save(spy, str(tmp_path / "sm"), signatures={"serving_default": spy.serve})
    with zipfile.ZipFile(tmp_path / "weights_saved_model.zip", "w") as zf:
        for path in sorted((tmp_path / "sm").rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(tmp_path / "sm").as_posix())
    raw = image[:64, :64, None].astype(np.float32)[None]
    weights = {"tensorflow_saved_model_bundle": m.TensorflowSavedModelBundleWeightsDescr(
        source=tmp_path / "weights_saved_model.zip", tensorflow_version=m.Version(tf.__version__))}  # fmt: skip
    package = _write_package(tmp_path, weights, test_input=raw, test_output=np.full_like(raw, 0.5))
    with pytest.raises(bi.PackageError, match="uses ReadFile .*refusing to run it"):
        load_bundle(package)


def test_refuses_weights_outside_the_package(unpacked):
    from napari_unet.core.bundle import load_bundle

    shutil.move(unpacked / "weights.h5", unpacked.parent / "weights.h5")

    def outside(rdf):
        rdf["weights"]["keras_hdf5"]["source"] = "../weights.h5"

    with pytest.raises(bi.PackageError, match="lie outside the package"):
        load_bundle(_edit_rdf(unpacked, outside))


def test_refuses_weights_that_do_not_match_their_hash(unpacked):
    from napari_unet.core.bundle import load_bundle

    with open(unpacked / "weights.h5", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(bi.PackageError, match="does not match its SHA-256"):
        load_bundle(unpacked)


def test_viewer_side_description_is_tensorflow_free(foreign_binary):
    """The model label the viewer shows comes from rdf.yaml without importing TensorFlow."""
    import subprocess
    import sys

    code = (
        "import sys; from napari_unet.jobs.models import model_info; "
        f"info = model_info({str(foreign_binary[0])!r}); "
        "print(info.name, info.config['data']['task'], 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["package", "binary", "False", "False"]


def test_package_folder_and_copy_keep_working(foreign_binary, tmp_path):
    """A package folder (unpacked zip) opens too; the user's package is never changed."""
    from napari_unet.core.bundle import load_bundle

    package = foreign_binary[0]
    before = package.read_bytes()
    copy = tmp_path / "copy.zip"
    shutil.copy(package, copy)
    assert load_bundle(copy).config.data.task == "binary"
    assert package.read_bytes() == before


def test_cli_predict_and_finetune_accept_a_package(foreign_binary, nuclei_pairs, tmp_path, capsys):
    """`napari-unet predict --model package.zip` gives the labels of in-process prediction; finetune writes a
    version beside the package."""
    import tifffile

    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.cli import main
    from napari_unet.core.predict import predict_image

    package = tmp_path / "shared" / "nuclei-net.zip"
    package.parent.mkdir()
    shutil.copy(foreign_binary[0], package)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for name, img, lab in nuclei_pairs[:2]:
        tifffile.imwrite(images / f"{name}.tif", img)
        tifffile.imwrite(masks / f"{name}.tif", lab)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(package), "--images", str(images), "--out", str(out)]) == 0
    name, img, _ = nuclei_pairs[0]
    assert np.array_equal(tifffile.imread(out / f"{name}.tif"), predict_image(load_bundle(package), img).labels)
    assert main(["finetune", "--model", str(package), "--images", str(images), "--labels", str(masks),
                 "--epochs", "1"]) == 0  # fmt: skip
    assert "new version saved" in capsys.readouterr().out
    child = load_bundle(package.parent / "nuclei-net" / "v001")
    assert child.metadata["imported_from"]["bioimageio"]["source"] == str(package.resolve())


def test_worker_finetunes_a_package_as_the_finetune_widget_asks(foreign_binary, nuclei_pairs, tmp_path):
    """The compute worker fine-tunes a package into <fallback root>/<package name>/v001 and reports it."""
    from napari_unet.jobs.client import ComputeClient
    from napari_unet.jobs.models import model_info
    from napari_unet.widgets._tasks import finetune_request
    from napari_unet.widgets.models_registry import CorrectedPair, ModelEntry

    package = foreign_binary[0]
    entry = ModelEntry.from_info(model_info(package), "loaded")
    assert (entry.label, entry.path, entry.config.data.task) == ("package", package, "binary")
    pairs = [CorrectedPair(img, lab, name) for name, img, lab in nuclei_pairs[:2]]
    client = ComputeClient()
    try:
        outcome = client.run(finetune_request(entry, pairs, 1, tmp_path / "models", None), 600)
    finally:
        client.close()
    assert outcome.model is not None and Path(outcome.model.path) == tmp_path / "models" / "package" / "v001"
    child = model_info(outcome.model.path)
    assert child.parent == str(package) and child.config["model"]["architecture"] == "imported"
    meta = json.loads((Path(outcome.model.path) / "metadata.json").read_text())
    assert meta["imported_from"] == bi.describe_package(package).metadata["imported_from"]


def test_keras2_h5_configs_pass_the_allow_list_and_code_does_not():
    """Keras 2 .h5 files name initializers without a module: accepted when built in; unknown classes are not."""
    from napari_unet.core.bundle import check_keras_config

    def model(layer: dict) -> dict:
        return {"class_name": "Functional", "config": {"layers": [layer]}}

    conv = {"class_name": "Conv2D", "config": {"kernel_initializer": {"class_name": "GlorotUniform", "config": {}},
                                               "kernel_regularizer": {"class_name": "L2", "config": {"l2": 0.01}}}}
    check_keras_config(model(conv), Path("weights.h5"))
    for bad in ({"class_name": "Lambda", "config": {}},
                {"class_name": "Conv2D", "config": {"kernel_initializer": {"class_name": "MyInit", "config": {}}}}):
        with pytest.raises(BundleError, match="refusing to load"):
            check_keras_config(model(bad), Path("weights.h5"))
