"""Model files and CLI start-up: the size of a model folder over fine-tuning rounds, and `napari-unet predict`.

1. Model folder size. A model is trained on grayscale DSB2018 nuclei (the Fast (CPU) preset with
   short epochs: the size does not depend on training length), then fine-tuned five times, each
   round on two new pairs, each round starting from the newest version. The folder is measured
   after 1 and after 5 rounds, as it is stored now (replay patches compressed, once per lineage,
   `core/replay.py`) and as the previous replay layout stored it (every version's replay patches
   as uncompressed TIFFs inside the version: the same patches written with that layout's writer;
   the model files are today's in both, without optimizer state).
2. CLI predict start-up. `python -m napari_unet.core.cli predict` with the shipped starter model on
   16 small images (128 to 248 px, synthetic nuclei) in a fresh process: time to the first label file
   on disk and to the end of the process; against the same work (load the model, read, predict and
   write 16 images) in a process where TensorFlow is already imported, as in a notebook. Runs
   alternate; medians.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks import presets
from benchmarks._common import REPO, Report, bench_main, median, nuclei_split, synthetic_nuclei, training_pairs

STARTER = REPO / "napari_unet" / "starter" / "nuclei" / "v001"
ROUNDS = 5


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def old_layout_bytes(model_dir: Path, versions: Sequence[Path]) -> int:
    """The same versions as the previous layout stored them: each with its replay as float32/int32 TIFFs."""
    import tifffile

    from napari_unet.core.bundle import load_replay

    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for version in versions:
            total += folder_bytes(version)
            images, targets = load_replay(version)
            for name, arrays in (("images.tif", images), ("targets.tif", targets)):
                path = Path(tmp) / name
                with tifffile.TiffWriter(path) as tw:  # the writer of bundle._write_replay before replay stores
                    for array in arrays:
                        tw.write(array, photometric="minisblack")
                total += path.stat().st_size
    return total


def _model_sizes(report: Report, quick: bool) -> None:
    from napari_unet.core.bundle import list_versions, load_bundle
    from napari_unet.core.train import finetune, train

    train_raw, held = nuclei_split()
    if not train_raw:
        report.note("model folder sizes skipped: ../shared/data/nuclei is absent")
        return
    n_first = 6 if quick else len(train_raw) - 2 * ROUNDS  # 22 of the 32 grayscale training images
    first, rest = train_raw[:n_first], train_raw[n_first:]
    sections = {"train": {"steps_per_epoch": 2 if quick else 5, "epochs": 1, "early_stopping_patience": 0}}
    if quick:
        sections.update(model={"depth": 2}, data={"patch_size": 64})
    cfg = presets.fast_cpu(**sections)
    with tempfile.TemporaryDirectory(prefix="bench-model-files-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        version = train(training_pairs(first), cfg).save(root, "nuclei")
        model_dir = version.parent
        sizes: dict[int, tuple[int, int]] = {}
        for k in range(1, ROUNDS + 1):
            parent = load_bundle(version)
            pairs = training_pairs(rest[2 * (k - 1) : 2 * k])
            version = finetune(parent, pairs, epochs=1).save(root, "nuclei")
            versions = list_versions(model_dir)
            sizes[k] = (folder_bytes(model_dir), old_layout_bytes(model_dir, versions))
        patches = list((model_dir / "replay").glob("*.npz"))
        report.note(
            f"model folder: {len(first)} training images, then {ROUNDS} rounds of 2 new images each; "
            f"{len(patches)} distinct replay patches of {cfg.data.patch_size} px stored "
            f"({sum(p.stat().st_size for p in patches) / 1e6:.1f} MB); model.keras "
            f"{(version / 'model.keras').stat().st_size / 1e6:.1f} MB per version; {time.monotonic() - started:.0f} s"
        )
    mb = 1e6
    for k in (1, ROUNDS):
        new, old = sizes[k]
        report.add(f"model folder after {k} fine-tuning round(s): stored now", new / mb, "MB")
        report.add(f"model folder after {k} fine-tuning round(s): previous replay layout", old / mb, "MB")
    report.add(f"model folder after {ROUNDS} rounds: now / previous replay layout", sizes[ROUNDS][0] / sizes[ROUNDS][1], "",
               "< 0.25")  # fmt: skip
    growth = (sizes[ROUNDS][0] - sizes[1][0]) / (ROUNDS - 1) / mb
    report.add("growth per further fine-tuning round (stored now)", growth, "MB")


# ------------------------------------------------------------------ CLI start-up


def _write_images(folder: Path, n: int) -> None:
    import tifffile

    folder.mkdir(parents=True)
    for i in range(n):
        image, _ = synthetic_nuclei(128 + 8 * i, seed=i)
        tifffile.imwrite(folder / f"img{i:02d}.tif", image)


def _cli_run(images: Path, out: Path) -> tuple[float, float]:
    """(seconds to the first label file, seconds to the end) of one CLI process."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user's shell has
    cmd = [sys.executable, "-m", "napari_unet.core.cli", "predict", "--model", str(STARTER), "--images", str(images),
           "--out", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=images.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None:
        if first is None and out.is_dir() and any(p.suffix == ".tif" for p in out.iterdir()):
            first = time.perf_counter() - t0
        time.sleep(0.005)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"napari-unet predict failed: {proc.stderr.read().decode()[-2000:]}")
    return (first if first is not None else total), total


def _in_process_run(images: Path, out: Path) -> tuple[float, float]:
    """The CLI's work in this process (TensorFlow already imported): load, then read, predict, write each image."""
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.io import list_images, write_labels
    from napari_unet.core.layout import read_image, to_core
    from napari_unet.core.predict import predict_image

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    t0 = time.perf_counter()
    bundle = load_bundle(STARTER)
    first = None
    for path in list_images([images]):
        array, layout = read_image(path, None)
        result = predict_image(bundle.model, to_core(array, layout), bundle.config)
        write_labels(out / path.name, result.labels)
        first = first if first is not None else time.perf_counter() - t0
    return float(first or 0.0), time.perf_counter() - t0


def _cli_startup(report: Report, quick: bool) -> None:
    from napari_unet.core.tf_startup import start_tensorflow

    start_tensorflow()  # the in-process runs start where a notebook's second cell does
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        images = Path(tmp) / "images"
        _write_images(images, 16)
        cli, inproc = [], []
        for _ in range(repeats):
            cli.append(_cli_run(images, Path(tmp) / "cli"))
            inproc.append(_in_process_run(images, Path(tmp) / "inproc"))
    cli_first, cli_total = median([c[0] for c in cli]), median([c[1] for c in cli])
    in_first, in_total = median([c[0] for c in inproc]), median([c[1] for c in inproc])
    report.add(f"CLI predict, 16 small images: first label file (median of {repeats})", cli_first, "s")
    report.add(f"CLI predict, 16 small images: whole process (median of {repeats})", cli_total, "s")
    report.add("in-process (TensorFlow imported): first label file", in_first, "s")
    report.add("in-process (TensorFlow imported): 16 images", in_total, "s")
    report.add("CLI whole process / in-process", cli_total / max(in_total, 1e-9))
    report.note("CLI = a fresh `python -m napari_unet.core.cli predict` process: Python start, TensorFlow import, "
                "model load, 16 x (read, predict, write), exit")  # fmt: skip


def run(quick: bool = False) -> Report:
    """Model folder size over fine-tuning rounds (now and in the previous layout) and CLI predict start-up."""
    report = Report("model_files")
    _cli_startup(report, quick)
    _model_sizes(report, quick)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("model_files", run, argv)


if __name__ == "__main__":
    sys.exit(main())
