"""Tiny models and OME-Zarr images for the OME-Zarr, tiling and cluster tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: A U-Net small enough that an 8192 x 8192 image predicts in seconds on 2 cores (halo 23, context 24).
TINY_MODEL = {"model": {"depth": 2, "base_filters": 4}, "data": {"patch_size": 64},
              "predict": {"tile_size": 128, "overlap": 24}}  # fmt: skip


def tiny_config():
    from napari_unet.core.config import Config

    return Config().replace(**TINY_MODEL).validate()


def blobs(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 image of smooth blobs with noise: content a model responds to in patches."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    small = ndi.gaussian_filter(rng.random((max(1, height // 8), max(1, width // 8))), 1.5)
    big = np.kron(small, np.ones((8, 8)))[:height, :width]
    big = np.pad(big, ((0, height - big.shape[0]), (0, width - big.shape[1])), mode="edge")
    big = (big - big.min()) / max(float(np.ptp(big)), 1e-6)
    return np.clip(big * 200 + rng.normal(0, 10, big.shape), 0, 255).astype(np.uint8)


def save_tiny_model(root: Path, threshold_from: np.ndarray | None = None) -> Path:
    """A seeded, untrained tiny model saved as a version folder; its threshold splits `threshold_from`'s
    probabilities at the median, so labels hold both values (a real prediction, not a constant)."""
    import keras

    from napari_unet.core.bundle import ModelBundle, save_bundle
    from napari_unet.core.model import build_model
    from napari_unet.core.normalize import normalize
    from napari_unet.core.predict import predict_probabilities

    cfg = tiny_config()
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    if threshold_from is not None:
        probs = predict_probabilities(model, normalize(threshold_from[..., None], 1.0, 99.8), cfg)
        cfg = cfg.replace(predict={"threshold": float(np.median(probs))})
    return save_bundle(ModelBundle(model, cfg), root, "tiny")


def write_ome_zarr(path: Path, image: np.ndarray, zarr_format: int = 2, axes: str = "yx", chunks: int = 1024) -> Path:
    """An OME-Zarr image written with the ome-zarr library (NGFF 0.4 on zarr v2, 0.5 on v3)."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if zarr_format == 2 else FormatV05()
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    write_image(image, group, axes=axes, fmt=fmt, storage_options={"chunks": (chunks,) * image.ndim})
    return path
