"""The viewer's side of the compute worker: start it on first use, run jobs one after the other, stop them.

Qt-free and TensorFlow-free. A job's events reach its `listener` on a background thread; the widgets
hand them to Qt's thread. Stop first asks the worker, then terminates it after `STOP_GRACE_S`, so
Stop always takes effect within two seconds; a training job's checkpoint (its best epoch, a complete
version folder) is then published from here. A worker that dies (crash, out of memory, killed) fails
its job with a clear message, and the next job starts a fresh worker.
"""

from __future__ import annotations

import atexit
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from napari_unet.core.errors import NapariUNetError
from napari_unet.core.paths import child_location
from napari_unet.core.states import JobState
from napari_unet.core.versions import discard_checkpoint, promote_checkpoint

from . import arrays
from .messages import (
    ArrayRef,
    Event,
    Failed,
    FinetuneRequest,
    Finished,
    JobMessage,
    PairRef,
    Request,
    ReviewFinetuneRequest,
    ShutdownRequest,
    Started,
    StopRequest,
    TrainOutcome,
    TrainRequest,
)
from .models import model_info

AUTHKEY_ENV = "NAPARI_UNET_WORKER_AUTHKEY"
IDLE_ENV = "NAPARI_UNET_WORKER_IDLE_S"
DEVICE_ENV = "NAPARI_UNET_WORKER_DEVICE"
#: The worker exits after this long without a job, giving back the memory (and a GPU) it holds.
DEFAULT_IDLE_S = 300.0
#: Seconds a job has to stop by itself before its worker is terminated.
STOP_GRACE_S = 1.5
#: Seconds a new worker has to connect.
START_TIMEOUT_S = 120.0

Listener_ = Callable[[Event], None]


class WorkerError(RuntimeError):
    """The compute worker could not start or died during a job."""


#: A request, or a function that makes one (writing its arrays) off the caller's thread.
RequestSource = Request | Callable[[Path], Request]


@dataclass(eq=False)
class Job:
    """One request on its way through the worker. `state`, `result` and `failure` are set at the end."""

    id: str
    source: RequestSource
    listener: Listener_ | None = None
    request: Request | None = None
    state: JobState = JobState.QUEUED
    result: Any = None
    failure: Failed | None = None
    started_at: float = field(default_factory=time.monotonic)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _stop_requested: bool = False
    _outbox: list[JobMessage] | None = field(default_factory=list, repr=False)  # None once the request is sent
    _timer: threading.Timer | None = field(default=None, repr=False)
    _cleanup: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def title(self) -> str:
        return self.request.title if self.request is not None else "a job"

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _deliver(self, event: Event) -> None:
        if isinstance(event, Started) and self.state in (JobState.QUEUED, JobState.STARTING):
            self.state = JobState.RUNNING
        if self.listener is not None:
            try:
                self.listener(event)
            except Exception:  # a listener's bug must not kill the job's thread
                import logging

                logging.getLogger(__name__).exception("job listener failed")

    def _end(self, state: JobState, result: Any = None, failure: Failed | None = None) -> None:
        if self._done.is_set():
            return
        if self._cleanup is not None:  # before anyone waiting hears of the end
            self._cleanup()
        self.state, self.result, self.failure = state, result, failure
        if self._timer is not None:
            self._timer.cancel()
        event: Event = failure if failure is not None else Finished(self.id, state, result)
        self._done.set()
        self._deliver(event)


