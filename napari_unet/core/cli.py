"""Command line: `napari-unet train | predict | finetune | evaluate` on image and label files.

Every option, the model name and the output locations are checked before any image is read or any
training starts. One handler turns problems the user can fix into ``napari-unet: error: ...``
(exit 2); anything unexpected prints one line naming a log file that holds the traceback (exit 1).
The output policy (never into an input folder, never over an existing file without
``--overwrite``, distinct names for inputs that share one) is in :mod:`.outputs`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .bioimageio_cli import add_export_parser
from .channels import choose_channels, describe_conversion, to_channels
from .config import Config
from .errors import ConfigError, InputError, NapariUNetError, OutputError
from .io import list_images, pair_inputs, write_labels
from .layout import AXES_CHOICES, parse_axes, read_image, read_labels, to_core
from .outputs import check_writable_folder, output_stems, plan_outputs
from .checkpointed import Checkpoints, Interrupted, fit_and_publish
from .paths import check_model_name, child_location, default_model_root
from .tf_startup import quiet_environment, start_tensorflow
from .states import JobState

ENV_LOG_DIR = "NAPARI_UNET_LOG_DIR"


class UsageError(NapariUNetError):
    """A command line that argparse refused."""


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default: the value, "off" for flags, or what its text says."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        return text if action.default is None else f"{text} (default: %(default)s)"


def _config_default(section: str, key: str, what: str = "") -> str:
    """'(default: the --config file's train.steps_per_epoch, else 50)' for options that override the config."""
    value = getattr(getattr(Config(), section), key)
    return f"(default: the --config file's {section}.{key}, else {what or value})"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command line; without `argv` it is this process's own (the `napari-unet` entry point)."""
    code = _run(argv)
    if argv is None and "tensorflow" in sys.modules:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """End the process without Python's teardown of TensorFlow (0.5-2 s of every run), all output flushed.

    Every file the commands write is complete and renamed into place before this point.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _run(argv: Sequence[str] | None) -> int:
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        if not getattr(args, "verbose", False):
            quiet_environment()  # before anything imports TensorFlow
        return int(args.func(args) or 0)
    except NapariUNetError as exc:
        print(f"napari-unet: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # a second Ctrl-C during training
        print(_interrupted_message(exc.path, exc.checkpoints), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("napari-unet: error: not enough memory; use fewer or smaller images, or a smaller --batch or --patch.",
              file=sys.stderr)  # fmt: skip
        return 2
    except OSError as exc:  # disk full, permissions, vanished files: the user can act on these
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"napari-unet: error: {exc.strerror or exc}{where}.", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001  (the one place that catches everything)
        log = _write_log(exc)
        print(f"napari-unet: internal error ({type(exc).__name__}); the details are in {log}. "
              "Please report it with that file.", file=sys.stderr)  # fmt: skip
        return 1


def _write_log(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidates = [os.environ.get(ENV_LOG_DIR), str(Path.home() / ".napari-unet" / "logs"), tempfile.gettempdir()]
    for folder in filter(None, candidates):
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            path = Path(folder) / f"napari-unet-{stamp}-{os.getpid()}.log"
            path.write_text(f"napari-unet {' '.join(sys.argv)}\n{text}", encoding="utf-8")
            return str(path)
        except OSError:
            continue
    return "(no writable log folder)"


# ---------------------------------------------------------------- option types (checked by argparse)


def _path(text: str) -> Path:
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a path")
    return Path(text).expanduser()


def _number(convert: Any, accept: Any, wanted: str) -> Any:
    """An argparse `type` that converts a number and refuses values `accept` rejects (NaN and inf too)."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    return parse


_positive_int = _number(int, lambda v: v > 0, "a whole number above 0")
_count = _number(int, lambda v: v >= 0, "a whole number (0 or more)")
_positive_float = _number(float, lambda v: v > 0, "a positive finite number")
_probability = _number(float, lambda v: 0.0 <= v <= 1.0, "a number between 0 and 1")


