"""One typed configuration (model, data, training, prediction) that flows everywhere.

It is saved as JSON inside every model file, so a model carries what prediction needs.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

Task = Literal["binary", "classes", "instances"]
TASKS: tuple[str, ...] = ("binary", "classes", "instances")
LOSSES: tuple[str, ...] = ("bce", "dice", "bce_dice", "cce", "focal", "cce_dice")
# "imported": a network from a bioimage.io package (core/bioimageio_import.py), never rebuilt;
# fine-tuning trains a copy of it.
ARCHITECTURES: tuple[str, ...] = ("unet", "mobilenetv2", "imported")
UPSAMPLINGS: tuple[str, ...] = ("transpose", "bilinear")
VAL_MODES: tuple[str, ...] = ("auto", "image", "region")
KEEP_MODES: tuple[str, ...] = ("best", "last")
SELECT_METRICS: tuple[str, ...] = ("auto", "dice", "object_f1", "loss")
SEED_MODES: tuple[str, ...] = ("distance", "components")

#: Value used inside training targets for pixels excluded from loss and metrics.
IGNORE_TARGET = -1
#: Label value of painted background in sparse mode (0 means "not annotated" there).
DEFAULT_BACKGROUND_LABEL = 255


@dataclass
class ModelConfig:
    """U-Net architecture. The defaults are the "Fast (CPU)" preset measured in docs/benchmarks.md."""

    architecture: str = "unet"  # "unet" or "mobilenetv2" (pretrained encoder, 3 input channels)
    depth: int = 4  # number of poolings
    base_filters: int = 8  # doubled at every level
    batch_norm: bool = False
    dropout: float = 0.0  # in the two deepest blocks
    upsampling: str = "transpose"  # "transpose" (Conv2DTranspose) or "bilinear" (UpSampling2D + conv)
    encoder_weights: str | None = None  # local weights file for the mobilenetv2 encoder


@dataclass
class DataConfig:
    """What the labels mean and how images become training patches."""

    task: str = "binary"
    n_classes: int = 2  # "classes": label value = class id in 0..n_classes-1
    class_names: list[str] = field(default_factory=list)  # empty: derived from task
    in_channels: int = 1
    ignore_label: int | None = None  # label value excluded from loss and metrics (unannotated pixels)
    # Sparse annotation (strokes): 0 = not annotated (ignored), `background_label` = background,
    # other values = objects (binary, instances) or class ids (classes). See targets.sparse_labels.
    sparse: bool = False
    background_label: int = DEFAULT_BACKGROUND_LABEL
    boundary_width: int = 2  # "instances": width of the boundary class in pixels
    norm_low: float = 1.0  # percentiles for per-image normalisation
    norm_high: float = 99.8
    # Steps of an imported bioimage.io model ({"id", "kwargs"}, core/preprocessing.py), applied
    # instead of the percentile normalisation above; empty for napari-unet's own models.
    preprocessing: list[dict] = field(default_factory=list)
    patch_size: int = 256
    foreground_fraction: float = 0.5  # share of patches centred on a foreground pixel
    flips: bool = True
    rotations: bool = True  # 90-degree rotations
    intensity: bool = True  # random intensity scale and shift
    elastic: bool = False
    val_fraction: float = 0.15
    val_mode: str = "auto"  # "image" holds out whole images, "region" a strip of each image


@dataclass
class TrainConfig:
    """Optimisation."""

    # Training ends at Stop, at `time_limit_s`, by early stopping or after `epochs` (an upper bound:
    # 200 x 50 steps is about 20 minutes on 2 CPU cores for the default network).
    epochs: int = 200
    steps_per_epoch: int = 50  # also how often the validation images are scored and a model selected
    batch_size: int = 4
    learning_rate: float = 1e-3
    loss: str = "auto"  # "auto": bce_dice for binary, cce_dice otherwise
    class_weights: list[float] | None = None
    early_stopping_patience: int = 12  # epochs without a better validation score; 0 disables
    reduce_lr_patience: int = 5  # epochs; 0 disables
    seed: int = 0
    mixed_precision: str = "auto"  # "auto": mixed_float16 on a GPU, mixed_bfloat16 on a bfloat16 CPU; or "off"
    replay_fraction: float = 0.5  # fine-tuning: share of patches from the data the model saw before
    finetune_lr_factor: float = 0.2  # fine-tuning learning rate = learning_rate * this
    # Fine-tuning: after every step each weight moves this share of the way back to the parent's
    # (decoupled L2-SP: the model learns the new images but stays near what it knew); 0: off.
    # Chosen by the hitl benchmark (docs/benchmarks.md): 0.01 stopped the new domain from learning.
    finetune_anchor: float = 0.002
    # Model selection (docs/benchmarks.md, "Good masks by default"): after every epoch the validation
    # images are predicted whole and scored with what the user wants, not with the loss.
    keep: str = "best"  # "best": the epoch with the best validation score; "last": the last epoch
    select_metric: str = "auto"  # "auto": object_f1 for instances, foreground dice otherwise; or "dice", "loss"
    time_limit_s: float = 0.0  # wall-clock budget in seconds (0: none); ends training as Stop does
    early_stopping_min_s: float = 120.0  # early stopping never ends a run before this many seconds
    tune_postprocessing: bool = True  # tune predict.threshold/seed_threshold/min_size on the validation data
    finetune_epochs: int = 5  # epochs of a fine-tuning round when none are given (never the parent's)
    finetune_time_limit_s: float = 45.0  # training budget of a fine-tuning round (0: none); the round,
    # with data preparation, scoring and saving, then stays within about a minute on 2 CPU cores


@dataclass
class PredictConfig:
    """Tiling and post-processing, saved with the model as its defaults."""

    tile_size: int = 1024
    overlap: int = 112  # context on each side of a tile; raised to the network's halo when smaller
    batch_size: int = 4
    threshold: float = 0.5
    min_size: int = 0  # objects smaller than this (pixels) are removed
    split_touching: bool = True  # "instances": seeded watershed from object interiors
    seed_threshold: float | None = None  # "instances": interior probability of a seed (None: threshold)
    seed_min_size: int = 0  # "instances": seeds smaller than this (pixels) merge into a neighbour
    seed_mode: str = "distance"  # "instances": "distance" (h-maxima of the interior's distance map) or "components"
    seed_h: float = 0.5  # "instances", seed_mode "distance": a seed is a distance maximum this many pixels high
    tuned: bool = False  # threshold, seed_threshold and min_size were tuned on validation data


@dataclass
class Config:
    """Everything that defines a model and how it is trained and applied."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    @property
    def n_outputs(self) -> int:
        """Channels of the network head: 1 (sigmoid) for binary, else softmax classes."""
        if self.data.task == "binary":
            return 1
        if self.data.task == "instances":
            return 3
        return self.data.n_classes

    @property
    def class_names(self) -> list[str]:
        if self.data.class_names:
            return list(self.data.class_names)
        if self.data.task == "binary":
            return ["background", "foreground"]
        if self.data.task == "instances":
            return ["background", "interior", "boundary"]
        return [f"class {i}" for i in range(self.data.n_classes)]

    @property
    def loss(self) -> str:
        if self.train.loss != "auto":
            return self.train.loss
        return "bce_dice" if self.data.task == "binary" else "cce_dice"

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 32 if self.model.architecture == "mobilenetv2" else 2**self.model.depth

    def validate(self) -> Config:
        """Raise ConfigError for invalid or contradictory values; return self."""
        m, d, t, p = self.model, self.data, self.train, self.predict
        _check_types(self)
        _choice("model.architecture", m.architecture, ARCHITECTURES)
        _choice("model.upsampling", m.upsampling, UPSAMPLINGS)
        _choice("data.task", d.task, TASKS)
        _choice("data.val_mode", d.val_mode, VAL_MODES)
        if t.loss != "auto":
            _choice("train.loss", t.loss, LOSSES)
        _range("model.depth", m.depth, 1, 6)
        _range("model.base_filters", m.base_filters, 1, 512)
        _range("model.dropout", m.dropout, 0.0, 0.9)
        _range("data.in_channels", d.in_channels, 1, 64)
        _range("data.n_classes", d.n_classes, 2, 255)
        _range("data.val_fraction", d.val_fraction, 0.0, 0.5)
        _range("data.foreground_fraction", d.foreground_fraction, 0.0, 1.0)
        _range("data.boundary_width", d.boundary_width, 1, 16)
        _range("train.epochs", t.epochs, 1, 100000)
        _range("train.steps_per_epoch", t.steps_per_epoch, 1, 1000000)
        _range("train.batch_size", t.batch_size, 1, 4096)
        _range("train.replay_fraction", t.replay_fraction, 0.0, 0.95)
        _range("predict.threshold", p.threshold, 0.0, 1.0)
        _choice("train.keep", t.keep, KEEP_MODES)
        _choice("train.select_metric", t.select_metric, SELECT_METRICS)
        _range("train.time_limit_s", t.time_limit_s, 0.0, 1e9)
        _range("train.early_stopping_min_s", t.early_stopping_min_s, 0.0, 1e9)
        _range("train.finetune_epochs", t.finetune_epochs, 1, 100000)
        _range("train.finetune_time_limit_s", t.finetune_time_limit_s, 0.0, 1e9)
        if p.seed_threshold is not None:
            _range("predict.seed_threshold", p.seed_threshold, 0.0, 1.0)
        _range("predict.min_size", p.min_size, 0, 10**9)
        _range("predict.seed_min_size", p.seed_min_size, 0, 10**9)
        _choice("predict.seed_mode", p.seed_mode, SEED_MODES)
        _range("predict.seed_h", p.seed_h, 0.0, 1e6)
        if not 0 <= d.norm_low < d.norm_high <= 100:
            raise ConfigError(
                f"data.norm_low ({d.norm_low}) must be below data.norm_high ({d.norm_high}), both in 0..100."
            )
        if not (math.isfinite(t.learning_rate) and 0 < t.learning_rate <= 10):
            raise ConfigError(f"train.learning_rate must be a positive number (e.g. 0.001), got {t.learning_rate}.")
        _check_values(self)
        if d.patch_size % self.size_multiple:
            raise ConfigError(
                f"data.patch_size ({d.patch_size}) must be a multiple of {self.size_multiple} "
                f"for a network of depth {m.depth}."
            )
        if p.tile_size % self.size_multiple or p.tile_size <= 2 * p.overlap:
            raise ConfigError(
                f"predict.tile_size ({p.tile_size}) must be a multiple of {self.size_multiple} "
                f"and larger than twice the overlap ({p.overlap})."
            )
        if t.class_weights is not None and len(t.class_weights) != max(self.n_outputs, 2):
            raise ConfigError(
                f"train.class_weights has {len(t.class_weights)} values; "
                f"the {d.task} task needs {max(self.n_outputs, 2)} (one per class)."
            )
        if d.class_names and len(d.class_names) != max(self.n_outputs, 2):
            raise ConfigError(
                f"data.class_names has {len(d.class_names)} names; "
                f"the {d.task} task has {max(self.n_outputs, 2)} classes."
            )
        if d.preprocessing:
            from .preprocessing import check_steps

            check_steps(d.preprocessing)
        if m.architecture == "mobilenetv2" and d.in_channels != 3:
            raise ConfigError("The mobilenetv2 encoder needs 3 input channels (RGB); use the plain unet.")
        if d.task == "binary" and self.loss in ("cce", "cce_dice"):
            raise ConfigError("Categorical losses need a classes or instances task; use bce, dice, bce_dice or focal.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build from a (possibly partial) dict; unknown keys and values of the wrong type are an error."""
        if not isinstance(raw, dict):
            raise ConfigError(f"A config must be a JSON object with sections model, data, train, predict; got {_type_name(raw)}.")
        if any(not isinstance(k, str) for k in raw):
            raise ConfigError("Config section names must be strings.")
        parts = {}
        for name, part_cls in (
            ("model", ModelConfig),
            ("data", DataConfig),
            ("train", TrainConfig),
            ("predict", PredictConfig),
        ):
            values = raw.get(name)
            if values is None:
                values = {}
            if not isinstance(values, dict):
                raise ConfigError(f"The config section {name!r} must be a JSON object, got {_type_name(values)}.")
            values = dict(values)
            known = {f.name for f in dataclasses.fields(part_cls)}
            unknown = set(values) - known
            if unknown:
                raise ConfigError(f"Unknown option(s) in {name}: {', '.join(sorted(unknown))}.")
            parts[name] = part_cls(**_typed_values(name, part_cls, values))
        extra = set(raw) - set(parts)
        if extra:
            raise ConfigError(f"Unknown config section(s): {', '.join(sorted(extra))}.")
        return cls(**parts)

    def replace(self, **sections: dict[str, Any]) -> Config:
        """Copy with some fields changed, e.g. ``cfg.replace(train={"epochs": 3})``."""
        raw = self.to_dict()
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        return Config.from_dict(raw)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


def _range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}; got {value}.")


