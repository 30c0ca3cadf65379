"""Shipped sample data: files, values, label alignment, napari layer data, and packaging in the wheel."""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import io
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage import filters, segmentation

from napari_unet import samples
from napari_unet.core.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SAMPLE_FILES = ["nuclei_image.tif", "nuclei_labels.tif", "chest_xray_image.tif", "chest_xray_lungs.tif"]


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    return samples.load_sample("nuclei")


@pytest.fixture(scope="module")
def xray() -> tuple[np.ndarray, np.ndarray]:
    return samples.load_sample("chest_xray")


def test_files_are_package_resources() -> None:
    root = resources.files("napari_unet.sample_data")
    for name in SAMPLE_FILES + ["README.md"]:
        assert root.joinpath(name).is_file(), name
    readme = root.joinpath("README.md").read_text(encoding="utf-8")
    for name in SAMPLE_FILES:
        assert name in readme, f"{name} is not documented in sample_data/README.md"
    total = sum(len(root.joinpath(n).read_bytes()) for n in SAMPLE_FILES)
    assert total < 600_000, f"sample data grew to {total} bytes"
    for name in SAMPLE_FILES:
        with tifffile.TiffFile(io.BytesIO(root.joinpath(name).read_bytes())) as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE, name


def test_nuclei_values(nuclei: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = nuclei
    assert image.shape == labels.shape == (512, 512)
    assert image.dtype == np.uint8 and labels.dtype == np.uint16
    ids = np.unique(labels)
    assert ids.tolist() == list(range(126)), "labels must be 0 plus consecutive ids 1..125"
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        assert ndi.label(labels[sl] == i, structure=np.ones((3, 3)))[1] == 1, f"instance {i} is split"


def test_nuclei_labels_align_with_image(nuclei: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = nuclei
    inside, outside = image[labels > 0].mean(), image[labels == 0].mean()
    assert inside > 2.5 * outside, (inside, outside)
    # The labels sit on the nuclei: any shift of up to 3 px lowers the mean intensity under them.
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            if (dy, dx) != (0, 0):
                assert image[np.roll(labels, (dy, dx), axis=(0, 1)) > 0].mean() < inside, (dy, dx)
    # Every bright blob of 30 px or more overlaps a label.
    blobs, _ = ndi.label(image > filters.threshold_otsu(image))
    sizes = np.bincount(blobs.ravel())
    labelled = np.bincount(blobs.ravel(), weights=(labels > 0).ravel())
    big = np.flatnonzero(sizes >= 30)
    big = big[big > 0]
    assert len(big) > 50
    assert (labelled[big] / sizes[big] > 0.2).all(), "a bright blob has no label"


def test_chest_xray_values(xray: tuple[np.ndarray, np.ndarray]) -> None:
    image, lungs = xray
    assert image.shape == lungs.shape == (384, 384)
    assert image.dtype == np.uint16 and lungs.dtype == np.uint8
    assert image.max() <= 4095 and image.max() > 3500 and image.min() == 0, "12-bit range expected"
    assert set(np.unique(lungs).tolist()) == {0, 1}
    parts, n = ndi.label(lungs)
    assert n == 2, "expected two lung fields"
    assert 0.15 < lungs.mean() < 0.35


def test_chest_xray_mask_on_dark_lungs(xray: tuple[np.ndarray, np.ndarray]) -> None:
    image, lungs = xray
    mask = lungs.astype(bool)
    ring = ndi.binary_dilation(mask, iterations=18) & ~mask
    assert image[mask].mean() < 0.6 * image[ring].mean(), "lungs must be darker than the tissue around them"
    # Head up: the apices are in the upper part of the image and the lungs in the upper two thirds.
    rows = np.flatnonzero(mask.any(axis=1))
    assert rows[0] < 384 * 0.2 and rows[-1] < 384 * 0.85
    # Two lungs, one each side of the spine, with the mediastinum between them.
    parts, _ = ndi.label(mask)
    cols = [np.argwhere(parts == i)[:, 1].mean() for i in (1, 2)]
    assert min(cols) < 384 / 2 < max(cols)
    assert not mask[:, 384 // 2 - 5 : 384 // 2 + 5].any()


def test_chest_xray_mask_border_on_image_edges(xray: tuple[np.ndarray, np.ndarray]) -> None:
    image, lungs = xray
    smooth = ndi.gaussian_filter(image.astype(np.float64), 1.5)
    gradient = np.hypot(ndi.sobel(smooth, 0), ndi.sobel(smooth, 1))

    def edge_strength(mask: np.ndarray) -> float:
        return float(gradient[segmentation.find_boundaries(mask, mode="inner")].mean())

    aligned = edge_strength(lungs)
    for axis in (0, 1):
        for shift in (-4, 4):
            assert edge_strength(np.roll(lungs, shift, axis=axis)) < 0.95 * aligned, (axis, shift)


def test_unknown_sample_raises() -> None:
    with pytest.raises(InputError, match="nuclei"):
        samples.load_sample("cells")


@pytest.mark.parametrize(
    ("func", "names"), [(samples.nuclei, ("nuclei", "nuclei labels")), (samples.chest_xray, ("chest x-ray", "lung mask"))]
)
def test_layer_data_tuples(func, names: tuple[str, str]) -> None:
    from napari.layers import Image, Labels, Layer

    data = func()
    assert [d[2] for d in data] == ["image", "labels"]
    assert [d[1]["name"] for d in data] == list(names)
    (image, image_kwargs, _), (labels, labels_kwargs, _) = data
    assert image.shape == labels.shape and np.issubdtype(labels.dtype, np.integer)
    assert 0 < labels_kwargs["opacity"] < 1
    layers = [Layer.create(*d) for d in data]  # napari accepts the tuples as they are
    assert isinstance(layers[0], Image) and isinstance(layers[1], Labels)
    if func is samples.chest_xray:
        assert tuple(layers[0].contrast_limits) == (0, 4095)


def test_manifest_commands_resolve() -> None:
    import npe2

    manifest = npe2.PluginManifest.from_file(REPO / "napari_unet" / "napari.yaml")
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    keys = {}
    for contribution in manifest.contributions.sample_data:
        module, attr = commands[contribution.command].split(":")
        keys[contribution.key] = getattr(importlib.import_module(module), attr)
    assert keys == {"nuclei": samples.nuclei, "chest_xray": samples.chest_xray}


def test_samples_import_without_tensorflow() -> None:
    code = "import sys, napari_unet.samples as s; s.nuclei(); print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_wheel_ships_sample_data(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ["pyproject.toml", "README.md", "LICENSE"]:
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    for name in ["napari_unet", "sample_data"]:
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", ".", "-w", str(tmp_path / "dist")]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(cmd, cwd=src, check=True, capture_output=True, env=env)
    (wheel,) = (tmp_path / "dist").glob("napari_unet-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    assert "napari_unet/napari.yaml" in names
    for name in SAMPLE_FILES + ["README.md", "__init__.py"]:
        assert f"napari_unet/sample_data/{name}" in names, name
    # The compute worker and the starter model ship too.
    assert {"napari_unet/jobs/worker.py", "napari_unet/jobs/client.py"} <= names
    assert "napari_unet/starter/nuclei/v001/model.keras" in names
    # Load the samples from the unpacked wheel, not from the source tree.
    code = (
        "import napari_unet.samples as s; a, b = s.load_sample('chest_xray'); c, d = s.load_sample('nuclei');"
        "import napari_unet.jobs.worker, napari_unet.core.starter as st; st.starter_model_path();"
        "print(s.__file__); print(a.shape, b.shape, c.shape, d.shape)"
    )
    env["PYTHONPATH"] = str(tmp_path / "site")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=tmp_path)
    where, shapes = out.stdout.strip().splitlines()
    assert Path(where).is_relative_to(tmp_path / "site")
    assert shapes == "(384, 384) (384, 384) (512, 512) (512, 512)"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_sample_data", REPO / "scripts" / "make_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_nifti_reader_and_lung_field() -> None:
    script = _load_script()
    vol = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, 2, 3, 4, 1, 1, 1, 1)
    struct.pack_into("<2h", header, 70, 4, 16)  # int16
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<2f", header, 112, 1.0, -1024.0)
    struct.pack_into("<12f", header, 280, -0.7, 0, 0, 1, 0, 0.7, 0, 2, 0, 0, 2.5, 3)
    header[344:348] = b"n+1\0"
    arr, affine = script.read_nifti(gzip.compress(bytes(header) + vol.tobytes(order="F")))
    np.testing.assert_array_equal(arr, vol.astype(np.float32) - 1024)
    assert affine[0, 0] == pytest.approx(-0.7) and affine[2, 3] == pytest.approx(3)

    lung = np.zeros((100, 100), bool)
    lung[20:80, 10:45] = lung[20:80, 55:90] = True
    lung[50, 5] = True  # a speck the opening removes
    blocked = np.zeros_like(lung)
    blocked[60:80, 55:75] = True  # "heart" cuts a corner out of one lung
    mask = script.lung_field(lung, blocked, pix_mm=1.0)
    assert mask.dtype == np.uint8 and ndi.label(mask)[1] == 2
    assert not mask[50, 5] and not mask[70, 60] and mask[30, 30] and mask[30, 70]
