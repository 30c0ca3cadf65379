"""Model files: a Keras model with JSON metadata and history, in numbered version folders.

Layout: ``<root>/<name>/v001/`` holding ``model.keras`` (Keras 3 native format),
``metadata.json`` (config, task, classes, training data, library versions, parent, metrics),
``history.json`` (per-epoch curves). Replay patches (what fine-tuning mixes in so the model does
not forget) live once per model folder in ``<root>/<name>/replay/`` and versions refer to them by
hash (:mod:`.replay`). Nothing is pickled. Versions are written into a
temporary folder and renamed into place, so a crash never leaves a half-written version.
Loading inspects the Keras config before Keras sees it and refuses anything but built-in layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import keras
import numpy as np

from .config import Config
from .paths import ENV_MODEL_DIR, check_model_name, default_model_root, pid_alive  # noqa: F401  (re-exported)
from .errors import BundleError, ConfigError, InputError, OutputError
from . import replay as replay_store
from .outputs import follow_umask, write_atomic
from .versions import (  # noqa: F401  (re-exported)
    checkpoint_dir,
    latest_version,
    list_versions,
    next_version,
    publish,
    read_current,
    replace_checkpoint,
    version_number,
    write_json,
)

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
HISTORY_FILE = "history.json"
REPLAY_DIR = "replay"

_TEMP_PREFIX = ".saving-"
_MAX_ZIP_BYTES = 8 * 1024**3  # refuse zip bombs
_MAX_ZIP_ENTRIES = 100_000

#: Layer classes a model file may contain; everything else (Lambda above all) is refused.
ALLOWED_LAYERS = frozenset(
    {
        "Functional", "Sequential", "InputLayer",
        "Conv2D", "Conv2DTranspose", "SeparableConv2D", "DepthwiseConv2D", "Dense",
        "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
        "UpSampling2D", "ZeroPadding2D", "Cropping2D", "Resizing", "Rescaling", "Normalization",
        "Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
        "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
        "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
        "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
        "Reshape", "Permute", "Flatten", "Identity",
    }
)  # fmt: skip
_ALLOWED_PLACEHOLDERS = frozenset({"__keras_tensor__", "__tuple__", "__slice__", "__ellipsis__"})
_ALLOWED_POLICIES = frozenset({"DTypePolicy", "FloatDTypePolicy"})
# Modules whose public classes are plain parameter objects (no user code).
_PARAM_MODULES = {
    "initializers": keras.initializers.Initializer,
    "regularizers": keras.regularizers.Regularizer,
    "constraints": keras.constraints.Constraint,
}


@dataclass
class ModelBundle:
    """A trained model with everything needed to use, judge and fine-tune it."""

    model: Any  # keras.Model
    config: Config
    history: dict = field(default_factory=dict)
    training_data: list[dict] = field(default_factory=list)
    parent: str | None = None
    metrics: dict = field(default_factory=dict)
    path: Path | None = None
    version: int | None = None
    metadata: dict = field(default_factory=dict)  # on load: all of metadata.json; on save: extra keys

    @property
    def label(self) -> str:
        """Short human name, e.g. ``nuclei v003``."""
        if self.path is None:
            return "this model"
        name = self.metadata.get("name") or self.path.parent.name
        return f"{name} v{self.version:03d}" if self.version else str(self.path)


# ---------------------------------------------------------------- locations and versions


def list_models(root: Path | str | None = None) -> list[Path]:
    """Model folders (those with at least one version) under a root, sorted by name."""
    root = Path(root) if root is not None else default_model_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and list_versions(p))


# ---------------------------------------------------------------- describing training data


def describe_data(name: str, image: Any, labels: Any = None) -> dict:
    """One ``training_data`` entry: name, shape, dtype and SHA-256 of image and label bytes."""
    img = np.ascontiguousarray(np.asarray(image))
    entry: dict[str, Any] = {
        "name": str(name),
        "shape": list(img.shape),
        "dtype": str(img.dtype),
        "image_sha256": hashlib.sha256(img.tobytes()).hexdigest(),
        "labels_sha256": None,
    }
    if labels is not None:
        lab = np.ascontiguousarray(np.asarray(labels))
        entry.update(labels_shape=list(lab.shape), labels_dtype=str(lab.dtype))
        entry["labels_sha256"] = hashlib.sha256(lab.tobytes()).hexdigest()
    return entry


def library_versions() -> dict[str, str]:
    from .. import __version__

    backend = keras.backend.backend()
    backend_module = __import__(backend)
    return {
        "napari_unet": __version__,
        backend: getattr(backend_module, "__version__", "unknown"),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- saving


def save_bundle(
    bundle: ModelBundle,
    root: Path | str,
    name: str,
    replay: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
) -> Path:
    """Write the bundle as the next free version ``<root>/<name>/vNNN`` and return that folder.

    Everything is written to a temporary folder next to the versions, then renamed into
    place; existing versions are never touched. ``replay`` is ``(images, targets)``: normalised
    float32 ``(H, W, C)`` patches and int ``(H, W)`` targets, stored as TIFF for fine-tuning.
    Sets ``bundle.path``, ``bundle.version`` and ``bundle.metadata`` on success.
    """
    model_dir = Path(root).expanduser() / name
    target, metadata = _save(bundle, model_dir, name, replay, lambda tmp, meta: publish(tmp, model_dir, meta["version"]))
    metadata["version"] = version_number(target)
    bundle.path, bundle.version, bundle.metadata = target, metadata["version"], metadata
    return target


def save_checkpoint(
    bundle: ModelBundle,
    root: Path | str,
    name: str,
    job: str,
    replay: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
) -> Path:
    """Write the bundle as job `job`'s checkpoint: a complete version folder, not published yet.

    `versions.promote_checkpoint` publishes it (also from a process without TensorFlow, after the
    job was killed); a later checkpoint of the same job replaces it. Without `replay`, the previous
    checkpoint's replay patches are kept (a job's replay data does not change).
    """
    model_dir = Path(root).expanduser() / name
    target = checkpoint_dir(model_dir, job)
    kept = _checkpoint_replay_keys(target) if replay is None else []
    _save(bundle, model_dir, name, replay, lambda tmp, _meta: replace_checkpoint(tmp, target), kept)
    return target


def _checkpoint_replay_keys(checkpoint: Path) -> list[str]:
    """The replay patches the job's current checkpoint refers to (none when there is no checkpoint yet)."""
    try:
        entry = json.loads((checkpoint / METADATA_FILE).read_text(encoding="utf-8")).get(replay_store.META_KEY)
    except (OSError, ValueError, AttributeError):
        return []
    return replay_store.entry_keys(entry, checkpoint) if entry is not None else []


