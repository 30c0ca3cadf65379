"""Training data: preparing pairs, validation splits, patch sampling and the tf.data pipelines."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from napari_unet.core.config import IGNORE_TARGET, Config
from napari_unet.core.data import (
    PatchSampler,
    TrainingPair,
    make_train_dataset,
    make_val_dataset,
    prepare_pairs,
    split_pairs,
    val_patches,
)
from napari_unet.core.errors import InputError


def _cfg(**data) -> Config:
    base = {"patch_size": 32, "foreground_fraction": 0.5}
    return Config().replace(model={"depth": 2}, data={**base, **data}, train={"batch_size": 4})


def _coded_images(shapes) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images whose value is a unique pixel id (image index * 1e6 + flat index) and random targets."""
    rng = np.random.default_rng(0)
    images, targets = [], []
    for i, (h, w) in enumerate(shapes):
        images.append((i * 1_000_000 + np.arange(h * w, dtype=np.float64)).reshape(h, w, 1))
        targets.append(rng.integers(0, 2, (h, w)).astype(np.int32))
    return images, targets


def test_prepare_real_nuclei(nuclei_pairs):
    cfg = _cfg(task="instances")
    pairs = [TrainingPair(image, labels, name) for name, image, labels in nuclei_pairs[:3]]
    images, targets, names = prepare_pairs(pairs, cfg)
    assert names == [p.name for p in pairs]
    for image, target, (_, raw, labels) in zip(images, targets, nuclei_pairs[:3]):
        assert image.dtype == np.float32 and image.shape == raw.shape + (1,)
        assert target.dtype == np.int32 and target.shape == labels.shape
        assert 0.0 <= np.percentile(image, 50) < 1.0 and np.percentile(image, 99.9) > 0.9
        np.testing.assert_array_equal(target > 0, labels > 0)
        assert set(np.unique(target)) == {0, 1, 2}


def test_prepare_rejects_unlabelled_and_tiny_images():
    cfg = _cfg()
    image = np.random.default_rng(0).random((40, 40))
    with pytest.raises(InputError, match="labels layer 'empty' has no labelled pixels"):
        prepare_pairs([TrainingPair(image, np.zeros((40, 40), np.uint8), "empty")], cfg)
    ignored = np.full((40, 40), 3, np.uint8)  # all pixels unannotated
    with pytest.raises(InputError, match="no labelled pixels"):
        prepare_pairs([TrainingPair(image, ignored, "ign")], _cfg(ignore_label=3))
    labels = np.zeros((3, 40), np.uint8)
    labels[1, 5] = 1
    with pytest.raises(InputError, match="at least 4 pixels"):
        prepare_pairs([TrainingPair(image[:3], labels, "thin")], cfg)


def test_prepare_stack_names_and_channels():
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, (3, 20, 24), dtype=np.uint8)
    labels = np.zeros((3, 20, 24), np.uint16)
    labels[0, 2:6, 2:6] = 1  # only the first slice is labelled: fine for a stack
    images, targets, names = prepare_pairs([TrainingPair(stack, labels, "stack")], _cfg())
    assert names == ["stack[0]", "stack[1]", "stack[2]"]
    assert all(i.shape == (20, 24, 1) for i in images) and targets[1].max() == 0


