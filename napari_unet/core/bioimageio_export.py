"""A napari-unet model version as a bioimage.io model package (a .zip with ``rdf.yaml``).

The package follows the model format that the installed ``bioimageio.spec`` implements and holds:
``keras_hdf5`` weights (the primary) with ``tensorflow_saved_model_bundle`` and ``onnx`` weights
converted from the same Keras model; the plugin's percentile normalisation as ``scale_range``;
post-processing per task (``binarize`` for binary; documented for classes and instances, which the
spec cannot express); test tensors and a cover made from a real image; and a README with a
"Validation" section. The full napari-unet config travels in ``config.napari_unet``.

Where the spec's ``scale_range`` differs from ``normalize.normalize`` (documented in every package's
README, measured by the tests): it divides by ``high - low + eps`` with ``eps = 1e-6`` (the spec does not
allow 0), and it always uses all pixels for the percentiles (the plugin subsamples images above 4
megapixels). A constant image maps to 0 either way.

Importing this module is cheap and TensorFlow-free: `check_export` (the checks the CLI and the export
dialog run before any work) needs neither TensorFlow nor bioimageio.core. `export_package` imports
them when it runs, so it belongs in the compute worker or the CLI.
"""

from __future__ import annotations

import colorsys
import difflib
import json
import re
import shutil
import tempfile
import typing
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError, InputError, NapariUNetError, OutputError
from .outputs import check_writable_folder, write_atomic
from .versions import METADATA_FILE, is_version_dir, read_current

WEIGHT_FORMATS: tuple[str, ...] = ("keras_hdf5", "tensorflow_saved_model_bundle", "onnx")
DEFAULT_LICENSE = "CC-BY-4.0"
#: Cited when neither the model nor the caller names a citation: the architecture's paper.
UNET_CITATION = {
    "text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
    "MICCAI 2015.",
    "doi": "10.1007/978-3-319-24574-4_28",
}
ONNX_OPSET = 17
#: Largest side of the test image (pixels): keeps packages small and test_model fast.
MAX_TEST_SIDE = 256
#: The part of the rdf that only napari-unet reads (its config, task, classes); also marks our packages.
CONFIG_KEY = "napari_unet"
INPUT_ID, OUTPUT_ID = "raw", "prediction"

Progress = Callable[[int, int], Any]


class ExportStopped(NapariUNetError):
    """The export was stopped on request; nothing was written."""

_DOI = re.compile(r"\b(10\.\d{4,9}/\S+[^\s.,;)\]])")
_URL = re.compile(r"https?://\S+")


# ---------------------------------------------------------------- checks before any work (TensorFlow-free)


def spec_format_version() -> str:
    """The model format version the installed bioimageio.spec writes (e.g. ``0.5.12``)."""
    from bioimageio.spec.model.v0_5 import ModelDescr

    return str(ModelDescr.implemented_format_version)


def license_ids() -> tuple[str, ...]:
    """SPDX licence identifiers bioimage.io accepts (from bioimageio.spec)."""
    from bioimageio.spec._internal.license_id import LicenseIdLiteral

    return typing.get_args(LicenseIdLiteral)


