"""Layer checks with explanations (Qt-free)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.errors import InputError
from napari_unet.widgets._checks import (
    LayerArray,
    PatchTooLargeError,
    check_shapes,
    model_channels,
    suggest_patch,
    training_arrays,
)


def test_rgb_and_stacks_are_recognised():
    rgb = LayerArray("rgb", np.zeros((64, 80, 3)), rgb=True)
    assert rgb.spatial_shape == (64, 80) and rgb.channels == 3
    check_shapes(rgb, LayerArray("labels", np.zeros((64, 80), np.int32)))
    stack = LayerArray("stack", np.zeros((5, 64, 80)))
    check_shapes(stack, LayerArray("labels", np.zeros((5, 64, 80), np.int32)))
    with pytest.raises(InputError, match="stack of 5 images"):
        check_shapes(stack, LayerArray("labels", np.zeros((64, 80), np.int32)))
    with pytest.raises(InputError, match="colour axis"):
        check_shapes(rgb, LayerArray("labels", np.zeros((64, 3), np.int32)))


def test_training_arrays_are_checked_snapshots():
    image = LayerArray("img", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    labels = LayerArray("lab", np.zeros((64, 64), np.int32))
    labels.data[5:9, 5:9] = 3
    img, lab = training_arrays(image, labels, "instances", 2, 64, 8)
    labels.data[:] = 0
    assert lab.max() == 3 and img.shape == (64, 64)  # later edits do not change the snapshot
    labels.data[0, 0] = 4
    with pytest.raises(InputError, match="3 classes"):
        training_arrays(image, labels, "classes", 3, 64, 8)
    with pytest.raises(PatchTooLargeError) as info:
        training_arrays(image, labels, "binary", 2, 128, 8)
    assert info.value.suggested == 64


def test_patch_suggestion_and_channels():
    assert suggest_patch(100, 16) == 96 and suggest_patch(7, 8) is None
    assert model_channels(4, 3) == 3 and model_channels(1, 3) == 3 and model_channels(1, 1) == 1
    with pytest.raises(InputError, match="3 channel"):
        model_channels(3, 1)


def test_model_name_and_folder_are_checked_before_training(tmp_path):
    from napari_unet.core.paths import check_model_name
    from napari_unet.widgets._checks import model_folder

    check_model_name("nuclei-unet_2.b")
    for bad in ("a/b", ".hidden", "", "what?"):
        with pytest.raises(InputError, match="cannot be used as a folder name"):
            check_model_name(bad)
    assert model_folder(str(tmp_path / "new" / "models")).is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="choose another one"):
        model_folder(str(blocker / "models"))
