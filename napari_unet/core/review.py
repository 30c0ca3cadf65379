"""Lab-bench review of a set of predictions (Qt-free).

A review project is a folder::

    review.json            index: one entry per image (source, shape, status, model, scores, times)
    predictions/<name>.tif label image the model made
    uncertainty/<name>.tif per-pixel uncertainty map (float16, 0..1)
    masks/<name>.tif       the reviewed mask of accepted and corrected images
    images/<name>.tif      copies of images that came from napari layers (files are referenced)

Every write is atomic (temporary file, then `os.replace`), so closing napari or a crash loses
nothing and opening the folder again resumes the review. TensorFlow is imported only inside the
functions that predict or fine-tune.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .config import Config
from .errors import InputError
from .io import list_images, read_image, write_labels
from .normalize import as_samples, check_image, normalize_sample
from .targets import foreground_probability

INDEX_FILE = "review.json"
FORMAT_VERSION = 1
UNREVIEWED, ACCEPTED, CORRECTED, REJECTED, ERROR = "unreviewed", "accepted", "corrected", "rejected", "error"
STATUSES = (UNREVIEWED, ACCEPTED, CORRECTED, REJECTED, ERROR)
#: Statuses whose masks are exported and kept in `masks/`.
REVIEWED_MASKS = (ACCEPTED, CORRECTED)
#: Per-image uncertainty scores (see `uncertainty_score`); benchmarks/uncertainty_ranking.py measures them.
METHODS = ("tta", "intensity", "flip", "entropy")
DEFAULT_METHOD = "tta"
#: Test-time augmentations of a normalised image `(H, W, C)`: (forward, inverse applied to the output).
AUGMENTATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "flip": (lambda x: x[::-1, ::-1], lambda p: p[::-1, ::-1]),  # both axes (a 180-degree turn)
    "darker": (lambda x: x * np.float32(0.7), lambda p: p),  # contrast -30 %
    "brighter": (lambda x: x * np.float32(1.4), lambda p: p),  # contrast +40 %
}
METHOD_AUGMENTATIONS: dict[str, tuple[str, ...]] = {
    "tta": ("flip", "darker", "brighter"),
    "intensity": ("darker", "brighter"),
    "flip": ("flip",),
    "entropy": (),
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ReviewItem:
    """One image of the review and what is known about it."""

    name: str  # unique key, also the file name of its masks
    source: str  # file path, or "layer:<layer name>" for images copied from napari
    shape: list[int] = field(default_factory=list)
    status: str = UNREVIEWED
    model: str | None = None  # model version folder that made the prediction
    model_version: int | None = None
    uncertainty: float | None = None
    foreground: float | None = None  # predicted foreground fraction
    objects: int | None = None  # predicted object count
    error: str | None = None
    added: str = field(default_factory=_now)
    predicted: str | None = None
    reviewed: str | None = None

    @property
    def is_file(self) -> bool:
        return not self.source.startswith("layer:")

    @property
    def predicted_ok(self) -> bool:
        return self.predicted is not None and self.status != ERROR

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ReviewItem:
        known = {f.name for f in fields(cls)}
        item = cls(**{k: v for k, v in raw.items() if k in known})
        if item.status not in STATUSES:
            raise InputError(f"Item {item.name!r} in {INDEX_FILE} has an unknown status {item.status!r}.")
        return item


@dataclass
class ItemPrediction:
    """What the model says about one image, with its uncertainty."""

    labels: np.ndarray  # int32 (H, W)
    probabilities: np.ndarray  # float32 (H, W, K)
    uncertainty_map: np.ndarray  # float32 (H, W), 0..1
    uncertainty: float
    foreground: float
    objects: int


# ---------------------------------------------------------------- uncertainty


def entropy_map(probs: np.ndarray) -> np.ndarray:
    """Per-pixel entropy of the class distribution, divided by its maximum (0..1)."""
    probs = np.clip(np.asarray(probs, dtype=np.float32), 1e-7, 1.0 - 1e-7)
    if probs.shape[-1] == 1:
        p = probs[..., 0]
        return (-(p * np.log(p) + (1 - p) * np.log(1 - p)) / np.log(2.0)).astype(np.float32)
    return (-(probs * np.log(probs)).sum(-1) / np.log(probs.shape[-1])).astype(np.float32)


def uncertainty_score(
    probs: np.ndarray,
    method: str = DEFAULT_METHOD,
    augmented: dict[str, np.ndarray] | None = None,
    threshold: float = 0.5,
) -> tuple[float, np.ndarray]:
    """Per-image uncertainty (higher = less trustworthy) and its per-pixel map (0..1).

    * ``entropy``: mean normalised entropy of the per-pixel class distribution; map = entropy.
    * ``flip``, ``intensity``, ``tta``: how much the predicted foreground changes under small
      test-time changes of the image: 1 - Dice between the foreground of the prediction and that of
      each augmented prediction (mapped back), averaged over `METHOD_AUGMENTATIONS[method]`;
      map = mean |p - p_augmented| of the foreground probability. `augmented` holds those predictions.
    """
    if method not in METHODS:
        raise InputError(f"Unknown uncertainty method {method!r}; use one of {', '.join(METHODS)}.")
    if method == "entropy":
        emap = entropy_map(probs)
        return float(emap.mean()), emap
    names = METHOD_AUGMENTATIONS[method]
    missing = [n for n in names if not augmented or n not in augmented]
    if missing:
        raise InputError(f"The {method!r} uncertainty needs the predictions of the {', '.join(missing)} image(s).")
    p = foreground_probability(probs)
    mask = p > threshold
    scores, umap = [], np.zeros(p.shape, dtype=np.float32)
    for name in names:
        q = foreground_probability(augmented[name])
        other = q > threshold
        scores.append(_ratio(float(np.count_nonzero(mask ^ other)), float(mask.sum() + other.sum())))
        umap += np.abs(p - q)
    return float(np.mean(scores)), umap / len(names)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def review_sample(image: np.ndarray, in_channels: int, name: str) -> np.ndarray:
    """One raw `(H, W, C)` sample from a 2D gray or colour image; InputError when it cannot serve the model."""
    arr = np.asarray(image)
    check_image(arr, name)
    if arr.ndim == 2:
        channels = 1
    elif arr.ndim == 3 and (arr.shape[-1] in (3, 4) or arr.shape[-1] == in_channels):
        channels = int(arr.shape[-1])
    else:
        raise InputError(
            f"{name} has shape {arr.shape}; the review takes one 2D image (gray or RGB) per item. "
            "Open a stack as an image layer to review its planes."
        )
    if channels != in_channels and (channels, in_channels) not in ((4, 3), (1, 3)):
        kind = "RGB" if channels in (3, 4) else f"{channels}-channel"
        raise InputError(
            f"{name} is {kind} ({channels} channels) but the model expects {in_channels} channel(s); "
            "it is left out. Review it with a model trained on such images."
        )
    if arr.ndim == 3 and channels == 1:
        arr = arr[..., 0]  # (H, W, 1) would read as a stack of H rows otherwise
    samples, _ = as_samples(arr, None, in_channels, name)
    return samples[0]


def predict_for_review(
    model: Any,
    image: np.ndarray,
    cfg: Config,
    method: str = DEFAULT_METHOD,
    stop: Any = None,
    name: str = "image",
) -> ItemPrediction:
    """Predict one image, post-process to labels and score its uncertainty (flip TTA when needed)."""
    from .predict import predict_probabilities
    from .targets import probabilities_to_labels

    sample = review_sample(image, cfg.data.in_channels, name)
    if min(sample.shape[:2]) < cfg.size_multiple:
        raise InputError(
            f"{name} is {sample.shape[0]}x{sample.shape[1]} pixels; the model needs at least "
            f"{cfg.size_multiple} pixels on each side."
        )
    x = normalize_sample(sample, cfg.data)
    probs = np.asarray(predict_probabilities(model, x, cfg, stop=stop), dtype=np.float32)
    augmented = augmented_predictions(model, x, cfg, METHOD_AUGMENTATIONS.get(method, ()), stop)
    threshold = cfg.predict.threshold if cfg.data.task == "binary" else 0.5
    score, umap = uncertainty_score(probs, method, augmented, threshold)
    labels = probabilities_to_labels(probs, cfg)
    foreground = float(np.count_nonzero(labels)) / labels.size
    objects = count_objects(labels, cfg)
    return ItemPrediction(labels.astype(np.int32), probs, umap, float(score), foreground, objects)


def augmented_predictions(
    model: Any, x: np.ndarray, cfg: Config, names: Iterable[str], stop: Any = None
) -> dict[str, np.ndarray]:
    """Probabilities of augmented copies of a normalised image, mapped back onto the image grid."""
    from .predict import predict_probabilities

    out = {}
    for name in names:
        forward, inverse = AUGMENTATIONS[name]
        probs = predict_probabilities(model, np.ascontiguousarray(forward(x)), cfg, stop=stop)
        out[name] = np.ascontiguousarray(inverse(np.asarray(probs, dtype=np.float32)))
    return out


def _count_mask_objects(labels: np.ndarray) -> int:
    """Objects of an edited mask: connected components of a 0/1 mask, else distinct non-zero ids."""
    if labels.size and labels.max() <= 1:
        from scipy import ndimage as ndi

        return int(ndi.label(labels > 0)[1])
    return int(np.count_nonzero(np.unique(labels)))


def count_objects(labels: np.ndarray, cfg: Config) -> int:
    """Instances: distinct ids; binary: connected components; classes: classes present (without 0)."""
    if cfg.data.task == "binary":
        from scipy import ndimage as ndi

        return int(ndi.label(labels > 0)[1])
    ids = np.unique(labels)
    return int(np.count_nonzero(ids))


# ---------------------------------------------------------------- the project folder


def safe_name(name: str) -> str:
    """A file-name-safe version of an image or layer name."""
    cleaned = re.sub(r"[^\w.\-\[\]]+", "_", name.strip()).strip("._")
    return cleaned or "image"


class ReviewProject:
    """The review index and mask files in one folder; thread-safe, every change saved at once."""

    def __init__(self, folder: Path, items: list[ReviewItem], meta: dict[str, Any]) -> None:
        self.folder = folder
        self._items: dict[str, ReviewItem] = {item.name: item for item in items}
        self.meta = meta
        self._lock = threading.RLock()

    # ------------------------------------------------------------ opening
    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder).expanduser() / INDEX_FILE).is_file()

    @classmethod
    def open(cls, folder: str | Path) -> ReviewProject:
        """Resume the review in `folder`, or start one there (the folder is created if needed).

        Raises InputError when the folder cannot be written or its index is damaged.
        """
        folder = Path(folder).expanduser().absolute()
        _check_writable(folder)
        index = folder / INDEX_FILE
        if not index.exists():
            project = cls(folder, [], {"format_version": FORMAT_VERSION, "created": _now()})
            project.save()
            return project
        try:
            raw = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(
                f"The review index {index} is damaged ({exc}); restore it or choose a new review folder."
            ) from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("items"), list):
            raise InputError(f"{index} is not a napari-unet review index; choose another folder.")
        if int(raw.get("format_version", 0)) > FORMAT_VERSION:
            raise InputError(f"{index} was written by a newer napari-unet; upgrade to resume this review.")
        items = [ReviewItem.from_dict(entry) for entry in raw["items"]]
        meta = {k: v for k, v in raw.items() if k != "items"}
        return cls(folder, items, meta)

    # ------------------------------------------------------------ items
    @property
    def items(self) -> list[ReviewItem]:
        with self._lock:
            return list(self._items.values())

    @property
    def names(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def item(self, name: str) -> ReviewItem:
        try:
            return self._items[name]
        except KeyError:
            raise InputError(f"{name!r} is not part of the review in {self.folder}.") from None

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for item in self.items:
            out[item.status] += 1
        return out

    def ranked(self) -> list[str]:
        """Names worst first: highest uncertainty, then unscored, then errors."""

        def key(item: ReviewItem) -> tuple[int, float]:
            if item.status == ERROR:
                return (2, 0.0)
            if item.uncertainty is None:
                return (1, 0.0)
            return (0, -item.uncertainty)

        return [item.name for item in sorted(self.items, key=key)]

    def add_files(self, paths: Iterable[str | Path]) -> list[str]:
        """Add image files (or every image in the given folders); known sources are kept as they are.

        Raises InputError when there is no image at all; unreadable files are added with status
        ``error`` and their reason, so the rest of the set stays reviewable.
        """
        files = list_images(paths)
        added = []
        with self._lock:
            known = {item.source for item in self._items.values()}
            for path in files:
                source = str(path.absolute())
                if source in known:
                    continue
                item = ReviewItem(name=self._unique_name(path.stem), source=source)
                try:
                    item.shape = list(_peek_shape(path))
                except InputError as exc:
                    item.status, item.error = ERROR, str(exc)
                self._items[item.name] = item
                added.append(item.name)
            self.save()
        return added

    def add_array(self, name: str, image: np.ndarray) -> str:
        """Add an in-memory image (a napari layer or a plane of a stack); a copy is kept in images/."""
        image = np.asarray(image)
        with self._lock:
            source = f"layer:{name}"
            for item in self._items.values():
                if item.source == source:
                    return item.name
            item = ReviewItem(name=self._unique_name(name), source=source, shape=list(image.shape))
            self._write_tiff(self.folder / "images" / f"{item.name}.tif", image)
            self._items[item.name] = item
            self.save()
            return item.name

    def _unique_name(self, name: str) -> str:
        base = safe_name(name)
        candidate, i = base, 2
        while candidate in self._items:
            candidate, i = f"{base}-{i}", i + 1
        return candidate

    def load_image(self, name: str) -> np.ndarray:
        path = self._source_path(name)
        image = read_image(path)
        if image.size == 0:
            raise InputError(f"Cannot read {path.name}: it holds no image data (the file is empty or damaged).")
        return image

    # ------------------------------------------------------------ predictions and reviews
    def record_prediction(
        self,
        name: str,
        pred: ItemPrediction,
        model_path: str | Path | None,
        model_version: int | None,
        only_unreviewed: bool = False,
    ) -> bool:
        """Store a prediction and its scores; returns False if skipped (reviewed meanwhile)."""
        with self._lock:
            if only_unreviewed and self.item(name).status != UNREVIEWED:
                return False
            self.write_prediction_files(name, pred)
            return self.record_scores(
                name, pred.uncertainty, pred.foreground, pred.objects, list(pred.labels.shape), model_path,
                model_version, only_unreviewed,
            )  # fmt: skip

    def write_prediction_files(self, name: str, pred: ItemPrediction) -> None:
        """Write the predicted labels and uncertainty map of one image (not the index)."""
        self._write_tiff(self._path("predictions", name), pred.labels.astype(np.int32))
        self._write_tiff(self._path("uncertainty", name), pred.uncertainty_map.astype(np.float16))

    def record_scores(
        self,
        name: str,
        uncertainty: float,
        foreground: float,
        objects: int,
        shape: list[int],
        model_path: str | Path | None,
        model_version: int | None,
        only_unreviewed: bool = False,
    ) -> bool:
        """Enter a prediction whose files are written into the index; False if skipped (reviewed meanwhile)."""
        with self._lock:
            item = self.item(name)
            if only_unreviewed and item.status != UNREVIEWED:
                return False
            item.model = str(model_path) if model_path is not None else None
            item.model_version = model_version
            item.uncertainty, item.foreground, item.objects = float(uncertainty), float(foreground), int(objects)
            item.shape = list(shape) if not item.shape else item.shape
            item.predicted, item.error = _now(), None
            if item.status == ERROR:
                item.status = UNREVIEWED
            self.meta["model"], self.meta["model_version"] = item.model, model_version
            self.save()
            return True

    def record_error(self, name: str, message: str) -> None:
        with self._lock:
            item = self.item(name)
            item.status, item.error = ERROR, message
            self.save()

    def prediction(self, name: str) -> np.ndarray | None:
        return self._read(self._path("predictions", name))

    def uncertainty_map(self, name: str) -> np.ndarray | None:
        umap = self._read(self._path("uncertainty", name))
        return None if umap is None else umap.astype(np.float32)

    def mask(self, name: str) -> np.ndarray | None:
        """The reviewed mask (accepted or corrected), or None."""
        return self._read(self._path("masks", name))

    def current_labels(self, name: str) -> np.ndarray | None:
        """What to show for an image: its reviewed mask if it has one, else the prediction."""
        item = self.item(name)
        mask = self.mask(name) if item.status in REVIEWED_MASKS else None
        return mask if mask is not None else self.prediction(name)

    def accept(self, name: str, labels: np.ndarray | None = None) -> None:
        """Keep the shown labels as this image's mask; an image already corrected stays corrected."""
        with self._lock:
            item = self.item(name)
            self._require_prediction(item, "accept")
            labels = labels if labels is not None else self.current_labels(name)
            self._write_tiff(self._path("masks", name), np.asarray(labels))
            if item.status != CORRECTED:
                item.status = ACCEPTED
            item.reviewed = _now()
            self.save()

    def correct(self, name: str, labels: np.ndarray) -> None:
        """Save edited labels as this image's mask and mark it corrected."""
        labels = np.asarray(labels)
        with self._lock:
            item = self.item(name)
            self._require_prediction(item, "correct")
            if item.shape and tuple(labels.shape) != tuple(item.shape[:2]):
                raise InputError(
                    f"The edited labels of {name} have shape {labels.shape}, but the image is {tuple(item.shape[:2])}."
                )
            self._write_tiff(self._path("masks", name), labels)
            item.status, item.reviewed = CORRECTED, _now()
            item.foreground = float(np.count_nonzero(labels)) / max(labels.size, 1)
            item.objects = _count_mask_objects(labels)
            self.save()

    def reject(self, name: str) -> None:
        """The prediction is unusable: excluded from export and fine-tuning (a saved mask stays on disk)."""
        self.set_status(name, REJECTED)

    def set_status(self, name: str, status: str) -> None:
        if status not in (UNREVIEWED, ACCEPTED, CORRECTED, REJECTED):
            raise InputError(f"Cannot set status {status!r}; use unreviewed, accepted, corrected or rejected.")
        with self._lock:
            item = self.item(name)
            if status != UNREVIEWED:
                self._require_prediction(item, status.rstrip("ed"))
            if status in REVIEWED_MASKS and self.mask(name) is None:
                labels = self.prediction(name)
                if labels is not None:
                    self._write_tiff(self._path("masks", name), labels)
            item.status = status
            item.reviewed = _now() if status != UNREVIEWED else None
            self.save()

    def _require_prediction(self, item: ReviewItem, what: str) -> None:
        if item.status == ERROR:
            raise InputError(f"{item.name} could not be predicted ({item.error}); there is nothing to {what}.")
        if item.predicted is None:
            raise InputError(f"{item.name} has no prediction yet; predict it before you {what} it.")

    # ------------------------------------------------------------ using the reviewed masks
    def with_status(self, *statuses: str) -> list[str]:
        return [item.name for item in self.items if item.status in statuses]

    def to_predict(self, only_unreviewed: bool = False) -> list[str]:
        """Images still waiting for a prediction (or, with `only_unreviewed`, every unreviewed one)."""
        if only_unreviewed:
            return self.with_status(UNREVIEWED)
        return [item.name for item in self.items if item.status in (UNREVIEWED, ERROR) and item.predicted is None]

    def training_pairs(self, statuses: Sequence[str] = (CORRECTED,)) -> list[Any]:
        """`TrainingPair`s of images and their reviewed masks (default: the corrected ones)."""
        from .data import TrainingPair

        pairs = []
        for name in self.with_status(*statuses):
            mask = self.mask(name)
            if mask is not None:
                pairs.append(TrainingPair(self.load_image(name), mask, name))
        return pairs

    def export(
        self, dest: str | Path, statuses: Sequence[str] = REVIEWED_MASKS, overwrite: bool = False
    ) -> list[Path]:
        """Write the reviewed masks as label TIFFs named like the input images, under the output policy.

        Never into a folder holding the images (or the review's own copies), never over an existing
        file unless `overwrite` (and then only over napari-unet's own files); images that share a name
        get mirrored relative paths. Everything is checked before the first file is written.
        """
        from .outputs import plan_outputs

        chosen = [(name, self.mask(name)) for name in self.with_status(*statuses)]
        chosen = [(name, mask) for name, mask in chosen if mask is not None]
        sources = [self._source_path(name) for name, _ in chosen]
        plans = plan_outputs(sources, dest, protected=[self.folder / INDEX_FILE], overwrite=overwrite)
        return [write_labels(plan.path, mask, overwrite=overwrite) for plan, (_, mask) in zip(plans, chosen)]

    def _source_path(self, name: str) -> Path:
        item = self.item(name)
        return Path(item.source) if item.is_file else self.folder / "images" / f"{name}.tif"

    # ------------------------------------------------------------ files
    def save(self) -> None:
        """Write review.json atomically."""
        with self._lock:
            payload = {**self.meta, "format_version": FORMAT_VERSION, "updated": _now()}
            payload["items"] = [asdict(item) for item in self._items.values()]
            text = json.dumps(payload, indent=1)
            try:
                fd, tmp = tempfile.mkstemp(prefix=".review-", suffix=".json.tmp", dir=self.folder)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                os.replace(tmp, self.folder / INDEX_FILE)
            except OSError as exc:
                raise _write_error(self.folder, exc) from exc

    def _path(self, kind: str, name: str) -> Path:
        return self.folder / kind / f"{name}.tif"

    def _write_tiff(self, path: Path, array: np.ndarray) -> None:
        try:
            write_labels(path, array)
        except OSError as exc:
            raise _write_error(self.folder, exc) from exc

    @staticmethod
    def _read(path: Path) -> np.ndarray | None:
        return np.asarray(tifffile.imread(path)) if path.is_file() else None


