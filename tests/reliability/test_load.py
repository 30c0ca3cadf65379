"""Load: a large lazy image predicts in bounded memory, training on 50 pairs at once stays bounded,
and 20 train/stop cycles leak neither threads nor memory.

Each measurement runs in its own process (`python -m benchmarks.load --child ...`); its peak
resident memory is Linux VmHWM, reset right before the measured call (`ru_maxrss` survives `exec`,
so a child of a large pytest process would report its parent's peak). `python -m benchmarks.load`
runs the full sizes (20000 x 20000, 50 pairs of 512 x 512) and prints the figures.
"""

from __future__ import annotations

from reliability_helpers import CYCLES, load_child_result, start_load_child

MIB = 1024**2


def test_large_lazy_image_predicts_in_bounded_memory():
    """Lazy dask images of 2048 and 8192 pixels a side (16 x the area): memory must not follow the area.

    Predicting chunk by chunk needs a few chunks at a time, whatever the image size; the extra
    memory of the 8192 image over the 2048 one measures what the pipeline keeps per pixel.
    """
    procs = {size: start_load_child("predict", "--size", str(size), "--tile", "256") for size in (2048, 8192)}
    small, large = (load_child_result(procs[size], timeout=300) for size in (2048, 8192))
    grown = {f["size"]: f["peak_rss"] - f["baseline_rss"] for f in (small, large)}
    image_and_result = 2 * large["image_float32_bytes"]  # float32 input + float32 probabilities
    print(f"peak RSS above the warmed-up baseline: 2048x2048 {grown[2048] / MIB:.0f} MiB, "
          f"8192x8192 {grown[8192] / MIB:.0f} MiB ({large['seconds']:.1f} s; the image and its result "
          f"take {image_and_result / MIB:.0f} MiB as float32)")  # fmt: skip
    assert large["chunks"][0] >= 10, "computed chunk by chunk"
    assert 0.0 < large["foreground_fraction"] < 1.0  # real probabilities came out
    assert grown[8192] < 0.25 * image_and_result
    # 63 more megapixels may cost a few more chunks in flight (dask's rechunk), not memory per pixel.
    assert grown[8192] - grown[2048] < 48 * MIB, (
        f"memory grows with the image: +{(grown[8192] - grown[2048]) / MIB:.0f} MiB for 16 x the area"
    )


def test_training_on_50_pairs_at_once_in_bounded_memory():
    figures = load_child_result(start_load_child("train", "--pairs", "50", "--size", "256"), timeout=300)
    grown = figures["peak_rss"] - figures["baseline_rss"]
    print(f"50 pairs of 256x256: {figures['seconds']:.1f} s, peak RSS {figures['peak_rss'] / MIB:.0f} MiB, "
          f"{grown / MIB:.0f} MiB above baseline ({figures['float32_bytes'] / MIB:.0f} MiB of float32 images)")  # fmt: skip
    assert figures["status"] == "done" and figures["loss_finite"]
    # TensorFlow's traced graphs take ~150 MiB; the data may be held a few times (normalised copy,
    # padded patches, validation patches), never per step or per augmentation.
    assert grown < 300 * MIB + 4 * figures["float32_bytes"]


def test_twenty_train_stop_cycles_leak_no_threads_and_no_memory(load_children):
    """Started at session start (conftest) so it overlaps other tests; here we collect its figures."""
    proc = load_children.get("cycles") or start_load_child("cycles", "--cycles", str(CYCLES))
    figures = load_child_result(proc, timeout=600)
    rss = [r / MIB for r in figures["rss"]]
    print(f"{CYCLES} cycles in {figures['seconds']:.0f} s; RSS after each: {[round(r) for r in rss]} MiB")
    assert figures["statuses"] == ["stopped"] and len(rss) == CYCLES
    assert figures["new_threads"] == [] and set(figures["threads"]) == {figures["threads_before"]}
    # Before the fix in core/train.py every run kept its traced graph: +26 MiB per cycle here.
    growth_per_cycle = (rss[19] - rss[4]) / 15
    assert growth_per_cycle < 2.0, f"RSS grows {growth_per_cycle:.1f} MiB per train/stop cycle"
