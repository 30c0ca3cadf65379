"""A bioimage.io model package (a .zip or a folder with ``rdf.yaml``) as a napari-unet model.

`describe_package` reads the package's description with bioimageio.spec (0.4 descriptions are
upgraded to 0.5) and maps it onto a napari-unet `Config`, refusing with a `PackageError` that says
why whatever napari-unet cannot run: 3D or time axes, more than one input or output, fixed or
unaligned input sizes, outputs of another size than the input, pre- or post-processing it does not
implement, and weights other than Keras (``keras_v3``, ``keras_hdf5``), ONNX or TensorFlow SavedModel.
It is TensorFlow-free, so the viewer can read a package's description; nothing is downloaded.

`load_package` (compute worker, CLI) unpacks a zip safely, checks the chosen weights against their
SHA-256 and loads them without running code from the package: Keras files pass the same allow-list
as napari-unet's own models and load in Keras safe mode; pytorch_state_dict weights (Python code
and pickle) are never loaded. Keras weights with channels-last axes give a `keras.Model` that
Predict, Review and fine-tuning use like a napari-unet model; other weights give a `PackageModel`
for prediction only.

Mapping: one output channel is a binary model (threshold from ``binarize``, else 0.5); more are
classes (argmax), or instances when ``config.napari_unet`` (what `bioimageio_export` writes) says
so, and then its whole napari-unet config is used. A single ``scale_range`` over all of y, x (and
channel) is napari-unet's percentile normalisation; other supported steps are kept as
`data.preprocessing` (core/preprocessing.py). The network of a foreign package has architecture
``imported``: it is never rebuilt, and fine-tuning trains a copy.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .errors import BundleError, ConfigError

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: Weight formats napari-unet loads, most useful first (Keras weights can be fine-tuned).
LOADABLE = ("keras_v3", "keras_hdf5", "onnx", "tensorflow_saved_model_bundle")
_REFUSED = {
    "pytorch_state_dict": "pytorch_state_dict weights need the package's Python code and unpickling, "
    "which napari-unet never runs",
    "torchscript": "torchscript weights need PyTorch, which napari-unet does not use",
    "tensorflow_js": "tensorflow_js weights run only in a web browser",
}
_CONFIG_KEY = "napari_unet"  # bioimageio_export.CONFIG_KEY; not imported, that module is heavier
_MAX_STEP_DEPTH = 6  # a size step of up to 2**6 pixels (Config's model.depth range)


class PackageError(BundleError):
    """A bioimage.io package that napari-unet cannot open; the message says why."""


@dataclass
class PackageDescription:
    """What napari-unet makes of a package, before any weights are loaded."""

    path: Path
    config: Config
    metadata: dict  # napari-unet metadata (name, task, config, ...) with `imported_from`
    weights: str  # the weight format that will be loaded
    in_axes: str  # the input tensor's axes, e.g. "byxc" (b batch, y, x, c channel)
    out_axes: str
    activation: str | None  # "sigmoid" or "softmax" when the package applies it after the network
    min_side: int  # smallest input side in pixels


# ---------------------------------------------------------------- recognising a package (cheap)


def rdf_name(path: Path | str) -> str | None:
    """The description file's name in a package folder or zip (top level), or None: not a package."""
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            names = [c.name for c in p.iterdir() if c.is_file()]
        elif p.is_file() and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                names = [n for n in zf.namelist() if "/" not in n.strip("/")]
        else:
            return None
    except (OSError, zipfile.BadZipFile):
        return None
    for name in RDF_NAMES:
        if name in names:
            return name
    return next((n for n in sorted(names) if n.endswith(".bioimageio.yaml")), None)


def is_package(path: Path | str) -> bool:
    """Whether `path` is a bioimage.io package (not a napari-unet model): it holds an rdf.yaml."""
    return rdf_name(path) is not None


def package_model_name(path: Path | str) -> str:
    """napari-unet's model name for a package: its file or folder name, made folder-safe."""
    p = Path(path).expanduser()
    stem = p.stem if p.is_file() else p.name
    return re.sub(r"[^\w.\-]+", "-", stem).strip(".-") or "bioimageio-model"


# ---------------------------------------------------------------- the description (TensorFlow-free)


