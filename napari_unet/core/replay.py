"""Replay data of a model lineage: compressed patch files that all versions of a model folder share.

Fine-tuning mixes in patches of what a model was trained on, so it does not forget. Each patch is
stored once per model folder, content-addressed: ``<model>/replay/<sha256>.npz`` holds one image
and its target, compressed and exact (an image with at most 65,536 distinct values is stored as
uint8/uint16 codes into a table of its float32 values; targets as the smallest integer type that
holds them). A version's ``metadata.json`` lists its patches by hash (``"replay": {"format": 1,
"patches": [...]}``), so a fine-tuning round writes only the patches it adds, and ten rounds do not
cost ten copies. Each file is written through a temporary file and renamed, before the version that
refers to it is published. No TensorFlow, no pickle.

Older versions kept ``replay/images.tif`` and ``replay/targets.tif`` inside the version folder;
`load_version_replay` still reads them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import BundleError
from .outputs import follow_umask

STORE_DIR = "replay"
META_KEY = "replay"
FORMAT = 1
_TEMP_PREFIX = ".replay-tmp-"
_HASH_TAG = b"napari-unet replay patch 1\0"


def patch_key(image: np.ndarray, target: np.ndarray) -> str:
    """SHA-256 of a float32 ``(H, W, C)`` image and an int32 ``(H, W)`` target (shapes included)."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    target = np.ascontiguousarray(target, dtype=np.int32)
    digest = hashlib.sha256(_HASH_TAG)
    digest.update(repr((image.shape, target.shape)).encode())
    digest.update(image.tobytes())
    digest.update(target.tobytes())
    return digest.hexdigest()


def store_dir(model_dir: Path | str) -> Path:
    return Path(model_dir) / STORE_DIR


def store_patches(model_dir: Path | str, images: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> list[str]:
    """Write the patches the model folder's store lacks; returns every patch's hash, in order."""
    folder = store_dir(model_dir)
    keys = []
    for image, target in zip(images, targets, strict=True):
        key = patch_key(image, target)
        keys.append(key)
        path = folder / f"{key}.npz"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            _write_patch(path, image, target)
    return keys


def metadata_entry(keys: Sequence[str]) -> dict:
    """What a version's metadata says about its replay data."""
    return {"format": FORMAT, "patches": list(keys)}


def load_version_replay(version_dir: Path, metadata: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A version's replay patches (float32 images, int32 targets); both layouts; empty lists when none.

    Patches are looked up in the model folder's store, then in the version folder's own
    ``replay/`` (a version exported to a .zip carries its patches there).
    """
    entry = metadata.get(META_KEY)
    if entry is None:
        return _load_tiff_layout(version_dir / STORE_DIR)
    images, targets = [], []
    for key in entry_keys(entry, version_dir):
        path = _find(version_dir, key)
        if path is None:
            raise BundleError(
                f"{version_dir} uses replay patch {key[:12]}..., which is missing from "
                f"{store_dir(version_dir.parent)}: the model "
                "folder was copied or cleaned without its replay/ folder. Copy that folder too, or fine-tune "
                "from a model that has its replay data."
            )
        image, target = _read_patch(path, key)
        images.append(image)
        targets.append(target)
    return images, targets


def referenced_files(version_dir: Path, metadata: dict) -> list[Path]:
    """The patch files a version refers to that exist, each once (for exporting a version on its own)."""
    entry = metadata.get(META_KEY)
    if entry is None:
        return []
    found = (_find(version_dir, key) for key in dict.fromkeys(entry_keys(entry, version_dir)))
    return [path for path in found if path is not None]


def _find(version_dir: Path, key: str) -> Path | None:
    """A patch file: in the model folder's store, else in the version's own replay/ (a .zip export's)."""
    for folder in (store_dir(version_dir.parent), version_dir / STORE_DIR):
        if (folder / f"{key}.npz").is_file():
            return folder / f"{key}.npz"
    return None


def entry_keys(entry: object, version_dir: Path) -> list[str]:
    """The patch hashes of a metadata entry; BundleError when it is damaged."""
    patches = entry.get("patches") if isinstance(entry, dict) else None
    fmt = entry.get("format") if isinstance(entry, dict) else None
    if fmt != FORMAT or not isinstance(patches, list) or not all(_is_key(k) for k in patches):
        raise BundleError(
            f"{version_dir}/metadata.json has a damaged '{META_KEY}' entry (expected format {FORMAT} and a list "
            "of SHA-256 hashes); it was edited by hand or written by a newer napari-unet."
        )
    return patches


def _is_key(key: object) -> bool:
    return isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdef" for c in key)


# ---------------------------------------------------------------- one patch file


def _encode(image: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Exact, small arrays for one patch: codes and a value table when the image allows it."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    arrays: dict[str, np.ndarray] = {"target": _small_int(np.asarray(target, dtype=np.int32))}
    values, codes = np.unique(image, return_inverse=True)
    if values.size <= 1 << 16:
        codes = codes.reshape(image.shape).astype(np.uint8 if values.size <= 256 else np.uint16)
        # -0.0 and 0.0 compare equal in np.unique; keep the codes only when they give back the very bits.
        if np.array_equal(values[codes].view(np.uint32), image.view(np.uint32)):
            arrays.update(values=values, codes=codes)
            return arrays
    arrays["image"] = image
    return arrays


def _small_int(target: np.ndarray) -> np.ndarray:
    for dtype in (np.int8, np.int16):
        info = np.iinfo(dtype)
        if target.size == 0 or (target.min() >= info.min and target.max() <= info.max):
            return target.astype(dtype)
    return target


def _write_patch(path: Path, image: np.ndarray, target: np.ndarray) -> None:
    fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".npz", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            # An .npz as np.savez_compressed writes it, at zlib level 1: 5x faster than its level 6 and
            # 7% larger on real patches (the first checkpoint of a training writes them all).
            with zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
                for name, array in _encode(image, target).items():
                    with zf.open(f"{name}.npy", "w") as member:
                        np.lib.format.write_array(member, array, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        follow_umask(tmp)
        os.replace(tmp, path)  # identical content under one name: a concurrent writer does no harm
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_patch(path: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            target = npz["target"].astype(np.int32)
            image = npz["values"][npz["codes"]] if "codes" in npz.files else npz["image"]
    except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile, EOFError) as exc:
        raise BundleError(f"Replay patch {path} is unreadable ({exc}); the file is damaged.") from exc
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim != 3 or target.shape != image.shape[:2] or patch_key(image, target) != key:
        raise BundleError(f"Replay patch {path} does not match its name (hash); the file is damaged.")
    return image, target


# ---------------------------------------------------------------- the layout before lineage stores


def _load_tiff_layout(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    import tifffile

    if not folder.is_dir() or not (folder / "images.tif").is_file():
        return [], []
    try:
        images, targets = (_read_series(folder / f) for f in ("images.tif", "targets.tif"))
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise BundleError(f"Replay data in {folder} is unreadable ({exc}); fine-tune without replay.") from exc
    if len(images) != len(targets):
        raise BundleError(f"Replay data in {folder} is inconsistent: {len(images)} images, {len(targets)} targets.")
    return [a.astype(np.float32, copy=False) for a in images], [t.astype(np.int32, copy=False) for t in targets]


def _read_series(path: Path) -> list[np.ndarray]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return [series.asarray() for series in tif.series]