class ComputeClient:
    """Runs jobs in one worker process, started on first use and reused; one job at a time."""

    def __init__(self, idle_s: float | None = None, device: str | None = None, grace_s: float = STOP_GRACE_S) -> None:
        self.idle_s = float(idle_s if idle_s is not None else os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))
        self.device = device if device is not None else os.environ.get(DEVICE_ENV)
        self.grace_s = grace_s
        self.session_dir = arrays.new_session_dir()
        self.starts = 0  # workers started so far (the start cost is paid once per session)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._log_path: Path | None = None
        self._pending: deque[Job] = deque()
        self._current: Job | None = None
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False

    # ------------------------------------------------------------------ jobs
    def submit(self, source: RequestSource, listener: Listener_ | None = None) -> Job:
        """Queue a request (or a function of the scratch folder that makes one); returns at once.

        A function runs on the job's thread, so writing large arrays does not hold up the caller.
        """
        with self._lock:
            if self._closed:
                raise WorkerError("The compute worker has been shut down.")
            job = Job(f"{os.getpid()}-{next(self._ids)}-{secrets.token_hex(3)}", source, listener)
            self._pending.append(job)
            self._pump()
        return job

    def run(self, source: RequestSource, timeout: float | None = None) -> Any:
        """Submit and wait: the job's result, or WorkerError with its message (scripts and tests)."""
        job = self.submit(source)
        if not job.wait(timeout):
            self.stop(job)
            job.wait(self.grace_s + 5)
            raise WorkerError(f"{job.title} did not finish within {timeout} s.")
        if job.failure is not None:
            raise WorkerError(job.failure.message + (f"\n{job.failure.traceback}" if job.failure.traceback else ""))
        return job.result

    def stop(self, job: Job) -> None:
        """Stop a job: a queued one at once, a running one by request, then by terminating the worker."""
        with self._lock:
            if not job.running or job._stop_requested:
                return
            job._stop_requested = True
            if job in self._pending:
                self._pending.remove(job)
                job._end(JobState.STOPPED)
                return
            if job.request is None:  # still being prepared: `_run` stops it before it is sent
                return
            if job.state != JobState.QUEUED:
                job.state = JobState.STOPPING
        self._send(StopRequest(job.id))
        job._timer = threading.Timer(self.grace_s, self._terminate_if_running, args=(job,))
        job._timer.daemon = True
        job._timer.start()

    def send(self, job: Job, message: JobMessage) -> bool:
        """Send a message to a running job (kept until its request reaches the worker); False once it ended."""
        message.job = job.id
        with self._lock:
            if not job.running or job._stop_requested:
                return False
            if job._outbox is not None:
                job._outbox.append(message)
                return True
        self._send(message)
        return True

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._current is not None or bool(self._pending)

    @property
    def current(self) -> Job | None:
        return self._current

    @property
    def worker_pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def _pump(self) -> None:
        with self._lock:
            if self._current is not None or not self._pending:
                return
            job = self._current = self._pending.popleft()
            job.state = JobState.STARTING
        threading.Thread(target=self._run, args=(job,), name=f"napari-unet job {job.id}", daemon=True).start()

    def _run(self, job: Job) -> None:
        try:
            source = job.source
            request = source if isinstance(source, Request) else source(self.session_dir)
            request.job, request.scratch = job.id, str(self.session_dir)
            job.request = request
            job._cleanup = lambda: _release_inputs(request)
            if job.stop_requested:
                job._end(JobState.STOPPED, _stopped_outcome(request, None))
                return
            self._run_in_worker(job)
        except WorkerError as exc:
            job._end(JobState.CRASHED, failure=Failed(job.id, str(exc), expected=True))
        except NapariUNetError as exc:
            job._end(JobState.CRASHED, failure=Failed(job.id, str(exc), expected=True))
        except Exception as exc:  # keep the session going; the job reports it
            import traceback

            job._end(JobState.CRASHED, failure=Failed(job.id, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        finally:
            with self._lock:
                self._current = None
                if not self._closed:
                    self._pump()

    def _run_in_worker(self, job: Job) -> None:
        assert job.request is not None
        for attempt in range(2):
            conn = self._ensure_worker()
            started = False
            try:
                self._send(job.request, conn)
                with self._lock:  # messages sent meanwhile follow their request, in order
                    for message in job._outbox or []:
                        self._send(message, conn)
                    job._outbox = None
                while True:
                    event = conn.recv()
                    if getattr(event, "job", None) != job.id:
                        continue
                    started = True
                    if isinstance(event, Finished):
                        job._end(event.state, event.result)
                        return
                    if isinstance(event, Failed):
                        job._end(JobState.CRASHED, failure=event)
                        return
                    job._deliver(event)
            except (EOFError, OSError):
                code = self._drop_worker()
                if job.stop_requested:
                    job._end(JobState.STOPPED, _stopped_outcome(job.request, None, killed=True))
                    return
                if not started and code == 0 and attempt == 0:
                    continue  # the worker had just left after its idle time: start a new one
                rescued = _stopped_outcome(job.request, None, killed=True)
                message = _death_message(job, code, self._log_path, rescued)
                job._end(JobState.CRASHED, rescued, Failed(job.id, message, expected=True))
                return

    def _terminate_if_running(self, job: Job) -> None:
        with self._lock:
            if job is not self._current or not job.running:
                return
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    # ------------------------------------------------------------------ the worker process
    def _ensure_worker(self) -> Connection:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None and self._conn is not None:
                return self._conn
        self._drop_worker()
        return self._start_worker()

    def _start_worker(self) -> Connection:
        key = secrets.token_bytes(16)
        listener = Listener(authkey=key)
        env = dict(os.environ)
        env.update({AUTHKEY_ENV: key.hex(), IDLE_ENV: str(self.idle_s), "PYTHONUNBUFFERED": "1"})
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if self.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.device  # for the worker only
        self.starts += 1
        self._log_path = self.session_dir / f"worker-{self.starts}.log"
        with open(self._log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "napari_unet.jobs.worker", str(listener.address)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                close_fds=True,
            )
        conn = _accept(listener, proc, key)
        with self._lock:
            self._proc, self._conn = proc, conn
        return conn

    def _drop_worker(self) -> int | None:
        """Forget the worker (reaping its process); returns its exit code (negative: the signal)."""
        with self._lock:
            proc, conn = self._proc, self._conn
            self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def _send(self, message: object, conn: Connection | None = None) -> None:
        conn = conn if conn is not None else self._conn
        if conn is None:
            return
        with self._send_lock:
            try:
                conn.send(message)
            except (OSError, ValueError):  # the worker is gone; its job's thread reports it
                pass

    def release_worker(self, timeout: float = 10.0) -> None:
        """Let an idle worker exit now (as it does by itself after `idle_s`); the next job starts a new one."""
        with self._lock:
            if self.busy:
                return
        self._shut_worker_down(timeout)

    def _shut_worker_down(self, timeout: float) -> None:
        proc = self._proc
        self._send(ShutdownRequest())
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._drop_worker()

    def kill_worker(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal to the worker (tests use it to simulate a crash)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every job, let the worker exit, remove the session's array files."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending, current = list(self._pending), self._current
        for job in pending:
            self.stop(job)
        if current is not None:
            self.stop(current)
            current.wait(self.grace_s + 3)
        self._shut_worker_down(timeout)
        shutil.rmtree(self.session_dir, ignore_errors=True)


def _accept(listener: Listener, proc: subprocess.Popen, key: bytes) -> Connection:
    """Wait for the new worker to connect; a worker that dies or hangs first is reported."""
    outcome: dict[str, str] = {}

    def watchdog() -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "connected" not in outcome:
            if proc.poll() is not None or time.monotonic() > deadline:
                outcome["failed"] = "exited" if proc.poll() is not None else "timed out"
                try:  # wake accept() up
                    Client(listener.address, authkey=key).close()
                except OSError:
                    pass
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        conn = listener.accept()
        if "failed" in outcome:
            conn.close()
            if proc.poll() is None:
                proc.kill()
            raise WorkerError(f"The compute worker could not start ({outcome['failed']}).")
        outcome["connected"] = "yes"
        return conn
    finally:
        listener.close()


def _release_inputs(request: Request | None) -> None:
    """Delete the array files a finished request was given (results are the receiver's to take)."""
    if request is None:
        return
    for value in vars(request).values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, PairRef):
                arrays.release(item.image)
                arrays.release(item.labels)
            elif isinstance(item, ArrayRef):
                arrays.release(item)


def _checkpoint_owner(request: Request) -> tuple[Path, str] | None:
    """The model folder where a training request keeps its checkpoint, and the job id."""
    if isinstance(request, TrainRequest):
        return Path(request.root).expanduser() / request.name, request.job
    if isinstance(request, FinetuneRequest):
        root, name = child_location(Path(request.parent), Path(request.fallback_root), Path(request.parent).parent.name)
        return Path(root) / name, request.job
    if isinstance(request, ReviewFinetuneRequest):
        from napari_unet.core.review import finetune_location

        root, name = finetune_location(request.project, request.model)
        return Path(root) / name, request.job
    return None


def _stopped_outcome(request: Request, result: Any, killed: bool = False) -> Any:
    """What a stopped job leaves: for training, its checkpoint published as a version (if it had one)."""
    owner = _checkpoint_owner(request)
    if owner is None:
        return result
    model_dir, job = owner
    if not killed:
        discard_checkpoint(model_dir, job)
        return TrainOutcome(JobState.STOPPED, "Stopped before the first epoch ended; nothing was saved.", None)
    version = promote_checkpoint(model_dir, job)
    if version is None:
        return TrainOutcome(JobState.STOPPED, "Stopped before the first epoch ended; nothing was saved.", None)
    info = model_info(version)
    return TrainOutcome(JobState.STOPPED, f"Stopped; kept the best epoch as {info.label} in {version}", info)


def _death_message(job: Job, code: int | None, log_path: Path | None, rescued: Any) -> str:
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    text = (
        f"The compute worker {how} during {job.title}. Your layers are untouched; the next job "
        "starts a new worker."
    )
    if isinstance(rescued, TrainOutcome) and rescued.model is not None:
        text += f" The best epoch so far was saved as {rescued.model.label} ({rescued.model.path})."
    if code == -signal.SIGKILL:
        text += " (SIGKILL often means the machine ran out of memory: try smaller patches or batches.)"
    if log_path is not None:
        text += f" Worker log: {log_path}"
    return text


_SESSION: ComputeClient | None = None
_SESSION_LOCK = threading.Lock()


def session_client() -> ComputeClient:
    """The compute client shared by all widgets of this napari session."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None or _SESSION._closed:
            _SESSION = ComputeClient()
            atexit.register(_SESSION.close)
        return _SESSION


def reset_session_client() -> None:
    """Close the session's client (tests; the next `session_client()` starts afresh)."""
    global _SESSION
    with _SESSION_LOCK:
        client, _SESSION = _SESSION, None
    if client is not None:
        client.close()
