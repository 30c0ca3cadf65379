"""Label images <-> training targets, and network probabilities -> label images.

Targets (see docs/architecture.md) are int32 `(H, W)` arrays:

* binary: 0 background, 1 foreground (any label > 0);
* classes: the label value is the class id `0..n_classes-1`;
* instances: 0 background, 1 object interior, 2 object boundary. The boundary is the band of
  `boundary_width` pixels of every object that lies next to another object or to background,
  so touching objects are separated by their boundaries.

Pixels whose label equals `DataConfig.ignore_label` become `IGNORE_TARGET` (-1).

Sparse mode (`DataConfig.sparse`, for strokes painted in napari): 0 means "not annotated" and is
ignored, `DataConfig.background_label` is painted background (class 0), every other value is an
object (binary, instances) or a class id (classes). A partly painted object is read as what is
painted: its pixels are interior, and boundary only where another annotated label (background or
another object) lies within `boundary_width`, so the boundary class is learnt only where both
sides of it are annotated. An object stroke that nobody closed off says nothing about its edge.
Only numpy, scipy and scikit-image are used here (no TensorFlow).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .config import IGNORE_TARGET, Config, DataConfig
from .errors import InputError

# scikit-image is imported where it is used: napari's process imports this module with the widgets,
# and importing skimage.morphology held the event loop for ~40 ms when the Predict widget was docked.
_FOUR_CONNECTED = ndi.generate_binary_structure(2, 1)
_EIGHT_CONNECTED = ndi.generate_binary_structure(2, 2)


def labels_to_target(labels: Any, data_cfg: DataConfig) -> np.ndarray:
    """Turn a 2D label image (any integer or bool dtype) into an int32 training target."""
    lab = _as_label_array(labels)
    if data_cfg.sparse:
        ignore = lab == 0
        lab = dense_labels(lab, data_cfg)
    else:
        ignore = _ignore_mask(lab, data_cfg.ignore_label)
    negative = (lab < 0) & ~ignore
    if negative.any():
        bad = np.unique(lab[negative])[:10].tolist()
        raise InputError(
            f"Labels contain negative value(s) {bad}; labels must be 0 (background) or positive "
            "(set data.ignore_label to the value that marks unannotated pixels)."
        )
    task = data_cfg.task
    if task == "binary":
        target = (lab > 0).astype(np.int32)
    elif task == "classes":
        too_big = (lab >= data_cfg.n_classes) & ~ignore
        if too_big.any():
            bad = np.unique(lab[too_big])[:10].tolist()
            raise InputError(
                f"Labels contain value(s) {bad} but the classes task has n_classes={data_cfg.n_classes} "
                f"(ids 0..{data_cfg.n_classes - 1}); raise data.n_classes or fix the labels."
            )
        target = lab.astype(np.int32)
    elif task == "instances":
        target = instance_trimap(lab, data_cfg.boundary_width, ignore)
    else:
        raise InputError(f"Unknown task {task!r}; use binary, classes or instances.")
    target[ignore] = IGNORE_TARGET
    return target


def dense_labels(labels: Any, data_cfg: DataConfig) -> np.ndarray:
    """Labels with their background as 0: in sparse mode `background_label` -> 0; else unchanged.

    (In sparse mode unpainted pixels are 0 too; `labels_to_target` ignores them before this.)
    """
    lab = np.asarray(labels)
    if not data_cfg.sparse:
        return lab
    return np.where(lab == data_cfg.background_label, 0, lab)


def instance_trimap(labels: np.ndarray, boundary_width: int = 2, ignore: np.ndarray | None = None) -> np.ndarray:
    """Instance labels -> 0 background / 1 interior / 2 boundary (int32).

    A pixel of an object is boundary when another label (object or background) lies within
    `boundary_width` pixels (disk footprint). Ignored pixels and the image edge do not make
    boundaries: an object cut by either is not known to end there.
    """
    lab = labels.astype(np.int64, copy=False)
    if ignore is None:
        ignore = np.zeros(lab.shape, dtype=bool)
    from skimage.morphology import disk

    footprint = disk(int(boundary_width))
    # Ignored neighbours must not count: hide them from the max filter (-1) and the min filter (huge).
    highest = ndi.maximum_filter(np.where(ignore, -1, lab), footprint=footprint, mode="nearest")
    lowest = ndi.minimum_filter(np.where(ignore, np.iinfo(np.int64).max, lab), footprint=footprint, mode="nearest")
    foreground = (lab > 0) & ~ignore
    target = foreground.astype(np.int32)
    target[foreground & (highest != lowest)] = 2
    return target


def probabilities_to_labels(
    probs: np.ndarray,
    cfg: Config,
    threshold: float | None = None,
    min_size: int | None = None,
    split_touching: bool | None = None,
    seed_threshold: float | None = None,
    seed_min_size: int | None = None,
    seed_mode: str | None = None,
    seed_h: float | None = None,
) -> np.ndarray:
    """Network output `(H, W, K)` -> int32 label image; defaults come from `cfg.predict`.

    binary: {0, 1} mask of `p > threshold` without components smaller than `min_size`.
    classes: argmax class ids (threshold and min_size unused).
    instances: objects 1..N inside the foreground `1 - p_background > threshold`; see
    `instance_objects` for the seeds (`split_touching`, `seed_*`). Objects smaller than
    `min_size` are removed.
    """
    p = cfg.predict
    threshold = p.threshold if threshold is None else float(threshold)
    min_size = p.min_size if min_size is None else int(min_size)
    split_touching = p.split_touching if split_touching is None else bool(split_touching)
    if seed_threshold is None:
        seed_threshold = threshold if p.seed_threshold is None else float(p.seed_threshold)
    seed_min_size = p.seed_min_size if seed_min_size is None else int(seed_min_size)
    seed_mode = p.seed_mode if seed_mode is None else str(seed_mode)
    seed_h = p.seed_h if seed_h is None else float(seed_h)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 2:
        probs = probs[..., None]
    if probs.ndim != 3 or probs.shape[-1] != cfg.n_outputs:
        raise InputError(
            f"Probabilities have shape {probs.shape}; the {cfg.data.task} task needs (H, W, {cfg.n_outputs})."
        )
    task = cfg.data.task
    if task == "binary":
        mask = probs[..., 0] > threshold
        if min_size > 1:
            mask = _remove_small(ndi.label(mask, structure=_FOUR_CONNECTED)[0], min_size) > 0
        return mask.astype(np.int32)
    if task == "classes":
        return np.argmax(probs, axis=-1).astype(np.int32)
    objects = instance_objects(probs, threshold, split_touching, seed_threshold, seed_min_size, seed_mode, seed_h)
    if min_size > 1:
        objects = _remove_small(objects, min_size)
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(objects.astype(np.int32))[0].astype(np.int32)


def unsized_objects(probs: np.ndarray, cfg: Config) -> np.ndarray:
    """The objects (int32, 1..N) `probabilities_to_labels` sizes with `min_size`: the 4-connected
    components of a binary mask, or the instances. Chunked prediction filters them by global size."""
    if cfg.data.task == "binary":
        mask = np.asarray(probs)[..., 0] > cfg.predict.threshold
        return ndi.label(mask, structure=_FOUR_CONNECTED)[0].astype(np.int32)
    if cfg.data.task == "instances":
        return probabilities_to_labels(probs, cfg, min_size=0)
    raise InputError(f"The {cfg.data.task} task has no objects.")


#: Smoothing (pixels) of the interior's distance map before its maxima become seeds.
SEED_SIGMA = 1.0


def instance_objects(
    probs: np.ndarray,
    threshold: float,
    split_touching: bool = True,
    seed_threshold: float | None = None,
    seed_min_size: int = 0,
    seed_mode: str = "distance",
    seed_h: float = 0.5,
) -> np.ndarray:
    """Objects (int32, not relabelled, no size filter) from background/interior/boundary probabilities.

    The foreground is `1 - p_background > threshold`, the interior `p_interior > seed_threshold`
    (default: `threshold`) inside it. Seeds, with `split_touching`:

    * "distance": the maxima of the interior's Euclidean distance map (smoothed by `SEED_SIGMA`)
      that stand at least `seed_h` pixels above their surroundings (h-maxima). A nucleus whose
      interior is pinched or ragged keeps one seed; two touching nuclei joined by a thin
      interior bridge get two. The watershed floods the negated distance map.
    * "components": connected components of the interior; the watershed floods `1 - p_interior`.

    Seeds smaller than `seed_min_size` pixels are dropped (a neighbouring seed floods them).
    Foreground pieces no seed reaches (objects too thin to have an interior) become objects of
    their own. Without `split_touching`, objects are the connected components of the foreground.
    """
    seed_threshold = threshold if seed_threshold is None else float(seed_threshold)
    foreground = (1.0 - probs[..., 0]) > threshold
    if not split_touching:
        return ndi.label(foreground, structure=_FOUR_CONNECTED)[0].astype(np.int32)
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    interior = (probs[..., 1] > seed_threshold) & foreground
    if seed_mode == "distance":
        distance = ndi.gaussian_filter(ndi.distance_transform_edt(interior), SEED_SIGMA)
        peaks = h_maxima(distance, float(seed_h)) > 0 if seed_h > 0 else interior
        seeds, n_seeds = ndi.label(peaks & interior, structure=_EIGHT_CONNECTED)
        surface = -distance
    else:
        seeds, n_seeds = ndi.label(interior, structure=_FOUR_CONNECTED)
        surface = 1.0 - probs[..., 1]
    if seed_min_size > 1 and n_seeds:
        seeds, _, _ = relabel_sequential(_remove_small(seeds, seed_min_size))
        n_seeds = int(seeds.max())
    objects = watershed(surface, markers=seeds, mask=foreground)
    if n_seeds > 1:
        objects = _snap_to_nearest_seed(objects, seeds)
    # Foreground pieces the watershed could not reach from any seed keep their own id.
    orphans, _ = ndi.label(foreground & (objects == 0), structure=_FOUR_CONNECTED)
    return np.where(orphans > 0, orphans + n_seeds, objects).astype(np.int32)


def object_sizes(labels: np.ndarray) -> np.ndarray:
    """Pixel counts of the objects of a label image (instances: ids; masks: connected components)."""
    lab = np.asarray(labels)
    if lab.max(initial=0) <= 1:
        lab = ndi.label(lab > 0, structure=_FOUR_CONNECTED)[0]
    sizes = np.bincount(lab.ravel().astype(np.int64))[1:]
    return sizes[sizes > 0]


def suggested_min_size(sizes: np.ndarray, fraction: float = 0.25) -> int:
    """Default minimum object size from the training objects: `fraction` of their 5th percentile area.

    Specks far smaller than every real object are noise; a real object is rarely below a quarter of
    the small end of the objects the user labelled. 0 when there are no objects.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.size == 0:
        return 0
    return int(max(0.0, np.floor(fraction * np.percentile(sizes, 5))))