def _save(
    bundle: ModelBundle,
    model_dir: Path,
    name: str,
    replay: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None,
    place: Any,
    replay_keys: Sequence[str] = (),
) -> tuple[Path, dict]:
    """Check, write everything into a temporary folder, then `place(tmp, metadata)` it; cleans up on failure."""
    _check_name(name)
    cfg = bundle.config.validate()
    in_ch, out_ch = _model_channels(bundle.model)
    _check_model_matches(in_ch, out_ch, cfg, f"The model to save ({name})")
    replay_arrays = _check_replay(replay) if replay is not None else None
    tmp = _temp_folder(model_dir)
    try:
        # Patches first: a published version never refers to a patch that is not on disk.
        keys = replay_store.store_patches(model_dir, *replay_arrays) if replay_arrays else list(replay_keys)
        metadata = _write_folder(bundle, cfg, tmp, name, next_version(model_dir), in_ch, keys)
        return place(tmp, metadata), metadata
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        error = _save_error(exc, model_dir)
        if error is exc:
            raise
        raise error from exc


def _temp_folder(model_dir: Path) -> Path:
    """A fresh ``.saving-<pid>-*`` folder in `model_dir`, readable as the umask allows; stale ones are removed."""
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_folders(model_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-", dir=model_dir))
    except OSError as exc:
        raise BundleError(f"Cannot create the model folder {model_dir}: {exc}. Choose a writable folder.") from exc
    follow_umask(tmp, 0o777)  # published versions follow the umask, so a colleague can read a shared model
    return tmp


#: A temp folder whose pid cannot be read (or whose process still runs) is only removed after this long.
_STALE_TEMP_S = 24 * 3600


def _remove_stale_temp_folders(model_dir: Path) -> None:
    """Remove ``.saving-*`` folders left by processes that died mid-save (SIGKILL, power loss)."""
    import time

    try:
        entries = list(model_dir.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(_TEMP_PREFIX) or entry.is_symlink() or not entry.is_dir():
            continue
        pid_text = entry.name[len(_TEMP_PREFIX) :].split("-", 1)[0]
        try:
            age = time.time() - entry.stat().st_mtime
        except OSError:
            continue
        alive = pid_text.isdigit() and pid_alive(int(pid_text))
        if (pid_text.isdigit() and not alive) or age > _STALE_TEMP_S:
            shutil.rmtree(entry, ignore_errors=True)


def _write_folder(
    bundle: ModelBundle,
    cfg: Config,
    tmp: Path,
    name: str,
    version: int,
    in_ch: int,
    replay_keys: list[str],
) -> dict:
    """Write model, metadata and history into `tmp`; returns the metadata (it lists the replay patches)."""
    model_path = tmp / MODEL_FILE
    from .model import float32_model

    _without_training_state(float32_model(bundle.model, cfg)).save(str(model_path))
    # Never write a file that load_bundle would refuse (e.g. a Lambda layer).
    _inspect_keras_file(model_path, action="save")
    metadata = _build_metadata(bundle, cfg, name, version, in_ch)
    if replay_keys:
        metadata[replay_store.META_KEY] = replay_store.metadata_entry(replay_keys)
    _write_json(tmp / METADATA_FILE, metadata)
    _write_json(tmp / HISTORY_FILE, bundle.history or {})
    _fsync_tree(tmp)
    return metadata


def _without_training_state(model: Any) -> Any:
    """The same layers (and weights) without the optimizer: a compiled model's .keras file also holds
    the optimizer's moments, twice the weights (4 of a 6 MB file), which loading never reads
    (compile=False) and fine-tuning never uses (it builds a fresh optimizer)."""
    if getattr(model, "optimizer", None) is None:
        return model
    return keras.Model(model.inputs, model.outputs, name=model.name)


def _save_error(exc: BaseException, model_dir: Path) -> BaseException:
    if isinstance(exc, (BundleError, ConfigError, InputError)) or not isinstance(exc, Exception):
        return exc
    return BundleError(f"Saving the model to {model_dir} failed: {exc}. Earlier versions are unchanged.")


def _check_name(name: str) -> None:
    try:
        check_model_name(name)
    except InputError as exc:
        raise BundleError(str(exc)) from exc


def _build_metadata(bundle: ModelBundle, cfg: Config, name: str, version: int, in_channels: int) -> dict:
    computed = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parent": None if bundle.parent is None else str(bundle.parent),
        "task": cfg.data.task,
        "class_names": cfg.class_names,
        "in_channels": in_channels,
        "n_outputs": cfg.n_outputs,
        "config": cfg.to_dict(),
        "training_data": list(bundle.training_data or []),
        "metrics": dict(bundle.metrics or {}),
        "libraries": library_versions(),
    }
    # A loaded bundle's replay entry names patches of its own model folder: never carried over silently.
    extra = {k: v for k, v in (bundle.metadata or {}).items() if k not in computed and k != replay_store.META_KEY}
    return {**computed, **extra}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "numpy"):  # eager tensors in a Keras history
        return np.asarray(obj).tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _write_json(path: Path, data: Any) -> None:
    write_json(path, data, default=_json_default)


