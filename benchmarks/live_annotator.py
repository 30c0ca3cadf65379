"""Live mode as a user feels it: a simulated annotator paints strokes at human pace, from empty labels.

For one fluorescence nuclei image (DSB2018) and one real chest X-ray (Montgomery/Shenzhen) of
`../shared/data`, the annotator paints a stroke every `PACE_S` seconds of wall-clock time, aimed
where the current live prediction is wrong, as a person would aim: a short line inside an object
that has no stroke yet (a missed object), or a background line away from objects (a false
detection). The first two strokes are an object and a background line. Every stroke is sent as its
bounding box, as the Live widget sends it.

Two live systems get the same annotator, one after the other, on the same machine:
* napari-unet Live: the compute worker (`jobs/live.py`) through `ComputeClient`, exactly what the
  widget drives, predicting the whole image (it fits on one screen) at every refresh;
* the classic live update (ilastik, APOC, convpaint): scikit-learn's `RandomForestClassifier`
  (100 trees, all cores) on scikit-image `multiscale_basic_features`, computed once before the
  first stroke, retrained on all strokes after every stroke (strokes that arrive during a fit are
  taken by the next fit) and predicting the whole image. It runs at the compute worker's nice
  value, so on a shared machine both get the same share of the cores.

At every refresh it records the seconds since the first stroke, the foreground Dice of the live
prediction against the full ground truth, and the stroke-to-refresh latency (from a stroke to the
first prediction that learnt from it). Targets (2 CPU cores): Dice >= 0.85 within 60 s of the first
stroke, median latency <= 3 s, and a higher Dice than the forest at 60 s and at 120 s on both images.
The Dice-over-time curves go to docs/images/live_annotator.png.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from benchmarks._common import REPO, Report, bench_main, median, read_pairs

PACE_S = 2.0  # one stroke every 2 s
DURATION_S = 120.0
QUICK_S = 16.0
CHECKPOINTS = (60.0, 120.0)
BACKGROUND = 255
STROKE_LENGTH = 14  # pixels
PLOT = REPO / "docs" / "images" / "live_annotator.png"
#: The images: one gray fluorescence nuclei image (519 x 253, 59 nuclei), one real chest X-ray.
IMAGES = {"nuclei": ("nuclei", "labels", "dsb2018_s1test_01_"), "xray": ("xray_real", "masks", "cxr_montgomery")}


@dataclass
class Refresh:
    t: float  # seconds since the first stroke
    dice: float
    latencies: list[float] = field(default_factory=list)  # of the strokes this refresh learnt first


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    inter = np.logical_and(pred, gt).sum()
    total = pred.sum() + gt.sum()
    return float(2 * inter / total) if total else 1.0


# ------------------------------------------------------------------ the annotator


class Annotator:
    """Strokes that follow the ground truth, aimed at the largest error of the current prediction."""

    def __init__(self, gt: np.ndarray, seed: int = 0) -> None:
        self.gt = gt > 0
        self.objects = ndi.label(self.gt)[0] if gt.max() <= 1 else gt.astype(np.int64)
        self.inside = ndi.distance_transform_edt(self.gt)  # depth inside objects
        self.outside = ndi.distance_transform_edt(~self.gt)  # distance from objects
        self.painted = np.zeros(gt.shape, np.int32)
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def next(self, pred: np.ndarray | None) -> tuple[int, int, np.ndarray]:
        """(top, left, labels of the stroke's bounding box), the stroke painted into `painted`."""
        pred = np.zeros(self.gt.shape, bool) if pred is None else pred
        missed = self.gt & ~pred & (self.inside >= 2)
        fresh = missed & ~np.isin(self.objects, np.unique(self.objects[self.painted > 0]))
        false = ~self.gt & pred & (self.outside >= 4)
        if self.count == 0:
            kind = "object"
        elif self.count == 1:
            kind = "background"
        else:
            kind = "object" if (fresh.sum() or missed.sum()) >= false.sum() else "background"
        if kind == "object":
            where = fresh if fresh.any() else missed if missed.any() else self.gt & (self.inside >= 2)
            allowed = self.gt & (self.inside >= 1.5)
        else:
            far = ~self.gt & (self.outside >= 6)
            where = false if false.any() else far & (self.painted == 0)
            allowed = ~self.gt & (self.outside >= 3)
        centre = self._aim(where)
        line = self._line(centre, allowed)
        value = 1 if kind == "object" else BACKGROUND
        self.painted[line] = value
        self.count += 1
        rows, cols = np.nonzero(line)
        top, left, bottom, right = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
        return int(top), int(left), self.painted[top:bottom, left:right].copy()

    def _aim(self, where: np.ndarray) -> tuple[int, int]:
        """The deepest point of the largest error region (where a person's eye goes first)."""
        regions, n = ndi.label(where)
        if n == 0:
            candidates = np.argwhere(self.painted == 0)
            return tuple(candidates[self.rng.integers(len(candidates))])  # type: ignore[return-value]
        sizes = ndi.sum_labels(where, regions, np.arange(1, n + 1))
        biggest = regions == (int(np.argmax(sizes)) + 1)
        depth = ndi.distance_transform_edt(biggest)
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(depth)), depth.shape))  # type: ignore[return-value]

    def _line(self, centre: tuple[int, int], allowed: np.ndarray) -> np.ndarray:
        """A 3-pixel-wide line of up to STROKE_LENGTH pixels through `centre`, kept where `allowed`."""
        angle = self.rng.uniform(0, np.pi)
        steps = np.arange(-STROKE_LENGTH // 2, STROKE_LENGTH // 2 + 1)
        rows = np.clip(np.round(centre[0] + steps * np.sin(angle)).astype(int), 0, allowed.shape[0] - 1)
        cols = np.clip(np.round(centre[1] + steps * np.cos(angle)).astype(int), 0, allowed.shape[1] - 1)
        line = np.zeros(allowed.shape, bool)
        line[rows, cols] = True
        line = ndi.binary_dilation(line) & allowed
        if not line.any():  # a thin object: at least its centre
            line[centre] = True
        return line


# ------------------------------------------------------------------ the two live systems


class UNetLive:
    """napari-unet Live through the compute worker, as the widget drives it."""

    name = "napari-unet Live"

    def __init__(self, image: np.ndarray, root: Path) -> None:
        from napari_unet.core.live_defaults import live_config
        from napari_unet.jobs import arrays
        from napari_unet.jobs.client import ComputeClient
        from napari_unet.jobs.live import READY
        from napari_unet.jobs.live_messages import LiveFrame, LiveRequest, LiveViewport

        self.arrays = arrays
        self.client = ComputeClient()
        self.ready = threading.Event()
        self.steps = 0  # training steps at the last refresh
        self.on_frame: Callable[[int, np.ndarray], None] | None = None
        h, w = image.shape[:2]

        def listener(event: Any) -> None:
            if isinstance(event, LiveFrame):
                self.steps = event.steps
                labels = arrays.take(event.labels)
                if self.on_frame is not None:
                    self.on_frame(event.strokes, labels > 0)
            elif getattr(event, "text", "") == READY:
                self.ready.set()

        def build(scratch: Path) -> LiveRequest:
            return LiveRequest(arrays.put(scratch, image), False, None, live_config().to_dict(), None, str(root),
                               "live", BACKGROUND, LiveViewport(0, 0, 0, h, w))  # fmt: skip

        self.job = self.client.submit(build, listener)
        if not self.ready.wait(180):
            raise RuntimeError("the live job did not get ready within 180 s")

    def stroke(self, seq: int, top: int, left: int, patch: np.ndarray) -> None:
        from napari_unet.jobs.live_messages import LiveStroke

        self.client.send(self.job, LiveStroke(seq, 0, top, left, self.arrays.put(self.client.session_dir, patch)))

    def close(self) -> None:
        self.client.stop(self.job)
        self.job.wait(5)
        self.client.close()


class ForestLive:
    """A random forest on multiscale_basic_features, retrained after every stroke (in its own thread)."""

    name = "random forest (live update)"

    def __init__(self, image: np.ndarray, root: Path) -> None:
        from skimage.feature import multiscale_basic_features

        start = time.monotonic()
        self.features = multiscale_basic_features(image.astype(np.float32), intensity=True, edges=True, texture=True,
                                                  sigma_min=1, sigma_max=16)  # fmt: skip
        self.feature_s = time.monotonic() - start
        self.labels = np.zeros(image.shape[:2], np.int32)
        self.seq = 0
        self.on_frame: Callable[[int, np.ndarray], None] | None = None
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stroke(self, seq: int, top: int, left: int, patch: np.ndarray) -> None:
        with self._changed:
            self.labels[top : top + patch.shape[0], left : left + patch.shape[1]] = patch
            self.seq = seq
            self._changed.notify()

    def _loop(self) -> None:
        from sklearn.ensemble import RandomForestClassifier

        from napari_unet.jobs.worker import WORKER_NICE

        # The same priority as the compute worker (its threads, and the pool it starts, inherit it):
        # on a machine shared with other work both systems then get the same share of the cores.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)

        fitted = 0
        while True:
            with self._changed:
                while self.seq == fitted and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                seq, labels = self.seq, self.labels.copy()
            painted = labels > 0
            y = labels[painted] != BACKGROUND
            if len(np.unique(y)) < 2:
                pred = np.full(labels.shape, bool(y[0]))
            else:
                forest = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0)
                forest.fit(self.features[painted], y)
                flat = self.features.reshape(-1, self.features.shape[-1])
                pred = forest.predict(flat).reshape(labels.shape).astype(bool)
            fitted = seq
            if self.on_frame is not None:
                self.on_frame(seq, pred)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(30)


