"""The one set of job states shared by the core's events, the compute worker and the widgets."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    """Where a job is (careamics-napari's idle / training / done / stopped / crashed, plus the steps between)."""

    IDLE = "idle"
    QUEUED = "queued"  # waiting for the worker to finish another job
    STARTING = "starting"  # worker starting, TensorFlow loading, data being prepared
    RUNNING = "running"
    STOPPING = "stopping"  # Stop pressed: asked the worker, terminated after a grace period
    FINISHING = "finishing"  # the work is done; evaluating and saving
    DONE = "done"
    STOPPED = "stopped"
    CRASHED = "crashed"

    @property
    def ended(self) -> bool:
        return self in (JobState.DONE, JobState.STOPPED, JobState.CRASHED)

    def __str__(self) -> str:
        return self.value