def stack_probabilities_to_labels(probabilities: np.ndarray, cfg: Config, **options: Any) -> np.ndarray:
    """`probabilities_to_labels` for one image `(H, W, K)` or a stack `(N, H, W, K)`, plane by plane,
    as `compact_labels` for the viewer."""
    if probabilities.ndim == 4:
        return compact_labels(np.stack([probabilities_to_labels(p, cfg, **options) for p in probabilities]))
    return compact_labels(probabilities_to_labels(probabilities, cfg, **options))


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """A new copy of `labels` as uint16 when its ids fit (0..65535), else as int32 when they fit that.

    napari draws uint8/uint16 labels straight from the data and maps every other dtype through a
    lookup of its values first: adding a 4096x4096 int32 labels layer took 430-1050 ms on the GUI
    thread, uint16 70 ms. uint16 (not uint8) leaves room for the ids of objects the user adds.
    """
    labels = np.asarray(labels)
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low >= 0 and high <= np.iinfo(np.uint16).max:
        return labels.astype(np.uint16, copy=True)
    fits = np.iinfo(np.int32).min <= low and high <= np.iinfo(np.int32).max
    return labels.astype(np.int32 if fits else labels.dtype, copy=True)


def foreground_probability(probabilities: np.ndarray) -> np.ndarray:
    """P(not background) per pixel: the sigmoid channel, or 1 - P(class 0) for softmax outputs."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return probabilities[..., 0] if probabilities.shape[-1] == 1 else 1.0 - probabilities[..., 0]


def target_to_probabilities(target: np.ndarray, n_outputs: int) -> np.ndarray:
    """Ideal network output for a target: one-hot (softmax tasks) or {0, 1} (sigmoid, K=1).

    Ignored pixels become background.
    """
    target = np.where(np.asarray(target) < 0, 0, target).astype(np.int64)
    if n_outputs == 1:
        return (target > 0).astype(np.float32)[..., None]
    return np.eye(n_outputs, dtype=np.float32)[np.clip(target, 0, n_outputs - 1)]


def target_to_labels(target: np.ndarray, cfg: Config) -> np.ndarray:
    """Round trip helper: the labels an ideal prediction of `target` gives (threshold 0.5, no size filter)."""
    probs = target_to_probabilities(target, cfg.n_outputs)
    return probabilities_to_labels(
        probs, cfg, threshold=0.5, min_size=0, split_touching=True, seed_min_size=0, seed_mode="components"
    )


def _snap_to_nearest_seed(objects: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Give a pixel to its nearest seed (Euclidean) when it touches that seed's region.

    The watershed breaks ties between equally far seeds by queue order, which puts single
    pixels at junctions of touching objects on the wrong side; this pass fixes those.
    """
    _, (rows, cols) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    nearest = seeds[rows, cols]
    wrong = (objects > 0) & (nearest != objects)
    if not wrong.any():
        return objects
    padded = np.pad(objects, 1, mode="edge")
    touches = np.zeros(objects.shape, dtype=bool)
    for dr, dc in ((0, 1), (2, 1), (1, 0), (1, 2)):
        touches |= padded[dr : dr + objects.shape[0], dc : dc + objects.shape[1]] == nearest
    return np.where(wrong & touches, nearest, objects)


def _remove_small(objects: np.ndarray, min_size: int) -> np.ndarray:
    """Zero the objects (non-negative int labels) with fewer than `min_size` pixels."""
    sizes = np.bincount(objects.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[objects], 0, objects)


def _as_label_array(labels: Any) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.size == 0:
        raise InputError(f"Labels must be a non-empty 2D array (H, W); got shape {lab.shape}.")
    if lab.dtype == bool:
        return lab.astype(np.int64)
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)) or not np.all(np.mod(lab, 1) == 0):
            raise InputError(f"Labels must be whole numbers; got non-integer values (dtype {lab.dtype}).")
        return lab.astype(np.int64)
    if not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"Labels have dtype {lab.dtype}; use an integer label image.")
    if lab.dtype == np.uint64 and lab.size and lab.max() > np.iinfo(np.int64).max:
        raise InputError("Label values above 2**63 are not supported; relabel the image.")
    return lab.astype(np.int64, copy=False)


def _ignore_mask(lab: np.ndarray, ignore_label: int | None) -> np.ndarray:
    if ignore_label is None:
        return np.zeros(lab.shape, dtype=bool)
    return lab == int(ignore_label)
