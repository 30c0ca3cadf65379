"""Batch prediction on a dask LocalCluster: throughput with 1 and 2 worker processes (as a ratio),
and the peak memory of each worker on a 16384 x 16384 OME-Zarr image.

Every measurement runs in a fresh child process (`--child`) that starts its own LocalCluster, so
TensorFlow never loads in the parent and each cluster's workers start cold. Throughput: a warm-up
batch (each worker loads the model once), then `N_FILES` TIFF images of 1024 x 1024 predicted
whole (one task per image, the tile rule's single tile); images per second. Memory: a
16384 x 16384 OME-Zarr image predicted in chunks sized by the tile rule from each worker's memory
limit; each worker's `ru_maxrss` (TensorFlow, the model and its windows included) after the run.
The model is the "Fast (CPU)" preset network with seeded, untrained weights (cost does not depend
on training); the threshold splits its output so both labels occur.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import presets
from benchmarks._common import REPO, Report, bench_main, mib

N_FILES = 16
FILE_SIDE = 1024


def _config(quick: bool):
    return presets.tiny() if quick else presets.fast_cpu()


def _blobs(size: int, seed: int) -> np.ndarray:
    from benchmarks.tiling import synthetic_image

    x = synthetic_image(size, seed)[..., 0]
    return np.clip((x - x.min()) / max(float(np.ptp(x)), 1e-6) * 255, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ child process


def _prepare(workdir: Path, quick: bool, huge: int) -> None:
    """The model, the TIFF batch and the huge OME-Zarr image (in a child: keeps TF out of the parent)."""
    import keras
    import tifffile
    import zarr
    from ome_zarr.writer import write_image

    from napari_unet.core.bundle import ModelBundle, save_bundle
    from napari_unet.core.model import build_model

    cfg = _config(quick)
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    probe = _blobs(256, 99).astype(np.float32)[None, ..., None] / 255.0
    cfg = cfg.replace(predict={"threshold": float(np.median(model.predict_on_batch(probe)))})
    save_bundle(ModelBundle(model, cfg), workdir / "models", "bench")
    side = 256 if quick else FILE_SIDE
    for folder, n in (("warm", 2), ("files", N_FILES)):
        (workdir / folder).mkdir()
        for i in range(n):
            tifffile.imwrite(workdir / folder / f"img{i:02d}.tif", _blobs(side, seed=i + (100 if folder == "warm" else 0)))
    tile = _blobs(1024 if not quick else 256, seed=7)
    big = np.tile(tile, (huge // tile.shape[0], huge // tile.shape[1]))
    group = zarr.open_group(str(workdir / "huge.zarr"), mode="w", zarr_format=2)
    write_image(big, group, axes="yx", storage_options={"chunks": (2048, 2048)})


def child(mode: str, workers: int, workdir: Path) -> dict[str, Any]:
    """One cluster measurement in this (fresh) process."""
    from napari_unet.core.batch import Run
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.cluster import open_client
    from napari_unet.core.io import list_images
    from napari_unet.core.omezarr import open_image, plan_labels
    from napari_unet.core.outputs import plan_outputs

    bundle = load_bundle(workdir / "models" / "bench")
    args = argparse.Namespace(axes=None, overwrite=False, probabilities=False)
    result: dict[str, Any] = {"mode": mode, "workers": workers}
    with open_client(local=workers) as client:
        client.wait_for_workers(workers, timeout=120)

        def batch(folder: str, out: str) -> float:
            files = list_images([workdir / folder])
            plans = plan_outputs(files, workdir / out, protected=files)
            run = Run(str(bundle.path), {}, bundle, bundle.config)
            t0 = time.perf_counter()
            run.execute(client, [], [], plans, args)
            return time.perf_counter() - t0

        result["warm_seconds"] = batch("warm", f"warm-out-{mode}-{workers}")  # each worker loads the model
        if mode == "throughput":
            seconds = batch("files", f"out-{workers}")
            result.update(seconds=seconds, images=N_FILES, images_per_s=N_FILES / seconds)
        else:
            image = open_image(workdir / "huge.zarr")
            target = plan_labels([image], f"bench-{workers}")[0]
            run = Run(str(bundle.path), {}, bundle, bundle.config)
            t0 = time.perf_counter()
            run.execute(client, [image], [target], [], args)
            result["seconds"] = time.perf_counter() - t0
            result["shape"] = list(target.yx_shape)

            def peak() -> int:
                import resource

                return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

            result["worker_peak_rss"] = sorted(client.run(peak).values())
            result["memory_limit"] = min(w["memory_limit"] for w in client.scheduler_info()["workers"].values())
            from napari_unet.core.cluster import worker_budget
            from napari_unet.core.tiling import chunk_size, window_cost

            chunk = chunk_size(bundle.config, worker_budget(client))
            result.update(chunk=chunk, window_cost=window_cost(chunk, bundle.config))
    return result


def _spawn(mode: str, workers: int, workdir: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.cluster", "--child", mode, "--workers", str(workers), "--dir", str(workdir)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cluster child {mode}/{workers} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ benchmark


def run(quick: bool = False) -> Report:
    """Throughput with 1 and 2 LocalCluster workers (ratio); peak memory per worker on a huge image."""
    report = Report("cluster")
    huge = 2048 if quick else 16384
    cfg = _config(quick)
    report.note(
        f"model: U-Net depth {cfg.model.depth}, {cfg.model.base_filters} base filters "
        f"({'tiny' if quick else 'Fast (CPU) preset'}), untrained seeded weights"
    )
    with tempfile.TemporaryDirectory(prefix="napari-unet-bench-") as tmp:
        workdir = Path(tmp)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
        code = "import sys; from pathlib import Path; from benchmarks.cluster import _prepare; " \
               "_prepare(Path(sys.argv[1]), sys.argv[2] == '1', int(sys.argv[3]))"  # fmt: skip
        subprocess.run([sys.executable, "-c", code, tmp, "1" if quick else "0", str(huge)], cwd=REPO, env=env, check=True)
        one = _spawn("throughput", 1, workdir)
        two = _spawn("throughput", 2, workdir)
        side = 256 if quick else FILE_SIDE
        report.add(f"{N_FILES} images {side}x{side}, 1 worker", one["images_per_s"], "images/s")
        report.add(f"{N_FILES} images {side}x{side}, 2 workers", two["images_per_s"], "images/s")
        report.add("throughput ratio 2 workers / 1 worker", two["images_per_s"] / one["images_per_s"])
        report.add("first batch (model load per worker), 2 workers", two["warm_seconds"], "s")
        mem = _spawn("memory", 2, workdir)
    mpx = huge * huge / 1e6
    report.add(f"{huge}x{huge} OME-Zarr, 2 workers: time", mem["seconds"], "s")
    report.add(f"{huge}x{huge} OME-Zarr, 2 workers: throughput", mpx / mem["seconds"], "Mpixel/s")
    for i, peak in enumerate(mem["worker_peak_rss"]):
        report.add(f"{huge}x{huge}: peak RSS of worker {i + 1}", mib(peak), "MiB", "< 4096 MiB")
    report.note(
        f"chunks of {mem['chunk']} px chosen by the tile rule from the workers' memory limit "
        f"({mib(mem['memory_limit']):.0f} MiB each); window / chunk cost {mem['window_cost']:.3f}; labels written "
        "into the OME-Zarr store with a pyramid, in a temporary folder that is deleted"
    )
    report.note(
        "each worker has 1 dask thread and cores / workers TensorFlow threads; on 2 shared cores a ratio "
        "near 1 means the cores, not the scheduling, bound throughput"
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--child", choices=("throughput", "memory"))
    parser.add_argument("--workers", type=int)
    parser.add_argument("--dir", type=Path)
    args, rest = parser.parse_known_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.workers, args.dir)))
        return 0
    return bench_main("cluster", run, rest)


if __name__ == "__main__":
    sys.exit(main())
