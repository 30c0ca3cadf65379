"""labels <-> targets: properties on random label images, touching objects, ignore handling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage as ndi

from napari_unet.core.config import IGNORE_TARGET, Config, DataConfig
from napari_unet.core.errors import InputError
from napari_unet.core.scores import object_f1
from napari_unet.core.targets import (
    labels_to_target,
    probabilities_to_labels,
    target_to_labels,
    target_to_probabilities,
)

LABEL_DTYPES = [np.uint8, np.uint16, np.uint32, np.int64, np.bool_]


@st.composite
def label_images(draw, max_value: int = 6):
    dtype = draw(st.sampled_from(LABEL_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24))
    elements = st.booleans() if dtype is np.bool_ else st.integers(0, max_value)
    return draw(hnp.arrays(dtype, shape, elements=elements))


def _reference_trimap(lab: np.ndarray, width: int) -> np.ndarray:
    """Brute force: an object pixel is boundary if a pixel within `width` (Euclidean) differs."""
    lab = lab.astype(np.int64)
    h, w = lab.shape
    out = (lab > 0).astype(np.int32)
    for r in range(h):
        for c in range(w):
            if lab[r, c] == 0:
                continue
            for dr in range(-width, width + 1):
                for dc in range(-width, width + 1):
                    if dr * dr + dc * dc > width * width:
                        continue
                    rr, cc = min(max(r + dr, 0), h - 1), min(max(c + dc, 0), w - 1)
                    if lab[rr, cc] != lab[r, c]:
                        out[r, c] = 2
    return out


@settings(max_examples=60, deadline=None)
@given(lab=label_images(), width=st.integers(1, 3))
def test_targets_of_random_labels(lab, width):
    for task in ("binary", "classes", "instances"):
        cfg = DataConfig(task=task, n_classes=7, boundary_width=width)
        target = labels_to_target(lab, cfg)
        assert target.dtype == np.int32 and target.shape == lab.shape
        if task == "binary":
            np.testing.assert_array_equal(target, lab.astype(np.int64) > 0)
        elif task == "classes":
            np.testing.assert_array_equal(target, lab.astype(np.int64))
        else:
            np.testing.assert_array_equal(target, _reference_trimap(lab, width))


@settings(max_examples=40, deadline=None)
@given(lab=label_images(max_value=4), ignore=st.integers(1, 4))
def test_ignore_label_becomes_ignore_target(lab, ignore):
    lab = lab.astype(np.uint16)
    for task in ("binary", "classes", "instances"):
        target = labels_to_target(lab, DataConfig(task=task, n_classes=5, ignore_label=ignore))
        np.testing.assert_array_equal(target == IGNORE_TARGET, lab == ignore)
        np.testing.assert_array_equal(target[lab != ignore] > 0, lab[lab != ignore] > 0)


def test_ignored_pixels_make_no_boundary():
    lab = np.zeros((20, 20), np.uint8)
    lab[4:16, 4:16] = 1
    lab[4:16, 10:16] = 9  # the right half of the object is unannotated
    target = labels_to_target(lab, DataConfig(task="instances", boundary_width=1, ignore_label=9))
    assert np.all(target[4:16, 10:16] == IGNORE_TARGET)
    assert np.all(target[5:15, 9] == 1), "the edge next to ignored pixels is not a known boundary"
    assert np.all(target[4, 4:10] == 2) and np.all(target[5:15, 4] == 2)


def test_negative_and_out_of_range_labels_raise():
    lab = np.array([[0, 1], [-3, 2]], dtype=np.int64)
    with pytest.raises(InputError, match=r"-3"):
        labels_to_target(lab, DataConfig(task="binary"))
    ok = labels_to_target(lab, DataConfig(task="binary", ignore_label=-3))
    assert ok[1, 0] == IGNORE_TARGET
    with pytest.raises(InputError, match=r"\[5, 7\]"):
        labels_to_target(np.array([[0, 5], [7, 1]], np.uint8), DataConfig(task="classes", n_classes=3))
    with pytest.raises(InputError, match="2D"):
        labels_to_target(np.zeros((2, 3, 4), np.uint8), DataConfig())
    with pytest.raises(InputError, match="whole numbers"):
        labels_to_target(np.array([[0.5, 1.0]]), DataConfig())


def test_touching_objects_are_separated_and_recovered():
    lab = np.zeros((30, 40), np.uint16)
    lab[5:25, 3:20] = 7
    lab[5:25, 20:37] = 3  # touches object 7 along a whole side
    lab[0:5, 30:40] = 12  # touches object 3 and the image edge
    for width in (1, 2, 3):
        cfg = Config().replace(data={"task": "instances", "boundary_width": width})
        target = labels_to_target(lab, cfg.data)
        # A full-height boundary wall of 2*width pixels lies between the two big objects.
        assert np.all(target[5:25, 20 - width : 20 + width] == 2)
        assert ndi.label(target == 1)[1] == 3
        recovered = target_to_labels(target, cfg)
        assert recovered.max() == 3
        # Exact while objects are wider than the two boundary bands; object 12 is 5 px tall.
        assert object_f1(recovered, lab, iou_threshold=0.999 if width < 3 else 0.9) == 1.0
        merged = probabilities_to_labels(target_to_probabilities(target, 3), cfg, split_touching=False)
        assert merged.max() == 1, "without splitting, touching objects form one component"


@st.composite
def rectangle_mosaics(draw):
    """Label images tiled by rectangles at least 8 px wide; neighbours touch; some are background."""
    cuts = []
    for _ in range(2):
        n = draw(st.integers(1, 4))
        sizes = draw(st.lists(st.integers(8, 14), min_size=n, max_size=n))
        cuts.append(np.cumsum([0] + sizes))
    rows, cols = cuts
    lab = np.zeros((rows[-1], cols[-1]), np.uint32)
    ids = draw(st.permutations(list(range(1, 50))))
    k = 0
    for i in range(len(rows) - 1):
        for j in range(len(cols) - 1):
            if draw(st.booleans()):
                lab[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = ids[k] * 1000
                k += 1
    return lab


@settings(max_examples=40, deadline=None)
@given(lab=rectangle_mosaics(), width=st.integers(1, 2))
def test_instance_round_trip_recovers_objects(lab, width):
    cfg = Config().replace(data={"task": "instances", "boundary_width": width})
    recovered = target_to_labels(labels_to_target(lab, cfg.data), cfg)
    assert recovered.dtype == np.int32
    assert recovered.max() == len(np.unique(lab[lab > 0]))  # sequential 1..N
    # The same partition of the pixels, up to renaming the objects.
    pairs = np.unique(np.stack([lab.ravel().astype(np.int64), recovered.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(lab))
    np.testing.assert_array_equal(recovered > 0, lab > 0)


def test_binary_and_classes_round_trip():
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 4, (17, 23))
    cfg = Config().replace(data={"task": "classes", "n_classes": 4})
    np.testing.assert_array_equal(target_to_labels(labels_to_target(lab, cfg.data), cfg), lab)
    cfg = Config()
    np.testing.assert_array_equal(target_to_labels(labels_to_target(lab, cfg.data), cfg), lab > 0)


def test_probabilities_to_labels_threshold_and_min_size():
    cfg = Config().replace(predict={"threshold": 0.5, "min_size": 5})
    probs = np.zeros((10, 10, 1), np.float32)
    probs[1:4, 1:4] = 0.9  # 9 px
    probs[7, 7:9] = 0.8  # 2 px, below min_size
    probs[6:9, 1:4] = 0.4  # below threshold
    out = probabilities_to_labels(probs, cfg)
    assert out.dtype == np.int32 and set(np.unique(out)) == {0, 1}
    assert out.sum() == 9
    assert probabilities_to_labels(probs, cfg, min_size=0).sum() == 11
    assert probabilities_to_labels(probs, cfg, threshold=0.3, min_size=0).sum() == 20
    with pytest.raises(InputError, match=r"\(H, W, 1\)"):
        probabilities_to_labels(np.zeros((4, 4, 3), np.float32), cfg)


def test_instance_min_size_and_seedless_objects():
    cfg = Config().replace(data={"task": "instances", "boundary_width": 1}, predict={"min_size": 0})
    target = np.zeros((20, 20), np.int32)
    target[2:10, 2:10] = 2
    target[3:9, 3:9] = 1  # a 64 px object with an interior
    target[14:16, 14:16] = 2  # a 4 px object that is all boundary: kept as its own object
    probs = target_to_probabilities(target, 3)
    out = probabilities_to_labels(probs, cfg)
    assert out.max() == 2 and np.count_nonzero(out == out[15, 15]) == 4
    out = probabilities_to_labels(probs, cfg, min_size=10)
    assert out.max() == 1 and out[15, 15] == 0 and np.count_nonzero(out) == 64


def test_real_nuclei_round_trip(nuclei_pairs):
    cfg = Config().replace(data={"task": "instances", "boundary_width": 2})
    for name, _, labels in nuclei_pairs[:4]:
        target = labels_to_target(labels, cfg.data)
        assert set(np.unique(target)) == {0, 1, 2}
        recovered = target_to_labels(target, cfg)
        assert object_f1(recovered, labels) > 0.95, name


def test_compact_labels_are_uint16_copies_when_the_ids_fit():
    from napari_unet.core.targets import compact_labels

    ids = np.array([[0, 7], [65535, 3]], dtype=np.int32)
    out = compact_labels(ids)
    assert out.dtype == np.uint16 and np.array_equal(out, ids)
    same = np.array([[1, 2]], dtype=np.uint16)
    assert compact_labels(same) is not same  # always a copy: the caller owns it
    assert compact_labels(np.array([[70000]], dtype=np.int64)).dtype == np.int32
    assert compact_labels(np.array([[-1, 2]], dtype=np.int16)).dtype == np.int32
    huge = np.array([[2**40]], dtype=np.int64)
    assert compact_labels(huge).dtype == np.int64 and compact_labels(huge)[0, 0] == 2**40
