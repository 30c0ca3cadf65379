"""Batch prediction on a dask.distributed cluster: a LocalCluster, or an existing scheduler.

Tasks carry paths and plain data, never a model: each worker process loads a model once
(`worker_model`, cached by version folder and modification time, safe mode) and each image it
opens once. A whole file is one task (written as a label TIFF through a temporary file named after
the run); a large OME-Zarr image is one task per output chunk (see `largeimage.py`), each written
with a finished marker into a temporary store that the client publishes when all chunks are done.
Objects (instances, binary with a minimum size) take two tasks per chunk: segment, then, once the
client has matched the objects across chunk borders, relabel (see `chunkobjects.py`).
A lost worker means dask reruns its tasks: a rerun rewrites its chunk or file, and nothing looks
finished before it is (the client removes the run's temporary files at the end, also on failure).

The paths must be visible to every worker (one machine, or a shared file system on a cluster).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

ENV_THREADS = "NAPARI_UNET_THREADS"
#: Seconds to wait for an existing scheduler before giving up with a clear message.
CONNECT_TIMEOUT_S = 10
#: Reruns of a task whose worker died (dask's own `allowed-failures` also applies).
TASK_RETRIES = 3

_LOCAL = re.compile(r"^local(?::(\d+))?$")
_ADDRESS = re.compile(r"^(?:(tcp|tls|inproc|ucx|ws|wss)://)?([A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})$")


# ---------------------------------------------------------------- options


def parse_cluster(text: str) -> int:
    """Worker processes of ``local`` (one per core, at most 4) or ``local:N``; raises InputError."""
    match = _LOCAL.match(str(text).strip())
    if not match:
        raise InputError(f"--cluster {text!r}: use local or local:N (N worker processes), e.g. local:2.")
    if match.group(1) is None:
        return max(1, min(4, _cores()))
    n = int(match.group(1))
    if not 1 <= n <= 1024:
        raise InputError(f"--cluster {text!r}: N must be a whole number from 1 to 1024.")
    return n


def check_address(text: str) -> str:
    """A scheduler address like tcp://host:8786 or host:8786; raises InputError otherwise."""
    value = str(text).strip()
    match = _ADDRESS.match(value)
    if not match or not 0 < int(match.group(3)) < 65536:
        raise InputError(f"--scheduler {text!r} is not a scheduler address; use tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786.")
    return value if match.group(1) else f"tcp://{value}"


def cluster_target(text: str) -> tuple[int | None, str | None]:
    """(local workers, None) for ``local`` / ``local:N``, (None, address) for a scheduler address."""
    value = str(text).strip()
    if value == "local" or (value.startswith("local:") and value[6:].isdigit()):
        return parse_cluster(value), None
    try:
        return None, check_address(value)
    except InputError:
        raise InputError(f"Cluster {text!r}: use local:N (N worker processes) or a scheduler address "
                         "such as tcp://10.0.0.5:8786.") from None  # fmt: skip


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextmanager
def open_client(local: int | None = None, address: str | None = None) -> Iterator[Any]:
    """A distributed Client: on a new LocalCluster of `local` worker processes, or on `address`."""
    from distributed import Client, LocalCluster

    if address is not None:
        try:
            client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"Cannot reach the dask scheduler at {address} ({exc}); is it running?") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = local or 1
    threads = max(1, _cores() // n)
    env = {ENV_THREADS: str(threads), "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cluster = LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", env=env,
        silence_logs=40,  # logging.ERROR: a restarted worker is reported by the run itself
    )  # fmt: skip
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def dashboard(client: Any) -> str:
    """The dask dashboard link, or why there is none."""
    try:
        link = client.dashboard_link
    except Exception:  # noqa: BLE001  (no dashboard is not an error)
        link = None
    return link or "not available (dask's dashboard needs bokeh>=3.1)"


def worker_budget(client: Any) -> int | None:
    """Memory one task may use on the smallest worker (see `tiling.MEMORY_FRACTION`), None if unknown."""
    from .tiling import ENV_MEMORY, MEMORY_FRACTION

    if os.environ.get(ENV_MEMORY):
        return None  # tiling.memory_budget() honours it
    limits = [w.get("memory_limit") or 0 for w in client.scheduler_info().get("workers", {}).values()]
    limits = [x for x in limits if x > 0]
    return int(min(limits) * MEMORY_FRACTION) if limits else None


# ---------------------------------------------------------------- on the workers

_MODELS: dict[str, tuple[float, Any]] = {}
_SOURCES: dict[str, Any] = {}
_LOCK = threading.Lock()


def worker_model(path: str) -> Any:
    """The ModelBundle at `path`, loaded once per worker process while its files are unchanged."""
    from .bundle import load_bundle

    resolved = str(Path(path).expanduser().resolve())
    stamp = _stamp(Path(resolved))
    with _LOCK:
        cached = _MODELS.get(resolved)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        _limit_threads()
        bundle = load_bundle(resolved)
        _MODELS.clear()
        _MODELS[resolved] = (stamp, bundle)
        return bundle


def _stamp(path: Path) -> float:
    try:
        return max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.iterdir())]) if path.is_dir() else path.stat().st_mtime
    except OSError:
        return -1.0


