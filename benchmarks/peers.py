"""Peers, measured in the same run on the same data and budget: held-out quality after 1, 2 and 5 minutes.

Systems (each trains in its own process, one after the other, from scratch, on the CPU):

* ``napari_unet``: napari-unet with the defaults the CLI gives (`Config()` defaults, the task that
  `suggest_task` reads from the labels, the channel count `choose_channels` picks, and
  ``--time``), i.e. `train(pairs, cfg)` with ``train.time_limit_s`` = the budget. At 1 and 2
  minutes the model Stop would have returned then is scored: the model `on_best` last reported,
  with post-processing tuned on the same validation images train() uses, as train() does after Stop.
* ``seed_unet``: the seed tutorial's U-Net (DSB2018 Keras kernel): every image resized to 128 x 128
  (3 channels, /255), U-Net 16-256 filters with dropout and transposed convolutions, sigmoid + binary
  cross-entropy, Adam, batch 16, ``model.fit(x, y, validation_split=0.1)``, best epoch by val_loss
  (its ModelCheckpoint). Predictions are resized back, thresholded at 0.5; objects are connected
  components.
* ``stardist``: StarDist 2D from scratch with the `stardist` package and the defaults of its 2D
  example (`Config2D(n_rays=32, grid=(2, 2))`, flips/rotations + intensity augmentation,
  percentile normalisation 1-99.8, 15 % validation), thresholds tuned with `optimize_thresholds` on
  its validation images at every mark. Adaptations: colour images become gray (luminance), and
  images smaller than its 256 px training patch are padded (reflection; labels 0); TensorBoard off.
  Nuclei only (lung fields are not its use case).

Data (held out by a fixed rule on the sorted file names, never trained, validated or tuned on):
nuclei: all 49 DSB2018 images of ../shared/data/nuclei (40 gray, 9 RGB), every 4th held out (12);
lungs: the 48 real radiographs of ../shared/data/xray_real, every 4th held out (12).
Figures: per-image mean foreground Dice and object F1 at IoU 0.5 (nuclei), Dice (lungs).
Overlays of one held-out image per system go to docs/images/peers_<data>_<system>.png.
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

from benchmarks._common import REPO, SHARED_DATA, Report, bench_main, read_pairs

MARKS_S = (60, 120, 300)
QUICK_MARKS_S = (15, 30)
SYSTEMS = {"nuclei": ("napari_unet", "seed_unet", "stardist"), "lungs": ("napari_unet", "seed_unet")}
OVERLAY = {"nuclei": 1, "lungs": 0}  # index into the held-out list
IMAGES = REPO / "docs" / "images"


# ------------------------------------------------------------------ data and scores


def split(data: str) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(train, held out): every 4th image by sorted name is held out."""
    pairs = read_pairs("nuclei", "labels") if data == "nuclei" else read_pairs("xray_real", "masks")
    return [p for i, p in enumerate(pairs) if i % 4 != 3], [p for i, p in enumerate(pairs) if i % 4 == 3]


def score(pred: np.ndarray, gt: np.ndarray, instances: bool) -> dict[str, float]:
    from skimage.measure import label

    from napari_unet.core.scores import dice_score, object_f1

    out = {"dice": float(dice_score(pred > 0, gt > 0))}
    if instances:
        objects = pred if pred.max() > 1 else label(pred > 0)
        out["object_f1"] = float(object_f1(objects, gt, 0.5))
    return out


def mean_scores(preds: Sequence[np.ndarray], held: Sequence[tuple[str, Any, Any]], instances: bool) -> dict[str, Any]:
    """Per-image mean scores; `images` holds each held-out image's own."""
    rows = [score(p, gt, instances) for p, (_, _, gt) in zip(preds, held)]
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["images"] = {name: r for (name, _, _), r in zip(held, rows)}
    return out


def gray(image: np.ndarray) -> np.ndarray:
    from napari_unet.core.channels import to_channels

    return to_channels(image, 1, rgb=image.ndim == 3).astype(np.float32)