# ------------------------------------------------------------------ one session


def session(system: Any, gt: np.ndarray, duration_s: float) -> list[Refresh]:
    """The annotator paints at PACE_S for `duration_s`; the refreshes the system showed."""
    annotator = Annotator(gt)
    refreshes: list[Refresh] = []
    sent: dict[int, float] = {}
    learnt = {"seq": 0}
    latest: dict[str, np.ndarray | None] = {"pred": None}
    lock = threading.Lock()
    t0 = time.monotonic()

    def on_frame(seq: int, pred: np.ndarray) -> None:
        now = time.monotonic()
        with lock:
            lat = [now - sent[s] for s in range(learnt["seq"] + 1, seq + 1) if s in sent]
            learnt["seq"] = max(learnt["seq"], seq)
            latest["pred"] = pred
            refreshes.append(Refresh(now - t0, dice(pred, gt > 0), lat))

    system.on_frame = on_frame
    seq = 0
    while True:
        due = t0 + seq * PACE_S
        if due - t0 > duration_s:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        with lock:
            pred = latest["pred"]
        top, left, patch = annotator.next(pred)
        seq += 1
        with lock:
            sent[seq] = time.monotonic()
        system.stroke(seq, top, left, patch)
    time.sleep(PACE_S)  # the last stroke's refresh
    system.on_frame = None
    return refreshes