def _axes(text: str) -> str:
    try:
        return parse_axes(text) or ""
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_MODEL_HELP = (
    "model folder (its current version), version folder, .zip export, or bioimage.io package (.zip or folder)"
)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="napari-unet", description="Train and apply U-Nets without a GUI.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a new model on image/label files")
    _data_args(p)
    p.add_argument("--name", required=True, help="model name (a folder under --models)")
    p.add_argument("--models", type=_path, default=None, help="models folder (default: ~/.napari-unet/models)")
    p.add_argument("--config", type=_path,
                   help="JSON file with config sections (model, data, train, predict); options below override it "
                        "(default: none, the built-in config)")  # fmt: skip
    p.add_argument("--task", choices=("binary", "classes", "instances"),
                   help="what to segment (default: the --config file's, else suggested by the labels)")
    p.add_argument("--classes", type=_positive_int,
                   help=f"number of classes for --task classes {_config_default('data', 'n_classes')}")
    p.add_argument("--epochs", type=_positive_int,
                   help=f"most epochs; early stopping and --time may end sooner {_config_default('train', 'epochs')}")
    p.add_argument("--steps", type=_positive_int, help=f"steps per epoch {_config_default('train', 'steps_per_epoch')}")
    p.add_argument("--batch", type=_positive_int, help=f"patches per step {_config_default('train', 'batch_size')}")
    p.add_argument("--patch", type=_positive_int, help=f"patch size in pixels {_config_default('data', 'patch_size')}")
    p.add_argument("--depth", type=_positive_int, help=f"U-Net poolings {_config_default('model', 'depth')}")
    p.add_argument("--filters", type=_positive_int,
                   help=f"filters of the first level, doubled per level {_config_default('model', 'base_filters')}")
    p.add_argument("--loss", choices=("auto", "bce", "dice", "bce_dice", "cce", "focal", "cce_dice"),
                   help=f"loss; auto is bce_dice for binary, cce_dice otherwise {_config_default('train', 'loss')}")
    p.add_argument("--lr", type=_positive_float, help=f"learning rate {_config_default('train', 'learning_rate')}")
    p.add_argument("--time", type=_duration,
                   help="wall-clock budget, e.g. 300, 90s, 5m, 1h; training then ends as Stop does, keeping the "
                        f"best epoch {_config_default('train', 'time_limit_s', '0: no limit')}")  # fmt: skip
    p.set_defaults(func=_train)

    p = sub.add_parser("finetune", help="fine-tune a model on new or corrected pairs; writes a new version")
    _data_args(p)
    p.add_argument("--model", type=_path, required=True,
                   help="model folder (its current version), version folder, .zip export, or bioimage.io "
                        "package with Keras weights")  # fmt: skip
    p.add_argument("--epochs", type=_positive_int,
                   help="epochs of the round (default: the model's train.finetune_epochs; the round also stops "
                        "after its train.finetune_time_limit_s)")  # fmt: skip
    p.set_defaults(func=_finetune)

    p = sub.add_parser("predict", help="predict label images")
    p.add_argument("--model", type=_path, required=True, help=_MODEL_HELP)
    p.add_argument("--images", nargs="+", type=_path, required=True,
                   help="image files or folders, or OME-Zarr images (.zarr folders)")  # fmt: skip
    p.add_argument("--out", type=_path, default=None,
                   help="output folder for label TIFFs (same names); must not hold any input. OME-Zarr "
                        "labels go into each image's store (labels/NAME) unless --out is given (default: none; required for "
                        "TIFF images)")  # fmt: skip
    p.add_argument("--labels-name", default=None, help="name of OME-Zarr labels images (default: napari-unet)")
    p.add_argument("--cluster", metavar="local[:N]", default=None,
                   help="predict on a new dask LocalCluster of N worker processes (default N: cores, at most 4)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="predict on an existing dask.distributed scheduler, e.g. tcp://host:8786 (default: none, "
                        "predict in this process)")
    p.add_argument("--threshold", type=_probability,
                   help="foreground probability threshold (default: the model's, tuned on its validation data)")
    p.add_argument("--min-size", type=_count,
                   help="smallest object kept, in pixels (default: the model's, tuned on its validation data)")
    p.add_argument("--probabilities", action="store_true", help="also write <name>_prob.tif")
    p.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    _layout_args(p)
    p.set_defaults(func=_predict)

    p = sub.add_parser("evaluate", help="score a model against label files")
    _data_args(p)
    p.add_argument("--model", type=_path, required=True, help=_MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("models", help="list the models and versions in a models folder (reads no model)")
    p.add_argument("--models", type=_path, default=None,
                   help="models folder (default: $NAPARI_UNET_MODEL_DIR, else ~/.napari-unet/models)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    p.set_defaults(func=_models)
    add_export_parser(sub, _path, _load_tensorflow)  # export --bioimageio (bioimageio_cli.py)
    for command in sub.choices.values():  # every subcommand, those added above included
        command.add_argument("--verbose", action="store_true",
                             help="show TensorFlow, absl and CUDA log messages and warnings")  # fmt: skip
    return parser


def _layout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--axes", type=_axes, default=None,
                   help=f"axes of every image, e.g. {', '.join(AXES_CHOICES[:5])} (default: from the file's "
                        "metadata, or its shape when that is unambiguous)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="check everything and print what would be done, then stop")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", nargs="+", type=_path, required=True, help="image files or folders")
    p.add_argument("--labels", nargs="+", type=_path, required=True,
                   help="label files or folders; folder i pairs with image folder i by relative path")  # fmt: skip
    _layout_args(p)


def _info(text: str) -> None:
    print(text, file=sys.stderr)


# ---------------------------------------------------------------- reading inputs


def _read(path: Path, axes: str | None) -> np.ndarray:
    """An image in the core's unambiguous layout, saying how its axes were read."""
    array, layout = read_image(path, axes)
    _info(layout.describe(path.name))
    return to_core(array, layout)


def _channels(image: np.ndarray) -> int:
    return int(image.shape[-1]) if image.ndim == 4 else 1


def _convert(image: np.ndarray, channels: int, name: str) -> np.ndarray:
    have = _channels(image)
    if have == channels:
        return image
    stack = image[None, :, :, None] if image.ndim == 2 else image  # (N, H, W, C)
    try:
        out = to_channels(stack, channels, rgb=True)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc
    _info(f"{name}: {describe_conversion(have, channels)} for a {channels}-channel model")
    if channels == 1:  # (N, H, W) gray
        out = out[0] if out.shape[0] == 1 else out[..., None]
    return out


def _plan_pairs(args: argparse.Namespace) -> tuple[list[tuple[Path, Path]], list[str]]:
    pairs = pair_inputs(args.images, args.labels)
    return pairs, output_stems([i for i, _ in pairs])


def _print_pairs(pairs: list[tuple[Path, Path]], names: list[str]) -> None:
    print(f"{len(pairs)} pair(s):")
    for (image, labels), name in zip(pairs, names):
        print(f"  {name}: {image} <- labels {labels}")


def _load_pairs(args: argparse.Namespace, pairs: list[tuple[Path, Path]], names: list[str],
                channels: int | None) -> tuple[list, int]:  # fmt: skip
    """TrainingPairs with every image converted to ``channels`` (None: the channel rule decides)."""
    from .data import TrainingPair

    images = [_read(i, args.axes) for i, _ in pairs]
    if channels is None:
        counts = [_channels(im) for im in images]
        channels = choose_channels(counts)
        if len({1 if c == 1 else 3 for c in counts}) > 1:
            n_gray = sum(c == 1 for c in counts)
            _info(f"{n_gray} gray and {len(counts) - n_gray} colour image(s): training a "
                  f"{'gray' if channels == 1 else 'RGB'} model (the majority decides; see docs/reliability.md)")  # fmt: skip
    out = []
    for image, (_, label_path), name in zip(images, pairs, names):
        out.append(TrainingPair(_convert(image, channels, name), read_labels(label_path), name))
    return out, channels


# ---------------------------------------------------------------- config


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {path} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path} is a folder; give a JSON file.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path} is not a text (UTF-8) file.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read --config {path}: {exc.strerror or exc}.") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None
    except RecursionError:
        raise ConfigError(f"--config {path} is nested too deeply to be a config.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path} must hold a JSON object with sections model, data, train, predict.")
    return raw


