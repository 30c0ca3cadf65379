"""Typed messages between the viewer's process and the compute worker.

Requests go to the worker, events come back; every event names its job. Large arrays travel as
`ArrayRef`s (memory-mapped files, see `arrays`), never inside a message. The messages are plain
dataclasses of strings, numbers, lists and dicts, so the same protocol can later run over another
transport (a remote GPU machine, a cluster). Nothing here is ever read from a model file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from napari_unet.core.states import JobState


@dataclass(frozen=True)
class ArrayRef:
    """An array stored as a ``.npy`` file that both processes can memory-map."""

    path: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class PairRef:
    """A training pair: image and labels arrays with a display name."""

    image: ArrayRef
    labels: ArrayRef
    name: str
    rgb: bool = False


# ---------------------------------------------------------------- requests (viewer -> worker)


@dataclass
class Request:
    """Base of every job request; `job` is set by the client."""

    job: str = field(default="", kw_only=True)
    scratch: str = field(default="", kw_only=True)  # folder for result arrays; set by the client

    @property
    def title(self) -> str:
        return type(self).__name__.removesuffix("Request").lower()


@dataclass
class TrainRequest(Request):
    pairs: list[PairRef]
    config: dict[str, Any]
    root: str
    name: str
    preview: ArrayRef | None = None
    preview_rgb: bool = False


@dataclass
class FinetuneRequest(Request):
    parent: str  # version folder
    pairs: list[PairRef]
    epochs: int
    fallback_root: str
    preview: ArrayRef | None = None
    preview_rgb: bool = False
    sparse_background: int | None = None  # sparse labels (0 = not annotated) with this background value


@dataclass
class PredictRequest(Request):
    model: str
    image: ArrayRef
    rgb: bool


@dataclass
class InspectRequest(Request):
    """Load a model folder, version folder or .zip safely and describe it."""

    path: str


@dataclass
class ReviewPredictRequest(Request):
    project: str
    model: str
    names: list[str]
    method: str
    only_unreviewed: bool = False
    cluster: str | None = None  # "local:N" or a scheduler address: run on dask (jobs/review_cluster.py)


@dataclass
class ReviewFinetuneRequest(Request):
    project: str
    model: str
    epochs: int
    statuses: list[str]


@dataclass
class StopRequest:
    """Ask the running job to stop (the client terminates the worker if it does not in time)."""

    job: str


@dataclass
class ShutdownRequest:
    """The worker exits after the running job."""


@dataclass
class JobMessage:
    """Base of messages to a running job (`ComputeClient.send`); the worker queues them for its handler."""

    job: str = field(default="", kw_only=True)  # set by the client


# ---------------------------------------------------------------- results


@dataclass
class ModelInfo:
    """What the viewer knows of a model version: where it is and its metadata (no Keras object)."""

    path: str
    name: str
    version: int | None
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    parent: str | None = None
    created: str = ""

    @property
    def label(self) -> str:
        """`name vN`, as pickers and layer names show it."""
        return f"{self.name} v{self.version}" if self.version is not None else self.name


@dataclass
class TrainOutcome:
    state: JobState  # done or stopped
    message: str
    model: ModelInfo | None  # None when nothing was saved (stopped before one epoch ended)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class PredictOutcome:
    probabilities: ArrayRef
    labels: ArrayRef
    seconds: float
    model: ModelInfo


@dataclass
class ReviewOutcome:
    done: int
    model: ModelInfo


# ---------------------------------------------------------------- events (worker -> viewer)


@dataclass
class Event:
    job: str


@dataclass
class Started(Event):
    """The worker began the job (TensorFlow is loaded); `device` says where it runs."""

    device: str = ""


@dataclass
class Progress(Event):
    """A share of the job done, with an estimate of the time left and a line of text."""

    fraction: float
    eta_s: float | None = None
    text: str = ""


@dataclass
class TrainUpdate(Event):
    """A training step or epoch (the fields of `core.train.TrainEvent`, without the model)."""

    kind: str  # start, batch, epoch, end
    epoch: int
    epochs: int
    step: int
    steps: int
    logs: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    eta_s: float | None = None
    status: str = JobState.RUNNING.value
    message: str = ""
    selected: bool = False  # this epoch's model is the one Stop would keep
    fraction: float = 0.0  # share of the run done (of the steps, or of the time budget), from the core


@dataclass
class PreviewReady(Event):
    """Labels of the preview plane predicted by the model Stop would keep."""

    labels: ArrayRef
    epoch: int = 0


@dataclass
class ReviewItemDone(Event):
    """One review image predicted (its files are written) or failed."""

    name: str
    index: int
    total: int
    error: str | None = None
    uncertainty: float | None = None
    foreground: float | None = None
    objects: int | None = None
    shape: list[int] | None = None


@dataclass
class Finished(Event):
    """The job ended: `state` is done or stopped; `result` is the request's outcome."""

    state: JobState
    result: Any = None


@dataclass
class Failed(Event):
    """The job raised. `expected` errors are the user's to fix and shown as is."""

    message: str
    traceback: str = ""
    expected: bool = False