def describe_package(path: Path | str) -> PackageDescription:
    """Map the package at `path` onto napari-unet, or raise PackageError saying why it cannot be used."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PackageError(f"There is no bioimage.io package at {p}.")
    if p.is_file() and not zipfile.is_zipfile(p):
        raise PackageError(f"{p} is not a zip file; a bioimage.io package is a .zip or a folder with rdf.yaml.")
    if p.is_file():
        _check_zip(p)
    name = rdf_name(p)
    if name is None:
        raise PackageError(f"{p} holds no rdf.yaml (nor bioimageio.yaml), so it is not a bioimage.io package.")
    descr = _read_description(p, name)
    return _map(descr, p)


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            broken = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise PackageError(f"{path} is a damaged zip file ({exc}); download or export the package again.") from exc
    if broken is not None:
        raise PackageError(f"{path} is a damaged zip file ({broken} fails its checksum); download it again.")


def _read_description(path: Path, name: str) -> Any:
    """The package's model description, upgraded to the newest format bioimageio.spec knows."""
    from bioimageio.spec import load_description
    from bioimageio.spec.model import v0_5

    # A Path, never a str: bioimageio.spec would look a str up as a bioimage.io id online.
    source = path / name if path.is_dir() else path
    try:
        descr = load_description(source, format_version="latest", perform_io_checks=False)
    except Exception as exc:  # bioimageio.spec raises many kinds for unreadable yaml or zips
        raise PackageError(f"bioimageio.spec cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if getattr(descr, "type", None) != "model":
        raise PackageError(f"{path} describes a bioimage.io {getattr(descr, 'type', 'resource')!r}, not a model.")
    if not isinstance(descr, v0_5.ModelDescr):
        raise PackageError(f"{path} is not a valid bioimage.io model description: {_first_errors(descr)}")
    return descr


def _first_errors(descr: Any, limit: int = 3) -> str:
    try:
        errors = [e for d in descr.validation_summary.details for e in d.errors]
    except AttributeError:
        return "unknown problem"
    text = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors[:limit])
    return text or "it does not follow the model format"


def _map(descr: Any, path: Path) -> PackageDescription:
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise PackageError(
            f"{path} has {len(descr.inputs)} input(s) and {len(descr.outputs)} output(s); napari-unet runs "
            "models with one image input and one output."
        )
    inp, out = descr.inputs[0], descr.outputs[0]
    in_axes, in_channels, step, min_side = _input_axes(inp, path)
    out_axes, n_out, halo = _output_axes(out, inp, path)
    weights = _weights_format(descr, path)
    threshold, activation = _postprocessing(out, n_out, path)
    norm = _preprocessing(inp, in_channels, path)
    ours = _napari_unet_section(descr)
    cfg = _config(ours, in_channels, n_out, step, halo, threshold, norm, out, path)
    metadata = _metadata(descr, path, cfg, weights, ours)
    return PackageDescription(path, cfg, metadata, weights, in_axes, out_axes, activation, min_side)


def _axes_letters(axes: Any, which: str, path: Path) -> str:
    letters = ""
    for axis in axes:
        kind = axis.type
        if kind == "space" and str(axis.id) in ("y", "x"):
            letters += str(axis.id)
        elif kind in ("batch", "channel"):
            letters += kind[0]
        elif kind == "space":
            raise PackageError(
                f"{path}: the {which} has a spatial axis {axis.id!r} besides y and x; napari-unet runs 2D models only, "
                "not 3D ones."
            )
        else:
            raise PackageError(f"{path}: the {which} has a {kind} axis {axis.id!r}; napari-unet runs 2D models without "
                               "time or index axes.")  # fmt: skip
    if "y" not in letters or "x" not in letters:
        raise PackageError(f"{path}: the {which} lacks a y or an x axis; napari-unet runs 2D image models.")
    return letters


def _input_axes(inp: Any, path: Path) -> tuple[str, int, int, int]:
    """(axes letters, channels, size step, smallest side) of the input tensor."""
    from bioimageio.spec.model import v0_5

    letters = _axes_letters(inp.axes, "input", path)
    channels = 1
    steps, mins = [], []
    for axis in inp.axes:
        if axis.type == "channel":
            channels = len(axis.channel_names)
        elif axis.type == "space":
            size = axis.size
            if isinstance(size, int):
                raise PackageError(
                    f"{path}: the input's {axis.id} axis has the fixed size {size}; napari-unet predicts images of any "
                    "size in tiles and needs a model whose input size can vary (min and step)."
                )
            if not isinstance(size, v0_5.ParameterizedSize):
                raise PackageError(f"{path}: the input's {axis.id} size depends on another tensor; not supported.")
            steps.append(int(size.step))
            mins.append(int(size.min))
    step = max(steps)
    if step & (step - 1) or step > 2**_MAX_STEP_DEPTH or any(s != step for s in steps):
        raise PackageError(
            f"{path}: input sizes go in steps of {steps} pixels; napari-unet needs the same power-of-two step "
            f"(1 to {2**_MAX_STEP_DEPTH}) for y and x."
        )
    if any(m % step for m in mins):
        raise PackageError(f"{path}: the smallest input sizes {mins} are not multiples of the step {step}; not supported.")
    return letters, channels, step, max(mins)


