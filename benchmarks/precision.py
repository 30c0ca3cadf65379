"""Training speed by precision: float32 against what `train.mixed_precision: "auto"` picks here.

On a CPU with bfloat16 instructions (`model.cpu_has_bfloat16`) "auto" trains in mixed bfloat16;
elsewhere it is float32 and the two arms are the same. Each arm builds the network under its
policy and times `train_on_batch` on random batches after two warm-up steps (tracing); the arms
alternate (ABBA) and the median steps/s is reported, for the "Fast (CPU)" preset network (depth 4,
8 filters) and one with 16 filters, 4 patches of 256 x 256 per step. Also timed: prediction of a
1024 x 1024 image by the float32 copy that is saved (`model.float32_model`) against the mixed one,
and their largest probability difference.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np

from benchmarks._common import Report, bench_main, median


def _network(mixed_precision: str, filters: int = 8, patch: int = 256) -> tuple:
    """(model, cfg) built as training builds it (`model.training_scope`), with `train.mixed_precision`."""
    import keras

    from napari_unet.core.config import Config
    from napari_unet.core.model import build_model, training_scope

    cfg = Config().replace(model={"base_filters": filters}, data={"task": "instances", "patch_size": patch},
                           train={"mixed_precision": mixed_precision})  # fmt: skip
    keras.utils.set_random_seed(0)
    with training_scope(cfg):
        return build_model(cfg), cfg


def _steps_per_s(mixed_precision: str, filters: int, patch: int, steps: int) -> float:
    model, _ = _network(mixed_precision, filters, patch)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((4, patch, patch, 1), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (4, patch, patch))]
    for _ in range(2):
        model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps / (time.perf_counter() - t0)


def _predict_check(report: Report, mixed: str, size: int) -> None:
    from napari_unet.core.model import float32_model
    from napari_unet.core.predict import predict_probabilities

    model, cfg = _network("auto")
    saved = float32_model(model, cfg)
    image = np.random.default_rng(1).random((size, size, 1), dtype=np.float32)
    times = {}
    for name, net in (("mixed", model), ("saved float32", saved)):
        predict_probabilities(net, image, cfg)  # warm-up
        t0 = time.perf_counter()
        probs = predict_probabilities(net, image, cfg)
        times[name] = (time.perf_counter() - t0, probs)
    report.add(f"predict {size}x{size}, {mixed} network", times["mixed"][0], "s")
    report.add(f"predict {size}x{size}, its saved float32 copy", times["saved float32"][0], "s")
    report.add("max |p_mixed - p_float32|", float(np.abs(times["mixed"][1] - times["saved float32"][1]).max()))


def run(quick: bool) -> Report:
    """Training steps/s, float32 against the policy "auto" picks on this machine."""
    from napari_unet.core.model import cpu_has_bfloat16

    report = Report("precision")
    auto = "mixed_bfloat16" if cpu_has_bfloat16() else "float32"
    report.note(f"CPU bfloat16 instructions: {cpu_has_bfloat16()}; train.mixed_precision 'auto' here: {auto}")
    patch, steps, rounds = (64, 3, 1) if quick else (256, 10, 2)
    for filters in (8,) if quick else (8, 16):
        rates: dict[str, list[float]] = {"float32": [], auto: []}
        for policy in ["float32", auto, auto, "float32"] * rounds:
            rates[policy].append(_steps_per_s("off" if policy == "float32" else "auto", filters, patch, steps))
        f32, fast = median(rates["float32"]), median(rates[auto])
        report.add(f"{filters} filters, float32", f32, "steps/s", note=f"4 x {patch}^2 per step")
        report.add(f"{filters} filters, {auto}", fast, "steps/s")
        report.add(f"{filters} filters, speed-up {auto} / float32", fast / f32, "x")
    if auto != "float32":
        _predict_check(report, auto, 256 if quick else 1024)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("precision", run, argv)


if __name__ == "__main__":
    sys.exit(main())