def check_license(license: str) -> str:
    """``license`` if it is an SPDX identifier bioimage.io accepts; else InputError with close matches."""
    ids = license_ids()
    if license in ids:
        return license
    low = license.strip().lower()
    close = [i for i in ids if i.lower() == low] or [i for i in ids if i.lower().startswith(low)][:4]
    close = close or difflib.get_close_matches(license, ids, 3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise InputError(f"{license!r} is not an SPDX licence identifier (e.g. CC-BY-4.0, MIT, BSD-3-Clause).{hint}")


def parse_author(text: str) -> dict[str, str]:
    """``"Name"`` or ``"Name <email>"`` as a bioimage.io author entry."""
    text = text.strip()
    match = re.fullmatch(r"(.*?)\s*<([^<>\s]+@[^<>\s]+)>", text)
    name, email = (match.group(1), match.group(2)) if match else (text, None)
    if not name or "/" in name:
        raise InputError(f"Author {text!r}: give a name (without '/'), optionally followed by <email>.")
    return {"name": name, **({"email": email} if email else {})}


def parse_cite(text: str) -> dict[str, str]:
    """A citation from free text holding a DOI (``10.xxxx/...``, also as a doi.org link) or a URL."""
    text = text.strip()
    doi = _DOI.search(text)
    if doi:
        rest = text.replace(doi.group(1), "").replace("https://doi.org/", "").replace("doi:", "").strip(" ,;.:()[]")
        return {"text": rest or f"doi:{doi.group(1)}", "doi": doi.group(1)}
    url = _URL.search(text)
    if url:
        rest = text.replace(url.group(0), "").strip(" ,;.:()[]")
        return {"text": rest or url.group(0), "url": url.group(0)}
    raise InputError(f"Citation {text!r} needs a DOI (10.xxxx/...) or a URL; bioimage.io citations link to the work.")


def resolve_version(model: Path | str) -> Path:
    """The version folder of a version folder or a model folder (its current version); BundleError if none."""
    path = Path(model).expanduser()
    if not path.exists():
        raise BundleError(f"There is no model at {path}.")
    if path.is_dir() and (path / METADATA_FILE).is_file():
        return path
    if path.is_file():
        raise BundleError(f"{path} is a file; export a napari-unet model folder or version folder (v001, ...).")
    current = read_current(path) if path.is_dir() else None
    if current is None:
        raise BundleError(f"{path} is neither a napari-unet model version (v001, ...) nor a model folder holding one.")
    return current


def check_export(
    model: Path | str,
    dest: Path | str,
    *,
    license: str | None = None,
    authors: Sequence[dict] | None = None,
    formats: Sequence[str] = WEIGHT_FORMATS,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Every check `export_package` makes before it works: returns ``(version folder, package path)``.

    Raises BundleError (no such model), InputError (bad licence or weight format, no author, not a .zip) or
    OutputError (the package exists, or its folder is not writable or inside the model).
    """
    version = resolve_version(model)
    dest = Path(dest).expanduser()
    if dest.suffix.lower() != ".zip":
        raise InputError(f"The package {dest} must be a .zip file.")
    if license is not None:
        check_license(license)
    unknown = [f for f in formats if f not in WEIGHT_FORMATS]
    if unknown or "keras_hdf5" not in formats:
        raise InputError(f"Weight formats must include keras_hdf5 and be among {', '.join(WEIGHT_FORMATS)}; got {list(formats)}.")
    if dest.is_dir():
        raise OutputError(f"{dest} is a folder; give the package a file name ending in .zip.")
    if dest.exists() or dest.is_symlink():
        if not overwrite:
            raise OutputError(f"{dest} already exists; choose another file or pass --overwrite to replace it.")
        if not written_by_us(dest):
            raise OutputError(f"{dest} exists and is not a package napari-unet exported; it is never replaced.")
    meta = _check_exportable(version)
    if not (authors or meta.get("authors")):
        raise InputError("Give at least one author (a name): bioimage.io packages say who made the model.")
    model_dir = version.parent if is_version_dir(version) else version
    if _inside(dest, model_dir):
        raise OutputError(f"{dest} is inside the model folder {model_dir}; write the package somewhere else.")
    check_writable_folder(dest.parent, "package folder", create=True)  # the probe file catches read-only mounts
    return version, dest


def _check_exportable(version: Path) -> dict:
    """The version's metadata; refuses models whose input handling a package could not reproduce."""
    try:
        meta = json.loads((version / METADATA_FILE).read_text(encoding="utf-8"))
        data, model = meta["config"].get("data", {}), meta["config"].get("model", {})
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise BundleError(f"{version / METADATA_FILE} is unreadable ({exc}); the model cannot be exported.") from exc
    if data.get("preprocessing"):
        raise InputError(
            f"{version} was imported from a bioimage.io package with its own pre-processing; share that package "
            "instead (napari-unet exports only models that use its percentile normalisation)."
        )
    if model.get("architecture", "unet") not in ("unet", "mobilenetv2"):
        raise InputError(f"{version} has the architecture {model.get('architecture')!r}; only napari-unet's U-Nets can be exported.")
    return meta


def written_by_us(path: Path | str) -> bool:
    """True for a bioimage.io package napari-unet exported (its rdf.yaml carries ``config.napari_unet``)."""
    import yaml

    path = Path(path)
    if path.is_symlink() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            rdf = yaml.safe_load(zf.read("rdf.yaml"))
    except (KeyError, OSError, zipfile.BadZipFile, yaml.YAMLError):
        return False
    return isinstance(rdf, dict) and isinstance(rdf.get("config"), dict) and CONFIG_KEY in rdf["config"]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- the export (TensorFlow, in the worker or CLI)


def export_package(
    version: Path | str,
    dest: Path | str,
    *,
    authors: Sequence[dict] | None = None,
    license: str | None = None,
    cite: Sequence[dict] | None = None,
    formats: Sequence[str] = WEIGHT_FORMATS,
    overwrite: bool = False,
    sample: np.ndarray | None = None,
    progress: Progress | None = None,
    stop: Any = None,
) -> Path:
    """Write the model version (or a model folder's current version) as a bioimage.io package ``dest``.

    `authors`, `license` and `cite` override what the model's metadata says (``authors``, ``license``,
    ``cite`` keys); without either, the licence is CC-BY-4.0 and the U-Net paper is cited. `sample`
    is the image the test tensors and the cover are made from (any layout the model predicts; the
    first plane of a stack); by default the model's largest replay patch (a piece of its training images). The package is written
    to a temporary file, validated with bioimageio.spec, and only then renamed to `dest`.
    `progress(done, total)` is called after each step; a set `stop` ends the export between steps.
    """
    from .bundle import load_bundle, load_replay

    version_dir, dest = check_export(version, dest, license=license, authors=authors, formats=formats, overwrite=overwrite)
    steps = _Steps(progress, stop, total=3 + len(formats))
    bundle = load_bundle(version_dir)
    meta = bundle.metadata
    license = check_license(license or meta.get("license") or DEFAULT_LICENSE)
    authors = [dict(a) for a in (authors or meta.get("authors") or [])]
    cite = [dict(c) for c in (cite or meta.get("cite") or [UNET_CITATION])]
    if sample is None:
        images, _ = load_replay(version_dir)
        if not images:
            raise InputError(f"{bundle.label} has no replay images to make test tensors from; give a sample image.")
        sample = max(images, key=lambda a: a.shape[0] * a.shape[1])
    image = _test_image(sample, bundle.config)
    steps.done()
    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as tmp_name:
        tmp = Path(tmp_name)
        files = _write_content(bundle, image, tmp, formats, steps)
        descr = _describe(bundle, files, tmp, authors=authors, license=license, cite=cite, formats=formats)
        steps.done()
        write_atomic(dest, lambda out: _save_package(descr, out), overwrite=overwrite)
        steps.done()
    return dest


class _Steps:
    """Progress over a fixed number of steps, and the stop check between them."""

    def __init__(self, progress: Progress | None, stop: Any, total: int):
        self.progress, self.stop, self.total, self.count = progress, stop, total, 0

    def done(self) -> None:
        self.count += 1
        if self.progress is not None:
            self.progress(min(self.count, self.total), self.total)
        if self.stop is not None and self.stop.is_set():
            raise ExportStopped("Export stopped; no package was written.")


def _test_image(sample: Any, cfg: Any) -> np.ndarray:
    """One ``(H, W, C)`` float32 image with sides the network takes: a centre crop of about
    `MAX_TEST_SIDE` pixels, mirrored at its edges when it is smaller than the network's minimum."""
    from .normalize import as_samples

    image = as_samples(np.asarray(sample), in_channels=cfg.data.in_channels, name="sample image")[0][0]
    m, smallest = cfg.size_multiple, _min_size(cfg)
    while min(image.shape[:2]) < smallest:
        grow = [(0, max(0, min(smallest - side, side))) for side in image.shape[:2]]
        image = np.pad(image, [*grow, (0, 0)], mode="symmetric")
    h, w = (max(smallest, min(side, MAX_TEST_SIDE) // m * m) for side in image.shape[:2])
    y0, x0 = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return np.ascontiguousarray(image[y0 : y0 + h, x0 : x0 + w], dtype=np.float32)


def _min_size(cfg: Any) -> int:
    """Smallest input side: a multiple of the size step that leaves output beyond the halo on both sides."""
    from .model import halo

    m = cfg.size_multiple
    return (2 * halo(cfg) // m + 1) * m


def _write_content(bundle: Any, image: np.ndarray, folder: Path, formats: Sequence[str], steps: _Steps) -> dict[str, Path]:
    """Weights, test tensors, cover and README in `folder`; returns their paths by role."""
    import tifffile

    from .normalize import normalize
    from .targets import probabilities_to_labels

    cfg, model = bundle.config, bundle.model
    files: dict[str, Path] = {}
    files["keras_hdf5"] = folder / "weights.h5"
    model.save(files["keras_hdf5"])
    steps.done()
    if "tensorflow_saved_model_bundle" in formats:
        files["tensorflow_saved_model_bundle"] = _saved_model_zip(model, folder)
        steps.done()
    if "onnx" in formats:
        files["onnx"] = _onnx(model, folder / "weights.onnx", cfg.data.in_channels)
        steps.done()
    probs = np.asarray(model.predict(normalize(image, cfg.data.norm_low, cfg.data.norm_high)[None], verbose=0))[0]
    np.save(files.setdefault("test_input", folder / "test_input.npy"), image[None])
    np.save(files.setdefault("test_output", folder / "test_output.npy"), postprocess(probs, cfg)[None])
    # The same tensors as TIFF images (channels last), which viewers of the package can show.
    tifffile.imwrite(files.setdefault("sample_input", folder / "sample_input.tif"), image.squeeze())
    tifffile.imwrite(files.setdefault("sample_output", folder / "sample_output.tif"), postprocess(probs, cfg).squeeze())
    labels = probabilities_to_labels(probs, cfg)
    files["cover"] = _cover(image, labels, folder / "cover.png")
    files["readme"] = folder / "README.md"
    files["readme"].write_text(_readme(bundle), encoding="utf-8")
    return files


def postprocess(probs: np.ndarray, cfg: Any) -> np.ndarray:
    """What the package's own post-processing gives for network output `(..., K)`: the binary mask
    (``probability > threshold``, uint8) for binary models, the probabilities otherwise."""
    if cfg.data.task == "binary":
        return (np.asarray(probs) > cfg.predict.threshold).astype(np.uint8)
    return np.asarray(probs, dtype=np.float32)


def _saved_model_zip(model: Any, folder: Path) -> Path:
    """A TensorFlow SavedModel whose ``serve`` endpoint returns ``{OUTPUT_ID: probabilities}`` (zipped).

    bioimageio.core calls it through ``keras.layers.TFSMLayer``, which needs a dict of outputs;
    ``Model.export`` alone returns a bare tensor.
    """
    import keras
    import tensorflow as tf

    saved = folder / "saved_model"
    archive = keras.export.ExportArchive()
    archive.track(model)
    signature = [tf.TensorSpec((None, None, None, model.input_shape[-1]), tf.float32, name=INPUT_ID)]
    archive.add_endpoint("serve", lambda x: {OUTPUT_ID: model(x, training=False)}, input_signature=signature)
    archive.write_out(str(saved), verbose=False)
    target = folder / "weights_saved_model.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(saved.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(saved).as_posix())
    shutil.rmtree(saved)
    return target


def _onnx(model: Any, path: Path, channels: int) -> Path:
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, None, None, channels), tf.float32, name=INPUT_ID),)
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=ONNX_OPSET, output_path=str(path))
    return path


def _cover(image: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """A 2:1 PNG: the image beside the image with the predicted labels over it in colour."""
    from PIL import Image

    gray = image if image.shape[-1] in (1, 3) else image[..., :3]
    lo, hi = np.percentile(gray, [1, 99.8])
    rgb = np.clip((gray - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb
    # Saturated colours with golden-ratio hue steps: neighbouring ids look different.
    palette = np.array([colorsys.hsv_to_rgb((0.3 + i * 0.618) % 1.0, 0.9, 1.0) for i in range(int(labels.max()) + 1)])
    colour = palette[labels]
    overlay = np.where(labels[..., None] > 0, 0.5 * rgb + 0.5 * colour, rgb)
    side = np.concatenate([rgb, overlay], axis=1)
    Image.fromarray((side * 255).round().astype(np.uint8)).save(path)
    return path


def _readme(bundle: Any) -> str:
    from .model import halo

    cfg, meta = bundle.config, bundle.metadata
    lines = [
        f"# {bundle.label}",
        "",
        f"A {cfg.model.architecture} U-Net (depth {cfg.model.depth}, {cfg.model.base_filters} base filters) trained with "
        f"napari-unet {meta.get('libraries', {}).get('napari_unet', '')} for the **{cfg.data.task}** task; "
        f"classes: {', '.join(cfg.class_names)}.",
        "",
        "## Input and pre-processing",
        "",
        f"One 2D image, axes `batch, y, x, channel` ({cfg.data.in_channels} channel(s)), float32. Height and width "
        f"are multiples of {cfg.size_multiple}; the network sees {halo(cfg)} pixels of context on each side (the "
        "output's halo), so tiles should overlap by that much.",
        "",
        f"`scale_range` maps each image's {cfg.data.norm_low} and {cfg.data.norm_high} percentiles (all pixels and "
        "channels together) to 0 and 1, without clipping, as napari-unet's own normalisation does. Two differences, "
        "far below the test tolerance: the spec divides by `high - low + 1e-6` (napari-unet by `high - low`: a "
        "relative difference of 1e-6 / (high - low)), and napari-unet computes the percentiles of images above 4 "
        "megapixels on a strided subsample of 4 megapixels (measured on 5-7 megapixel mosaics of real uint8 x-ray, "
        "nuclei and EM images: at most 8e-8 apart after normalisation).",
        "",
        "## Output and post-processing",
        "",
        *_postprocessing_text(cfg),
        "",
        "## Validation",
        "",
        *_validation_text(bundle),
        "",
    ]
    return "\n".join(lines)


def _postprocessing_text(cfg: Any) -> list[str]:
    p = cfg.predict
    if cfg.data.task == "binary":
        text = [
            f"The network gives one sigmoid channel; the package's `binarize` step returns `probability > {p.threshold}` "
            "as a 0/1 mask (uint8)."
        ]
        if p.min_size > 1:
            text.append(f"napari-unet then removes connected objects smaller than {p.min_size} pixels.")
        return text
    if cfg.data.task == "classes":
        return [
            f"The network gives softmax probabilities for the classes {', '.join(cfg.class_names)} (channel order). "
            "The label image is their argmax along the channel axis; the spec has no argmax step, so the package "
            "returns the probabilities."
        ]
    interior = p.seed_threshold if p.seed_threshold is not None else p.threshold
    if not p.split_touching:
        steps = ["2. objects are the 4-connected components of the foreground;"]
    elif p.seed_mode == "distance":
        steps = [
            f"2. interior: `p_interior > {interior}` inside the foreground; seeds are the h-maxima (h = {p.seed_h} "
            "pixels) of its Euclidean distance map smoothed with a Gaussian of sigma 1 (8-connected);",
            "3. a watershed of the negated (smoothed) distance map from the seeds, inside the foreground; foreground "
            "pieces no seed reaches become objects of their own;",
        ]
    else:
        steps = [
            f"2. interior: `p_interior > {interior}` inside the foreground; seeds are its 4-connected components;",
            "3. a watershed of `1 - p_interior` from the seeds, inside the foreground; foreground pieces no seed "
            "reaches become objects of their own;",
        ]
    if p.split_touching and p.seed_min_size > 1:
        steps.insert(1, f"   seeds under {p.seed_min_size} pixels are dropped (a neighbouring seed floods them);")
    return [
        "The network gives softmax probabilities of three classes: background, object interior and object boundary "
        f"(boundary width {cfg.data.boundary_width} pixels). The package returns them; objects come from napari-unet's "
        "seeded watershed (`napari_unet.core.targets.probabilities_to_labels`), which the spec cannot express:",
        "",
        f"1. foreground: `1 - p_background > {p.threshold}`;",
        *steps,
        f"4. objects under {p.min_size} pixels are removed." if p.min_size > 1 else "4. no minimum object size.",
    ]


def _validation_text(bundle: Any) -> list[str]:
    meta = bundle.metadata
    metrics = {k: v for k, v in (bundle.metrics or {}).items() if isinstance(v, (int, float))}
    if metrics:
        lines = ["Scores on the held-out validation images (never trained on), computed by napari-unet:", ""]
        lines += ["| metric | value |", "| --- | --- |"] + [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
    else:
        lines = ["No held-out scores were recorded for this version (it had no validation images)."]
    data = bundle.training_data or []
    lines += ["", f"Trained on {len(data)} image(s) (napari-unet records their SHA-256 so they can be identified):", ""]
    lines += [
        f"- `{d.get('name')}`: shape {d.get('shape')}, {d.get('dtype')}, image sha256 `{str(d.get('image_sha256'))[:16]}...`"
        for d in data[:50]
    ]
    if len(data) > 50:
        lines.append(f"- and {len(data) - 50} more")
    if meta.get("parent"):
        lines += ["", f"Fine-tuned from `{meta['parent']}`."]
    lines += [
        "",
        "To validate on your own unseen data: predict with this package, post-process as above, and compare with "
        "ground truth (napari-unet: `napari-unet evaluate`).",
    ]
    return lines


def _describe(
    bundle: Any,
    files: dict[str, Path],
    folder: Path,
    *,
    authors: list[dict],
    license: str,
    cite: list[dict],
    formats: Sequence[str],
) -> Any:
    """The bioimageio.spec model description of the files in `folder`."""
    import tensorflow as tf
    from bioimageio.spec.model import v0_5 as spec

    from .model import halo

    cfg, meta = bundle.config, bundle.metadata
    m, h = cfg.size_multiple, halo(cfg)
    size = spec.ParameterizedSize(min=_min_size(cfg), step=m)
    ids = [_channel_id(n, i) for i, n in enumerate(cfg.class_names)]
    out_channels = ids[1:] if cfg.data.task == "binary" else ids
    input_axes = [
        spec.BatchAxis(),
        spec.SpaceInputAxis(id=spec.AxisId("y"), size=size),
        spec.SpaceInputAxis(id=spec.AxisId("x"), size=size),
        spec.ChannelAxis(channel_names=[spec.Identifier(f"channel{i}") for i in range(cfg.data.in_channels)]),
    ]
    ref = {a: spec.SizeReference(tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(a)) for a in "yx"}
    output_axes = [
        spec.BatchAxis(),
        *(spec.SpaceOutputAxisWithHalo(id=spec.AxisId(a), size=ref[a], halo=h) for a in "yx"),
        spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in out_channels]),
    ]
    scale = spec.ScaleRangeDescr(
        kwargs=spec.ScaleRangeKwargs(
            axes=[spec.AxisId(a) for a in ("y", "x", "channel")],
            min_percentile=cfg.data.norm_low,
            max_percentile=cfg.data.norm_high,
        )
    )
    if cfg.data.task == "binary":
        post = [
            spec.BinarizeDescr(kwargs=spec.BinarizeKwargs(threshold=cfg.predict.threshold)),
            spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="uint8")),
        ]
        out_data = spec.NominalOrOrdinalDataDescr(values=[0, 1], type="uint8")
        out_text = f"0/1 mask: probability > {cfg.predict.threshold}"
    else:
        post = []
        out_data = spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0))
        out_text = f"softmax probabilities of {', '.join(cfg.class_names)}"
    tf_version = spec.Version(tf.__version__)
    weights: dict[str, Any] = {
        "keras_hdf5": spec.KerasHdf5WeightsDescr(
            source=files["keras_hdf5"], tensorflow_version=tf_version, comment="Saved by Keras from napari-unet's model.keras."
        )
    }
    if "tensorflow_saved_model_bundle" in formats:
        weights["tensorflow_saved_model_bundle"] = spec.TensorflowSavedModelBundleWeightsDescr(
            source=files["tensorflow_saved_model_bundle"],
            tensorflow_version=tf_version,
            parent="keras_hdf5",
            comment=f"keras.export.ExportArchive of the same Keras model; endpoint 'serve' returns {{'{OUTPUT_ID}': ...}}.",
        )
    if "onnx" in formats:
        weights["onnx"] = spec.OnnxWeightsDescr(
            source=files["onnx"], opset_version=ONNX_OPSET, parent="keras_hdf5", comment="tf2onnx from the same Keras model."
        )
    name = str(meta.get("name") or bundle.path.parent.name)
    return spec.ModelDescr(
        name=_package_name(bundle),
        description=f"napari-unet {cfg.data.task} U-Net '{name}' version {bundle.version}: {out_text}.",
        authors=[spec.Author(**a) for a in authors],
        cite=[spec.CiteEntry(**c) for c in cite],
        license=spec.LicenseId(license),
        documentation=spec.FileDescr(source=files["readme"]),
        covers=[spec.FileDescr(source=files["cover"])],
        tags=["napari-unet", "unet", "segmentation", cfg.data.task, "2d"],
        inputs=[
            spec.InputTensorDescr(
                id=spec.TensorId(INPUT_ID),
                description="2D image; normalised by the scale_range pre-processing",
                axes=input_axes,
                test_tensor=spec.FileDescr(source=files["test_input"]),
                sample_tensor=spec.FileDescr(source=files["sample_input"]),
                data=spec.IntervalOrRatioDataDescr(type="float32"),
                preprocessing=[scale],
            )
        ],
        outputs=[
            spec.OutputTensorDescr(
                id=spec.TensorId(OUTPUT_ID),
                description=out_text,
                axes=output_axes,
                test_tensor=spec.FileDescr(source=files["test_output"]),
                sample_tensor=spec.FileDescr(source=files["sample_output"]),
                data=out_data,
                postprocessing=post,
            )
        ],
        weights=spec.WeightsDescr(**weights),
        config={CONFIG_KEY: _napari_unet_config(bundle)},
    )


