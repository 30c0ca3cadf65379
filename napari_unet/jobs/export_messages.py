"""Messages of a bioimage.io export job (`jobs/export.py`, `core/bioimageio_export.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .messages import ArrayRef, ModelInfo, Request


@dataclass
class ExportRequest(Request):
    """Write the model version `model` as the bioimage.io package `dest` (a .zip)."""

    model: str  # version folder or model folder
    dest: str
    authors: list[dict] = field(default_factory=list)  # bioimage.io author entries ({"name", "email"?}); empty: metadata's
    license: str | None = None  # SPDX id; None: the model's metadata, else CC-BY-4.0
    cite: list[dict] = field(default_factory=list)  # {"text", "doi" or "url"}; empty: metadata's, else the U-Net paper
    overwrite: bool = False
    sample: ArrayRef | None = None  # image for the test tensors and the cover; None: the model's replay patches


@dataclass
class ExportOutcome:
    path: str  # the package written
    model: ModelInfo
    seconds: float
