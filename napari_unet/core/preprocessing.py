"""Pre-processing steps declared by a bioimage.io package, applied to one `(H, W, C)` sample in numpy.

A napari-unet model normalises each image with its own percentiles (`data.norm_low/high`). A model
imported from a bioimage.io package may declare other steps instead; they are stored, in the
package's own form ``{"id": ..., "kwargs": {...}}``, in `data.preprocessing` and applied here.
Statistics (percentiles, mean, std) are computed on the whole image once (`fit`), so tiles and dask
chunks of a large image are all normalised alike, as with the percentile normalisation.

Supported ids: scale_range, zero_mean_unit_variance, fixed_zero_mean_unit_variance, scale_linear,
clip and ensure_dtype. Statistics are joint over y and x, and over channels unless `axes` leaves the
channel axis out (then per channel); `batch` in `axes` is accepted (one image is one sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError

SUPPORTED = (
    "scale_range", "zero_mean_unit_variance", "fixed_zero_mean_unit_variance", "scale_linear", "clip",
    "ensure_dtype",
)  # fmt: skip
_SPATIAL = {"x", "y"}
_CHANNEL = {"channel", "c"}
_DTYPES = ("float32", "float64", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "bool")


def check_steps(steps: Any, name: str = "data.preprocessing") -> None:
    """Raise ConfigError saying why a list of steps cannot be applied to 2D images."""
    if not isinstance(steps, list):
        raise ConfigError(f"{name} must be a list of steps, got {type(steps).__name__}.")
    for i, step in enumerate(steps):
        where = f"{name} {i + 1}"
        if not isinstance(step, dict) or not isinstance(step.get("id"), str):
            raise ConfigError(f"{where} must be an object with an 'id' and 'kwargs'.")
        if step["id"] not in SUPPORTED:
            raise ConfigError(
                f"{where}: pre-processing {step['id']!r} is not supported by napari-unet "
                f"(supported: {', '.join(SUPPORTED)})."
            )
        kwargs = step.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{where}: 'kwargs' must be an object.")
        _check_kwargs(step["id"], kwargs, where)


def _check_kwargs(op: str, kw: dict, where: str) -> None:
    axes = kw.get("axes")
    if axes is not None:
        names = {str(a) for a in axes} - {"batch", "b"}
        if not _SPATIAL <= names or not names <= _SPATIAL | _CHANNEL:
            raise ConfigError(
                f"{where}: {op} over axes {list(axes)} is not supported; napari-unet computes statistics "
                "over the whole image (y and x), jointly or per channel."
            )
    axis = kw.get("axis")
    if axis is not None and str(axis) not in _CHANNEL:
        raise ConfigError(f"{where}: {op} along axis {axis!r} is not supported; only along the channel axis.")
    if kw.get("reference_tensor") is not None:  # the importer drops a reference to the input itself
        raise ConfigError(f"{where}: {op} with a reference tensor is not supported.")
    if op == "ensure_dtype" and kw.get("dtype") not in _DTYPES:
        raise ConfigError(f"{where}: ensure_dtype to {kw.get('dtype')!r} is not supported.")
    for key in ("gain", "offset", "mean", "std", "min", "max", "eps", "min_percentile", "max_percentile"):
        value = kw.get(key)
        values = value if isinstance(value, list) else [value]
        if value is not None and not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
            raise ConfigError(f"{where}: {op} {key} must be a finite number or a list of them, got {value!r}.")


@dataclass(frozen=True)
class Fitted:
    """Steps with their statistics fixed: pointwise operations, the same for every tile of one image."""

    ops: tuple[tuple[str, Any, Any], ...]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The processed float32 `(H, W, C)` image (the network always gets float32)."""
        x = np.asarray(image, dtype=np.float32)
        for kind, a, b in self.ops:
            if kind == "affine":
                x = x * a + b
            elif kind == "clip":
                x = np.clip(x, a, b)
            else:
                x = x.astype(a).astype(np.float32)
        return np.ascontiguousarray(x, dtype=np.float32)