def _config_from_args(args: argparse.Namespace, raw: dict[str, Any], in_channels: int) -> Config:
    try:
        cfg = Config.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"--config {args.config}: {exc}") from exc
    sections: dict[str, dict[str, Any]] = {"data": {"in_channels": in_channels}}
    mapping = {
        "task": ("data", "task"), "classes": ("data", "n_classes"), "patch": ("data", "patch_size"),
        "epochs": ("train", "epochs"), "steps": ("train", "steps_per_epoch"), "batch": ("train", "batch_size"),
        "loss": ("train", "loss"), "lr": ("train", "learning_rate"),
        "depth": ("model", "depth"), "filters": ("model", "base_filters"), "time": ("train", "time_limit_s"),
    }  # fmt: skip
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


def _duration(text: str) -> float:
    """Seconds from ``300``, ``90s``, ``5m`` or ``1h``."""
    value = str(text).strip().lower()
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(value[-1:], None)
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; use seconds (300) or 90s, 5m, 1h.") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the time budget must be positive.")
    return seconds


def _suggested_task(data: list) -> str:
    """The task most of the (first few) label images suggest (see core/suggest.py)."""
    from collections import Counter

    from .suggest import suggest_task

    votes = Counter(suggest_task(pair.labels) for pair in data[:8])
    task = votes.most_common(1)[0][0]
    _info(f"task: {task} (suggested by the labels; --task sets it)")
    return task