def dice_at(refreshes: Sequence[Refresh], t: float) -> float:
    """The Dice of the prediction on screen at `t` seconds (0 before the first refresh)."""
    shown = [r.dice for r in refreshes if r.t <= t]
    return shown[-1] if shown else 0.0


def first_time(refreshes: Sequence[Refresh], threshold: float) -> float | None:
    return next((r.t for r in refreshes if r.dice >= threshold), None)


# ------------------------------------------------------------------ the benchmark


def pick(dataset: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    folder, label_dir, prefix = IMAGES[dataset]
    pairs = [p for p in read_pairs(folder, label_dir) if p[0].startswith(prefix) and p[1].ndim == 2]
    return pairs[0] if pairs else None


def run(quick: bool = False) -> Report:
    """A simulated annotator against napari-unet Live and a random forest, on nuclei and chest X-rays."""
    report = Report("live_annotator")
    duration = QUICK_S if quick else DURATION_S
    curves: dict[str, dict[str, list[Refresh]]] = {}
    with tempfile.TemporaryDirectory(prefix="napari-unet-live-") as tmp:
        for dataset in IMAGES:
            chosen = pick(dataset)
            if chosen is None:
                report.skipped = f"../shared/data/{IMAGES[dataset][0]} not found (set NAPARI_UNET_SHARED_DATA)"
                return report
            name, image, gt = chosen
            report.note(f"{dataset}: {name}, {image.shape[0]}x{image.shape[1]} pixels")
            curves[dataset] = {}
            for cls in (UNetLive, ForestLive):
                system = cls(image, Path(tmp))
                try:
                    refreshes = session(system, gt, duration)
                finally:
                    system.close()
                curves[dataset][cls.name] = refreshes
                if isinstance(system, UNetLive):
                    report.note(f"{dataset}: napari-unet trained {system.steps} steps in the session")
                if isinstance(system, ForestLive):
                    report.note(f"{dataset}: the forest's features took {system.feature_s:.1f} s (before the first stroke)")
                _rows(report, dataset, cls.name, refreshes, quick)
            for t in CHECKPOINTS if not quick else ():
                ours, forest = (dice_at(curves[dataset][n], t) for n in (UNetLive.name, ForestLive.name))
                report.add(f"{dataset}: Dice margin over the forest at {t:.0f} s", round(ours - forest, 3), "",
                           "> 0")  # fmt: skip
    if not quick:
        _plot(curves, duration)
        report.note(f"curves: {PLOT.relative_to(REPO)}")
    return report


def _rows(report: Report, dataset: str, system: str, refreshes: list[Refresh], quick: bool) -> None:
    latencies = [lat for r in refreshes for lat in r.latencies]
    ours = system == UNetLive.name
    reached = first_time(refreshes, 0.85)
    report.add(f"{dataset} / {system}: refreshes", len(refreshes))
    report.add(f"{dataset} / {system}: median stroke-to-refresh latency", round(median(latencies), 2) if latencies else None,
               "s", "<= 3" if ours else "")  # fmt: skip
    for t in CHECKPOINTS if not quick else (QUICK_S,):
        report.add(f"{dataset} / {system}: Dice at {t:.0f} s", round(dice_at(refreshes, t), 3))
    report.add(f"{dataset} / {system}: first Dice >= 0.85 after", round(reached, 1) if reached is not None else "never",
               "s" if reached is not None else "", "<= 60" if ours and not quick else "")  # fmt: skip


def _plot(curves: dict[str, dict[str, list[Refresh]]], duration: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), sharey=True)
    for ax, (dataset, systems) in zip(np.atleast_1d(axes), curves.items()):
        for system, refreshes in systems.items():
            ts = [0.0] + [r.t for r in refreshes]
            ds = [0.0] + [r.dice for r in refreshes]
            ax.step(ts, ds, where="post", label=system)
        ax.axhline(0.85, color="gray", lw=0.8, ls="--")
        ax.axvline(60, color="gray", lw=0.8, ls=":")
        ax.set(title=f"{dataset}: Dice of the live prediction", xlabel="seconds since the first stroke",
               xlim=(0, duration + PACE_S), ylim=(0, 1))  # fmt: skip
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("Dice vs full ground truth")
    np.atleast_1d(axes)[0].legend(loc="lower right")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("live_annotator", run, argv)


if __name__ == "__main__":
    sys.exit(main())