def _fsync_tree(folder: Path) -> None:
    """Flush file contents to disk before the rename makes them visible."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


# ---------------------------------------------------------------- replay data


def _check_replay(replay: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    try:
        images, targets = replay
    except (TypeError, ValueError) as exc:
        raise InputError("replay must be a pair (images, targets).") from exc
    images = [np.asarray(a) for a in images]
    targets = [np.asarray(t) for t in targets]
    if len(images) != len(targets):
        raise InputError(f"replay has {len(images)} images but {len(targets)} targets; they must pair up.")
    out_images, out_targets = [], []
    for i, (img, tgt) in enumerate(zip(images, targets)):
        if img.ndim != 3 or tgt.ndim != 2 or img.shape[:2] != tgt.shape:
            raise InputError(
                f"replay item {i}: image {img.shape} and target {tgt.shape} must be (H, W, C) and (H, W)."
            )
        if not np.issubdtype(img.dtype, np.number) or not np.issubdtype(tgt.dtype, np.integer):
            raise InputError(
                f"replay item {i}: need a numeric image and an integer target, got {img.dtype} and {tgt.dtype}."
            )
        out_images.append(np.ascontiguousarray(img, dtype=np.float32))
        out_targets.append(np.ascontiguousarray(tgt, dtype=np.int32))
    return out_images, out_targets


def load_replay(path: Path | str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Replay data of a version: lists of float32 ``(H, W, C)`` images and int32 ``(H, W)`` targets;
    two empty lists when the version has none (a bioimage.io package has none). ``path`` as for
    :func:`load_bundle`."""
    from .bioimageio_import import is_package

    if is_package(path):
        return [], []
    with _resolved_version(path) as (version_dir, _):
        return replay_store.load_version_replay(version_dir, _read_metadata(version_dir))


