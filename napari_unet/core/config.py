"""One typed configuration (model, data, training, prediction) that flows everywhere.

It is saved as JSON inside every model file, so a model carries what prediction needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

Task = Literal["binary", "classes", "instances"]
TASKS: tuple[str, ...] = ("binary", "classes", "instances")
LOSSES: tuple[str, ...] = ("bce", "dice", "bce_dice", "cce", "focal", "cce_dice")
ARCHITECTURES: tuple[str, ...] = ("unet", "mobilenetv2")
UPSAMPLINGS: tuple[str, ...] = ("transpose", "bilinear")
VAL_MODES: tuple[str, ...] = ("auto", "image", "region")

#: Value used inside training targets for pixels excluded from loss and metrics.
IGNORE_TARGET = -1


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
    boundary_width: int = 2  # "instances": width of the boundary class in pixels
    norm_low: float = 1.0  # percentiles for per-image normalisation
    norm_high: float = 99.8
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

    epochs: int = 20
    steps_per_epoch: int = 40
    batch_size: int = 4
    learning_rate: float = 1e-3
    loss: str = "auto"  # "auto": bce_dice for binary, cce_dice otherwise
    class_weights: list[float] | None = None
    early_stopping_patience: int = 10  # epochs; 0 disables
    reduce_lr_patience: int = 4  # epochs; 0 disables
    seed: int = 0
    mixed_precision: str = "auto"  # "auto": mixed_float16 on a GPU, float32 on the CPU; or "off"
    replay_fraction: float = 0.5  # fine-tuning: share of patches from the data the model saw before
    finetune_lr_factor: float = 0.2  # fine-tuning learning rate = learning_rate * this


@dataclass
class PredictConfig:
    """Tiling and post-processing, saved with the model as its defaults."""

    tile_size: int = 1024
    overlap: int = 112  # context on each side of a tile; raised to the network's halo when smaller
    batch_size: int = 4
    threshold: float = 0.5
    min_size: int = 0  # objects smaller than this (pixels) are removed
    split_touching: bool = True  # "instances": seeded watershed from object interiors


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
        if not 0 <= d.norm_low < d.norm_high <= 100:
            raise ConfigError(
                f"data.norm_low ({d.norm_low}) must be below data.norm_high ({d.norm_high}), both in 0..100."
            )
        if t.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be positive, got {t.learning_rate}.")
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
        if m.architecture == "mobilenetv2" and d.in_channels != 3:
            raise ConfigError("The mobilenetv2 encoder needs 3 input channels (RGB); use the plain unet.")
        if d.task == "binary" and self.loss in ("cce", "cce_dice"):
            raise ConfigError("Categorical losses need a classes or instances task; use bce, dice, bce_dice or focal.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build from a (possibly partial) dict; unknown keys are an error."""
        parts = {}
        for name, part_cls in (
            ("model", ModelConfig),
            ("data", DataConfig),
            ("train", TrainConfig),
            ("predict", PredictConfig),
        ):
            values = dict(raw.get(name) or {})
            known = {f.name for f in dataclasses.fields(part_cls)}
            unknown = set(values) - known
            if unknown:
                raise ConfigError(f"Unknown option(s) in {name}: {', '.join(sorted(unknown))}.")
            parts[name] = part_cls(**values)
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
