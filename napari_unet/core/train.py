"""Training and fine-tuning: Keras `fit` driven by callbacks that report progress and obey Stop."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops

from . import bundle as bundle_io
from .config import IGNORE_TARGET, Config
from .data import TrainingPair, make_train_dataset, make_val_dataset, prepare_pairs, split_pairs
from .errors import InputError
from .losses import make_loss
from .metrics import make_metrics
from .model import build_model, configure_devices
from .predict import predict_probabilities
from .scores import dice_score, per_class_dice
from .targets import probabilities_to_labels

#: Most patches kept with a model so fine-tuning can replay what it learnt from.
REPLAY_PATCHES = 96


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass
class TrainEvent:
    """One progress report. `kind` is start, batch, epoch or end; `status` follows careamics' states."""

    kind: str
    epoch: int  # 1-based epoch in progress or just finished
    epochs: int
    step: int  # steps done in this epoch
    steps: int  # steps per epoch
    logs: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    eta_s: float | None = None
    status: str = "training"  # training, done, stopped, crashed
    message: str = ""
    model: Any = field(default=None, repr=False, compare=False)  # the model being trained (for previews)

    @property
    def fraction(self) -> float:
        """Share of all planned steps done, 0..1."""
        total = max(self.epochs * self.steps, 1)
        return min(1.0, ((self.epoch - 1) * self.steps + self.step) / total)


@dataclass
class TrainResult:
    """A trained model and what a model file needs to describe it."""

    model: keras.Model
    config: Config
    history: dict[str, list[float]]
    status: str  # done or stopped
    best_epoch: int | None
    metrics: dict[str, float]
    training_data: list[dict[str, Any]]
    replay: tuple[list[np.ndarray], list[np.ndarray]]
    parent: str | None = None

    def to_bundle(self) -> bundle_io.ModelBundle:
        return bundle_io.ModelBundle(
            model=self.model,
            config=self.config,
            history=self.history,
            training_data=self.training_data,
            parent=self.parent,
            metrics=self.metrics,
        )

    def save(self, root: Any, name: str) -> Any:
        """Write a new model version (never over an old one); returns its folder."""
        return bundle_io.save_bundle(self.to_bundle(), root, name, replay=self.replay)


EventHandler = Callable[[TrainEvent], None]


def train(
    pairs: Sequence[TrainingPair],
    cfg: Config,
    on_event: EventHandler | None = None,
    stop: StopFlag | None = None,
    val_pairs: Sequence[TrainingPair] | None = None,
) -> TrainResult:
    """Train a new model on (image, labels) pairs; stops early on request, keeping the best weights."""
    cfg.validate()
    train_images, train_targets, val_images, val_targets = _training_data(pairs, val_pairs, cfg)
    keras.utils.set_random_seed(cfg.train.seed)
    strategy = configure_devices(cfg)
    with strategy.scope():
        model = build_model(cfg)
    history, status, best_epoch = _fit(
        model, cfg, make_train_dataset(train_images, train_targets, cfg, cfg.train.seed),
        val_images, val_targets, cfg.train.learning_rate, on_event, stop,
    )
    metrics = evaluate_arrays(model, val_images, val_targets, cfg) if val_images else {}
    return TrainResult(
        model=model,
        config=cfg,
        history=history,
        status=status,
        best_epoch=best_epoch,
        metrics=metrics,
        training_data=[bundle_io.describe_data(p.name, p.image, p.labels) for p in pairs],
        replay=_replay_patches(train_images, train_targets, cfg),
    )