def _peek_shape(path: Path) -> tuple[int, ...]:
    """Shape of an image file (read in full for formats without a cheap header); InputError if unreadable."""
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            with tifffile.TiffFile(path) as tif:
                shape = tuple(tif.series[0].shape) if tif.series else ()
        except Exception as exc:  # any parser failure means the file is unusable
            raise InputError(f"Cannot read {path.name}: {exc}") from exc
    else:
        shape = tuple(read_image(path).shape)
    if not shape or 0 in shape:
        raise InputError(f"Cannot read {path.name}: it holds no image data (the file is empty or damaged).")
    return shape


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise _write_error(folder, exc) from exc


def _write_error(folder: Path, exc: OSError) -> InputError:
    return InputError(
        f"Cannot write to the review folder {folder} ({exc.strerror or exc}). Choose another folder for the "
        "review; the images can stay where they are."
    )


# ---------------------------------------------------------------- background jobs (no Qt here)


@dataclass
class PredictionDone:
    """One image finished (`prediction` set) or failed (`error` set)."""

    name: str
    index: int
    total: int
    prediction: ItemPrediction | None = None
    error: str | None = None


def predict_items(
    project: ReviewProject,
    bundle: Any,
    names: Sequence[str],
    stop: Any = None,
    method: str = DEFAULT_METHOD,
    only_unreviewed: bool = False,
) -> Iterator[PredictionDone]:
    """Predict the named images one by one, saving each result; yields after every image.

    A file that cannot be read or does not fit the model is marked ``error`` with its reason and
    the rest goes on. Stops between images when `stop.is_set()`.
    """
    from .errors import NapariUNetError
    from .predict import PredictionStopped

    cfg = bundle.config
    version = getattr(bundle, "version", None)
    for i, name in enumerate(names):
        if stop is not None and stop.is_set():
            return
        try:
            image = project.load_image(name)
            pred = predict_for_review(bundle.model, image, cfg, method, stop, name)
        except PredictionStopped:
            return
        except NapariUNetError as exc:
            project.record_error(name, str(exc))
            yield PredictionDone(name, i, len(names), error=str(exc))
            continue
        project.record_prediction(name, pred, bundle.path, version, only_unreviewed=only_unreviewed)
        yield PredictionDone(name, i, len(names), prediction=pred)