def _check_model_location(root: Path, name: str) -> None:
    """The folder a model version will be written to is usable (checked before any work)."""
    folder = Path(root).expanduser() / name
    check_writable_folder(folder, "models folder")
    if folder.is_dir():
        check_writable_folder(folder, "models folder", create=True)  # a probe file, removed at once


# ---------------------------------------------------------------- commands


def _train(args: argparse.Namespace) -> int:
    check_model_name(args.name)
    root = args.models or default_model_root()
    _check_model_location(root, args.name)
    raw = _read_config(args.config)
    fixed = (raw.get("data") or {}).get("in_channels") if isinstance(raw.get("data"), dict) else None
    arch = (raw.get("model") or {}).get("architecture") if isinstance(raw.get("model"), dict) else None
    # Everything but the channel count is checked now, before any image is read.
    guess = fixed if isinstance(fixed, int) and not isinstance(fixed, bool) else (3 if arch == "mobilenetv2" else 1)
    _config_from_args(args, raw, guess)
    pairs, names = _plan_pairs(args)
    if args.dry_run:
        _print_pairs(pairs, names)
        for image, _ in pairs:
            _info(read_image(image, args.axes)[1].describe(image.name))
        print(f"dry run: would train {args.name!r} in {Path(root) / args.name}; nothing was written.")
        return 0
    channels = guess if (fixed is not None or arch == "mobilenetv2") else None
    data, channels = _load_pairs(args, pairs, names, channels)
    if args.task is None and "task" not in (raw.get("data") or {}):
        args.task = _suggested_task(data)
    cfg = _config_from_args(args, raw, channels)
    _load_tensorflow(args)
    from .train import train

    published = _run_checkpointed(
        lambda on_best, stop: train(data, cfg, on_event=_TerminalProgress(), stop=stop, on_best=on_best),
        Path(root).expanduser(), args.name,
    )  # fmt: skip
    if published.state != JobState.DONE:
        return 130
    print(f"model saved: {published.path}")
    _print_scores(published.result.metrics, "validation")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    _load_tensorflow(args)
    from .bundle import load_bundle

    parent = load_bundle(args.model)
    # A version folder's child goes beside it; a .zip export's child goes beside the zip.
    fallback_name = str(parent.metadata.get("name") or Path(parent.path).stem)
    root, name = child_location(parent.path, Path(parent.path).parent, fallback_name)
    check_model_name(name)
    _check_model_location(root, name)
    pairs, names = _plan_pairs(args)
    if args.dry_run:
        _print_pairs(pairs, names)
        for image, _ in pairs:
            _info(read_image(image, args.axes)[1].describe(image.name))
        print(f"dry run: would write a new version of {parent.path} to {Path(root) / name}; nothing was written.")
        return 0
    data, _ = _load_pairs(args, pairs, names, parent.config.data.in_channels)
    from .train import finetune

    published = _run_checkpointed(
        lambda on_best, stop: finetune(parent, data, _TerminalProgress(), stop, epochs=args.epochs, on_best=on_best),
        Path(root).expanduser(), name,
    )  # fmt: skip
    if published.state != JobState.DONE:
        return 130
    result = published.result
    print(f"new version saved: {published.path} (parent {parent.path}, kept unchanged)")
    before, after = result.metrics.get("before_dice"), result.metrics.get("dice")
    if before is not None and after is not None:
        print(f"validation dice: {before:.4f} -> {after:.4f}")
    return 0