def finetune(
    parent: bundle_io.ModelBundle,
    new_pairs: Sequence[TrainingPair],
    on_event: EventHandler | None = None,
    stop: StopFlag | None = None,
    epochs: int | None = None,
    val_pairs: Sequence[TrainingPair] | None = None,
) -> TrainResult:
    """Continue training a saved model on new or corrected pairs mixed with a replay of its old data.

    The parent model object is left untouched (a copy is trained) and `metrics` holds the validation
    scores of the parent (`before_*`) and of the result on the same held-out pixels.
    """
    cfg = parent.config
    if epochs is not None:
        cfg = cfg.replace(train={"epochs": int(epochs)})
    train_images, train_targets, val_images, val_targets = _training_data(new_pairs, val_pairs, cfg)
    replay_images, replay_targets = (
        bundle_io.load_replay(parent.path) if parent.path is not None else ([], [])
    )
    keras.utils.set_random_seed(cfg.train.seed + 1)
    strategy = configure_devices(cfg)
    with strategy.scope():
        # A fresh build, not clone_model: cloning a compiled model trips over its custom loss.
        model = build_model(cfg)
        model.set_weights(parent.model.get_weights())
    dataset = _mixed_dataset(train_images, train_targets, replay_images, replay_targets, cfg)
    before = evaluate_arrays(parent.model, val_images, val_targets, cfg) if val_images else {}
    learning_rate = cfg.train.learning_rate * cfg.train.finetune_lr_factor
    history, status, best_epoch = _fit(model, cfg, dataset, val_images, val_targets, learning_rate, on_event, stop)
    after = evaluate_arrays(model, val_images, val_targets, cfg) if val_images else {}
    metrics = {**after, **{f"before_{k}": v for k, v in before.items()}}
    if replay_images:
        metrics["replay_dice"] = evaluate_arrays(model, replay_images, replay_targets, cfg).get("dice", float("nan"))
        metrics["before_replay_dice"] = evaluate_arrays(parent.model, replay_images, replay_targets, cfg).get(
            "dice", float("nan")
        )
    new_replay = _replay_patches(train_images, train_targets, cfg)
    keep_old = max(0, REPLAY_PATCHES - len(new_replay[0]))
    return TrainResult(
        model=model,
        config=cfg,
        history=history,
        status=status,
        best_epoch=best_epoch,
        metrics=metrics,
        training_data=list(parent.training_data)
        + [bundle_io.describe_data(p.name, p.image, p.labels) for p in new_pairs],
        replay=(new_replay[0] + replay_images[:keep_old], new_replay[1] + replay_targets[:keep_old]),
        parent=str(parent.path) if parent.path is not None else None,
    )


def evaluate_arrays(
    model: keras.Model, images: Sequence[np.ndarray], targets: Sequence[np.ndarray], cfg: Config
) -> dict[str, float]:
    """Scores of whole-image (tiled) predictions against targets; ignored pixels do not count.

    `dice` is the foreground Dice for binary, the mean Dice over non-background classes otherwise.
    """
    if not images:
        return {}
    preds, gts = [], []
    for image, target in zip(images, targets):
        probs = predict_probabilities(model, image, cfg)
        if cfg.data.task == "binary":
            pred = (probs[..., 0] > cfg.predict.threshold).astype(np.int32)
        else:
            pred = np.argmax(probs, axis=-1).astype(np.int32)
        valid = target != IGNORE_TARGET
        preds.append(pred[valid])
        gts.append(target[valid])
    pred_all, gt_all = np.concatenate(preds), np.concatenate(gts)
    n_classes = max(cfg.n_outputs, 2)
    if cfg.data.task == "binary":
        dice = dice_score(pred_all > 0, gt_all > 0)
    else:
        dice = float(np.nanmean(per_class_dice(pred_all, gt_all, n_classes)[1:]))
    out = {"dice": float(dice), "accuracy": float(np.mean(pred_all == gt_all))}
    if cfg.data.task != "binary":
        out["foreground_dice"] = float(dice_score(pred_all > 0, gt_all > 0))
    return out


def predict_labels(model: keras.Model, image: np.ndarray, cfg: Config) -> np.ndarray:
    """Label image for one normalised `(H, W, C)` image (used by previews)."""
    return probabilities_to_labels(predict_probabilities(model, image, cfg), cfg)


