"""Human in the loop, simulated across domains: a fluorescence model meets stained tissue.

A model is trained with napari-unet's defaults (task instances, a time budget) on the training
share of the 40 gray fluorescence DSB2018 images. Then, round after round, a "user" corrects one
image of a new domain, the 9 RGB stained-tissue images (its ground truth stands for the
corrected labels), and `finetune()` writes a new version from the previous one, as the widget
and the CLI call it (defaults: `train.finetune_epochs`, `train.finetune_time_limit_s`, replay
of the data the model saw, no explicit validation pairs).

After every round both domains are scored on images that neither training saw:
* new domain: the stained images that no round corrects (the same set in every round);
* original domain: the gray images held out by the fixed rule (every 4th by sorted name).
Figures: per-image mean foreground Dice and object F1@0.5, seconds per round (fine-tune + save).
Targets: round 1 raises the new domain's Dice and F1; the original domain's Dice and F1 drop by at
most 0.02 against round 0; a round takes at most 60 s.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from benchmarks._common import Report, bench_main, read_pairs, training_pairs

ROUNDS = 3
BASE_S = 180.0  # wall-clock budget of the first training (fluorescence only)


def domains() -> tuple[list, list, list]:
    """(original training, original held out, stained) raw pairs, sorted by name."""
    pairs = read_pairs("nuclei", "labels")
    gray = [p for p in pairs if p[1].ndim == 2]
    stained = [p for p in pairs if p[1].ndim == 3]
    return [p for i, p in enumerate(gray) if i % 4 != 3], [p for i, p in enumerate(gray) if i % 4 == 3], stained


def _scores(model: Any, cfg: Any, raw: list) -> dict[str, float]:
    from napari_unet.core.channels import to_channels
    from napari_unet.core.data import TrainingPair
    from napari_unet.core.evaluate import evaluate_pairs

    pairs = [TrainingPair(to_channels(im, cfg.data.in_channels, im.ndim == 3), lab, n) for n, im, lab in raw]
    mean = evaluate_pairs(model, cfg, pairs)["mean"]
    return {"dice": mean["dice"], "object_f1": mean["object_f1"]}


def run(quick: bool = False) -> Report:
    """Rounds of correct-one-stained-image + fine-tune; held-out Dice and F1 in both domains per round."""
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.config import Config
    from napari_unet.core.train import finetune, train

    report = Report("hitl")
    orig_train, orig_held, stained = domains()
    if not orig_train or len(stained) < 2:
        report.skipped = "../shared/data/nuclei not found (set NAPARI_UNET_SHARED_DATA)"
        return report
    rounds = 1 if quick else ROUNDS
    corrections, new_held = stained[:rounds], stained[rounds:]
    cfg = Config().replace(data={"task": "instances", "in_channels": 1}, train={"time_limit_s": BASE_S})
    if quick:
        orig_train, orig_held, new_held = orig_train[:4], orig_held[:2], new_held[:2]
        cfg = cfg.replace(
            model={"depth": 2}, data={"patch_size": 64}, predict={"tile_size": 256, "overlap": 32},
            train={"time_limit_s": 20.0, "finetune_epochs": 1, "steps_per_epoch": 10},
        )  # fmt: skip
    report.note(
        f"first training: {len(orig_train)} gray fluorescence images, {cfg.train.time_limit_s:.0f} s budget, defaults; "
        f"corrected per round: {', '.join(n for n, _, _ in corrections)}; held out: {len(orig_held)} gray "
        f"(every 4th by name), {len(new_held)} stained never corrected"
    )
    history: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="napari-unet-hitl-") as root:
        t0 = time.monotonic()
        first = train(training_pairs(orig_train), cfg)
        first.save(root, "hitl")
        report.add("first training (fluorescence only), seconds", time.monotonic() - t0, "s")
        bundle = load_bundle(f"{root}/hitl")
        for r in range(rounds + 1):
            row = {"new": _scores(bundle, bundle.config, new_held), "orig": _scores(bundle, bundle.config, orig_held)}
            history.append(row)
            print(f"  round {r}: new domain {row['new']}, original {row['orig']}", flush=True)
            if r == rounds:
                break
            t1 = time.monotonic()
            result = finetune(bundle, training_pairs(corrections[r : r + 1]))
            result.save(root, "hitl")
            row["seconds"] = time.monotonic() - t1
            row["epochs"] = len(result.history.get("loss", []))
            bundle = load_bundle(f"{root}/hitl")
    for r, row in enumerate(history):
        for domain, label in (("new", "new domain (stained)"), ("orig", "original domain (fluorescence)")):
            report.add(f"round {r}: held-out Dice, {label}", row[domain]["dice"])
            report.add(f"round {r}: held-out object F1@0.5, {label}", row[domain]["object_f1"])
        if "seconds" in row:
            report.add(f"round {r + 1}: seconds (fine-tune + save)", row["seconds"], "s", "<= 60",
                       note=f"{row['epochs']} epochs")  # fmt: skip
    base, after = history[0], history[1]
    for key in ("dice", "object_f1"):
        report.add(f"round 1 gain on the new domain, {key}", after["new"][key] - base["new"][key], "", "> 0")
        drop = base["orig"][key] - min(h["orig"][key] for h in history[1:])
        report.add(f"largest drop on the original domain vs round 0, {key}", drop, "", "<= 0.02")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("hitl", run, argv)


if __name__ == "__main__":
    sys.exit(main())