def _output_axes(out: Any, inp: Any, path: Path) -> tuple[str, int, int]:
    """(axes letters, channels, halo) of the output tensor, which must match the input pixel for pixel."""
    letters = _axes_letters(out.axes, "output", path)
    channels, halo = 1, 0
    scales = {str(a.id): float(a.scale) for a in inp.axes if a.type == "space"}
    for axis in out.axes:
        if axis.type == "channel":
            channels = len(axis.channel_names)
        elif axis.type == "space":
            size = axis.size
            same = (
                getattr(size, "tensor_id", None) == inp.id
                and str(getattr(size, "axis_id", "")) == str(axis.id)
                and int(getattr(size, "offset", 0) or 0) == 0
                and float(axis.scale) == scales.get(str(axis.id))
            )
            if not same:
                raise PackageError(
                    f"{path}: the output's {axis.id} axis is not the same size as the input's; napari-unet needs a "
                    "segmentation output pixel for pixel."
                )
            halo = max(halo, int(getattr(axis, "halo", 0) or 0))
    return letters, channels, halo


def _weights_format(descr: Any, path: Path) -> str:
    present = [f for f in (*LOADABLE, *_REFUSED) if getattr(descr.weights, f, None) is not None]
    for fmt in LOADABLE:
        entry = getattr(descr.weights, fmt, None)
        if entry is not None:
            if not _is_local(entry.source):
                raise PackageError(f"{path}: the {fmt} weights are at {entry.source}; napari-unet only opens packages "
                                   "that hold their weights (download the whole package).")  # fmt: skip
            return fmt
    reasons = [_REFUSED[f] for f in present if f in _REFUSED]
    raise PackageError(
        f"{path} has only {', '.join(present) or 'no'} weights; napari-unet loads {', '.join(LOADABLE)}"
        + (f" ({'; '.join(reasons)})." if reasons else ".")
    )


def _is_local(source: Any) -> bool:
    return not str(source).lower().startswith(("http://", "https://"))


def _postprocessing(out: Any, n_out: int, path: Path) -> tuple[float | None, str | None]:
    """(binary threshold, activation applied after the network) from the output's post-processing."""
    threshold, activation = None, None
    for step in out.postprocessing:
        kwargs = getattr(step, "kwargs", None)
        if step.id == "ensure_dtype":
            continue
        if step.id == "binarize" and n_out == 1:
            value = kwargs.threshold
            value = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
            if isinstance(value, (list, tuple)) or not 0.0 <= float(value) <= 1.0:
                raise PackageError(f"{path}: binarize with threshold {value} is not a probability threshold.")
            threshold = float(value)
        elif step.id == "sigmoid" and n_out == 1 and threshold is None:
            activation = "sigmoid"
        elif step.id == "softmax" and n_out > 1 and str(kwargs.axis) == "channel":
            activation = "softmax"
        else:
            raise PackageError(
                f"{path}: the post-processing {step.id!r} (for {n_out} output channel(s)) is not supported; "
                "napari-unet reads binary probabilities (binarize, sigmoid) or class probabilities (softmax)."
            )
    return threshold, activation


def _preprocessing(inp: Any, in_channels: int, path: Path) -> tuple[float, float] | list[dict]:
    """(low, high) percentiles when the steps are napari-unet's own normalisation, else the steps."""
    steps = []
    for step in inp.preprocessing:
        kwargs = step.kwargs.model_dump(mode="json", exclude_none=True) if hasattr(step, "kwargs") else {}
        if kwargs.get("reference_tensor") == str(inp.id):
            kwargs.pop("reference_tensor")
        if step.id == "ensure_dtype" and kwargs.get("dtype") in ("float32", "float64"):
            continue  # the network always gets float32
        steps.append({"id": str(step.id), "kwargs": kwargs})
    if len(steps) == 1 and steps[0]["id"] == "scale_range":
        kw = steps[0]["kwargs"]
        axes = {str(a) for a in kw.get("axes") or ("y", "x", "channel")} - {"batch"}
        joint = {"y", "x"} | ({"channel"} if in_channels > 1 else set())
        if axes >= joint and float(kw.get("eps", 1e-6)) <= 1e-6:
            return float(kw.get("min_percentile", 0.0)), float(kw.get("max_percentile", 100.0))
    if not steps:  # the network takes the raw values
        steps = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    from .preprocessing import check_steps

    try:
        check_steps(steps, name="the input's pre-processing step")
    except ConfigError as exc:
        raise PackageError(f"{path}: {exc}") from exc
    return steps