def fit(steps: Sequence[dict], image: np.ndarray) -> Fitted:
    """Fix the statistics of `steps` on one `(H, W, C)` image (a subsample of it for large images)."""
    x = np.asarray(image, dtype=np.float32)
    ops: list[tuple[str, Any, Any]] = []
    for step in steps:
        op = _fit_one(step["id"], step.get("kwargs") or {}, x)
        if op is not None:
            ops.append(op)
            x = Fitted((op,))(x)
    return Fitted(tuple(ops))


def apply(steps: Sequence[dict], image: np.ndarray) -> np.ndarray:
    """`steps` applied to one `(H, W, C)` image with statistics of that image."""
    return fit(steps, image)(image)


def _fit_one(op: str, kw: dict, x: np.ndarray) -> tuple[str, Any, Any] | None:
    per_channel = kw.get("axes") is not None and not ({str(a) for a in kw["axes"]} & _CHANNEL)
    eps = float(kw.get("eps", 1e-6))
    if op == "ensure_dtype":
        return None if kw["dtype"] in ("float32", "float64") else ("cast", np.dtype(kw["dtype"]), None)
    if op == "scale_range":
        lo = _stat(x, per_channel, lambda v, ax: np.percentile(v, float(kw.get("min_percentile", 0.0)), axis=ax))
        hi = _stat(x, per_channel, lambda v, ax: np.percentile(v, float(kw.get("max_percentile", 100.0)), axis=ax))
        gain = 1.0 / (hi - lo + eps)
        return ("affine", gain.astype(np.float32), (-lo * gain).astype(np.float32))
    if op == "zero_mean_unit_variance":
        mean = _stat(x, per_channel, lambda v, ax: np.mean(v, axis=ax, dtype=np.float64))
        std = _stat(x, per_channel, lambda v, ax: np.std(v, axis=ax, dtype=np.float64))
        return ("affine", (1.0 / (std + eps)).astype(np.float32), (-mean / (std + eps)).astype(np.float32))
    if op == "fixed_zero_mean_unit_variance":
        mean, std = _per_channel(kw.get("mean", 0.0), x), _per_channel(kw.get("std", 1.0), x)
        return ("affine", (1.0 / (std + eps)).astype(np.float32), (-mean / (std + eps)).astype(np.float32))
    if op == "scale_linear":
        return ("affine", _per_channel(kw.get("gain", 1.0), x), _per_channel(kw.get("offset", 0.0), x))
    if op == "clip":
        lo = kw.get("min")
        hi = kw.get("max")
        if kw.get("min_percentile") is not None:
            lo = _stat(x, per_channel, lambda v, ax: np.percentile(v, float(kw["min_percentile"]), axis=ax))
        if kw.get("max_percentile") is not None:
            hi = _stat(x, per_channel, lambda v, ax: np.percentile(v, float(kw["max_percentile"]), axis=ax))
        lo = np.float32(-np.inf) if lo is None else np.asarray(lo, dtype=np.float32)
        hi = np.float32(np.inf) if hi is None else np.asarray(hi, dtype=np.float32)
        return ("clip", lo, hi)
    raise ConfigError(f"Pre-processing {op!r} is not supported by napari-unet.")  # check_steps ran first


def _stat(x: np.ndarray, per_channel: bool, reduce: Any) -> np.ndarray:
    """A statistic over y and x (per channel: shape (C,)) or over everything (a scalar)."""
    if per_channel:
        return np.asarray(reduce(x.reshape(-1, x.shape[-1]).astype(np.float64), 0), dtype=np.float64)
    return np.asarray(reduce(x.reshape(-1).astype(np.float64), None), dtype=np.float64)


def _per_channel(value: Any, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 1 and arr.shape[0] != x.shape[-1]:
        raise ConfigError(f"A pre-processing step has {arr.shape[0]} per-channel values for a {x.shape[-1]}-channel image.")
    return arr