def finetune_on_reviewed(
    project: ReviewProject,
    bundle: Any,
    on_event: Callable[[Any], None] | None = None,
    stop: Any = None,
    epochs: int | None = None,
    statuses: Sequence[str] = (CORRECTED,),
) -> tuple[Any, Path | None]:
    """Fine-tune `bundle` on the corrected images and save a new version beside it.

    Returns `(TrainResult, new version folder)`; nothing is saved (None) when the run was stopped
    before a complete epoch. Models loaded from elsewhere than a version folder are saved under
    the review folder's `models/`.
    """
    from .train import finetune

    pairs = reviewed_pairs(project, statuses)
    result = finetune(bundle, pairs, on_event=on_event, stop=stop, epochs=epochs)
    if result.status == "stopped" and result.best_epoch is None:
        return result, None
    root, name = finetune_location(project.folder, bundle.path)
    return result, Path(result.save(root, name))


def reviewed_pairs(project: ReviewProject, statuses: Sequence[str] = (CORRECTED,)) -> list[Any]:
    """The training pairs of reviewed images; InputError when there are none yet."""
    pairs = project.training_pairs(statuses)
    if not pairs:
        raise InputError(
            f"No {' or '.join(statuses)} images yet: edit a predicted mask with napari's brush or eraser "
            "(that marks it corrected), then fine-tune."
        )
    return pairs


def finetune_location(review_folder: Path | str, model_path: Path | str | None) -> tuple[Path, str]:
    """(root, name) of a fine-tuned review model: beside its parent's versions, else under `models/`."""
    path = Path(model_path) if model_path is not None else None
    if path is not None and re.match(r"^v\d{3,}$", path.name):
        return path.parent.parent, path.parent.name
    return Path(review_folder) / "models", "review-finetuned"
