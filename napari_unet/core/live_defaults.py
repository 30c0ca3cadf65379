"""The configuration of a new live model (no TensorFlow: the Live widget builds it too)."""

from __future__ import annotations

from .config import DEFAULT_BACKGROUND_LABEL, Config

#: A new live model: small and quick to train on 2 CPU cores (docs/benchmarks.md, "Live").
LIVE_MODEL = {"depth": 3, "base_filters": 16, "batch_norm": False, "dropout": 0.0}
LIVE_DATA = {"patch_size": 96, "flips": True, "rotations": True, "intensity": False, "elastic": False}
LIVE_TRAIN = {"batch_size": 8, "learning_rate": 1e-3}


def live_config(
    task: str = "binary", in_channels: int = 1, n_classes: int = 2, background_label: int = DEFAULT_BACKGROUND_LABEL
) -> Config:
    """A new live model's configuration: sparse labels (0 = not annotated)."""
    data = dict(LIVE_DATA, task=task, in_channels=in_channels, n_classes=n_classes, sparse=True,
                background_label=background_label)  # fmt: skip
    return Config().replace(model=dict(LIVE_MODEL), data=data, train=dict(LIVE_TRAIN)).validate()