# ---------------------------------------------------------------- generic type and value checks
# The expected type of every field comes from its annotation (or, failing that, its default), so
# fields added to the dataclasses are checked without touching this code.

_HINTS: dict[type, dict[str, Any]] = {}


def _type_name(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _hints(part_cls: type) -> dict[str, Any]:
    if part_cls not in _HINTS:
        try:
            hints = typing.get_type_hints(part_cls)
        except Exception:  # an annotation that does not resolve: fall back to the defaults' types
            hints = {}
        for f in dataclasses.fields(part_cls):
            if f.name not in hints:
                default = f.default if f.default is not dataclasses.MISSING else None
                if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                    default = f.default_factory()  # type: ignore[misc]
                hints[f.name] = type(default) if default is not None else Any
        _HINTS[part_cls] = hints
    return _HINTS[part_cls]


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the annotated type (int for float, whole float for int), else ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(hint, types.UnionType)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"{name} has an invalid value {_type_name(value)}.")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, args))}; got {_type_name(value)}.")
    if origin in (list, tuple, set, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {_type_name(value)}.")
        item = args[0] if args else Any
        return [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be an object, got {_type_name(value)}.")
        return value
    if hint is bool:
        if isinstance(value, (bool,)):
            return value
        raise ConfigError(f"{name} must be true or false, got {_type_name(value)}.")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a whole number, got {_type_name(value)}.")
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                raise ConfigError(f"{name} must be a whole number, got {value}.")
            return int(value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {_type_name(value)}.")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}.")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {_type_name(value)}.")
        return value
    return value


def _typed_values(section: str, part_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    hints = _hints(part_cls)
    return {k: _coerce(f"{section}.{k}", v, hints.get(k, Any)) for k, v in values.items()}


def _check_types(cfg: Config) -> None:
    """Type-check (and normalise int/float) every field of every section, in place."""
    for f in dataclasses.fields(cfg):
        part = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(part):
            raise ConfigError(f"Config.{f.name} must be a {f.name} section, got {_type_name(part)}.")
        hints = _hints(type(part))
        for pf in dataclasses.fields(part):
            value = _coerce(f"{f.name}.{pf.name}", getattr(part, pf.name), hints.get(pf.name, Any))
            object.__setattr__(part, pf.name, value)


def _check_values(cfg: Config) -> None:
    """Ranges the explicit checks in validate() do not cover: sizes above zero, counts not negative."""
    d, t, p = cfg.data, cfg.train, cfg.predict
    _range("data.patch_size", d.patch_size, cfg.size_multiple, 16384)
    _range("predict.tile_size", p.tile_size, cfg.size_multiple, 65536)
    _range("predict.overlap", p.overlap, 0, 16384)
    _range("predict.batch_size", p.batch_size, 1, 4096)
    _range("train.early_stopping_patience", t.early_stopping_patience, 0, 10**6)
    _range("train.reduce_lr_patience", t.reduce_lr_patience, 0, 10**6)
    _range("train.seed", t.seed, 0, 2**32 - 1)
    _range("train.finetune_lr_factor", t.finetune_lr_factor, 1e-6, 100.0)
    _range("train.finetune_anchor", t.finetune_anchor, 0.0, 1.0)
    if t.class_weights is not None and any(not (w >= 0 and math.isfinite(w)) for w in t.class_weights):
        raise ConfigError(f"train.class_weights must be finite and not negative; got {t.class_weights}.")
    if d.ignore_label is not None:
        _range("data.ignore_label", d.ignore_label, 0, 2**32 - 1)
    _range("data.background_label", d.background_label, 1, 2**32 - 1)
    if d.sparse and d.ignore_label not in (None, 0):
        raise ConfigError(
            f"data.sparse ignores unpainted pixels (0); data.ignore_label ({d.ignore_label}) cannot be set as well."
        )
    if d.sparse and d.task == "classes" and d.background_label < d.n_classes:
        raise ConfigError(
            f"data.background_label ({d.background_label}) is a class id of the classes task "
            f"(1..{d.n_classes - 1}); pick a value of at least {d.n_classes}."
        )
