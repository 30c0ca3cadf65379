"""Honest ETAs: how far the remaining-time estimate of a training is from the time that was left.

A Train-widget run with its defaults (the "Fast (CPU)" preset, task instances) on the DSB2018
training split is recorded event by event: at each progress report, the ETA the widget shows
(`TrainEvent.eta_s`) against the time the run actually still took. The error is
|ETA - actual| / actual, reported after the first epoch (target: within 25 %) while at least 10 s
were left (a few seconds off near the end is not a wrong ETA). Early stopping ends a run before its
planned epochs, which no ETA can foresee; the run ends by itself either way, and a run that ended
early is noted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from benchmarks._common import Report, bench_main, median, nuclei_split, synthetic_nuclei, training_pairs

#: The Train widget's "Fast (CPU)" preset (napari_unet/widgets/_settings.py: PRESETS).
FAST_CPU = {"depth": 4, "filters": 8, "patch": 256, "batch": 4, "epochs": 8, "steps": 40}
MIN_LEFT_S = 10.0


def _config(quick: bool):
    from napari_unet.core.config import Config

    p = dict(FAST_CPU)
    if quick:
        p.update(epochs=3, steps=8, patch=128)
    return Config().replace(
        model={"depth": p["depth"], "base_filters": p["filters"]},
        data={"task": "instances", "patch_size": p["patch"]},
        train={"epochs": p["epochs"], "steps_per_epoch": p["steps"], "batch_size": p["batch"]},
    ).validate()


def errors_after_first_epoch(samples: Sequence[tuple[float, float, int, int]], end: float) -> list[float]:
    """Relative ETA errors of (elapsed, eta, epoch, step) samples from epoch 2 on, while >= MIN_LEFT_S left."""
    out = []
    for elapsed, eta, epoch, _step in samples:
        left = end - elapsed
        if epoch >= 2 and left >= MIN_LEFT_S:
            out.append(abs(eta - left) / left)
    return out


def run(quick: bool) -> Report:
    """ETA accuracy of a default training run."""
    from napari_unet.core.train import train

    report = Report("eta")
    train_raw, _ = nuclei_split()
    if quick or not train_raw:
        train_raw = [(f"synthetic{i}", *synthetic_nuclei(256, seed=i)) for i in range(4)]
        report.note("synthetic disks (quick run or ../shared/data absent)")
    cfg = _config(quick)
    samples: list[tuple[float, float, int, int]] = []
    ends: list[str] = []
    ended_at: list[float] = []
    t0 = time.monotonic()

    def on_event(event) -> None:
        if event.eta_s is not None and event.kind in ("batch", "epoch"):
            samples.append((time.monotonic() - t0, float(event.eta_s), event.epoch, event.step))
        if event.kind == "end":
            ends.append(f"epoch {event.epoch} of {event.epochs}, {event.status.value}")
            ended_at.append(time.monotonic() - t0)

    result = train(training_pairs(train_raw), cfg, on_event=on_event)
    end = time.monotonic() - t0
    report.add("training run", round(end, 1), "s", note=ends[-1] if ends else "")
    errors = errors_after_first_epoch(samples, end)
    if not errors:
        report.note("the run was too short to judge an ETA after its first epoch")
        return report
    report.add("ETA error after epoch 1, median", round(100 * median(errors), 1), "%", target="<= 25")
    report.add("ETA error after epoch 1, worst", round(100 * max(errors), 1), "%", target="<= 25")
    if ended_at:  # re-prediction and the post-processing search, which the ETA must foresee
        last = samples[-1]
        report.add("after the last epoch: took", round(end - ended_at[-1], 1), "s")
        report.add("after the last epoch: ETA at the last step", round(last[1], 1), "s")
    first = next(s for s in samples if s[2] >= 2)
    report.add("ETA at the start of epoch 2 / time left then", round(first[1] / (end - first[0]), 2), "x")
    if getattr(result, "stopped_early", False) or (ends and not ends[-1].startswith(f"epoch {cfg.train.epochs} ")):
        report.note("early stopping ended the run before its planned epochs; the ETA planned for all of them")
    return report


if __name__ == "__main__":
    raise SystemExit(bench_main("eta", run))
