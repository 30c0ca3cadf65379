"""Train the shipped starter model: a generic fluorescence-nuclei U-Net on the CC0 DSB2018 images.

    .venv/bin/python scripts/train_starter.py --score        # train on 3/4, score on the held-out 1/4
    .venv/bin/python scripts/train_starter.py --ship         # train on all 49 and write the package copy

Data: ../shared/data/nuclei (BBBC038v1 / DSB2018 stage 1 test images with their released solution,
CC0 1.0). Held-out rule for `--score`: every 4th image by sorted file name (12 of 49), never trained,
validated or tuned on. The model is napari-unet's default network and training (`Config()`
defaults, task instances, gray: RGB images become gray by luminance) with a longer time budget.

The shipped copy goes to napari_unet/starter/nuclei/v001/ (model, metadata with the tuned
post-processing, and a small replay set so fine-tuning from it does not forget), with a README that
records the data, licence, settings and the `--score` figures (read from starter_scores.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("NAPARI_UNET_SHARED_DATA", REPO.parent / "shared" / "data"))
TARGET = REPO / "napari_unet" / "starter" / "nuclei"
SCORES = REPO / "napari_unet" / "starter" / "starter_scores.json"
#: Replay patches shipped with the starter (float16 images, int8 targets, zlib): about 1.5 MB.
STARTER_REPLAY = 24


def load(names: list[str]) -> list:
    import tifffile

    from napari_unet.core.data import TrainingPair

    root = SHARED / "nuclei"
    return [TrainingPair(tifffile.imread(root / "images" / f"{n}.tif"), tifffile.imread(root / "labels" / f"{n}.tif"), n)
            for n in names]  # fmt: skip


def split() -> tuple[list[str], list[str]]:
    names = sorted(p.stem for p in (SHARED / "nuclei" / "images").glob("*.tif"))
    return [n for i, n in enumerate(names) if i % 4 != 3], [n for i, n in enumerate(names) if i % 4 == 3]


def config(minutes: float):
    from napari_unet.core.config import Config

    return Config().replace(
        data={"task": "instances", "in_channels": 1},
        train={"time_limit_s": minutes * 60.0, "epochs": 100000, "early_stopping_patience": 30},
    )


def score(result, held_names: list[str]) -> dict:
    from napari_unet.core.channels import to_channels
    from napari_unet.core.data import TrainingPair
    from napari_unet.core.evaluate import evaluate_pairs

    held = [TrainingPair(to_channels(p.image, 1, p.image.ndim == 3), p.labels, p.name) for p in load(held_names)]
    scores = evaluate_pairs(result.model, result.config, held)
    return {"mean": scores["mean"], "images": scores["images"]}


def shrink_replay(version: Path) -> None:
    """Keep `STARTER_REPLAY` replay patches, stored as float16 / int8 with zlib (load_replay reads them)."""
    import tifffile

    from napari_unet.core.bundle import load_replay

    images, targets = load_replay(version)
    idx = np.unique(np.linspace(0, len(images) - 1, min(STARTER_REPLAY, len(images))).astype(int))
    folder = version / "replay"
    for fname, arrays, dtype in (("images.tif", images, np.float16), ("targets.tif", targets, np.int8)):
        with tifffile.TiffWriter(folder / fname) as tw:
            for i in idx:
                tw.write(arrays[i].astype(dtype), photometric="minisblack", compression="zlib")


def strip_optimizer(path: Path) -> None:
    """Re-save the model without its optimizer state (about a third of the size); outputs unchanged."""
    import keras

    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    probe = np.random.default_rng(0).random((1, 64, 64, model.input_shape[-1])).astype(np.float32)
    before = model.predict(probe, verbose=0)
    tmp = path.with_name("stripped.keras")
    model.save(tmp)
    after = keras.saving.load_model(tmp, safe_mode=True, compile=False).predict(probe, verbose=0)
    if not np.allclose(before, after, atol=1e-6):
        raise RuntimeError("the re-saved starter model predicts differently")
    os.replace(tmp, path)


def write_package(result, record: dict | None) -> Path:
    """Copy the trained model (small replay) into napari_unet/starter/nuclei/v001 with its README."""
    with tempfile.TemporaryDirectory() as tmp:
        version = Path(result.save(tmp, "nuclei"))
        shrink_replay(version)
        strip_optimizer(version / "model.keras")
        if TARGET.exists():
            shutil.rmtree(TARGET)
        TARGET.mkdir(parents=True)
        shutil.copytree(version, TARGET / "v001")
    (TARGET / "README.md").write_text(readme(result, record))
    return TARGET / "v001"


def readme(result, record: dict | None) -> str:
    p = result.config.predict
    lines = [
        "# napari-unet starter model: fluorescence nuclei (instances)",
        "",
        "Trained by `scripts/train_starter.py` with napari-unet's default network and training",
        "(`Config()` defaults, task `instances`, one gray channel: colour images become gray by luminance).",
        "",
        "* **Training data:** DSB2018 / BBBC038v1 stage 1 test images with Kaggle's released solution, as",
        "  stored in `../shared/data/nuclei` (see that folder's README). "
        + (f"{len(record['trained_on'])} of the 49 images: every 4th by sorted name is held out."
           if record and not record.get("all") else "All 49 images."),
        "* **Licence of the data:** CC0 1.0 (public domain dedication, Broad Bioimage Benchmark Collection).",
        "  Please cite Caicedo et al., Nature Methods 16, 1247-1253 (2019) and Ljosa et al., Nature Methods 9,",
        "  637 (2012). The model weights are released with napari-unet (BSD-3-Clause).",
        f"* **Post-processing (tuned on validation images):** threshold {p.threshold}, seed threshold "
        f"{p.seed_threshold}, seed mode {p.seed_mode} (h {p.seed_h}), minimum size {p.min_size} px.",
    ]
    if record:
        m = record["held_out_mean"]
        lines += [
            f"* **Held-out scores ({len(record['held_out'])} images never trained, validated or tuned on; per-image"
            f" mean):** object F1@0.5 {m['object_f1']:.3f}, foreground Dice {m['dice']:.3f}.",
            f"* **Training:** {record['minutes']:g} min budget on the CPU ({record['seconds']:.0f} s wall, "
            f"{record['epochs']} epochs, kept epoch {record['best_epoch']}; 1-min load average at the end "
            f"{record['load_1min']:.1f} on 2 cores).",
            f"* Held-out images: {', '.join(record['held_out'])}.",
        ]
    lines += ["", "Use it from Python: `load_bundle(napari_unet.core.starter.starter_model_path())`.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--score", action="store_true", help="train on 3/4 of the images, score the held-out 1/4")
    parser.add_argument("--ship", action="store_true",
                        help="write the package copy (with --score: the scored model; alone: trained on all)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from napari_unet.core.train import train

    train_names, held_names = split()
    record = None
    if args.score:
        t0 = time.monotonic()
        result = train(load(train_names), config(args.minutes))
        scores = score(result, held_names)
        record = {
            "trained_on": train_names, "held_out": held_names, "minutes": args.minutes,
            "seconds": round(time.monotonic() - t0, 1), "load_1min": os.getloadavg()[0],
            "best_epoch": result.best_epoch, "epochs": len(result.history["loss"]),
            "predict": result.config.to_dict()["predict"], "held_out_mean": scores["mean"],
            "held_out_images": scores["images"],
        }  # fmt: skip
        SCORES.parent.mkdir(parents=True, exist_ok=True)
        SCORES.write_text(json.dumps(record, indent=1))
        print(json.dumps(record["held_out_mean"], indent=1))
    elif args.ship:
        result = train(load(sorted(train_names + held_names)), config(args.minutes))
        record = json.loads(SCORES.read_text()) if SCORES.is_file() else None
        if record:
            record["all"] = True
    if args.ship:
        print(f"starter written to {write_package(result, record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
