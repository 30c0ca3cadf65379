"""Configurations the benchmarks train: the tuned "Fast (CPU)" preset and the defaults.

`fast_cpu()` is what `quality.py` measured and what the widget's "Fast (CPU)" preset should be.
Training length is set by time (the benchmark stops training with the Stop flag), so `epochs`
is only an upper bound; `steps_per_epoch` sets how often validation, best-weight keeping and
learning-rate reduction happen.
"""

from __future__ import annotations

from napari_unet.core.config import Config

#: Options of the "Fast (CPU)" preset, as `Config.from_dict` input (task and channels are the data's).
#: Chosen with quality.py on 2 shared CPU cores (see docs/benchmarks.md): 8 base filters make a step
#: about 3x cheaper per pixel than 16, which buys more steps in 5 minutes; 256 px patches and
#: depth 4 give the context lung fields need; without batch normalisation the first minutes are
#: better (BN's moving averages lag behind in short runs). The tile of 1024 px keeps the
#: overlap (the network's halo, 107 px -> 112) a small share of each tile.
FAST_CPU: dict = {
    "model": {"depth": 4, "base_filters": 8, "batch_norm": False, "upsampling": "transpose"},
    "data": {"patch_size": 256, "foreground_fraction": 0.5},
    "train": {
        "batch_size": 4,
        "learning_rate": 1e-3,
        "steps_per_epoch": 40,
        "epochs": 1000,
        "early_stopping_patience": 15,
        "reduce_lr_patience": 4,
    },
    "predict": {"tile_size": 1024, "overlap": 112},
}


def fast_cpu(task: str = "binary", in_channels: int = 1, **sections: dict) -> Config:
    """The Fast (CPU) preset for a task and channel count; `sections` override single options."""
    raw = {name: dict(values) for name, values in FAST_CPU.items()}
    raw["data"].update(task=task, in_channels=in_channels)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return Config.from_dict(raw).validate()


def tiny(task: str = "binary", in_channels: int = 1) -> Config:
    """A very small network for --quick smoke runs."""
    return Config.from_dict(
        {
            "model": {"depth": 2, "base_filters": 8},
            "data": {"task": task, "in_channels": in_channels, "patch_size": 64},
            "train": {"batch_size": 4, "steps_per_epoch": 5, "epochs": 2},
            "predict": {"tile_size": 128, "overlap": 32},
        }
    ).validate()