# ---------------------------------------------------------------- loading


def load_bundle(path: Path | str) -> ModelBundle:
    """Load a version folder, a model folder (its newest version) or a ``.zip`` of a version.

    The Keras file is checked first: only built-in layers and Keras modules are accepted,
    then it is loaded with ``safe_mode=True`` and without its training configuration.
    A bioimage.io package (a .zip or folder with rdf.yaml) loads through `bioimageio_import`.
    """
    from .bioimageio_import import is_package, load_package

    if is_package(path):
        return load_package(path)
    with _resolved_version(path) as (version_dir, shown):
        metadata = _read_metadata(version_dir)
        cfg = _config_from_metadata(metadata, version_dir)
        model_path = version_dir / MODEL_FILE
        if not model_path.is_file():
            raise BundleError(f"{version_dir} has no {MODEL_FILE}; the model folder is incomplete.")
        _inspect_keras_file(model_path)
        try:
            model = keras.saving.load_model(str(model_path), compile=False, safe_mode=True)
        except Exception as exc:
            raise BundleError(f"Keras could not load {model_path}: {exc}") from exc
        in_ch, out_ch = _model_channels(model)
        _check_model_matches(in_ch, out_ch, cfg, f"The model in {version_dir}")
        top = metadata.get("in_channels")
        if top is not None and top != cfg.data.in_channels:
            raise BundleError(
                f"{version_dir / METADATA_FILE} says in_channels={top} but its config says "
                f"{cfg.data.in_channels}; the file was edited by hand. Fix it or re-save the model."
            )
        history = _read_json(version_dir / HISTORY_FILE) if (version_dir / HISTORY_FILE).exists() else {}
        version = metadata.get("version")
        return ModelBundle(
            model=model,
            config=cfg,
            history=history if isinstance(history, dict) else {},
            training_data=list(metadata.get("training_data") or []),
            parent=metadata.get("parent"),
            metrics=dict(metadata.get("metrics") or {}),
            path=shown,
            version=int(version) if isinstance(version, int) else None,
            metadata=metadata,
        )