def overlay(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, path: Path, title: str) -> None:
    """Image with ground-truth outlines (green) and predicted outlines (magenta)."""
    import imageio.v3 as iio
    from skimage.measure import label
    from skimage.segmentation import find_boundaries

    g = gray(image)
    lo, hi = np.percentile(g, (1, 99.8))
    base = np.clip((g - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat((base * 255).astype(np.uint8)[..., None], 3, axis=-1)
    objects = pred if pred.max() > 1 else label(pred > 0)
    truth = gt if gt.max() > 1 else label(gt > 0)
    rgb[find_boundaries(truth, mode="inner")] = (0, 220, 0)
    rgb[find_boundaries(objects, mode="inner")] = (255, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, rgb)
    print(f"  overlay: {path.relative_to(REPO)} ({title})", flush=True)


# ------------------------------------------------------------------ systems (run in a child process)


class _Clock:
    def __init__(self, marks: Sequence[float]):
        self.t0 = time.monotonic()
        self.marks = list(marks)

    def wall(self) -> float:
        return time.monotonic() - self.t0


def run_napari_unet(data: str, marks: Sequence[float], quick: bool) -> dict[str, Any]:
    from napari_unet.core import train as train_module
    from napari_unet.core.channels import choose_channels, to_channels
    from napari_unet.core.config import Config
    from napari_unet.core.data import TrainingPair
    from napari_unet.core.predict import predict_image, predict_probabilities
    from napari_unet.core.suggest import suggest_task

    train_raw, held = split(data)
    if quick:
        train_raw, held = train_raw[:6], held[:2]
    channels = choose_channels([1 if im.ndim == 2 else im.shape[-1] for _, im, _ in train_raw])
    task = suggest_task(train_raw[0][2])
    pairs = [TrainingPair(im, lab, name) for name, im, lab in train_raw]
    cfg = Config().replace(data={"task": task, "in_channels": channels}, train={"time_limit_s": float(marks[-1])})
    if quick:
        cfg = cfg.replace(model={"depth": 2}, data={"patch_size": 64}, predict={"tile_size": 256, "overlap": 32})
    clock = _Clock(marks[:-1])
    latest: dict[str, Any] = {}
    snaps: list[dict[str, Any]] = []

    def on_best(result: Any) -> None:
        latest.update(weights=[w.copy() for w in result.model.get_weights()], config=result.config, epoch=result.best_epoch)

    def on_event(event: Any) -> None:
        while clock.marks and clock.wall() >= clock.marks[0]:
            snaps.append({"mark_s": clock.marks.pop(0), "wall_s": clock.wall(), **latest})

    clock.t0 = time.monotonic()
    result = train_module.train(pairs, cfg, on_event=on_event, on_best=on_best)
    total = clock.wall()
    final_weights = result.model.get_weights()
    held_pairs = [TrainingPair(to_channels(im, channels, im.ndim == 3), lab, n) for n, im, lab in held]
    data_for_tuning = train_module._training_data(pairs, None, result.config)
    out = {"system": "napari_unet", "config": result.config.to_dict(), "marks": [], "total_s": total}
    for snap in snaps + [{"mark_s": marks[-1], "wall_s": total, "final": True}]:
        if snap.get("final"):
            result.model.set_weights(final_weights)
            mark_cfg = result.config
        elif "weights" not in snap:
            out["marks"].append({"mark_s": snap["mark_s"], "wall_s": snap["wall_s"], "scores": None})
            continue
        else:
            result.model.set_weights(snap["weights"])
            probs = [predict_probabilities(result.model, image, snap["config"]) for image in data_for_tuning.val_images]
            mark_cfg = train_module._tuned(probs, snap["config"], data_for_tuning)
        preds = [predict_image(result.model, p.image, mark_cfg).labels for p in held_pairs]
        out["marks"].append(
            {"mark_s": snap["mark_s"], "wall_s": round(snap["wall_s"], 1), "epoch": snap.get("epoch", result.best_epoch),
             "scores": mean_scores(preds, held, data == "nuclei"),
             "predict": {k: v for k, v in mark_cfg.to_dict()["predict"].items() if k not in ("tile_size", "overlap", "batch_size")}}
        )
        last_preds = preds
    out["epochs"] = len(result.history.get("loss", []))
    out["status"] = result.status
    i = OVERLAY[data] % len(held)
    out["overlay"] = (held[i][1], held[i][2], last_preds[i])
    return out


def _seed_model(size: int = 128) -> Any:
    """The U-Net of the DSB2018 Keras tutorial (16..256 filters, dropout 0.1-0.3, transposed convs)."""
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    skips = []
    for filters, drop in ((16, 0.1), (32, 0.1), (64, 0.2), (128, 0.2)):
        x = layers.Conv2D(filters, 3, activation="elu", kernel_initializer="he_normal", padding="same")(x)
        x = layers.Dropout(drop)(x)
        x = layers.Conv2D(filters, 3, activation="elu", kernel_initializer="he_normal", padding="same")(x)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(256, 3, activation="elu", kernel_initializer="he_normal", padding="same")(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Conv2D(256, 3, activation="elu", kernel_initializer="he_normal", padding="same")(x)
    for filters, drop, skip in zip((128, 64, 32, 16), (0.2, 0.2, 0.1, 0.1), reversed(skips)):
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same")(x)
        x = layers.concatenate([x, skip])
        x = layers.Conv2D(filters, 3, activation="elu", kernel_initializer="he_normal", padding="same")(x)
        x = layers.Dropout(drop)(x)
        x = layers.Conv2D(filters, 3, activation="elu", kernel_initializer="he_normal", padding="same")(x)
    outputs = layers.Conv2D(1, 1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


def _to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    from napari_unet.core.channels import to_channels

    im = to_channels(image, 3, rgb=image.ndim == 3)
    return np.clip(im, 0, 255).astype(np.float32)


class _MarkCallback:
    """Keras callback factory: copies the kept weights at the marks, stops at the last mark."""

    @staticmethod
    def make(clock: _Clock, budget: float, kept: dict[str, Any]) -> Any:
        import keras

        class MarkCallback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                while clock.marks and clock.wall() >= clock.marks[0]:
                    kept.setdefault("snaps", []).append(
                        {"mark_s": clock.marks.pop(0), "wall_s": clock.wall(), "weights": kept.get("best"),
                         "current": [w.copy() for w in self.model.get_weights()]}
                    )
                if clock.wall() >= budget:
                    self.model.stop_training = True

            def on_epoch_end(self, epoch, logs=None):
                value = (logs or {}).get("val_loss")
                if value is not None and value < kept.get("best_value", np.inf):
                    kept["best_value"] = float(value)
                    kept["best"] = [w.copy() for w in self.model.get_weights()]
                    kept["best_epoch"] = epoch + 1

        return MarkCallback()


def run_seed_unet(data: str, marks: Sequence[float], quick: bool) -> dict[str, Any]:
    from skimage.transform import resize

    train_raw, held = split(data)
    if quick:
        train_raw, held = train_raw[:6], held[:2]
    clock = _Clock(marks[:-1])
    x = np.stack([resize(_to_uint8_rgb(im), (128, 128, 3), mode="constant", preserve_range=True) for _, im, _ in train_raw])
    y = np.stack([resize(lab > 0, (128, 128), mode="constant", preserve_range=True) > 0.5 for _, _, lab in train_raw])
    y = y[..., None].astype(np.float32)
    model = _seed_model()
    kept: dict[str, Any] = {}
    callback = _MarkCallback.make(clock, marks[-1], kept)
    clock.t0 = time.monotonic()
    model.fit(x, y, validation_split=0.1, batch_size=16, epochs=100000, callbacks=[callback], verbose=0)
    total = clock.wall()
    snaps = kept.get("snaps", []) + [{"mark_s": marks[-1], "wall_s": total, "weights": kept.get("best"),
                                      "current": model.get_weights()}]
    out = {"system": "seed_unet", "marks": [], "total_s": total, "best_epoch": kept.get("best_epoch")}
    for snap in snaps:
        model.set_weights(snap["weights"] if snap["weights"] is not None else snap["current"])
        preds = []
        for _, im, _ in held:
            small = resize(_to_uint8_rgb(im), (128, 128, 3), mode="constant", preserve_range=True)
            p = model.predict(small[None], verbose=0)[0, ..., 0]
            preds.append((resize(p, im.shape[:2], mode="constant", preserve_range=True) > 0.5).astype(np.int32))
        out["marks"].append({"mark_s": snap["mark_s"], "wall_s": round(snap["wall_s"], 1),
                             "scores": mean_scores(preds, held, data == "nuclei")})
    i = OVERLAY[data] % len(held)
    out["overlay"] = (held[i][1], held[i][2], preds[i])
    return out


def run_stardist(data: str, marks: Sequence[float], quick: bool) -> dict[str, Any]:
    from csbdeep.utils import normalize
    from stardist.models import Config2D, StarDist2D

    train_raw, held = split(data)
    if quick:
        train_raw, held = train_raw[:6], held[:2]
    patch = 256

    def pad(a: np.ndarray, image: bool) -> np.ndarray:
        ph, pw = max(0, patch - a.shape[0]), max(0, patch - a.shape[1])
        return np.pad(a, ((0, ph), (0, pw)), mode="reflect" if image else "constant")

    xs = [pad(normalize(gray(im), 1, 99.8, axis=(0, 1)), True) for _, im, _ in train_raw]
    ys = [pad(lab.astype(np.int32), False) for _, _, lab in train_raw]
    rng = np.random.default_rng(42)  # the example's 15 % validation split
    idx = rng.permutation(len(xs))
    n_val = max(1, int(round(0.15 * len(xs))))
    val, trn = idx[:n_val], idx[n_val:]
    x_trn, y_trn = [xs[i] for i in trn], [ys[i] for i in trn]
    x_val, y_val = [xs[i] for i in val], [ys[i] for i in val]

    def augmenter(x, y):  # the 2D example's: random flips/rotations, intensity scale and shift
        k = rng.integers(4)
        x, y = np.rot90(x, k), np.rot90(y, k)
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        x = x * rng.uniform(0.6, 2) + rng.uniform(-0.2, 0.2)
        return x, y

    conf = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_tensorboard=False)
    if quick:
        conf = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_tensorboard=False, train_steps_per_epoch=5)
    basedir = tempfile.mkdtemp(prefix="stardist-peer-")
    model = StarDist2D(conf, name="peer", basedir=basedir)
    clock = _Clock(marks[:-1])
    kept: dict[str, Any] = {}
    model.prepare_for_training()
    model.callbacks.append(_MarkCallback.make(clock, marks[-1], kept))
    clock.t0 = time.monotonic()
    model.train(x_trn, y_trn, validation_data=(x_val, y_val), augmenter=augmenter, epochs=100000)
    total = clock.wall()
    final = model.keras_model.get_weights()  # StarDist reloads its best (val_loss) checkpoint at the end
    snaps = kept.get("snaps", []) + [{"mark_s": marks[-1], "wall_s": total, "weights": final, "current": final}]
    out = {"system": "stardist", "marks": [], "total_s": total}
    for snap in snaps:
        model.keras_model.set_weights(snap["weights"] if snap["weights"] is not None else snap["current"])
        model.optimize_thresholds(x_val, y_val)
        preds = [model.predict_instances(normalize(gray(im), 1, 99.8, axis=(0, 1)))[0] for _, im, _ in held]
        out["marks"].append({"mark_s": snap["mark_s"], "wall_s": round(snap["wall_s"], 1),
                             "scores": mean_scores(preds, held, True), "thresholds": dict(model.thresholds._asdict())})
    i = OVERLAY[data] % len(held)
    out["overlay"] = (held[i][1], held[i][2], preds[i])
    return out


RUNNERS = {"napari_unet": run_napari_unet, "seed_unet": run_seed_unet, "stardist": run_stardist}


def child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--marks", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    marks = [float(m) for m in args.marks.split(",")]
    out = RUNNERS[args.system](args.data, marks, args.quick)
    image, gt, pred = out.pop("overlay")
    if not args.quick:
        overlay(image, gt, pred, IMAGES / f"peers_{args.data}_{args.system}.png", args.system)
    out["load_1min"] = os.getloadavg()[0]
    args.out.write_text(json.dumps(out, indent=1, default=float))
    return 0


# ------------------------------------------------------------------ the benchmark (parent process)


def _label(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def run(quick: bool = False) -> Report:
    """Held-out Dice and object F1 of napari-unet, the seed tutorial U-Net and StarDist at 1, 2 and 5 min."""
    report = Report("peers")
    marks = QUICK_MARKS_S if quick else MARKS_S
    if not (SHARED_DATA / "nuclei" / "images").is_dir():
        report.skipped = "../shared/data not found (set NAPARI_UNET_SHARED_DATA)"
        return report
    results: dict[str, dict[str, Any]] = {}
    for data, systems in SYSTEMS.items():
        if data == "lungs" and not (SHARED_DATA / "xray_real" / "images").is_dir():
            report.note("xray_real not found: lungs skipped")
            continue
        for system in systems:
            if quick and system == "stardist" and os.environ.get("NAPARI_UNET_QUICK_STARDIST") != "1":
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "out.json"
                cmd = [sys.executable, "-m", "benchmarks.peers", "--child", "--system", system, "--data", data,
                       "--marks", ",".join(str(m) for m in marks), "--out", str(out)] + (["--quick"] if quick else [])
                load_before = os.getloadavg()[0]
                t0 = time.monotonic()
                proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
                if proc.returncode != 0 or not out.is_file():
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                    report.note(f"{data}/{system}: failed ({proc.returncode}): " + " | ".join(tail))
                    continue
                res = json.loads(out.read_text())
                res["load"] = (load_before, res.get("load_1min"))
                res["seconds"] = time.monotonic() - t0
                results[f"{data}/{system}"] = res
            for mark in res["marks"]:
                s = mark["scores"] or {}
                when = _label(mark["mark_s"])
                report.add(f"{data} {system}: held-out Dice after {when}", s.get("dice"))
                if data == "nuclei":
                    report.add(f"{data} {system}: held-out object F1@0.5 after {when}", s.get("object_f1"))
            report.note(
                f"{data}/{system}: trained {res['total_s']:.0f} s; load avg before/after {res['load'][0]:.1f}/"
                f"{res['load'][1]:.1f}; marks at " + ", ".join(f"{m['wall_s']:.0f} s" for m in res["marks"])
            )
    report.results = results  # type: ignore[attr-defined]
    if not quick and results:
        write_docs(results, marks)
    return report


def table(results: dict[str, dict[str, Any]], marks: Sequence[float]) -> str:
    names = {"napari_unet": "napari-unet, defaults", "seed_unet": "seed tutorial U-Net", "stardist": "StarDist 2D"}
    lines = []
    head = " | ".join(f"{_label(m)}" for m in marks)
    lines.append("| data | system | " + " | ".join(f"Dice {_label(m)}" for m in marks) + " | "
                 + " | ".join(f"F1 {_label(m)}" for m in marks) + " | load |")
    lines.append("|" + "---|" * (3 + 2 * len(marks)))
    for key, res in results.items():
        data, system = key.split("/")
        by_mark = {m["mark_s"]: m["scores"] or {} for m in res["marks"]}
        dice = [by_mark.get(float(m), {}).get("dice") for m in marks]
        f1 = [by_mark.get(float(m), {}).get("object_f1") for m in marks]
        fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {data} | {names[system]} | " + " | ".join(fmt(v) for v in dice) + " | "
                     + " | ".join(fmt(v) for v in f1) + f" | {res['load'][0]:.1f}-{res['load'][1]:.1f} |")
    del head
    return "\n".join(lines)


BEGIN = "<!-- BEGIN PEERS: written by benchmarks/peers.py -->"
END = "<!-- END PEERS -->"


def write_docs(results: dict[str, dict[str, Any]], marks: Sequence[float]) -> None:
    from benchmarks._common import machine_info

    docs = REPO / "docs" / "benchmarks.md"
    text = docs.read_text() if docs.is_file() else "# Benchmarks\n"
    info = machine_info()
    images = "\n".join(
        f"![{key}](images/peers_{key.replace('/', '_')}.png)" for key in results
    )
    body = (
        f"{BEGIN}\n_Measured {info.get('date', '')} on {info.get('cpu', '')}, {info.get('cores', '')} cores; "
        "load = 1-minute load average before/after each system's run (other work on the machine)._\n\n"
        + table(results, marks)
        + "\n\nOverlays (green: ground truth, magenta: prediction; held-out image):\n\n"
        + images + f"\n{END}"
    )
    if BEGIN in text and END in text:
        start, stop = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + body + text[stop:]
    else:
        text = text.rstrip() + "\n\n## Peers: napari-unet vs the seed U-Net and StarDist\n\n" + body + "\n"
    docs.write_text(text)
    (REPO / "benchmarks" / "peers_results.json").write_text(json.dumps(results, indent=1, default=float))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" in argv:
        argv.remove("--child")
        return child_main(argv)
    return bench_main("peers", run, argv)


if __name__ == "__main__":
    sys.exit(main())
