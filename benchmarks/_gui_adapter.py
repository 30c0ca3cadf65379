"""Runs the widget engineer's `benchmarks/gui_responsiveness.py` under the suite's protocol.

That script exposes `measure(epochs, steps) -> dict` and prints prose; this adapter turns its
figures into report rows (`--json`, `--quick`), so the runner can tabulate and record them.
It needs a display: the runner starts it under `xvfb-run` when DISPLAY is unset.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmarks._common import Report, bench_main


def run(quick: bool = False) -> Report:
    """Worst napari event-loop stall while the Train widget trains (target < 100 ms)."""
    from benchmarks import gui_responsiveness as gui

    report = Report("gui_responsiveness")
    epochs, steps = (1, 10) if quick else (2, 40)
    result = gui.measure(epochs, steps)
    train, start, finish = result["training"], result["starting"], result["finishing"]
    report.add("worst event-loop stall while training", train["worst_ms"], "ms", "< 100 ms")
    report.add("99th percentile stall while training", train["p99_ms"], "ms")
    report.add("stalls over 100 ms while training", train["over_100ms"], "")
    report.add("start-up phase (TensorFlow import, model build)", start["seconds"], "s")
    report.add("worst stall during start-up", start["worst_ms"], "ms")
    report.add("worst stall while evaluating and saving", finish["worst_ms"], "ms")
    report.add("training run, Train pressed to done", result["run_s"], "s")
    report.note(
        f"Train widget, widget's own Fast (CPU) preset shortened to {epochs} epochs x {steps} steps, nuclei "
        f"sample, preview on; a 10 ms Qt timer on the GUI thread; {result['ticks']} ticks; status {result['status']}"
    )
    report.note(
        "largest stalls: " + ", ".join(f"{ms:.0f} ms at {at:.1f} s ({status})" for ms, at, status in result["worst"])
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("gui_responsiveness", run, argv)


if __name__ == "__main__":
    sys.exit(main())
