"""Messages of a live-training job (see `jobs/live.py`): the request, what the viewer sends while it
runs, and the frames that come back. Arrays travel as `ArrayRef`s, as everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field

from .messages import ArrayRef, Event, JobMessage, ModelInfo, Request


@dataclass
class LiveViewport:
    """The field of view to predict: a plane and a rectangle in image pixels (may exceed the image)."""

    plane: int
    top: float
    left: float
    bottom: float
    right: float


@dataclass
class LiveRequest(Request):
    """Train continuously on strokes painted into `labels` (0 = not annotated) until Freeze or Stop.

    The image is either `image` (its pixels) or `source`, the path of a zarr array or OME-Zarr image
    that the worker opens itself and reads region by region (a large image never crosses whole).
    """

    image: ArrayRef | None
    rgb: bool
    labels: ArrayRef | None  # labels already painted, `(planes, H, W)` or `(H, W)`; None: empty
    config: dict  # a new model's config (ignored when `parent` is given)
    parent: str | None  # a model version to start from
    root: str  # where Freeze saves: root/name/vNNN
    name: str
    background_label: int
    view: LiveViewport | None = None
    refresh_s: float = 1.0  # a new frame at least this often while training (sooner after a stroke)
    source: str | None = None  # a zarr array or OME-Zarr image folder read lazily instead of `image`
    regions: list[LiveStroke] = field(default_factory=list)  # painted regions to start from (with labels None)


@dataclass
class LiveStroke(JobMessage):
    """A painted region: `labels` replaces the labels at (plane, top, left); `seq` counts strokes."""

    seq: int
    plane: int
    top: int
    left: int
    labels: ArrayRef


@dataclass
class LiveView(JobMessage):
    """The canvas moved: predict this field of view from now on."""

    view: LiveViewport


@dataclass
class LiveFreeze(JobMessage):
    """Stop training and save the model as a new version (the job then ends as done)."""


@dataclass
class LiveFrame(Event):
    """A prediction of the field of view: labels `(h, w)` at (plane, top, left) of the image."""

    labels: ArrayRef
    plane: int
    top: int
    left: int
    steps: int  # training steps so far
    loss: float
    strokes: int  # the highest stroke `seq` the model had trained on before this prediction
    predict_s: float  # seconds the prediction took


@dataclass
class LiveOutcome:
    """The end of a live job: the frozen version (None when stopped without Freeze)."""

    message: str
    model: ModelInfo | None
    steps: int