def _fit(
    model: keras.Model,
    cfg: Config,
    dataset: tf.data.Dataset,
    val_images: list[np.ndarray],
    val_targets: list[np.ndarray],
    learning_rate: float,
    on_event: EventHandler | None,
    stop: StopFlag | None,
) -> tuple[dict[str, list[float]], str, int | None]:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=make_loss(cfg),
        metrics=make_metrics(cfg),
    )
    val_ds = make_val_dataset(val_images, val_targets, cfg) if val_images else None
    monitor = "val_loss" if val_ds is not None else "loss"
    progress = _Progress(cfg, on_event, stop)
    best = _BestWeights(monitor, progress)
    callbacks: list[keras.callbacks.Callback] = [progress, best]
    if cfg.train.early_stopping_patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.train.early_stopping_patience))
    if cfg.train.reduce_lr_patience > 0:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=cfg.train.reduce_lr_patience)
        )
    status = "done"
    try:
        if stop is not None and stop.is_set():
            status = "stopped"
        else:
            with _released_all_reduce_gradients():
                model.fit(
                    dataset,
                    epochs=cfg.train.epochs,
                    steps_per_epoch=cfg.train.steps_per_epoch,
                    validation_data=val_ds,
                    callbacks=callbacks,
                    shuffle=False,  # the dataset samples patches at random itself
                    verbose=0,
                )
            status = "stopped" if progress.stopped else "done"
    except Exception as exc:
        progress.emit("end", status="crashed", message=f"{type(exc).__name__}: {exc}")
        raise
    best.restore(model)
    progress.emit("end", status=status, message=_summary(status, best, progress))
    return progress.history, status, best.best_epoch


@contextmanager
def _released_all_reduce_gradients() -> Iterator[None]:
    """Drop the gradient functions TensorFlow registers globally while Keras traces a training step.

    The optimizer all-reduces the gradients through `ReplicaContext.all_reduce`, a `@custom_gradient`
    function that adds an entry to TensorFlow's global gradient registry at every trace and never
    removes it; the entry keeps the whole traced step graph alive (about 25 MB per run for a tiny
    U-Net, so repeated train/stop cycles grow without bound; tensorflow#61791, tf-keras#286). That
    gradient is the gradient of the gradient sum, which nothing computes, so removing it after `fit`
    is safe even while another thread traces. Without the private registry this does nothing.
    """
    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    before = set(registry) if isinstance(registry, dict) else None
    try:
        yield
    finally:
        if before is not None:
            for name in set(registry) - before:
                entry = registry.get(name)
                if isinstance(entry, dict) and _made_by_all_reduce(entry.get("type")):
                    registry.pop(name, None)


def _made_by_all_reduce(fn: Any, depth: int = 0) -> bool:
    """Whether a registered gradient function is (or wraps) the one `ReplicaContext.all_reduce` defines."""
    if depth > 4 or not callable(fn):
        return False
    if "all_reduce" in getattr(fn, "__qualname__", ""):
        return True
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _made_by_all_reduce(value, depth + 1):
            return True
    return False


def _summary(status: str, best: _BestWeights, progress: _Progress) -> str:
    what = "Stopped" if status == "stopped" else "Finished"
    if best.best_epoch is None:
        return f"{what} after {progress.elapsed():.0f} s (no complete epoch)."
    return f"{what} after {progress.elapsed():.0f} s; kept epoch {best.best_epoch} ({best.monitor} {best.best:.4f})."


class _Progress(keras.callbacks.Callback):
    """Sends TrainEvents to a listener, records per-epoch history and stops within one step."""

    def __init__(self, cfg: Config, on_event: EventHandler | None, stop: StopFlag | None) -> None:
        super().__init__()
        self.cfg, self.on_event, self.stop = cfg, on_event, stop
        self.epochs, self.steps = cfg.train.epochs, cfg.train.steps_per_epoch
        self.epoch, self.step, self.stopped = 1, 0, False
        self.epoch_complete = False
        self.history: dict[str, list[float]] = {}
        self.start = time.monotonic()
        self._steps_done = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def emit(self, kind: str, logs: dict[str, Any] | None = None, status: str = "training", message: str = "") -> None:
        if self.on_event is None:
            return
        elapsed = self.elapsed()
        remaining = self.epochs * self.steps - self._steps_done
        eta = elapsed / self._steps_done * remaining if self._steps_done and status == "training" else None
        clean = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v) or np.ndim(v) == 0}
        self.on_event(
            TrainEvent(
                kind, self.epoch, self.epochs, self.step, self.steps, clean, elapsed, eta, status, message, self.model
            )
        )

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set() and not self.stopped:
            self.stopped = True
            self.model.stop_training = True

    def on_train_begin(self, logs=None) -> None:
        self.start = time.monotonic()
        self.emit("start")

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self.epoch, self.step, self.epoch_complete = epoch + 1, 0, False

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.step = batch + 1
        self._steps_done += 1
        self.epoch_complete = self.step >= self.steps
        self.emit("batch", logs)
        self._check_stop()

    def on_test_batch_begin(self, batch, logs=None) -> None:
        # Stop during validation too: skip the rest of it (its partial result is not used).
        self._check_stop()
        if self.stopped:
            self.model.stop_evaluating = True

    def on_epoch_end(self, epoch, logs=None) -> None:
        if not self.epoch_complete:
            return
        logs = dict(logs or {})
        if self.stopped:  # validation was cut short: its numbers are partial
            logs = {k: v for k, v in logs.items() if not k.startswith("val_")}
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self.emit("epoch", logs)


