"""Quality for time: train from scratch on the CPU and score held-out images after 1, 2 and 5 minutes.

One `train()` run per data set: the Stop flag is set at the last time mark. At every mark the
weights that Stop would have returned at that moment (the best complete epoch by validation
loss so far, train()'s own rule) are kept, and scored after training on images never trained
or validated on. The last mark is train()'s actual result. Times are wall-clock from the call of
`train()` (data preparation, model building and per-epoch validation included).

* nuclei: the 40 grayscale DSB2018 images of ../shared/data/nuclei, split by image: every 5th
  (by name) held out (8), the other 32 train (train() keeps some of those for validation). The 9
  RGB stained-tissue images are not used: the model has one input channel.
  Figures: per-image mean foreground Dice and object F1 at IoU 0.5.
* lungs: ../shared/data/xray (16 simulated radiographs of one patient), every 4th view held out.
  Figure: per-image mean Dice.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks import presets
from benchmarks._common import Report, bench_main, nuclei_split, training_pairs, xray_split

MARKS_S = (60, 120, 300)
QUICK_MARKS_S = (20, 30)


@dataclass
class BudgetRun:
    """Scores at each time mark of one training run."""

    marks: list[dict[str, Any]] = field(default_factory=list)  # mark_s, wall_s, epoch, steps, scores
    total_s: float = 0.0
    steps: int = 0
    epochs: int = 0
    status: str = ""


class _Snapshots:
    """Listener for train(): keeps the best-so-far weights and copies them at the time marks."""

    def __init__(self, marks: Sequence[float], stop: threading.Event, monitor: str):
        self.marks, self.stop, self.monitor = list(marks), stop, monitor
        self.t0 = time.monotonic()
        self.model: Any = None
        self.best = float("inf")
        self.best_weights: list | None = None
        self.best_epoch: int | None = None
        self.taken: list[dict[str, Any]] = []
        self.steps = 0
        self.last_epoch = 0

    def wall(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, event: Any) -> None:
        if event.kind == "batch":
            self.steps += 1
        if event.kind == "epoch" and self.model is not None:
            self.last_epoch = event.epoch
            value = event.logs.get(self.monitor, event.logs.get("loss"))
            if value is not None and value < self.best:
                self.best, self.best_epoch = float(value), event.epoch
                self.best_weights = copy.deepcopy(self.model.get_weights())
        if event.kind in ("batch", "epoch"):
            while self.marks and self.wall() >= self.marks[0]:
                mark = self.marks.pop(0)
                self.taken.append(
                    {
                        "mark_s": mark,
                        "wall_s": round(self.wall(), 1),
                        "steps": self.steps,
                        "best_epoch": self.best_epoch,
                        "weights": self.best_weights,
                    }
                )
                if not self.marks:
                    self.stop.set()


def budget_run(cfg: Any, train_raw: list, held_raw: list, marks: Sequence[float]) -> BudgetRun:
    """Train from scratch until the last mark; score held-out images at every mark."""
    from napari_unet.core import train as train_module
    from napari_unet.core.evaluate import evaluate_pairs

    stop = threading.Event()
    listener = _Snapshots(marks, stop, "val_loss")
    original = train_module.build_model

    def spy(config: Any) -> Any:  # lets the listener read the weights of the model train() builds
        listener.model = original(config)
        return listener.model

    train_module.build_model = spy
    try:
        listener.t0 = time.monotonic()
        result = train_module.train(training_pairs(train_raw), cfg, on_event=listener, stop=stop)
    finally:
        train_module.build_model = original
    out = BudgetRun(total_s=round(listener.wall(), 1), steps=listener.steps, epochs=listener.last_epoch)
    out.status = result.status
    held = training_pairs(held_raw)
    final_weights = result.model.get_weights()
    taken = listener.taken
    if len(taken) < len(marks):  # finished (e.g. early stopping) before the last mark
        for mark in marks[len(taken) :]:
            taken.append({"mark_s": mark, "wall_s": out.total_s, "steps": listener.steps, "weights": None})
    for i, snap in enumerate(taken):
        last = i == len(taken) - 1
        weights = final_weights if last or snap["weights"] is None else snap["weights"]
        result.model.set_weights(weights)
        scores = evaluate_pairs(result.model, cfg, held)["mean"]
        out.marks.append({k: v for k, v in snap.items() if k != "weights"} | {"scores": scores})
    result.model.set_weights(final_weights)
    return out


def _label(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _describe(cfg: Any) -> str:
    m, d, t = cfg.model, cfg.data, cfg.train
    return (
        f"task {d.task}, U-Net depth {m.depth}, {m.base_filters} base filters, batch norm {m.batch_norm}, "
        f"{d.patch_size}px patches, batch {t.batch_size}, lr {t.learning_rate:g}, "
        f"{t.steps_per_epoch} steps/epoch, loss {cfg.loss}"
    )


def nuclei_config(quick: bool = False) -> Any:
    return presets.tiny("instances") if quick else presets.fast_cpu("instances")


def lungs_config(quick: bool = False) -> Any:
    return presets.tiny("binary") if quick else presets.fast_cpu("binary")


def run(quick: bool = False) -> Report:
    """Held-out Dice (and object F1 for nuclei) after 1, 2 and 5 minutes of CPU training."""
    report = Report("quality")
    marks = QUICK_MARKS_S if quick else MARKS_S
    nuclei_train, nuclei_held = nuclei_split()
    xray_train, xray_held = xray_split()
    if not nuclei_train and not xray_train:
        report.skipped = "../shared/data not found (set NAPARI_UNET_SHARED_DATA); nothing to train on"
        return report
    sets = []
    if nuclei_train:
        sets.append(("nuclei", nuclei_config(quick), nuclei_train, nuclei_held, 0.85))
    else:
        report.note("nuclei data not found: skipped")
    if xray_train:
        sets.append(("lungs", lungs_config(quick), xray_train, xray_held, 0.90))
    else:
        report.note("xray data not found: skipped")
    for name, cfg, train_raw, held_raw, target in sets:
        if quick:
            train_raw, held_raw = train_raw[:3], held_raw[:1]
        report.note(f"{name}: {len(train_raw)} training images, {len(held_raw)} held out; {_describe(cfg)}")
        result = budget_run(cfg, train_raw, held_raw, marks)
        for i, mark in enumerate(result.marks):
            last = i == len(result.marks) - 1
            when = _label(mark["mark_s"])
            scores = mark["scores"]
            report.add(f"{name}: held-out Dice after {when}", scores["dice"], "", f">= {target}" if last else "")
            if name == "nuclei":
                report.add(f"{name}: held-out object F1@0.5 after {when}", scores["object_f1"])
        report.note(
            f"{name}: {result.steps} training steps in {result.epochs} epochs, {result.total_s:.0f} s wall "
            f"(status {result.status}); marks taken at "
            + ", ".join(f"{m['wall_s']:.0f} s (best epoch {m.get('best_epoch')})" for m in result.marks)
        )
    report.note(
        "one run per data set; the score at each mark uses the weights Stop would have returned then "
        "(best complete epoch by validation loss); the last mark is train()'s returned model"
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("quality", run, argv)


if __name__ == "__main__":
    sys.exit(main())