def _napari_unet_config(bundle: Any) -> dict:
    meta = bundle.metadata
    return json.loads(
        json.dumps(
            {
                "config": bundle.config.to_dict(),
                "task": bundle.config.data.task,
                "class_names": bundle.config.class_names,
                "model": str(meta.get("name") or ""),
                "version": bundle.version,
                "created": meta.get("created"),
                "parent": meta.get("parent"),
                "libraries": meta.get("libraries", {}),
            },
            default=str,
        )
    )


def _package_name(bundle: Any) -> str:
    """A bioimage.io name: letters, digits, spaces and ``_-()``, at least 5 characters."""
    raw = f"napari-unet {bundle.metadata.get('name') or 'model'} v{bundle.version or 0:03d}"
    return re.sub(r"[^A-Za-z0-9 _\-()]", "-", raw)[:128]


def _channel_id(name: str, index: int) -> str:
    ident = re.sub(r"\W", "_", str(name)).strip("_") or f"class{index}"
    return ident if not ident[0].isdigit() else f"c{ident}"


def _save_package(descr: Any, out: Path) -> None:
    """Write the package zip to `out` and validate it with bioimageio.spec (BundleError if it does not)."""
    from bioimageio.spec import load_description, save_bioimageio_package

    out.unlink(missing_ok=True)
    save_bioimageio_package(descr, output_path=out)
    summary = load_description(out, perform_io_checks=True).validation_summary
    errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
    if summary.status == "failed" or errors:
        raise BundleError(f"The exported package does not validate ({'; '.join(errors[:3]) or summary.status}); nothing was written.")
