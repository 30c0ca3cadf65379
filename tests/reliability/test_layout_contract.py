"""One image-axes contract, the mixed gray/RGB rule and extreme float scales (issue 11, class 2)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from reliability_helpers import blob_pair

from napari_unet.core import cli
from napari_unet.core.channels import choose_channels, to_channels
from napari_unet.core.errors import InputError
from napari_unet.core.layout import read_image, to_core


@pytest.mark.parametrize("shape", [(64, 64, 1), (64, 64, 2), (3, 64, 64), (2, 64, 64), (4, 3, 64, 64)])
def test_ambiguous_shapes_are_refused_with_the_option_that_resolves_them(shape, tmp_path):
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match="--axes YXC .*--axes CYX .*--axes ZYX"):
        read_image(path)


@pytest.mark.parametrize(
    "shape, axes, core_shape",
    [
        ((64, 48, 1), "YXC", (64, 48)),
        ((64, 48, 2), "YXC", (1, 64, 48, 2)),
        ((3, 64, 48), "CYX", (1, 64, 48, 3)),
        ((3, 64, 48), "ZYX", (3, 64, 48, 1)),
        ((5, 64, 48), "TYX", (5, 64, 48, 1)),
        ((2, 3, 64, 48), "TCYX", (2, 64, 48, 3)),
    ],
)
def test_axes_option_decides(shape, axes, core_shape, tmp_path):
    path = tmp_path / "x.tif"
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    tifffile.imwrite(path, data, photometric="minisblack")
    array, layout = read_image(path, axes)
    assert layout.source == "--axes" and to_core(array, layout).shape == core_shape
    if axes == "CYX":  # channels really moved last, not reshaped
        np.testing.assert_array_equal(to_core(array, layout)[0, ..., 1], data[1])


def test_axes_come_from_imagej_and_ome_metadata(tmp_path):
    tifffile.imwrite(tmp_path / "ij.tif", np.zeros((3, 64, 48), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "ome.tif", np.zeros((3, 64, 48), np.uint8), ome=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((64, 48, 3), np.uint8), photometric="rgb")
    _, ij = read_image(tmp_path / "ij.tif")
    _, ome = read_image(tmp_path / "ome.tif")
    _, rgb = read_image(tmp_path / "rgb.tif")
    assert (ij.axes, ij.source, ij.planes, ij.channels) == ("ZYX", "ImageJ metadata", 3, 1)
    assert (ome.axes, ome.source, ome.planes, ome.channels) == ("CYX", "OME metadata", 1, 3)
    assert (rgb.axes, rgb.channels) == ("YXC", 3)
    assert "3 plane(s), each predicted on its own" in ij.describe("ij.tif")


def test_a_truncated_imagej_stack_is_refused(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (6, 64, 64), np.uint8), imagej=True,
                     metadata={"axes": "ZYX"})  # fmt: skip
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="truncated ImageJ stack: its metadata lists 6 planes"):
        read_image(path)


def test_the_cli_says_how_it_read_each_image_and_refuses_ambiguous_ones(trained, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "thin.tif", np.zeros((64, 64, 1), np.uint8), photometric="minisblack")
    out = tmp_path / "out"
    code = cli.main(["predict", "--model", str(trained.path), "--images", str(images), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "thin.tif has shape (64, 64, 1)" in err and "--axes YXC" in err
    code = cli.main(["predict", "--model", str(trained.path), "--images", str(images), "--out", str(out), "--axes", "YXC"])
    err = capsys.readouterr().err
    assert code == 0 and "thin.tif: shape (64, 64, 1) read as YXC (from --axes)" in err
    assert tifffile.imread(out / "thin.tif").shape == (64, 64)


def test_core_as_samples_no_longer_slices_a_one_channel_image_into_columns():
    from napari_unet.core.normalize import as_samples

    samples, _ = as_samples(np.zeros((40, 50, 1), np.uint8), in_channels=1)
    assert len(samples) == 1 and samples[0].shape == (40, 50, 1)
    with pytest.raises(InputError, match="two channels, or a stack"):
        as_samples(np.zeros((40, 50, 2), np.uint8), in_channels=1)


# ---------------------------------------------------------------- mixed gray / RGB


def test_choose_channels_majority_rule():
    assert choose_channels([1, 1, 3]) == 1
    assert choose_channels([1, 3, 4]) == 3
    assert choose_channels([1, 3]) == 3  # a tie keeps the colour
    assert choose_channels([2, 2]) == 2
    with pytest.raises(InputError, match="cannot be converted"):
        choose_channels([1, 2])


def test_to_channels_conversions():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 1] = 100
    assert to_channels(rgb, 1, rgb=True).shape == (4, 5)
    assert np.allclose(to_channels(rgb, 1, rgb=True), 58.7)
    assert to_channels(np.zeros((4, 5)), 3, rgb=False).shape == (4, 5, 3)
    assert to_channels(np.zeros((4, 5, 4)), 3, rgb=True).shape == (4, 5, 3)
    with pytest.raises(InputError):
        to_channels(np.zeros((4, 5, 2)), 3, rgb=True)


def test_a_training_folder_mixing_gray_and_rgb_trains_and_says_what_was_done(tmp_path, capsys):
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        image, labels = blob_pair(64, 64, seed=70 + i)
        if i == 0:
            image = np.stack([image] * 3, axis=-1)
        tifffile.imwrite(tmp_path / "images" / f"p{i}.tif", image, photometric="rgb" if i == 0 else "minisblack")
        tifffile.imwrite(tmp_path / "labels" / f"p{i}.tif", labels)
    code = cli.main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                     "--name", "mixed", "--models", str(tmp_path / "models"), "--depth", "2", "--filters", "8",
                     "--patch", "32", "--epochs", "1", "--steps", "2", "--batch", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "2 gray and 1 colour image(s): training a gray model" in err
    assert "p0: RGB converted to gray (luminance) for a 1-channel model" in err
    from napari_unet.core.bundle import load_bundle

    assert load_bundle(tmp_path / "models" / "mixed").config.data.in_channels == 1


# ---------------------------------------------------------------- float scale


@pytest.mark.parametrize("scale", [1e-16, 1e300, 1e-300])
def test_float_images_of_any_scale_predict_like_the_original(trained, scale):
    from napari_unet.core.predict import predict_image

    image = blob_pair(64, 64, seed=80)[0].astype(np.float64)
    reference = predict_image(trained.model, image, trained.config).labels
    scaled = predict_image(trained.model, image * scale, trained.config).labels
    assert reference.any()
    np.testing.assert_array_equal(scaled, reference)
