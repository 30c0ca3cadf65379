"""The GUI thread keeps ticking while a model trains in the background (benchmarks/gui_responsiveness.py
measures the same with the Fast (CPU) preset and reports the worst stall)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

#: Loose bound for a shared 2-core test machine; the target in the benchmark is 100 ms.
MAX_STALL_MS = 300


@pytest.mark.gui
def test_gui_timer_is_never_late_while_training(sample_viewer, qtbot, dock, make_tiny):
    from qtpy.QtCore import QTimer

    widget = dock(sample_viewer, "Train")
    make_tiny(widget, epochs=3, steps=10)
    ticks: list[tuple[float, str]] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append((time.perf_counter(), widget.status)))
    timer.start()
    assert widget.start_training()
    qtbot.waitUntil(lambda: not widget.running, timeout=180_000)
    timer.stop()
    # ticks while epochs run (start-up and the final evaluation/saving are reported by the benchmark)
    training = [(t1 - t0) * 1000 - 10 for (t0, _), (t1, s1) in zip(ticks, ticks[1:]) if s1 == "running"]
    assert len(training) > 50, "the run was too short to measure"
    worst = max(training)
    assert worst < MAX_STALL_MS, f"GUI thread stalled {worst:.0f} ms while training"


def test_widget_modules_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "import napari_unet.widgets, napari_unet.widgets.train_widget, napari_unet.widgets.predict_widget\n"
        "import napari_unet.widgets.finetune_widget, napari_unet.widgets.models_registry\n"
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