def test_split_by_image_is_disjoint():
    images, targets = _coded_images([(40, 40)] * 6)
    cfg = _cfg(val_mode="auto", val_fraction=0.34)
    tr_x, tr_y, va_x, va_y = split_pairs(images, targets, cfg, seed=3)
    assert len(tr_x) == 4 and len(va_x) == 2 and len(tr_y) == 4 and len(va_y) == 2
    ids = lambda xs: {int(x[0, 0, 0]) // 1_000_000 for x in xs}  # noqa: E731
    assert ids(tr_x).isdisjoint(ids(va_x)) and ids(tr_x) | ids(va_x) == set(range(6))
    assert split_pairs(images, targets, cfg, seed=3)[2][0] is va_x[0], "deterministic for a seed"
    with pytest.raises(InputError, match="at least 2 images"):
        split_pairs(images[:1], targets[:1], _cfg(val_mode="image"), seed=0)
    tr_x, _, va_x, _ = split_pairs(images, targets, _cfg(val_fraction=0.0), seed=0)
    assert len(tr_x) == 6 and va_x == []


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_by_region_never_overlaps(seed):
    shapes = [(50, 30), (30, 70), (64, 64)]
    images, targets = _coded_images(shapes)
    cfg = _cfg(val_mode="auto", val_fraction=0.2)  # 3 images: auto means region
    tr_x, tr_y, va_x, va_y = split_pairs(images, targets, cfg, seed=seed)
    assert len(tr_x) == len(va_x) == 3
    for (h, w), image, a, b, ta, tb in zip(shapes, images, tr_x, va_x, tr_y, va_y):
        train_ids, val_ids = set(a.ravel().tolist()), set(b.ravel().tolist())
        assert train_ids.isdisjoint(val_ids)
        assert train_ids | val_ids == set(image.ravel().tolist())
        long_axis = 0 if h >= w else 1
        assert b.shape[long_axis] == round(0.2 * max(h, w)) and b.shape[1 - long_axis] == min(h, w)
        assert ta.shape == a.shape[:2] and tb.shape == b.shape[:2]
    # Patches drawn from the training parts never contain a validation pixel.
    sampler = PatchSampler([x.astype(np.float32) for x in tr_x], tr_y, _cfg(patch_size=16, intensity=False))
    drawn = set(np.concatenate([sampler.batch(8, np.random.default_rng(seed))[0].ravel() for _ in range(20)]).tolist())
    assert drawn.isdisjoint(set(np.concatenate([b.ravel() for b in va_x]).astype(np.float32).tolist()))


def _sparse_target(h=256, w=256) -> np.ndarray:
    target = np.zeros((h, w), np.int32)
    target[100:103, 60:63] = 1  # one 9-pixel object
    return target


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.8])
def test_foreground_fraction_is_honoured(fraction):
    cfg = _cfg(foreground_fraction=fraction, flips=False, rotations=False, intensity=False)
    image = np.zeros((256, 256, 1), np.float32)
    sampler = PatchSampler([image], [_sparse_target()], cfg)
    rng = np.random.default_rng(0)
    n = 2000
    _, y = sampler.batch(n, rng)
    with_fg = np.mean(y.reshape(n, -1).max(axis=1) > 0)
    # Uniform patches hit the object with probability about (32 + 2)^2 / 225^2 = 2.3 %.
    expected = fraction + (1 - fraction) * 0.023
    assert abs(with_fg - expected) < 0.04, (with_fg, expected)


@pytest.mark.parametrize("elastic", [False, True])
def test_augmentation_keeps_image_and_target_aligned(elastic):
    rng = np.random.default_rng(1)
    target = rng.integers(0, 3, (10, 10)).repeat(8, 0).repeat(8, 1).astype(np.int32)  # 80x80, 8 px blocks
    target[target == 2] = IGNORE_TARGET
    image = np.stack([target, -target], axis=-1).astype(np.float32)  # the target encoded in 2 channels
    cfg = _cfg(elastic=elastic, intensity=False)
    x, y = PatchSampler([image], [target], cfg).batch(64, np.random.default_rng(2))
    assert x.shape == (64, 32, 32, 2) and y.shape == (64, 32, 32, 1)
    assert x.dtype == np.float32 and y.dtype == np.int32
    if elastic:
        # Linear vs nearest interpolation differ only where the image is blended across a block edge.
        assert np.mean(np.abs(x[..., 0] - y[..., 0]) < 0.5) > 0.95
        rotated = np.rot90(y[..., 0], 1, axes=(1, 2))
        assert np.mean(np.abs(x[..., 0] - rotated) < 0.5) < 0.8, "the check notices misalignment"
        assert not np.all(x[..., 0] == np.round(x[..., 0])), "elastic warping interpolates the image"
    else:
        np.testing.assert_array_equal(x[..., 0], y[..., 0])
    np.testing.assert_array_equal(x[..., 1], -x[..., 0])


@pytest.mark.parametrize(
    "flips,rotations,variants", [(False, False, 1), (True, False, 4), (False, True, 4), (True, True, 8)]
)
def test_flips_and_rotations_give_all_orientations(flips, rotations, variants):
    image = np.arange(32 * 32, dtype=np.float32).reshape(32, 32, 1)  # one possible window
    target = np.ones((32, 32), np.int32)
    cfg = _cfg(flips=flips, rotations=rotations, intensity=False)
    x, _ = PatchSampler([image], [target], cfg).batch(200, np.random.default_rng(0))
    assert len({p.tobytes() for p in x}) == variants