@contextmanager
def _resolved_version(path: Path | str) -> Iterator[tuple[Path, Path]]:
    """Yield ``(version_dir, path_to_report)`` for any accepted path; zips are unpacked to a temp dir."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BundleError(f"Model path {p} does not exist. Check the path, or look in {default_model_root()}.")
    if p.is_file() and p.name in (MODEL_FILE, METADATA_FILE) and (p.parent / METADATA_FILE).exists():
        p = p.parent
    if p.is_file():
        if p.suffix.lower() == ".keras":
            raise BundleError(
                f"{p} is a bare Keras file; napari-unet loads the folder holding it together with "
                f"{METADATA_FILE} (a version folder such as v001), or a .zip made by export_zip."
            )
        if not zipfile.is_zipfile(p):
            raise BundleError(f"{p} is neither a model folder nor a model .zip.")
        with tempfile.TemporaryDirectory(prefix="napari-unet-zip-") as tmp:
            yield _find_version_dir(_safe_extract(p, Path(tmp)), p), p
        return
    if (p / METADATA_FILE).exists() or (p / MODEL_FILE).exists():
        yield p, p
        return
    latest = read_current(p)  # the newest version, unless the user rolled back to an older one
    if latest is None:
        raise BundleError(
            f"{p} is not a napari-unet model folder: it holds neither {METADATA_FILE} and "
            f"{MODEL_FILE} nor version folders (v001, v002, ...)."
        )
    yield latest, latest


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "the file is damaged or was edited by hand."
        ) from exc
    except RecursionError as exc:
        raise BundleError(f"{path} is nested too deeply to be napari-unet metadata; the file is damaged.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"Cannot read {path}: {exc}") from exc


def _read_metadata(version_dir: Path) -> dict:
    path = version_dir / METADATA_FILE
    if not path.is_file():
        raise BundleError(
            f"{version_dir} is missing {METADATA_FILE}, so its task and settings are unknown; "
            "it was not saved by napari-unet or the save was incomplete."
        )
    meta = _read_json(path)
    if not isinstance(meta, dict):
        raise BundleError(f"{path} must hold a JSON object.")
    fmt = meta.get("format_version")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise BundleError(f"{path} has no valid format_version; it was not written by napari-unet.")
    if fmt > FORMAT_VERSION:
        raise BundleError(
            f"{version_dir} was made by a newer napari-unet (model format {fmt}, this version reads up to "
            f"{FORMAT_VERSION}); upgrade napari-unet to load it."
        )
    if fmt < 1:
        raise BundleError(f"{path} has format_version {fmt}, which no napari-unet writes; the file is damaged.")
    _check_metadata_types(meta, path)
    return meta


#: Top-level metadata keys and the JSON types they must have when present.
_METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "version": (int,), "created": (str,), "parent": (str, type(None)), "task": (str,),
    "class_names": (list,), "in_channels": (int,), "n_outputs": (int,), "config": (dict,),
    "training_data": (list,), "metrics": (dict,), "libraries": (dict,), replay_store.META_KEY: (dict,),
}  # fmt: skip


def _check_metadata_types(meta: dict, path: Path) -> None:
    """Refuse metadata whose known keys have the wrong JSON type or an impossible value."""
    for key, types_ in _METADATA_TYPES.items():
        if key not in meta:
            continue
        value = meta[key]
        if not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_):
            want = " or ".join("null" if t is type(None) else {"str": "a string", "int": "a whole number",
                               "list": "a list", "dict": "an object"}[t.__name__] for t in types_)  # fmt: skip
            raise BundleError(
                f"{path}: '{key}' must be {want}, got {type(value).__name__}; the file was damaged or edited by hand."
            )
    for key in ("version", "in_channels", "n_outputs"):
        if key in meta and meta[key] < 1:
            raise BundleError(f"{path}: '{key}' must be 1 or more, got {meta[key]}; the file was damaged or edited.")
    if any(not isinstance(n, str) for n in meta.get("class_names") or []):
        raise BundleError(f"{path}: 'class_names' must be a list of strings; the file was damaged or edited.")
    if any(not isinstance(d, dict) for d in meta.get("training_data") or []):
        raise BundleError(f"{path}: 'training_data' must be a list of objects; the file was damaged or edited.")


def _config_from_metadata(meta: dict, version_dir: Path) -> Config:
    raw = meta.get("config")
    if not isinstance(raw, dict):
        raise BundleError(f"{version_dir / METADATA_FILE} has no 'config' section; re-save the model.")
    try:
        return Config.from_dict(raw).validate()  # types and ranges, e.g. a threshold of 9
    except (ConfigError, TypeError, ValueError) as exc:
        raise BundleError(f"The config in {version_dir / METADATA_FILE} is invalid: {exc}") from exc


def _model_channels(model: Any) -> tuple[int, int]:
    if not isinstance(model, keras.Model):
        raise BundleError(f"Expected a keras.Model, got {type(model).__name__}.")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise BundleError("napari-unet models have exactly one image input and one output.")
    return int(model.inputs[0].shape[-1]), int(model.outputs[0].shape[-1])


def _check_model_matches(in_ch: int, out_ch: int, cfg: Config, what: str) -> None:
    if in_ch != cfg.data.in_channels:
        raise BundleError(
            f"{what} takes {in_ch} input channel(s) but its config says data.in_channels="
            f"{cfg.data.in_channels}; the model and its metadata do not belong together."
        )
    if out_ch != cfg.n_outputs:
        raise BundleError(
            f"{what} has {out_ch} output channel(s) but a {cfg.data.task} task needs {cfg.n_outputs}; "
            "the model and its metadata do not belong together."
        )


def check_compatible(bundle: ModelBundle, in_channels: int | None = None, task: str | None = None) -> None:
    """Raise BundleError saying what to do when the model cannot serve this image or task."""
    cfg = bundle.config
    if in_channels is not None and in_channels != cfg.data.in_channels:
        raise BundleError(
            f"Model {bundle.label} expects images with {cfg.data.in_channels} channel(s), but this image has "
            f"{in_channels}. Pick a model trained on {in_channels}-channel images, train a new one, or convert "
            f"the image to {cfg.data.in_channels} channel(s)."
        )
    if task is not None and task != cfg.data.task:
        raise BundleError(
            f"Model {bundle.label} was trained for the '{cfg.data.task}' task, not '{task}'. "
            f"Pick a {task} model or train a new one."
        )


# ---------------------------------------------------------------- model-file safety


def _inspect_keras_file(model_path: Path, action: str = "load") -> None:
    """Check the .keras archive is intact and names only trusted built-in Keras classes."""
    try:
        with zipfile.ZipFile(model_path) as zf:
            broken = zf.testzip()
            if broken is not None:
                raise zipfile.BadZipFile(f"checksum error in {broken}")
            raw = zf.read("config.json")
    except KeyError as exc:
        raise BundleError(f"{model_path} has no config.json; it is not a Keras 3 model file.") from exc
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
        # RuntimeError: an encrypted entry; NotImplementedError: an unsupported compression method.
        raise BundleError(
            f"{model_path} is corrupt or truncated ({exc}); restore it from a copy or use another version."
        ) from exc
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{model_path} holds an unreadable config.json ({type(exc).__name__}).") from exc
    if not isinstance(config, dict) or config.get("class_name") not in ("Functional", "Sequential"):
        raise BundleError(f"{model_path} is not a functional or sequential Keras model; refusing to {action}.")
    check_keras_config(config, model_path, action)


def check_keras_config(config: dict, model_path: Path, action: str = "load") -> None:
    """Refuse a Keras model config (of a .keras or .h5 file) that names anything but trusted built-in classes."""
    if config.get("class_name") not in ("Functional", "Sequential"):
        raise BundleError(f"{model_path} is not a functional or sequential Keras model; refusing to {action}.")
    # compile=False drops the top-level training config (losses, optimizer), so it is never deserialized.
    body = {k: v for k, v in config.items() if k not in ("compile_config", "training_config")}
    try:
        for obj in _class_entries(body):
            _check_entry(obj, model_path, action)
    except RecursionError as exc:
        raise BundleError(f"{model_path} holds a model config nested too deeply to check; refusing to {action}.") from exc


def _class_entries(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        if "class_name" in node:
            yield node
        for value in node.values():
            yield from _class_entries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _class_entries(value)


def _check_entry(obj: dict, model_path: Path, action: str) -> None:
    cls, module, registered = obj.get("class_name"), obj.get("module"), obj.get("registered_name")
    if cls in ("Lambda", "__lambda__"):
        raise BundleError(f"{model_path} contains a Lambda layer (arbitrary code); refusing to {action}.")
    refuse = BundleError(
        f"{model_path} uses {cls!r} from module {module!r}, which is not a built-in Keras layer "
        f"napari-unet trusts; refusing to {action}. Only load such a model in Python if you trust its source."
    )
    if not isinstance(cls, str) or registered not in (None, cls):
        raise refuse
    if module is not None and not (isinstance(module, str) and (module == "keras" or module.startswith("keras."))):
        if not (cls == "function" and module == "builtins"):
            raise refuse
    if cls in ALLOWED_LAYERS or cls in _ALLOWED_POLICIES or (module is None and cls in _ALLOWED_PLACEHOLDERS):
        return
    if cls == "function" and _is_builtin_activation(obj.get("config")):
        return
    # Keras 2 (.h5) configs name initializers, regularizers and constraints without a module.
    for kind in [_param_kind(module)] if module is not None else list(_PARAM_MODULES):
        if kind is None:
            continue
        found = getattr(getattr(keras, kind), cls, None)
        if isinstance(found, type) and issubclass(found, _PARAM_MODULES[kind]):
            return
    raise refuse


def _param_kind(module: Any) -> str | None:
    if not isinstance(module, str):
        return None
    parts = module.split(".")
    for kind in _PARAM_MODULES:
        if parts[:2] == ["keras", kind] or parts[:3] == ["keras", "src", kind]:
            return kind
    return None


def _is_builtin_activation(name: Any) -> bool:
    if not isinstance(name, str) or name.startswith("_") or name in ("get", "serialize", "deserialize"):
        return False
    return callable(getattr(keras.activations, name, None))


# ---------------------------------------------------------------- zip export and import


def export_zip(version_path: Path | str, zip_path: Path | str, overwrite: bool = False) -> Path:
    """Write one version (a model folder means its newest) to a .zip that load_bundle reads.

    An existing ``zip_path`` is never replaced unless ``overwrite`` (the output policy of core.outputs).
    """
    with _resolved_version(version_path) as (version_dir, _):
        if not (version_dir / METADATA_FILE).is_file():
            raise BundleError(f"{version_dir} is missing {METADATA_FILE}; nothing to export.")
        zip_path = Path(zip_path).expanduser()
        if zip_path.exists() and not overwrite:
            raise OutputError(f"{zip_path} already exists; choose another name or pass overwrite=True.")
        prefix = f"{version_dir.parent.name}-{version_dir.name}"
        # The lineage's replay patches this version uses travel inside the version folder.
        shared = [p for p in replay_store.referenced_files(version_dir, _read_metadata(version_dir))
                  if not p.is_relative_to(version_dir)]  # fmt: skip

        def write(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(version_dir.rglob("*")):
                    if path.is_file():
                        zf.write(path, f"{prefix}/{path.relative_to(version_dir).as_posix()}")
                for path in shared:
                    zf.write(path, f"{prefix}/{replay_store.STORE_DIR}/{path.name}")

        return write_atomic(zip_path, write, overwrite=overwrite)


def _safe_extract(zip_path: Path, dest: Path) -> Path:
    """Extract refusing absolute paths, '..', links and oversized archives."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            if len(infos) > _MAX_ZIP_ENTRIES or sum(i.file_size for i in infos) > _MAX_ZIP_BYTES:
                raise BundleError(f"{zip_path} is too large to be a napari-unet model; refusing to unpack it.")
            _check_zip_entries(infos, zip_path)
            for info in infos:
                name = info.filename.replace("\\", "/")
                parts = PurePosixPath(name).parts
                if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
                    raise BundleError(f"{zip_path} contains an unsafe path {info.filename!r}; refusing to unpack it.")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise BundleError(f"{zip_path} contains a symbolic link {info.filename!r}; refusing to unpack it.")
                target = dest.joinpath(*parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        raise BundleError(f"{zip_path} is corrupt or truncated ({exc}).") from exc
    except OSError as exc:  # a file/folder collision the checks missed, or a full temp disk
        raise BundleError(f"Cannot unpack {zip_path}: {exc.strerror or exc}.") from exc
    return dest


_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


def _check_zip_entries(infos: list, zip_path: Path) -> None:
    """Refuse encrypted entries, unknown compression methods, duplicate names and file/folder collisions."""
    files: set[tuple[str, ...]] = set()
    folders: set[tuple[str, ...]] = set()
    for info in infos:
        if info.flag_bits & 0x1:
            raise BundleError(f"{zip_path} has an encrypted entry {info.filename!r}; napari-unet models are never encrypted.")
        if info.compress_type not in _ZIP_METHODS:
            raise BundleError(
                f"{zip_path} entry {info.filename!r} uses compression method {info.compress_type}, which napari-unet "
                f"cannot unpack ({', '.join(_ZIP_METHODS.values())}); re-create the zip with export_zip."
            )
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if not parts:
            raise BundleError(f"{zip_path} has an entry with an empty name; refusing to unpack it.")
        folders.update(parts[:i] for i in range(1, len(parts)))
        if info.is_dir():
            folders.add(parts)
        elif parts in files:
            raise BundleError(f"{zip_path} holds {info.filename!r} twice; refusing to unpack it.")
        else:
            files.add(parts)
    clash = files & folders
    if clash:
        raise BundleError(
            f"{zip_path} holds {'/'.join(sorted(clash)[0])!r} both as a file and as a folder; refusing to unpack it."
        )


def _find_version_dir(folder: Path, zip_path: Path) -> Path:
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    found = [p for p in candidates if (p / METADATA_FILE).is_file() or (p / MODEL_FILE).is_file()]
    if len(found) != 1:
        raise BundleError(
            f"{zip_path} does not hold exactly one napari-unet model version "
            f"({METADATA_FILE} and {MODEL_FILE}); make it with export_zip."
        )
    return found[0]