def _napari_unet_section(descr: Any) -> dict | None:
    """The ``config.napari_unet`` part of a package napari-unet exported, else None."""
    extra = getattr(descr.config, "model_extra", None) or {}
    section = extra.get(_CONFIG_KEY)
    return section if isinstance(section, dict) and isinstance(section.get("config"), dict) else None


def _config(
    ours: dict | None, in_channels: int, n_out: int, step: int, halo: int, threshold: float | None,
    norm: tuple[float, float] | list[dict], out: Any, path: Path,
) -> Config:  # fmt: skip
    if ours is not None:
        try:
            cfg = Config.from_dict(ours["config"])
        except ConfigError as exc:
            raise PackageError(f"{path}: its napari-unet config is invalid: {exc}") from exc
    else:
        names = [str(n) for n in getattr(_channel_axis(out), "channel_names", None) or []]
        task = "binary" if n_out == 1 else "classes"
        depth = max(1, int(np.log2(step)))
        overlap = max(Config().predict.overlap, halo)
        tile = max(Config().predict.tile_size, -(-(2 * overlap + 512) // step) * step)
        cfg = Config().replace(
            model={"architecture": "imported", "depth": depth},
            data={"task": task, "n_classes": max(2, n_out), "in_channels": in_channels,
                  "class_names": names if task == "classes" and len(names) == n_out else []},
            predict={"overlap": overlap, "tile_size": tile, "tuned": False},
        )  # fmt: skip
    data: dict[str, Any] = {"preprocessing": []}
    if isinstance(norm, tuple):
        data.update(norm_low=norm[0], norm_high=norm[1])
    else:
        data["preprocessing"] = norm
    cfg = cfg.replace(data=data, predict={} if threshold is None else {"threshold": threshold})
    try:
        cfg.validate()
    except ConfigError as exc:
        raise PackageError(f"{path} cannot be used as a napari-unet model: {exc}") from exc
    if cfg.data.in_channels != in_channels or cfg.n_outputs != n_out:
        raise PackageError(
            f"{path}: its napari-unet config describes {cfg.data.in_channels} input and {cfg.n_outputs} output "
            f"channel(s), the package's tensors {in_channels} and {n_out}; the package is inconsistent."
        )
    if cfg.size_multiple % step:
        raise PackageError(f"{path}: the network's size step {cfg.size_multiple} does not fit the package's {step}.")
    return cfg


def _channel_axis(tensor: Any) -> Any:
    return next((a for a in tensor.axes if a.type == "channel"), None)


def _metadata(descr: Any, path: Path, cfg: Config, weights: str, ours: dict | None) -> dict:
    """napari-unet metadata of an imported model; `imported_from` names the package."""
    return {
        "name": package_model_name(path),
        "created": str(descr.timestamp or ""),
        "parent": None,
        "task": cfg.data.task,
        "class_names": cfg.class_names,
        "in_channels": cfg.data.in_channels,
        "n_outputs": cfg.n_outputs,
        "config": cfg.to_dict(),
        "training_data": [],
        "metrics": {},
        "imported_from": {
            "bioimageio": {
                "id": None if descr.id is None else str(descr.id),
                "name": str(descr.name),
                "version": None if descr.version is None else str(descr.version),
                "format_version": str(descr.format_version),
                "source": str(path.resolve()),
                "sha256": _sha256(path),
                "weights": weights,
                "napari_unet": None if ours is None else {k: ours.get(k) for k in ("model", "version", "created")},
            }
        },
    }


def _sha256(path: Path) -> str:
    """SHA-256 of the zip file, or of a package folder's description file."""
    return _file_sha256(path if path.is_file() else path / (rdf_name(path) or RDF_NAMES[0]))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- loading the weights (worker, CLI)


def load_package(path: Path | str) -> Any:
    """The package at `path` as a `ModelBundle` (its `path` is the package; it has no version)."""
    from .bundle import ModelBundle, _safe_extract

    p = Path(path).expanduser()
    info = describe_package(p)
    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as tmp:
        folder = _safe_extract(p, Path(tmp)) if p.is_file() else p
        descr = _read_description(folder, rdf_name(folder) or RDF_NAMES[0])
        entry = getattr(descr.weights, info.weights)
        weights_file = (folder / str(entry.source)).resolve()
        if not weights_file.is_relative_to(folder.resolve()):
            raise PackageError(f"{p}: its weights {entry.source} lie outside the package; refusing to load them.")
        _check_sha256(weights_file, entry.sha256, p)
        model = _load_weights(info, weights_file, Path(tmp))
    cfg = info.config
    if cfg.model.architecture == "imported":
        cfg = _with_measured_halo(model, cfg)
    return ModelBundle(model=model, config=cfg, path=p, metadata={**info.metadata, "config": cfg.to_dict()})


def _check_sha256(path: Path, expected: Any, package: Path) -> None:
    if not path.is_file():
        raise PackageError(f"{package} lacks its weights file {path.name}; the package is incomplete.")
    if expected is not None and _file_sha256(path) != str(expected):
        raise PackageError(f"{package}: {path.name} does not match its SHA-256 in rdf.yaml; the package is damaged.")


def _load_weights(info: PackageDescription, path: Path, scratch: Path) -> Any:
    if info.weights in ("keras_v3", "keras_hdf5"):
        network = _load_keras(path, info.path)
        if info.in_axes == info.out_axes == "byxc":
            return _keras_with_activation(network, info.activation)
        return PackageModel(info, _keras_runner(network), "its axes are not batch, y, x, channel")
    if info.weights == "onnx":
        return PackageModel(info, _onnx_runner(path), "ONNX weights cannot be trained")
    return PackageModel(info, _saved_model_runner(path, scratch, info.path), "SavedModel weights cannot be trained")


def _load_keras(path: Path, package: Path) -> Any:
    """A Keras model from .keras or .h5 weights: allow-listed layers only, safe mode, no training config."""
    import keras

    from .bundle import _inspect_keras_file, check_keras_config

    try:
        if path.suffix.lower() == ".keras":
            _inspect_keras_file(path)
        else:
            check_keras_config(_h5_config(path, package), path, "load")
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except BundleError as exc:
        raise PackageError(f"{package}: {exc}") from exc
    except Exception as exc:
        raise PackageError(f"{package}: Keras could not load {path.name}: {exc}") from exc


def _h5_config(path: Path, package: Path) -> dict:
    import json

    import h5py

    try:
        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("model_config")
    except OSError as exc:
        raise PackageError(f"{package}: {path.name} is not a readable HDF5 file ({exc}).") from exc
    if raw is None:
        raise PackageError(f"{package}: {path.name} holds weights without a model; napari-unet needs a whole Keras model.")
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, RecursionError) as exc:
        raise PackageError(f"{package}: {path.name} holds an unreadable model config.") from exc
    if not isinstance(config, dict):
        raise PackageError(f"{package}: {path.name} holds an unreadable model config.")
    return config


def _keras_with_activation(network: Any, activation: str | None) -> Any:
    """The network, with the package's sigmoid or softmax as its last layer (napari-unet models output probabilities)."""
    if activation is None:
        return network
    import keras

    inputs = keras.Input(network.input_shape[1:])
    return keras.Model(inputs, keras.layers.Activation(activation)(network(inputs)), name=f"{network.name}_{activation}")


def _keras_runner(network: Any) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.asarray(network.predict_on_batch(x))


def _onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: np.asarray(session.run(None, {name: x})[0])


def _saved_model_runner(path: Path, scratch: Path, package: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The serving signature of a zipped SavedModel (a TensorFlow graph: no Python code runs)."""
    import tensorflow as tf

    from .bundle import _safe_extract

    folder = _safe_extract(path, scratch / "saved_model") if path.is_file() else path
    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as exc:
        raise PackageError(f"{package}: TensorFlow could not load the SavedModel weights: {exc}") from exc
    signatures = dict(loaded.signatures)
    signature = signatures.get("serving_default") or signatures.get("serve") or next(iter(signatures.values()), None)
    if signature is None:
        raise PackageError(f"{package}: the SavedModel has no serving signature to call.")
    graph = signature.graph.as_graph_def()
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    if ops & _UNSAFE_OPS:
        raise PackageError(
            f"{package}: the SavedModel's serving graph uses {', '.join(sorted(ops & _UNSAFE_OPS))} (Python calls or "
            "file access); refusing to run it."
        )
    names = list(signature.structured_input_signature[1])
    if len(names) != 1:
        raise PackageError(f"{package}: the SavedModel's signature takes {len(names)} inputs, not one image.")

    def run(x: np.ndarray) -> np.ndarray:
        outputs = signature(**{names[0]: tf.constant(x, dtype=tf.float32)})
        return np.asarray(next(iter(outputs.values())))

    run.keep_alive = loaded  # type: ignore[attr-defined]  # the signature needs its object's variables
    return run


#: TensorFlow ops a segmentation network never needs: Python callbacks and file or checkpoint access.
_UNSAFE_OPS = frozenset({
    "PyFunc", "PyFuncStateless", "EagerPyFunc", "ReadFile", "WriteFile", "MatchingFiles", "DeleteFile",
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints",
    "ImmutableConst", "WholeFileReader", "WholeFileReaderV2", "TFRecordReader", "TFRecordReaderV2",
    "TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDataset", "TextLineDataset",
})  # fmt: skip


def _with_measured_halo(model: Any, cfg: Config) -> Config:
    """A foreign Keras network's receptive field as the tile context, when it can be traced."""
    import keras

    from .model import receptive_halo

    if not isinstance(model, keras.Model):
        return cfg
    try:
        measured = receptive_halo(model, cfg.size_multiple)
    except (ValueError, KeyError, AttributeError, TypeError, IndexError):
        return cfg  # layers the tracer does not know: keep the package's halo
    overlap = max(cfg.predict.overlap, measured)
    m = cfg.size_multiple
    tile = max(cfg.predict.tile_size, -(-(2 * overlap + 512) // m) * m)
    return cfg.replace(predict={"overlap": overlap, "tile_size": tile})


class PackageModel:
    """A package's network behind the calls core/predict.py makes: (N, H, W, C) float32 in, probabilities out.

    Transposes to the package's axes and back, and applies its sigmoid or softmax. Not trainable:
    `not_trainable` says why.
    """

    def __init__(self, info: PackageDescription, run: Callable[[np.ndarray], np.ndarray], why: str):
        self.run, self.info = run, info
        self.in_axes, self.out_axes = info.in_axes, info.out_axes
        channels, outputs = info.config.data.in_channels, info.config.n_outputs
        self.input_shape = (None, None, None, channels)
        self.output_shape = (None, None, None, outputs)
        self.not_trainable = f"{info.path.name} cannot be fine-tuned: {why}; only Keras weights can."

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        h, w = x.shape[1:3]
        # The package's smallest input: a smaller image is mirrored out to it, and the output cropped.
        pad_y, pad_x = max(0, self.info.min_side - h), max(0, self.info.min_side - w)
        if pad_y or pad_x:
            x = np.pad(x, ((0, 0), (0, pad_y), (0, pad_x), (0, 0)), mode="symmetric")
        return self._predict(x)[:, :h, :w]

    def _predict(self, x: np.ndarray) -> np.ndarray:
        if "b" in self.in_axes:
            y = self._from_axes(self.run(self._to_axes(x, self.in_axes)), self.out_axes)
        else:
            y = np.stack([self._from_axes(self.run(self._to_axes(x[i : i + 1], self.in_axes)), self.out_axes)[0]
                          for i in range(x.shape[0])])  # fmt: skip
        return _activate(y.astype(np.float32, copy=False), self.info.activation)

    @staticmethod
    def _to_axes(x: np.ndarray, axes: str) -> np.ndarray:
        """(N, H, W, C) to the package's axes (a missing channel axis takes the one channel)."""
        src = "byxc"
        if "c" not in axes:
            x, src = x[..., 0], "byx"
        if "b" not in axes:
            x, src = x[0], src[1:]
        return np.ascontiguousarray(np.transpose(x, [src.index(a) for a in axes]))

    @staticmethod
    def _from_axes(y: np.ndarray, axes: str) -> np.ndarray:
        """The package's output axes back to (N, H, W, K)."""
        if "b" not in axes:
            y, axes = y[None], "b" + axes
        if "c" not in axes:
            y, axes = y[..., None], axes + "c"
        return np.transpose(y, [axes.index(a) for a in "byxc"])


def _activate(y: np.ndarray, activation: str | None) -> np.ndarray:
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-y))).astype(np.float32)
    if activation == "softmax":
        e = np.exp(y - y.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return y
