"""Command line: `napari-unet train | predict | finetune | evaluate` on image and label files."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .errors import InputError, NapariUNetError
from .io import list_images, pair_files, read_image, write_labels
from .paths import child_location


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NapariUNetError as exc:
        print(f"napari-unet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-unet", description="Train and apply U-Nets without a GUI.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a new model on image/label files")
    _data_args(p)
    p.add_argument("--name", required=True, help="model name (a folder under --models)")
    p.add_argument("--models", type=Path, default=None, help="models folder (default: ~/.napari-unet/models)")
    p.add_argument("--config", type=Path, help="JSON file with config sections (model, data, train, predict)")
    p.add_argument("--task", choices=("binary", "classes", "instances"))
    p.add_argument("--classes", type=int, help="number of classes for --task classes")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="steps per epoch")
    p.add_argument("--batch", type=int)
    p.add_argument("--patch", type=int, help="patch size in pixels")
    p.add_argument("--depth", type=int)
    p.add_argument("--filters", type=int, help="base filters")
    p.add_argument("--loss", choices=("auto", "bce", "dice", "bce_dice", "cce", "focal", "cce_dice"))
    p.add_argument("--lr", type=float, help="learning rate")
    p.set_defaults(func=_train)

    p = sub.add_parser("finetune", help="fine-tune a model on new or corrected pairs; writes a new version")
    _data_args(p)
    p.add_argument("--model", type=Path, required=True, help="model folder (latest version) or version folder")
    p.add_argument("--epochs", type=int)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("predict", help="predict label images")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--images", nargs="+", required=True, help="image files or folders")
    p.add_argument("--out", type=Path, required=True, help="output folder for label TIFFs (same names)")
    p.add_argument("--threshold", type=float)
    p.add_argument("--min-size", type=int)
    p.add_argument("--probabilities", action="store_true", help="also write <name>_prob.tif")
    p.set_defaults(func=_predict)

    p = sub.add_parser("evaluate", help="score a model against label files")
    _data_args(p)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.set_defaults(func=_evaluate)
    return parser


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", nargs="+", required=True, help="image files or folders")
    p.add_argument("--labels", nargs="+", required=True, help="label files or folders (same file names)")


def _load_pairs(args: argparse.Namespace) -> list:
    from .data import TrainingPair

    pairs = pair_files(list_images(args.images), list_images(args.labels))
    return [TrainingPair(read_image(i), read_image(l), i.stem) for i, l in pairs]


def _config_from_args(args: argparse.Namespace, pairs: list) -> Config:
    raw: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    cfg = Config.from_dict(raw)
    image = pairs[0].image
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    sections: dict[str, dict[str, Any]] = {"data": {"in_channels": 3 if rgb else 1}}
    mapping = {
        "task": ("data", "task"), "classes": ("data", "n_classes"), "patch": ("data", "patch_size"),
        "epochs": ("train", "epochs"), "steps": ("train", "steps_per_epoch"), "batch": ("train", "batch_size"),
        "loss": ("train", "loss"), "lr": ("train", "learning_rate"),
        "depth": ("model", "depth"), "filters": ("model", "base_filters"),
    }
    for arg, (section, key) in mapping.items():
        value = getattr(args, arg, None)
        if value is not None:
            sections.setdefault(section, {})[key] = value
    return cfg.replace(**sections).validate()


class _TerminalProgress:
    """Prints one line per epoch and a tqdm bar over the steps of the run."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.kind == "start":
            self.bar = tqdm(total=event.epochs * event.steps, unit="step", desc="training")
        elif event.kind == "batch" and self.bar is not None:
            self.bar.n = (event.epoch - 1) * event.steps + event.step
            self.bar.set_postfix(epoch=f"{event.epoch}/{event.epochs}", loss=f"{event.logs.get('loss', 0):.4f}")
        elif event.kind == "epoch" and self.bar is not None:
            logs = ", ".join(f"{k} {v:.4f}" for k, v in event.logs.items() if k != "lr")
            self.bar.write(f"epoch {event.epoch}/{event.epochs}: {logs}")
        elif event.kind == "end":
            if self.bar is not None:
                self.bar.close()
            print(event.message)


def _train(args: argparse.Namespace) -> int:
    from .bundle import default_model_root
    from .train import train

    pairs = _load_pairs(args)
    cfg = _config_from_args(args, pairs)
    result = train(pairs, cfg, on_event=_TerminalProgress())
    path = result.save(args.models or default_model_root(), args.name)
    print(f"model saved: {path}")
    _print_scores(result.metrics, "validation")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .bundle import load_bundle
    from .train import finetune

    parent = load_bundle(args.model)
    pairs = _load_pairs(args)
    result = finetune(parent, pairs, on_event=_TerminalProgress(), epochs=args.epochs)
    # A version folder's child goes beside it; a .zip export's child goes beside the zip.
    fallback_name = str(parent.metadata.get("name") or Path(parent.path).stem)
    root, name = child_location(parent.path, Path(parent.path).parent, fallback_name)
    path = result.save(root, name)
    print(f"new version saved: {path} (parent {parent.path}, kept unchanged)")
    before, after = result.metrics.get("before_dice"), result.metrics.get("dice")
    if before is not None and after is not None:
        print(f"validation dice: {before:.4f} -> {after:.4f}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .bundle import load_bundle
    from .predict import predict_image

    bundle = load_bundle(args.model)
    cfg = bundle.config.replace(
        predict={k: v for k, v in (("threshold", args.threshold), ("min_size", args.min_size)) if v is not None}
    )
    files = list_images(args.images)
    for path in tqdm(files, unit="image", desc="predicting"):
        image = read_image(path)
        try:
            result = predict_image(bundle.model, image, cfg)
        except InputError as exc:  # say which file: the core only sees an array
            raise InputError(f"{path.name}: {exc}") from exc
        write_labels(args.out / f"{path.stem}.tif", result.labels)
        if args.probabilities:
            write_labels(args.out / f"{path.stem}_prob.tif", result.probabilities.astype(np.float32))
    print(f"{len(files)} label image(s) written to {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .bundle import load_bundle
    from .evaluate import evaluate_pairs

    bundle = load_bundle(args.model)
    scores = evaluate_pairs(bundle.model, bundle.config, _load_pairs(args))
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        _print_scores(scores["mean"], "mean over images")
        for name, s in scores["images"].items():
            print(f"  {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in s.items()))
    return 0


def _print_scores(scores: dict[str, float], what: str) -> None:
    if scores:
        print(f"{what}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    sys.exit(main())
