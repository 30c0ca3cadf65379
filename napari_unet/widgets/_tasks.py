"""Requests the widgets send to the compute worker, built from layers (no TensorFlow here).

Each builder returns a function of the session's scratch folder: the client runs it off the GUI
thread, so copying a large (or lazy) layer into a memory-mapped file never stalls the viewer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.config import Config
from napari_unet.jobs import arrays
from napari_unet.jobs.messages import FinetuneRequest, PairRef, PredictRequest, TrainRequest

from .models_registry import CorrectedPair, ModelEntry

#: Previews are computed on at most this many pixels per side (a crop from the top left).
PREVIEW_MAX = 1024

Build = Callable[[Path], Any]


@dataclass
class Preview:
    """A 2D plane (H, W) or (H, W, C) on which to show the model's prediction after each epoch."""

    image: np.ndarray
    rgb: bool


def preview_plane(data: Any, rgb: bool, index: int = 0) -> Preview:
    """The 2D plane of an image layer's data to preview on (plane `index` of a stack), cropped."""
    spatial = data.ndim - (1 if rgb else 0)
    plane = data[index] if spatial == 3 else data
    return Preview(np.array(plane[:PREVIEW_MAX, :PREVIEW_MAX], copy=True), rgb)


def _pair_refs(scratch: Path, pairs: Sequence[CorrectedPair]) -> list[PairRef]:
    return [PairRef(arrays.put(scratch, p.image), arrays.put(scratch, p.labels), p.name, p.rgb) for p in pairs]


def _preview_ref(scratch: Path, preview: Preview | None) -> Any:
    return None if preview is None else arrays.put(scratch, preview.image)


def train_request(
    pairs: Sequence[CorrectedPair], cfg: Config, root: Path, name: str, preview: Preview | None
) -> Build:
    def build(scratch: Path) -> TrainRequest:
        return TrainRequest(
            _pair_refs(scratch, pairs), cfg.to_dict(), str(root), name, _preview_ref(scratch, preview),
            bool(preview and preview.rgb),
        )  # fmt: skip

    return build


def finetune_request(
    parent: ModelEntry,
    pairs: Sequence[CorrectedPair],
    epochs: int,
    fallback_root: Path,
    preview: Preview | None,
    sparse_background: int | None = None,
) -> Build:
    """A fine-tuning round; `sparse_background` set: the pairs are sparse labels with that background value."""
    if parent.path is None:
        raise ValueError(f"{parent.label} has no folder on disk to fine-tune from.")

    def build(scratch: Path) -> FinetuneRequest:
        return FinetuneRequest(
            str(parent.path), _pair_refs(scratch, pairs), int(epochs), str(fallback_root),
            _preview_ref(scratch, preview), bool(preview and preview.rgb), sparse_background,
        )  # fmt: skip

    return build


def predict_request(entry: ModelEntry, image: Any, rgb: bool) -> Build:
    """Predict a whole image layer (numpy, or lazy: copied into the scratch file band by band)."""
    if entry.path is None:
        raise ValueError(f"{entry.label} has no folder on disk to predict with.")

    def build(scratch: Path) -> PredictRequest:
        return PredictRequest(str(entry.path), arrays.put(scratch, image), bool(rgb))

    return build
