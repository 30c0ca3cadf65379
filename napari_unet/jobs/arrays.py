"""Arrays between the processes: ``.npy`` files in a session folder, memory-mapped on both sides.

The folder lives in ``/dev/shm`` where it exists (RAM, no disk writes), else in the temp folder.
Its name carries the viewer's pid, so folders of sessions that died are removed at the next start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from napari_unet.core.paths import pid_alive

from .messages import ArrayRef

PREFIX = "napari-unet-"


def scratch_root() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def new_session_dir() -> Path:
    """A fresh folder for this process's arrays (stale ones of dead processes are removed first)."""
    root = scratch_root()
    remove_stale(root)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))


def remove_stale(root: Path) -> None:
    for folder in root.glob(f"{PREFIX}*-*"):
        try:
            pid = int(folder.name[len(PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def put(folder: Path | str, array: object, chunk_rows: int = 1024) -> ArrayRef:
    """Write an array (numpy, or lazy: dask/zarr, copied a band of rows at a time) to a new file."""
    shape = tuple(int(s) for s in getattr(array, "shape"))
    dtype = np.dtype(getattr(array, "dtype"))
    path = Path(folder) / f"{uuid.uuid4().hex}.npy"
    if isinstance(array, np.ndarray):
        np.save(path, np.ascontiguousarray(array), allow_pickle=False)
    else:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        for start in range(0, shape[0], chunk_rows):
            out[start : start + chunk_rows] = np.asarray(array[start : start + chunk_rows])
        out.flush()
        del out
    return ArrayRef(str(path), shape, dtype.str)


def empty(folder: Path | str, shape: tuple[int, ...], dtype: object) -> tuple[ArrayRef, np.memmap]:
    """A new zero-filled file-backed array to write results into."""
    path = Path(folder) / f"{uuid.uuid4().hex}.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape))
    return ArrayRef(str(path), tuple(int(s) for s in shape), np.dtype(dtype).str), out


def view(ref: ArrayRef) -> np.ndarray:
    """A read-only memory map of the array (no copy; pickled objects are refused)."""
    return np.load(ref.path, mmap_mode="r", allow_pickle=False)


def take(ref: ArrayRef) -> np.ndarray:
    """The array, now the caller's: a private copy-on-write map of its file, which is deleted.

    Nothing is copied up front (copying a 4096x4096 prediction stalled napari's event loop for
    70-200 ms): pages are read when used, writes stay private, and Linux keeps the mapped data
    after the file is gone. Windows cannot delete a mapped file, so there it is a plain copy.
    """
    try:
        array = np.load(ref.path, mmap_mode="c", allow_pickle=False)
        return np.array(array) if os.name == "nt" else array
    finally:
        release(ref)


def release(ref: ArrayRef | None) -> None:
    if ref is not None:
        Path(ref.path).unlink(missing_ok=True)