def _load_tensorflow(args: argparse.Namespace) -> None:
    """Import TensorFlow now, without its log noise unless --verbose (call before the first TF import)."""
    start_tensorflow(verbose=getattr(args, "verbose", False))


class _CtrlCStops:
    """The first Ctrl-C sets the stop flag (as the widget's Stop); a second one raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.previous: Any = None

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self.stop

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        _info("\nCtrl-C: stopping after this step and saving the best epoch so far (Ctrl-C again: quit at once).")


def _run_checkpointed(run: Any, root: Path, name: str) -> Any:
    """Train with checkpoints under Ctrl-C handling; says what an interrupted run saved."""
    with _CtrlCStops() as stop:
        published = fit_and_publish(run, root, name, f"cli-{os.getpid()}", stop)
    if published.state != JobState.DONE:
        _info(_interrupted_message(published.path, published.checkpoints))
    return published


def _interrupted_message(path: Path | None, checkpoints: Checkpoints | None) -> str:
    if path is None or checkpoints is None or checkpoints.epoch is None:
        return "Interrupted before the first epoch ended; nothing was saved."
    return f"Interrupted: saved the best epoch ({checkpoints.describe()}) as {path}"


def _models(args: argparse.Namespace) -> int:
    from .catalog import catalog_json, format_catalog, list_catalog

    root = args.models or default_model_root()
    models = list_catalog(root)
    print(catalog_json(models) if args.json else format_catalog(root, models))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .batch import predict_command, wants_batch

    if wants_batch(args):  # OME-Zarr images or a cluster
        return predict_command(args)
    if args.out is None:
        raise UsageError("the following arguments are required: --out (see `napari-unet predict --help`)")
    files = list_images(args.images)
    suffixes = (".tif", "_prob.tif") if args.probabilities else (".tif",)
    plans = plan_outputs(files, args.out, protected=files, suffixes=suffixes, overwrite=args.overwrite)
    if args.dry_run:
        for plan in plans:
            _info(read_image(plan.source, args.axes)[1].describe(plan.source.name))
            print(f"  {plan.source} -> {', '.join(str(p) for p in (plan.path, *plan.extra))}")
        print(f"dry run: would write {len(plans) * len(suffixes)} file(s) to {args.out}; nothing was written.")
        return 0
    _load_tensorflow(args)
    from tqdm import tqdm

    from .bundle import load_bundle
    from .predict import predict_image

    bundle = load_bundle(args.model)
    overrides = {k: v for k, v in (("threshold", args.threshold), ("min_size", args.min_size)) if v is not None}
    cfg = bundle.config.replace(predict=overrides).validate()
    channels = cfg.data.in_channels
    written = 0
    for plan in tqdm(plans, unit="image", desc="predicting", file=sys.stderr):
        path = plan.source
        image = _convert(_read(path, args.axes), channels, path.name)
        try:
            result = predict_image(bundle.model, image, cfg, fit_memory=True)
        except InputError as exc:  # say which file: the core only sees an array
            raise InputError(f"{path.name}: {exc}") from exc
        labels, probs = result.labels, result.probabilities
        if image.ndim == 4 and image.shape[0] == 1:  # one plane: write a 2D label image
            labels, probs = labels[0], probs[0]
        write_labels(plan.path, labels, overwrite=args.overwrite)
        written += 1
        if args.probabilities:
            write_labels(plan.extra[0], probs.astype(np.float32), overwrite=args.overwrite)
    print(f"{written} label image(s) written to {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _load_tensorflow(args)
    from .bundle import load_bundle
    from .evaluate import evaluate_pairs

    bundle = load_bundle(args.model)
    pairs, names = _plan_pairs(args)
    if args.dry_run:
        _print_pairs(pairs, names)
        return 0
    data, _ = _load_pairs(args, pairs, names, bundle.config.data.in_channels)
    scores = evaluate_pairs(bundle.model, bundle.config, data)
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


__all__ = ["main", "OutputError"]

if __name__ == "__main__":
    sys.exit(main())
