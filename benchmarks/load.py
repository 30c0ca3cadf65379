"""Reliability under load: a 20000 x 20000 lazy image predicted in bounded memory, training on 50
image pairs at once, and 20 train/stop cycles in a row (threads and memory after each).

Every measurement runs in a fresh child process (`--child MODE`), so its peak resident memory
(`ru_maxrss`) belongs to that measurement alone. The network is tiny (depth 2, 8 base filters):
memory and leaks do not depend on its size, and the 20000 x 20000 prediction stays in minutes on
2 CPU cores. tests/reliability/test_load.py runs the same children at smaller sizes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, Report, bench_main, max_rss_bytes, mib, rss_bytes, synthetic_nuclei

MODES = ("predict", "train", "cycles")


def tiny_config(tile_size: int = 512, patch: int = 32):
    from napari_unet.core.config import Config

    return Config().replace(
        model={"depth": 2, "base_filters": 8, "batch_norm": False},
        data={"patch_size": patch, "val_fraction": 0.15},
        train={"epochs": 1, "steps_per_epoch": 5, "batch_size": 4, "early_stopping_patience": 0,
               "reduce_lr_patience": 0},
        predict={"tile_size": tile_size, "overlap": 24, "batch_size": 4},
    )  # fmt: skip


# ------------------------------------------------------------------ peak memory


def reset_peak_rss() -> bool:
    """Restart this process's peak-RSS counter (Linux `clear_refs`); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since its start or the last `reset_peak_rss()`.

    Linux `VmHWM`, not `ru_maxrss`: getrusage keeps the peak across `execve`, so a child started
    from a big process (pytest after GUI tests) would report its parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return max_rss_bytes()


# ------------------------------------------------------------------ child processes


def predict_child(size: int, tile_size: int) -> dict[str, Any]:
    """Predict a lazy `size x size` image (never materialised) chunk by chunk; reduce the result."""
    import dask
    import dask.array as da
    import keras
    import numpy as np

    from napari_unet.core.model import build_model
    from napari_unet.core.predict import predict_dask

    cfg = tiny_config(tile_size)
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    rng = da.random.default_rng(0)
    # Warm-up on a small lazy image: Keras traces its predict function for the batch shapes here,
    # so the baseline holds those graphs and the measured growth is what the image size costs.
    warm = predict_dask(model, rng.random((1500, 1500), chunks=(1024, 1024), dtype=np.float32), cfg, (0.0, 1.0))
    with dask.config.set(scheduler="threads", num_workers=2):
        warm.mean().compute()
    image = rng.random((size, size), chunks=(1024, 1024), dtype=np.float32)
    gc.collect()
    baseline = rss_bytes()
    reset_peak_rss()
    t0 = time.perf_counter()
    lazy = predict_dask(model, image, cfg, bounds=(0.0, 1.0))
    with dask.config.set(scheduler="threads", num_workers=2):
        # One reduction: two sharing `lazy` would keep its blocks alive until both consumed them.
        fraction = (lazy[..., 0] > 0.5).mean().compute()
    seconds = time.perf_counter() - t0
    return {
        "size": size,
        "seconds": seconds,
        "chunks": [len(lazy.chunks[0]), len(lazy.chunks[1])],
        "chunk": int(lazy.chunks[0][0]),
        "image_float32_bytes": size * size * 4,
        "baseline_rss": baseline,
        "peak_rss": peak_rss_bytes(),
        "foreground_fraction": float(fraction),
    }


def train_child(n_pairs: int, size: int) -> dict[str, Any]:
    """Train on `n_pairs` synthetic `size x size` pairs at once (validation by image)."""
    import numpy as np

    from napari_unet.core.data import TrainingPair
    from napari_unet.core.train import train

    pairs = [TrainingPair(*synthetic_nuclei(size, seed=i), name=f"img{i:02d}") for i in range(n_pairs)]
    raw = sum(p.image.nbytes + p.labels.nbytes for p in pairs)
    gc.collect()
    baseline = rss_bytes()
    reset_peak_rss()
    t0 = time.perf_counter()
    result = train(pairs, tiny_config(tile_size=256))
    seconds = time.perf_counter() - t0
    return {
        "pairs": n_pairs,
        "size": size,
        "seconds": seconds,
        "status": result.status,
        "loss_finite": bool(np.isfinite(result.history["loss"]).all()),
        "val_images": int(round(n_pairs * 0.15)),
        "raw_bytes": raw,
        "float32_bytes": n_pairs * size * size * 4,
        "baseline_rss": baseline,
        "peak_rss": peak_rss_bytes(),
    }