def test_intensity_changes_the_image_only():
    target = np.zeros((64, 64), np.int32)
    target[30:34, 30:34] = 1
    image = np.where(target > 0, 1.0, 0.5)[..., None].astype(np.float32)
    cfg = _cfg(intensity=True, flips=False, rotations=False, foreground_fraction=1.0)
    x, y = PatchSampler([image], [target], cfg).batch(32, np.random.default_rng(0))
    for xi, yi in zip(x[..., 0], y[..., 0]):
        fg, bg = xi[yi > 0], xi[yi == 0]
        assert np.ptp(fg) < 1e-6 and np.ptp(bg) < 1e-6 and fg[0] > bg[0]
    assert np.ptp(x[:, 0, 0, 0]) > 0.05, "scale and shift vary between patches"
    assert set(np.unique(y)) == {0, 1}


def test_train_dataset_is_endless_batched_and_padded():
    cfg = _cfg(patch_size=32)
    small_target = np.zeros((20, 24), np.int32)
    small_target[5:9, 5:9] = 1
    images = [np.random.default_rng(0).random((20, 24, 1)).astype(np.float32)]
    ds = make_train_dataset(images, [small_target], cfg, seed=0)
    batches = list(ds.take(30).as_numpy_iterator())
    assert len(batches) == 30
    x, y = batches[0]
    assert x.shape == (4, 32, 32, 1) and x.dtype == np.float32
    assert y.shape == (4, 32, 32, 1) and y.dtype == np.int32
    # The 20x24 image is padded: padding is ignored in the target, 20*24 real pixels per patch.
    assert all(np.count_nonzero(b[1][i] != IGNORE_TARGET) == 20 * 24 for b in batches for i in range(4))
    again = next(make_train_dataset(images, [small_target], cfg, seed=0).as_numpy_iterator())
    np.testing.assert_array_equal(again[0], x)
    # Iterating the same dataset again continues the random stream instead of repeating it.
    assert not np.array_equal(next(ds.as_numpy_iterator())[0], x)


def test_val_dataset_covers_each_labelled_pixel_once():
    images, targets = _coded_images([(50, 70), (40, 40)])
    targets[1][:, :] = IGNORE_TARGET
    targets[1][3, 4] = 1
    cfg = _cfg(patch_size=32)
    x, y = val_patches([i.astype(np.float32) for i in images], targets, cfg)
    assert x.shape[1:] == (32, 32, 1) and y.shape[1:] == (32, 32, 1)
    assert x.shape[0] == 2 * 3 + 1  # the second image's three unlabelled patches are left out
    labelled = y[..., 0] >= 0
    assert labelled.sum() == sum(int((t >= 0).sum()) for t in targets)
    assert len(set(x[..., 0][labelled].tolist())) == labelled.sum(), "no pixel twice"
    ds = make_val_dataset([i.astype(np.float32) for i in images], targets, cfg)
    first = [b[1] for b in ds.as_numpy_iterator()]
    second = [b[1] for b in ds.as_numpy_iterator()]
    assert [len(b) for b in first] == [4, 3]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    with pytest.raises(InputError, match="no labelled pixels"):
        val_patches([images[1].astype(np.float32)], [np.full((30, 30), IGNORE_TARGET, np.int32)], cfg)


def test_real_nuclei_pipeline_end_to_end(nuclei_pairs):
    cfg = _cfg(task="instances", patch_size=64, foreground_fraction=1.0)
    pairs = [TrainingPair(image, labels, name) for name, image, labels in nuclei_pairs[:5]]
    images, targets, _ = prepare_pairs(pairs, cfg)
    tr_x, tr_y, va_x, va_y = split_pairs(images, targets, cfg, seed=0)
    assert len(va_x) == 1  # 5 images, auto: one whole image held out
    x, y = next(make_train_dataset(tr_x, tr_y, cfg, seed=0).as_numpy_iterator())
    assert x.shape == (4, 64, 64, 1) and np.all(y.reshape(4, -1).max(axis=1) > 0)
    assert sum(len(b[0]) for b in make_val_dataset(va_x, va_y, cfg)) > 0


@pytest.mark.parametrize("seed", range(4))
def test_region_split_keeps_foreground_in_the_validation_strip(seed):
    """Objects only near one end (like lungs above an abdomen): validation must still see some."""
    target = np.zeros((100, 60), np.int32)
    target[5:30, 10:50] = 1
    image = np.random.default_rng(seed).random((100, 60, 1)).astype(np.float32)
    cfg = Config().replace(data={"val_mode": "region", "val_fraction": 0.2})
    _, train_t, _, val_t = split_pairs([image], [target], cfg, seed)
    assert np.count_nonzero(val_t[0]) > 0 and np.count_nonzero(train_t[0]) > 0
