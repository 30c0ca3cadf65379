"""Training that keeps its best epoch on disk and publishes it when stopped: one rule for the worker and the CLI.

Each newly selected epoch becomes the job's checkpoint (`bundle.save_checkpoint`, a complete version
folder). A run that ends normally publishes its final model (post-processing tuned, scored); a
stopped run publishes the checkpoint at once (`versions.promote_checkpoint`), as the widget's Stop
does. A KeyboardInterrupt that cuts the run short (the CLI's second Ctrl-C) still publishes the
checkpoint and is re-raised as `Interrupted`, which says where it went. No TensorFlow at import.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .states import JobState
from .versions import checkpoint_dir, discard_checkpoint, promote_checkpoint


class Checkpoints:
    """`on_best` for core training: each newly selected model becomes the job's checkpoint on disk."""

    def __init__(self, root: Path, name: str, job: str) -> None:
        self.root, self.name, self.job = Path(root), name, job
        self.saved = 0
        self.epoch: int | None = None  # the epoch the checkpoint holds
        self.scores: dict[str, float] = {}  # its validation scores

    def __call__(self, result: Any) -> None:
        from .bundle import save_checkpoint

        # The replay data of a job does not change: stored once, kept by later checkpoints.
        replay = result.replay if self.saved == 0 else None
        save_checkpoint(result.to_bundle(), self.root, self.name, self.job, replay=replay)
        self.saved += 1
        self.epoch, self.scores = result.best_epoch, dict(result.metrics or {})

    def describe(self) -> str:
        """'epoch 4, val dice 0.8123' for messages."""
        shown = [f"val {k} {self.scores[k]:.4f}" for k in ("object_f1", "dice", "loss") if k in self.scores]
        return ", ".join([f"epoch {self.epoch}", *shown[:2]])


@dataclass
class Published:
    """How a checkpointed run ended and which version it published (None: nothing to save)."""

    state: JobState
    path: Path | None
    result: Any = None
    checkpoints: Checkpoints | None = field(default=None, repr=False)


class Interrupted(KeyboardInterrupt):
    """The run was cut short by a KeyboardInterrupt; `path` is the version the checkpoint became, if any."""

    def __init__(self, path: Path | None, checkpoints: Checkpoints) -> None:
        super().__init__(str(path))
        self.path, self.checkpoints = path, checkpoints


Run = Callable[[Checkpoints, threading.Event], Any]


def fit_and_publish(run: Run, root: Path, name: str, job: str, stop: threading.Event) -> Published:
    """`run(on_best, stop)` trains; publish its final model (done) or its checkpoint (stopped) as a version."""
    from .bundle import save_bundle

    root = Path(root)
    checkpoints = Checkpoints(root, name, job)
    model_dir = root / name
    try:
        try:
            result = run(checkpoints, stop)
        except KeyboardInterrupt:
            raise Interrupted(promote_checkpoint(model_dir, job), checkpoints) from None
        stopped = result.status == "stopped" or stop.is_set()
        if not result.history:
            path = None
        elif stopped and checkpoint_dir(model_dir, job).is_dir():
            path = promote_checkpoint(model_dir, job)  # instant: Stop needs no new save
        else:
            path = save_bundle(result.to_bundle(), root, name, replay=result.replay)
    finally:
        discard_checkpoint(model_dir, job)
    return Published(JobState.STOPPED if stopped else JobState.DONE, path, result, checkpoints)