def cycles_child(n_cycles: int) -> dict[str, Any]:
    """`n_cycles` times: start training, stop it after its first step. RSS and threads after each."""
    from napari_unet.core.data import TrainingPair
    from napari_unet.core.train import train

    pairs = [TrainingPair(*synthetic_nuclei(96, seed=i), name=f"img{i}") for i in range(2)]
    cfg = tiny_config(tile_size=96).replace(data={"val_fraction": 0.0}, train={"epochs": 3, "steps_per_epoch": 20})
    threads_before = _thread_names()
    rss, threads, statuses = [], [], []
    t0 = time.perf_counter()
    for _ in range(n_cycles):
        stop = threading.Event()

        def on_event(event, stop=stop):
            if event.kind == "batch":
                stop.set()

        result = train(pairs, cfg, on_event=on_event, stop=stop)
        statuses.append(result.status)
        del result
        gc.collect()
        rss.append(rss_bytes())
        threads.append(len(_thread_names()))
    return {
        "cycles": n_cycles,
        "seconds": time.perf_counter() - t0,
        "statuses": sorted(set(statuses)),
        "rss": rss,
        "threads": threads,
        "threads_before": len(threads_before),
        "new_threads": sorted(set(_thread_names()) - set(threads_before)),
        "peak_rss": peak_rss_bytes(),
    }


def _thread_names() -> list[str]:
    """Non-daemon Python threads (TensorFlow's own pools are C++ threads)."""
    return [t.name for t in threading.enumerate() if not t.daemon]


def child(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    if mode == "predict":
        return predict_child(args.size, args.tile)
    if mode == "train":
        return train_child(args.pairs, args.size)
    return cycles_child(args.cycles)


def start(mode: str, *options: str) -> subprocess.Popen:
    """Start one child measurement in a fresh Python process (see `result`)."""
    cmd = [sys.executable, "-m", "benchmarks.load", "--child", mode, *options]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen, timeout: float | None = None) -> dict[str, Any]:
    """The JSON result of a child started with `start` (waits for it)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"load child {proc.args[4]} ran past {timeout} s:\n{err[-4000:]}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"load child {proc.args[4]} failed:\n{out[-2000:]}\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def spawn(mode: str, *options: str, timeout: float | None = None) -> dict[str, Any]:
    """Run one child measurement in a fresh Python process; its JSON result."""
    return result(start(mode, *options), timeout)


# ------------------------------------------------------------------ benchmark


def run(quick: bool = False) -> Report:
    """Peak memory of a huge lazy prediction and of training on 50 pairs; leaks over train/stop cycles."""
    report = Report("load")
    size, tile = (2048, 256) if quick else (20000, 512)
    n_pairs, pair_size = (10, 256) if quick else (50, 512)
    n_cycles = 6 if quick else 20
    report.note("network: U-Net depth 2, 8 base filters, no batch norm (seeded, untrained for prediction)")
    pred = spawn("predict", "--size", str(size), "--tile", str(tile))
    label = f"{size}x{size} lazy image"
    report.add(f"{label}: prediction time", pred["seconds"], "s")
    report.add(f"{label}: throughput", size * size / 1e6 / pred["seconds"], "Mpixel/s")
    report.add(f"{label}: peak RSS (process)", mib(pred["peak_rss"]), "MiB", "< 4096")
    delta = pred["peak_rss"] - pred["baseline_rss"]
    report.add(f"{label}: peak RSS above baseline", mib(delta), "MiB")
    report.add(f"{label}: that, as a share of one float32 copy of the image", delta / pred["image_float32_bytes"], "",
               "< 0.25")  # fmt: skip
    report.note(
        f"prediction: da.random input in 1024-px chunks, never materialised; {pred['chunks'][0]}x{pred['chunks'][1]} "
        f"output chunks of {pred['chunk']} px (tile {tile}, threaded scheduler with 2 workers), reduced to the "
        f"foreground fraction ({pred['foreground_fraction']:.3f})"
    )

    tr = spawn("train", "--pairs", str(n_pairs), "--size", str(pair_size))
    label = f"training on {n_pairs} pairs of {pair_size}x{pair_size}"
    report.add(f"{label}: time (1 epoch of 5 steps + validation on {tr['val_images']} images)", tr["seconds"], "s")
    report.add(f"{label}: peak RSS (process)", mib(tr["peak_rss"]), "MiB", "< 4096")
    report.add(f"{label}: peak RSS above baseline", mib(tr["peak_rss"] - tr["baseline_rss"]), "MiB")
    report.add(f"{label}: float32 size of the normalised images", mib(tr["float32_bytes"]), "MiB")

    cyc = spawn("cycles", "--cycles", str(n_cycles))
    first = min(4, n_cycles - 1)
    growth = cyc["rss"][-1] - cyc["rss"][first]
    report.add(f"{n_cycles} train/stop cycles: time", cyc["seconds"], "s")
    report.add(f"{n_cycles} train/stop cycles: RSS after cycle {first + 1}", mib(cyc["rss"][first]), "MiB")
    report.add(f"{n_cycles} train/stop cycles: RSS after cycle {n_cycles}", mib(cyc["rss"][-1]), "MiB")
    report.add(f"{n_cycles} train/stop cycles: RSS growth per cycle after cycle {first + 1}",
               mib(growth) / max(1, n_cycles - first - 1), "MiB")  # fmt: skip
    report.add(f"{n_cycles} train/stop cycles: non-daemon threads left", len(cyc["new_threads"]), "", "<= 0")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=20)
    args, rest = parser.parse_known_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args)))
        return 0
    return bench_main("load", run, rest)


if __name__ == "__main__":
    sys.exit(main())