class _BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the best complete epoch in memory (no file written mid-run)."""

    def __init__(self, monitor: str, progress: _Progress) -> None:
        super().__init__()
        self.monitor, self.progress = monitor, progress
        self.best = np.inf
        self.best_epoch: int | None = None
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch, logs=None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not self.progress.epoch_complete or self.progress.stopped and self.monitor.startswith("val_"):
            return
        if float(value) < self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            self.weights = [copy.copy(w) for w in self.model.get_weights()]

    def restore(self, model: keras.Model) -> None:
        if self.weights is not None:
            model.set_weights(self.weights)


def _training_data(
    pairs: Sequence[TrainingPair], val_pairs: Sequence[TrainingPair] | None, cfg: Config
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Normalised images and targets for training and validation (given, or split off the pairs)."""
    images, targets, _ = prepare_pairs(pairs, cfg)
    if val_pairs:
        val_images, val_targets, _ = prepare_pairs(val_pairs, cfg)
        train_images, train_targets = images, targets
    else:
        train_images, train_targets, val_images, val_targets = split_pairs(images, targets, cfg, cfg.train.seed)
    val_images, val_targets = _labelled_only(val_images, val_targets)
    return train_images, train_targets, val_images, val_targets


def _labelled_only(
    images: list[np.ndarray], targets: list[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validation images with at least one labelled pixel (sparse labels may leave a strip empty)."""
    keep = [i for i, t in enumerate(targets) if np.any(t != IGNORE_TARGET)]
    return [images[i] for i in keep], [targets[i] for i in keep]


def _mixed_dataset(
    images: list[np.ndarray],
    targets: list[np.ndarray],
    replay_images: list[np.ndarray],
    replay_targets: list[np.ndarray],
    cfg: Config,
) -> tf.data.Dataset:
    """Batches whose share `replay_fraction` comes from the replay patches, the rest from new data."""
    batch = cfg.train.batch_size
    n_replay = int(round(batch * cfg.train.replay_fraction)) if replay_images else 0
    n_replay = min(max(n_replay, 1 if replay_images else 0), batch - 1)
    if n_replay == 0:
        return make_train_dataset(images, targets, cfg, cfg.train.seed)
    new_ds = make_train_dataset(images, targets, cfg.replace(train={"batch_size": batch - n_replay}), cfg.train.seed)
    old_ds = make_train_dataset(
        replay_images, replay_targets, cfg.replace(train={"batch_size": n_replay}), cfg.train.seed + 7
    )
    return tf.data.Dataset.zip((new_ds, old_ds)).map(
        lambda a, b: (tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0)),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).prefetch(tf.data.AUTOTUNE)


def _replay_patches(
    images: Sequence[np.ndarray], targets: Sequence[np.ndarray], cfg: Config, limit: int = REPLAY_PATCHES
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Up to `limit` patch-sized crops of the training data, favouring labelled regions."""
    rng = np.random.default_rng(cfg.train.seed)
    size = cfg.data.patch_size
    crops: list[tuple[float, np.ndarray, np.ndarray]] = []
    for image, target in zip(images, targets):
        h, w = target.shape
        for y in range(0, max(h - size, 0) + 1, size):
            for x in range(0, max(w - size, 0) + 1, size):
                t = target[y : y + size, x : x + size]
                labelled = float(np.mean(t > 0))
                crops.append((labelled + rng.random() * 0.1, image[y : y + size, x : x + size], t))
    if not crops:
        raise InputError("No training patches could be cut from the images.")
    crops.sort(key=lambda c: -c[0])
    chosen = crops[:limit]
    return [c[1].copy() for c in chosen], [c[2].copy() for c in chosen]