def _limit_threads() -> None:
    """TensorFlow uses the worker's share of the cores (set by `open_client` for a LocalCluster)."""
    threads = os.environ.get(ENV_THREADS)
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process
        pass


def _source(path: str) -> Any:
    from .omezarr import image_yxc, open_image

    with _LOCK:
        if path not in _SOURCES:
            _SOURCES.clear()
            _SOURCES[path] = image_yxc(open_image(path))
        return _SOURCES[path]


def _config(bundle: Any, overrides: dict[str, Any]) -> Any:
    return bundle.config.replace(predict=dict(overrides)).validate() if overrides else bundle.config


def chunk_task(model_path: str, overrides: dict[str, Any], source_path: str, job: Any, iy: int, ix: int) -> tuple[int, int]:
    """Cluster task: predict one chunk of a large image into its staged labels store."""
    from .largeimage import predict_chunk

    bundle = worker_model(model_path)
    predict_chunk(bundle.model, _source(source_path), _config(bundle, overrides), job, iy, ix)
    return iy, ix


def objects_task(model_path: str, overrides: dict[str, Any], source_path: str, job: Any, iy: int, ix: int) -> Any:
    """Cluster task: segment one chunk of a large image (see `chunkobjects.py`); returns its pixel counts."""
    from .chunkobjects import segment_chunk

    bundle = worker_model(model_path)
    return segment_chunk(bundle.model, _source(source_path), _config(bundle, overrides), job, iy, ix)


@dataclass(frozen=True)
class FileJob:
    """One image file to predict whole into one label TIFF (plus probabilities when `prob` is set)."""

    source: str
    dest: str
    prob: str | None
    axes: str | None
    overwrite: bool
    prefix: str  # temporary files of this run: TEMP_PREFIX + run token
    started: float  # the run's start (a rerun finds its earlier attempt's published file)


def file_task(model_path: str, overrides: dict[str, Any], job: FileJob) -> str:
    """Cluster task: predict an image file and write its label TIFF (the CLI's single-process rule)."""
    bundle = worker_model(model_path)
    return predict_file(bundle, _config(bundle, overrides), job)


def predict_file(bundle: Any, cfg: Any, job: FileJob) -> str:
    """Predict one file whole and write its outputs atomically; a rerun of a published job is a no-op."""
    import numpy as np

    from .cli import _convert
    from .io import write_labels
    from .layout import read_image, to_core
    from .outputs import written_by_us
    from .predict import predict_image

    dest = Path(job.dest)
    outputs = [dest] + ([Path(job.prob)] if job.prob else [])
    if not job.overwrite and all(_published_by_run(p, job.started, written_by_us) for p in outputs):
        return job.dest  # an earlier attempt of this task finished before its worker was lost
    path = Path(job.source)
    array, layout = read_image(path, job.axes)
    image = _convert(to_core(array, layout), cfg.data.in_channels, path.name)
    try:
        result = predict_image(bundle.model, image, cfg, fit_memory=True)
    except InputError as exc:
        raise InputError(f"{path.name}: {exc}") from exc
    labels, probs = result.labels, result.probabilities
    if image.ndim == 4 and image.shape[0] == 1:
        labels, probs = labels[0], probs[0]
    if not _published_by_run(dest, job.started, written_by_us):
        write_labels(dest, labels, overwrite=job.overwrite, prefix=job.prefix)
    if job.prob and not _published_by_run(Path(job.prob), job.started, written_by_us):
        write_labels(job.prob, probs.astype(np.float32), overwrite=job.overwrite, prefix=job.prefix)
    return job.dest


def _published_by_run(path: Path, started: float, ours: Callable[[Path], bool]) -> bool:
    try:
        return path.is_file() and path.stat().st_mtime >= started - 1 and ours(path)
    except OSError:
        return False


# ---------------------------------------------------------------- on the client


Call = tuple[str, Callable[..., Any], tuple]


#: Seconds between looks at the stop flag while tasks run.
STOP_POLL_S = 0.05


def run_tasks(client: Any, calls: Sequence[Call], on_done: Callable[[str, Any], Sequence[Call] | None],
              progress: Callable[[int, int], None] | None = None, stop: Any = None) -> bool:  # fmt: skip
    """Submit (key, function, args) calls, call `on_done(key, result)` as each finishes; errors propagate.

    Calls that `on_done` returns are submitted too (the next step of an image). Keys are unique per
    run, so a rerun after a lost worker is the same task, not a second one. Returns False when
    `stop` was set (the tasks not finished are cancelled), True when all finished.
    """
    from distributed import as_completed

    def submit(call: Call) -> Any:
        key, fn, args = call
        return client.submit(fn, *args, key=key, pure=False, retries=TASK_RETRIES)

    futures = [submit(call) for call in calls]
    pending = as_completed(futures)
    done = 0
    try:
        while not pending.is_empty():
            if stop is not None and stop.is_set():
                client.cancel(futures)
                return False
            if not pending.has_ready():
                time.sleep(STOP_POLL_S)
                continue
            future = next(pending)
            done += 1
            for call in on_done(future.key, future.result()) or ():
                futures.append(submit(call))
                pending.add(futures[-1])
            if progress is not None:
                progress(done, len(futures))
        return True
    except BaseException:
        client.cancel(futures)
        raise


def run_token() -> str:
    import uuid

    return f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
