"""The compute worker leaves nothing behind: 20 train/stop cycles and 20 killed workers.

Runs the worker as the widgets do (`ComputeClient`), with no TensorFlow in this process.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from reliability_helpers import blob_pair, tiny_config

from napari_unet.core.states import JobState
from napari_unet.core.versions import list_versions
from napari_unet.jobs import arrays
from napari_unet.jobs.client import ComputeClient
from napari_unet.jobs.messages import TrainUpdate
from napari_unet.widgets._tasks import train_request
from napari_unet.widgets.models_registry import CorrectedPair

CYCLES = 20
PAIRS = [CorrectedPair(*blob_pair(96, 96, seed), name=f"blobs{seed}") for seed in (1, 2)]


def _request(root: Path):
    cfg = tiny_config(train={"epochs": 1000, "steps_per_epoch": 4})
    return train_request(PAIRS, cfg, root, "cycles", None)


def _run_until_first_step(client: ComputeClient, root: Path):
    """Start a training and wait for its first step (past the first trace, which cannot be interrupted)."""
    steps: list[TrainUpdate] = []

    def keep(event: object) -> None:
        if isinstance(event, TrainUpdate) and event.kind == "batch":
            steps.append(event)

    job = client.submit(_request(root), keep)
    deadline = time.monotonic() + 120
    while not steps and job.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert steps, f"training never started: {job.failure}"
    return job


def _leftovers(client: ComputeClient, root: Path) -> list[str]:
    found = [str(p) for p in client.session_dir.iterdir() if p.suffix == ".npy"]
    found += [str(p) for p in (root / "cycles").glob(".*")] if (root / "cycles").is_dir() else []
    return found


def _children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != "zombie"]


@pytest.mark.slow
def test_twenty_train_stop_cycles_and_twenty_killed_workers_leave_nothing_behind(tmp_path):
    root = tmp_path / "models"
    children_before = {p.pid for p in _children()}
    client = ComputeClient(grace_s=1.5)
    session_dir = client.session_dir
    worker_pids: set[int] = set()
    try:
        for _ in range(CYCLES):  # Stop as the widget's button does: a request, the worker stays
            job = _run_until_first_step(client, root)
            worker_pids.add(client.worker_pid)
            t0 = time.monotonic()
            client.stop(job)
            assert job.wait(5) and time.monotonic() - t0 < 2.0
            assert job.state == JobState.STOPPED and job.failure is None
            assert _leftovers(client, root) == []
        # A Stop that lands while a checkpoint is being written waits out the grace period and ends
        # by terminating the worker (still within 2 s); otherwise the same worker serves the next job.
        assert len(worker_pids) <= CYCLES // 4, f"the worker was restarted {len(worker_pids) - 1} times"
        for _ in range(CYCLES):  # the worker dies (as on a segfault or the out-of-memory killer)
            job = _run_until_first_step(client, root)
            pid = client.worker_pid
            os.kill(pid, signal.SIGKILL)
            assert job.wait(10) and job.state == JobState.CRASHED
            assert "killed by SIGKILL" in job.failure.message
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
            assert _leftovers(client, root) == []
    finally:
        client.close()
    assert not session_dir.exists(), "the session's array folder is removed"
    assert not [p for p in arrays.scratch_root().glob(f"{arrays.PREFIX}{os.getpid()}-*")]
    assert {p.pid for p in _children()} == children_before, "no worker process left"
    # Whatever epochs finished became versions; no checkpoint or temporary folder is left.
    hidden = [p.name for p in (root / "cycles").glob(".*")] if (root / "cycles").exists() else []
    assert hidden == [] and all((v / "model.keras").is_file() for v in list_versions(root / "cycles"))


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_the_worker_gives_its_memory_back_when_idle_and_can_be_pinned_to_a_device(tmp_path):
    from napari_unet.jobs.client import WorkerError
    from napari_unet.jobs.messages import InspectRequest

    client = ComputeClient(idle_s=1.0, device="3")
    try:
        with pytest.raises(WorkerError, match="does not exist"):
            client.run(InspectRequest(str(tmp_path / "no-model")), 120)
        pid = client.worker_pid
        assert _environ(pid)["CUDA_VISIBLE_DEVICES"] == "3", "pinned for the worker"
        assert os.environ.get("CUDA_VISIBLE_DEVICES") != "3", "and for the worker only"
        deadline = time.monotonic() + 30
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", "it left when idle"
        with pytest.raises(WorkerError, match="does not exist"):  # the next job starts a new worker
            client.run(InspectRequest(str(tmp_path / "no-model")), 120)
        assert client.starts == 2
    finally:
        client.close()
