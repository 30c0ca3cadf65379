"""Training and fine-tuning: Keras `fit` driven by callbacks that report progress and obey Stop.

Model selection follows what the user wants, not the loss: after every epoch the (small)
validation set is predicted whole and scored, by object F1 at IoU 0.5 after post-processing for
instances (plus half the foreground Dice, which breaks ties and damps the noise of a few
validation images) and by foreground Dice otherwise (`train.select_metric`). `train.keep` chooses between
the best epoch so far ("best") and the last one ("last"); `on_best` receives each newly selected
model, and epoch events say whether their epoch became the kept one (`TrainEvent.selected`).
Early stopping counts epochs without improvement of that score and never ends a run before
`train.early_stopping_min_s`. `train.time_limit_s` ends training as Stop does, after validating
the last (partial) epoch. After training, post-processing is tuned on the validation data
(`tuning.py`) and saved in `cfg.predict`.
"""

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
from .data import TrainingPair, make_train_dataset, prepare_samples, split_pairs, static_options
from .errors import BundleError, InputError
from .states import JobState
from .losses import make_loss
from .metrics import make_metrics
from .model import build_model, training_scope
from .predict import PredictionStopped, predict_probabilities
from .scores import dice_score, per_class_dice
from .targets import probabilities_to_labels
from .tuning import (
    default_postprocessing, objective, reference_sizes, score_images, tune_postprocessing, tuning_passes,
)

#: Most patches kept with a model so fine-tuning can replay what it learnt from.
REPLAY_PATCHES = 96
#: Replay patches scored after every fine-tuning epoch (what the model knew must not be lost).
REPLAY_VAL_PATCHES = 12
#: Steps averaged for the ETA (the first step of a run, which traces the graph, never counts).
ETA_WINDOW = 20


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
    status: JobState = JobState.RUNNING  # running, done, stopped or crashed
    message: str = ""
    model: Any = field(default=None, repr=False, compare=False)  # the model being trained (for previews)
    selected: bool = False  # epoch events: this epoch became the model Stop would keep
    time_limit_s: float = 0.0  # the run's wall-clock budget (0: none)

    @property
    def fraction(self) -> float:
        """Share of the run done, 0..1: of all planned steps, or of the time budget when that ends it sooner."""
        total = max(self.epochs * self.steps, 1)
        by_steps = ((self.epoch - 1) * self.steps + self.step) / total
        by_time = self.elapsed_s / self.time_limit_s if self.time_limit_s > 0 else 0.0
        return min(1.0, max(by_steps, by_time))


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
    imported_from: dict | None = None  # the bioimage.io package the lineage started from

    def to_bundle(self) -> bundle_io.ModelBundle:
        return bundle_io.ModelBundle(
            model=self.model,
            config=self.config,
            history=self.history,
            training_data=self.training_data,
            parent=self.parent,
            metrics=self.metrics,
            metadata={} if self.imported_from is None else {"imported_from": self.imported_from},
        )

    def save(self, root: Any, name: str) -> Any:
        """Write a new model version (never over an old one); returns its folder."""
        return bundle_io.save_bundle(self.to_bundle(), root, name, replay=self.replay)


EventHandler = Callable[[TrainEvent], None]
BestHandler = Callable[[TrainResult], None]


@dataclass
class _Data:
    """Normalised training and validation samples, validation label images and training object sizes."""

    train_images: list[np.ndarray]
    train_targets: list[np.ndarray]
    val_images: list[np.ndarray]
    val_targets: list[np.ndarray]
    val_labels: list[np.ndarray]
    train_sizes: np.ndarray


def train(
    pairs: Sequence[TrainingPair],
    cfg: Config,
    on_event: EventHandler | None = None,
    stop: StopFlag | None = None,
    val_pairs: Sequence[TrainingPair] | None = None,
    on_best: BestHandler | None = None,
) -> TrainResult:
    """Train a new model on (image, labels) pairs; stops on request, keeping the selected weights.

    `on_best(result)` is called on this thread each time a new model is selected (see the module
    docstring); its `result.model` may be the live model, so save it at once and do not keep it.
    """
    t0 = time.monotonic()
    cfg.validate()
    data = _training_data(pairs, val_pairs, cfg)
    cfg = cfg.replace(predict=default_postprocessing(cfg, data.train_sizes))
    keras.utils.set_random_seed(cfg.train.seed)
    with training_scope(cfg):
        model = build_model(cfg)
    training_data = [bundle_io.describe_data(p.name, p.image, p.labels) for p in pairs]
    replay = _replay_patches(data.train_images, data.train_targets, cfg)

    def result(model: keras.Model, config: Config, history, status, best_epoch, metrics) -> TrainResult:
        return TrainResult(model, config, history, status, best_epoch, metrics, training_data, replay)

    history, status, best_epoch = _fit(
        model, cfg, make_train_dataset(data.train_images, data.train_targets, cfg, cfg.train.seed),
        data, cfg.train.learning_rate, on_event, stop, t0, cfg.train.epochs, cfg.train.time_limit_s,
        _best_reporter(on_best, result, cfg),
    )
    # The kept model's validation predictions serve both the post-processing search and the scores.
    probs = [predict_probabilities(model, image, cfg) for image in data.val_images]
    cfg = _tuned(probs, cfg, data)
    metrics = _scores_from_probs(probs, data.val_targets, cfg, data.val_labels) if probs else {}
    return result(model, cfg, history, status, best_epoch, metrics)


def finetune(
    parent: bundle_io.ModelBundle,
    new_pairs: Sequence[TrainingPair],
    on_event: EventHandler | None = None,
    stop: StopFlag | None = None,
    epochs: int | None = None,
    val_pairs: Sequence[TrainingPair] | None = None,
    on_best: BestHandler | None = None,
) -> TrainResult:
    """Continue training a saved model on new or corrected pairs mixed with a replay of its old data.

    The parent model object is left untouched (a copy is trained) and `metrics` holds the validation
    scores of the parent (`before_*`) and of the result on the same held-out pixels. The round lasts
    `epochs` (default `train.finetune_epochs`, never the parent's `train.epochs`) and at most
    `train.finetune_time_limit_s`. The parent's tuned post-processing is kept.
    """
    t0 = time.monotonic()
    cfg = parent.config
    if not isinstance(parent.model, keras.Model):  # before any data is prepared
        raise BundleError(getattr(parent.model, "not_trainable", f"{parent.label} cannot be fine-tuned."))
    n_epochs = int(epochs) if epochs is not None else int(cfg.train.finetune_epochs)
    data = _training_data(new_pairs, val_pairs, cfg)
    replay_images, replay_targets = (
        bundle_io.load_replay(parent.path) if parent.path is not None else ([], [])
    )
    keras.utils.set_random_seed(cfg.train.seed + 1)
    with training_scope(cfg):
        model = _trainable_copy(parent, cfg)
    dataset = _mixed_dataset(data.train_images, data.train_targets, replay_images, replay_targets, cfg)
    before = (
        evaluate_arrays(parent.model, data.val_images, data.val_targets, cfg, data.val_labels) if data.val_images else {}
    )
    new_replay = _replay_patches(data.train_images, data.train_targets, cfg)
    keep_old = max(0, REPLAY_PATCHES - len(new_replay[0]))
    training_data = list(parent.training_data) + [
        bundle_io.describe_data(p.name, p.image, p.labels) for p in new_pairs
    ]
    replay = (new_replay[0] + replay_images[:keep_old], new_replay[1] + replay_targets[:keep_old])
    parent_path = str(parent.path) if parent.path is not None else None

    def result(model: keras.Model, config: Config, history, status, best_epoch, metrics) -> TrainResult:
        return TrainResult(
            model, config, history, status, best_epoch, metrics, training_data, replay, parent_path,
            parent.metadata.get("imported_from"),
        )  # fmt: skip

    # Selection also watches a few replay patches, so the kept epoch is one that still knows the old data.
    guard = _replay_guard(replay_images, replay_targets, cfg)
    learning_rate = cfg.train.learning_rate * cfg.train.finetune_lr_factor
    history, status, best_epoch = _fit(
        model, cfg, dataset, data, learning_rate, on_event, stop, t0, n_epochs, cfg.train.finetune_time_limit_s,
        _best_reporter(on_best, result, cfg), guard=guard, anchor=parent.model.get_weights(),
    )
    after = evaluate_arrays(model, data.val_images, data.val_targets, cfg, data.val_labels) if data.val_images else {}
    metrics = {**after, **{f"before_{k}": v for k, v in before.items()}}
    if guard is not None:  # the replay patches selection watched (all of them would cost seconds per round)
        metrics["replay_dice"] = evaluate_arrays(model, *guard, cfg).get("dice", float("nan"))
        metrics["before_replay_dice"] = evaluate_arrays(parent.model, *guard, cfg).get("dice", float("nan"))
    return result(model, cfg, history, status, best_epoch, metrics)


def _trainable_copy(parent: bundle_io.ModelBundle, cfg: Config) -> keras.Model:
    """A fresh network with the parent's weights: rebuilt from `cfg`, or copied when it was imported."""
    if cfg.model.architecture == "imported":
        model = keras.models.clone_model(parent.model)  # loaded without compile, so nothing custom to clone
    else:
        # A fresh build, not clone_model: cloning a compiled model trips over its custom loss.
        model = build_model(cfg)
    model.set_weights(parent.model.get_weights())
    return model


def evaluate_arrays(
    model: keras.Model,
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    cfg: Config,
    labels: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """Scores of whole-image (tiled) predictions against targets; ignored pixels do not count.

    `dice` is the foreground Dice for binary and instances (interior and boundary are one
    foreground; `interior_dice` and `boundary_dice` are given too) and the mean Dice over the
    non-background classes for classes. With `labels` (the ground-truth label images), instances
    also get `object_f1` at IoU 0.5 after post-processing with `cfg.predict`.
    """
    if not images:
        return {}
    probs = [predict_probabilities(model, image, cfg) for image in images]
    return _scores_from_probs(probs, targets, cfg, labels)


def _scores_from_probs(
    probs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    cfg: Config,
    labels: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    preds, gts = [], []
    for p, target in zip(probs, targets):
        if cfg.data.task == "binary":
            pred = (p[..., 0] > cfg.predict.threshold).astype(np.int32)
        else:
            pred = np.argmax(p, axis=-1).astype(np.int32)
        valid = target != IGNORE_TARGET
        preds.append(pred[valid])
        gts.append(target[valid])
    pred_all, gt_all = np.concatenate(preds), np.concatenate(gts)
    n_classes = max(cfg.n_outputs, 2)
    out: dict[str, float] = {}
    if cfg.data.task == "classes":
        out["dice"] = float(np.nanmean(per_class_dice(pred_all, gt_all, n_classes)[1:]))
        out["foreground_dice"] = float(dice_score(pred_all > 0, gt_all > 0))
    else:
        out["dice"] = float(dice_score(pred_all > 0, gt_all > 0))
        if cfg.data.task == "instances":
            out["foreground_dice"] = out["dice"]
            per_class = per_class_dice(pred_all, gt_all, n_classes)
            out["interior_dice"], out["boundary_dice"] = float(per_class[1]), float(per_class[2])
    out["accuracy"] = float(np.mean(pred_all == gt_all))
    if cfg.data.task == "instances" and labels is not None:
        objects = [probabilities_to_labels(p, cfg) for p in probs]
        valid = [t != IGNORE_TARGET for t in targets]
        out["object_f1"] = score_images(objects, labels, "instances", valid)["object_f1"]
    return out


def predict_labels(model: keras.Model, image: np.ndarray, cfg: Config) -> np.ndarray:
    """Label image for one normalised `(H, W, C)` image (used by previews)."""
    return probabilities_to_labels(predict_probabilities(model, image, cfg), cfg)


def selection_metric(cfg: Config) -> str:
    """The validation score model selection maximises: `object_f1`, `dice` or `loss` (minimised)."""
    choice = cfg.train.select_metric
    if choice == "auto":
        return "object_f1" if cfg.data.task == "instances" else "dice"
    if choice == "object_f1" and cfg.data.task != "instances":
        return "dice"
    return choice


class Selection:
    """The selection rule: which epoch is kept, and whether early stopping may end the run.

    `update(epoch, score, elapsed_s)` returns True when this epoch becomes the kept model: with
    keep="best" when `score` beats every earlier one (higher is better; NaN never wins, ties keep
    the earlier epoch), with keep="last" always. `should_stop(elapsed_s)` is True when `patience`
    epochs (> 0) passed without a new best and at least `min_s` seconds have run.
    """

    def __init__(self, keep: str = "best", patience: int = 0, min_s: float = 0.0):
        self.keep, self.patience, self.min_s = keep, int(patience), float(min_s)
        self.best = -np.inf
        self.best_epoch: int | None = None
        self.selected_epoch: int | None = None
        self.last_epoch = 0

    def update(self, epoch: int, score: float) -> bool:
        self.last_epoch = epoch
        improved = bool(np.isfinite(score) and score > self.best)
        if improved:
            self.best, self.best_epoch = float(score), epoch
        if self.keep == "last" or improved:
            self.selected_epoch = epoch
            return True
        return False

    def should_stop(self, elapsed_s: float) -> bool:
        if self.patience <= 0 or self.best_epoch is None or elapsed_s < self.min_s:
            return False
        return self.last_epoch - self.best_epoch >= self.patience


def _best_reporter(on_best: BestHandler | None, make_result: Callable[..., TrainResult], cfg: Config):
    if on_best is None:
        return None

    def report(model: keras.Model, history: dict[str, list[float]], epoch: int, metrics: dict[str, float]) -> None:
        on_best(make_result(model, cfg, copy.deepcopy(history), "stopped", epoch, dict(metrics)))

    return report


def _tunes(cfg: Config, data: _Data) -> bool:
    """Whether training ends with a post-processing search on the validation images."""
    return bool(cfg.train.tune_postprocessing and cfg.data.task != "classes" and data.val_images and not cfg.predict.tuned)


def _tuned(probs: list[np.ndarray], cfg: Config, data: _Data) -> Config:
    """`cfg` with post-processing tuned on the validation predictions `probs` of the kept model."""
    if not _tunes(cfg, data):
        return cfg
    valid = [t != IGNORE_TARGET for t in data.val_targets]
    tuning = tune_postprocessing(probs, data.val_labels, cfg, data.train_sizes, valid)
    return cfg.replace(predict=tuning.values) if tuning.values else cfg


def _fit(
    model: keras.Model,
    cfg: Config,
    dataset: tf.data.Dataset,
    data: _Data,
    learning_rate: float,
    on_event: EventHandler | None,
    stop: StopFlag | None,
    t0: float,
    epochs: int,
    time_limit_s: float,
    on_best: Callable[..., None] | None,
    guard: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
    anchor: Sequence[np.ndarray] | None = None,
) -> tuple[dict[str, list[float]], str, int | None]:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=make_loss(cfg),
        metrics=make_metrics(cfg),
    )
    progress = _Progress(cfg, on_event, stop, data, t0, epochs, time_limit_s, on_best, guard)
    callbacks: list[keras.callbacks.Callback] = [progress]
    if anchor is not None and cfg.train.finetune_anchor > 0:
        callbacks.insert(0, _Anchor(model, anchor, cfg.train.finetune_anchor))
    if cfg.train.reduce_lr_patience > 0:
        monitor, mode = ("val_score", "max") if progress.validating else ("loss", "min")
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, mode=mode, factor=0.5, patience=cfg.train.reduce_lr_patience, min_delta=1e-3
            )
        )
    status = JobState.DONE
    try:
        if stop is not None and stop.is_set():
            status = JobState.STOPPED
        else:
            with _released_all_reduce_gradients():
                model.fit(
                    dataset,
                    epochs=epochs,
                    steps_per_epoch=cfg.train.steps_per_epoch,
                    callbacks=callbacks,
                    shuffle=False,  # the dataset samples patches at random itself
                    verbose=0,
                )
            status = JobState.STOPPED if progress.stopped else JobState.DONE
    except Exception as exc:
        progress.emit("end", status=JobState.CRASHED, message=f"{type(exc).__name__}: {exc}")
        raise
    progress.restore(model)
    progress.emit("end", status=status, message=progress.summary(status))
    return progress.history, status, progress.selection.selected_epoch


class _Anchor(keras.callbacks.Callback):
    """After every step, move each trainable weight `share` of the way back to the parent's value."""

    def __init__(self, model: keras.Model, parent_weights: Sequence[np.ndarray], share: float):
        super().__init__()
        index = {id(v): i for i, v in enumerate(model.weights)}  # the order of get_weights/set_weights
        if len(index) != len(parent_weights):
            raise ValueError(f"{len(parent_weights)} parent weights for a model with {len(index)}")
        self._pairs = [(v, keras.ops.convert_to_tensor(parent_weights[index[id(v)]])) for v in model.trainable_weights]
        self._keep = 1.0 - float(share)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        for variable, parent in self._pairs:
            variable.assign(parent + self._keep * (variable - parent))


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


class _Progress(keras.callbacks.Callback):
    """Sends TrainEvents, validates and selects after every epoch, stops within one step.

    One callback in a fixed order per epoch: validation -> history -> selection -> epoch event ->
    `on_best` -> early stopping, so the event and `on_best` see the epoch's validation scores.
    """

    def __init__(
        self,
        cfg: Config,
        on_event: EventHandler | None,
        stop: StopFlag | None,
        data: _Data,
        t0: float,
        epochs: int,
        time_limit_s: float,
        on_best: Callable[..., None] | None,
        guard: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.on_event, self.stop, self.data = cfg, on_event, stop, data
        self.t0, self.time_limit_s, self.on_best = t0, float(time_limit_s or 0.0), on_best
        self.guard = guard if guard and guard[0] else None
        self.epochs, self.steps = int(epochs), cfg.train.steps_per_epoch
        self.epoch, self.step, self.stopped = 1, 0, False
        self.time_up = self.early = False
        self.epoch_complete = False
        self.history: dict[str, list[float]] = {}
        self.validating = bool(data.val_images) or self.guard is not None
        self.metric = selection_metric(cfg)
        self.selection = Selection(cfg.train.keep, cfg.train.early_stopping_patience, cfg.train.early_stopping_min_s)
        self.weights: list[np.ndarray] | None = None
        self.selected_logs: dict[str, float] = {}
        self._loss = make_loss(cfg)
        self._steps_done = 0
        self._last: float | None = None
        self._step_times: list[float] = []
        self._val_times: list[float] = []  # an epoch's end: validation, selection, checkpoint
        self._predict_times: list[float] = []  # predicting the validation images (in _validate)
        self._score_times: list[float] = []  # post-processing and scoring them once
        # What train() does after the last epoch, in post-processing passes over the validation images.
        self._finish_passes = 1 + (tuning_passes(cfg) if _tunes(cfg, data) else 0) if data.val_images else 0

    # --- time -------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def eta(self) -> float | None:
        """Seconds left from measured step, validation and scoring times (the tracing first step excluded).

        Counts what follows the last epoch too: predicting the validation images once more and the
        post-processing search (`tuning_passes` scoring passes), which the job waits for.
        """
        if not self._step_times:
            return None
        recent = self._step_times[-ETA_WINDOW:]
        step = float(np.median(recent))
        remaining_steps = max(0, self.epochs * self.steps - self._steps_done)
        validations_left = self.epochs - self.epoch + (0 if self.epoch_complete else 1)
        val = float(np.mean(self._val_times)) if self._val_times else 0.0
        eta = remaining_steps * step + max(0, validations_left) * val
        if self.time_limit_s > 0:
            eta = min(eta, max(0.0, self.time_limit_s - self.elapsed()))
        return eta + self._finish_estimate()

    def _finish_estimate(self) -> float:
        if not self._finish_passes or not self._predict_times:
            return 0.0
        return float(np.mean(self._predict_times)) + self._finish_passes * float(np.mean(self._score_times))

    def emit(
        self, kind: str, logs: dict[str, Any] | None = None, status: JobState = JobState.RUNNING, message: str = "",
        selected: bool = False,
    ) -> None:
        if self.on_event is None:
            return
        clean = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v) or np.ndim(v) == 0}
        self.on_event(
            TrainEvent(
                kind=kind, epoch=self.epoch, epochs=self.epochs, step=self.step, steps=self.steps, logs=clean,
                elapsed_s=self.elapsed(), eta_s=self.eta() if status == JobState.RUNNING else None, status=status,
                message=message, model=self.model, selected=selected, time_limit_s=self.time_limit_s,
            )
        )

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set() and not self.stopped:
            self.stopped = True
            self.model.stop_training = True
        if self.time_limit_s > 0 and not self.time_up and self.elapsed() >= self.time_limit_s:
            self.time_up = True
            self.model.stop_training = True

    # --- Keras hooks --------------------------------------------------------------------------
    def on_train_begin(self, logs=None) -> None:
        self.emit("start")

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self.epoch, self.step, self.epoch_complete = epoch + 1, 0, False
        self._last = time.monotonic()

    def on_train_batch_end(self, batch, logs=None) -> None:
        now = time.monotonic()
        if self._steps_done > 0 and self._last is not None:  # the run's first step traces the graph
            self._step_times.append(now - self._last)
            del self._step_times[:-ETA_WINDOW]
        self._last = now
        self.step = batch + 1
        self._steps_done += 1
        self.epoch_complete = self.step >= self.steps
        self.emit("batch", logs)
        self._check_stop()

    def on_epoch_end(self, epoch, logs=None) -> None:
        # A partial epoch counts only when the time limit cut it (it is validated like the others);
        # after Stop the user wants the model back at once.
        if not (self.epoch_complete or (self.time_up and not self.stopped and self.step > 0)):
            return
        keras_logs = logs if isinstance(logs, dict) else {}
        logs = {k: v for k, v in keras_logs.items() if not k.startswith("val_")}
        started = time.monotonic()
        if self.validating and not self.stopped:
            val = self._validate()
            if val is not None:
                logs.update(val)
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        if "val_score" in logs:
            keras_logs["val_score"] = logs["val_score"]  # for ReduceLROnPlateau, which runs after this
            score = logs["val_score"]
        elif not self.validating:
            score = -float(logs.get("loss", np.inf))
        else:
            score = float("nan")  # validation cut short by Stop: this epoch cannot be selected
            # ReduceLROnPlateau wants the key; "no better" changes nothing, as training ends here.
            keras_logs["val_score"] = float("-inf")
        selected = self.selection.update(epoch + 1, score) if np.isfinite(score) or self.cfg.train.keep == "last" else False
        if selected:
            self.weights = [np.array(w, copy=True) for w in self.model.get_weights()]
            self.selected_logs = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        if selected and self.on_best is not None:
            self.on_best(self.model, self.history, epoch + 1, self.selected_logs)
        if self.validating:
            self._val_times.append(time.monotonic() - started)
        self.emit("epoch", logs, selected=selected)
        if self.selection.should_stop(self.elapsed()):
            self.early = True
            self.model.stop_training = True

    def _validate(self) -> dict[str, float] | None:
        """Validation scores of the current weights (None when Stop came during validation)."""
        out: dict[str, float] = {}
        parts: list[float] = []
        d = self.data
        if d.val_images:
            probs = []
            started = time.monotonic()
            try:  # Stop is obeyed between validation images and between their tiles
                for image in d.val_images:
                    probs.append(predict_probabilities(self.model, image, self.cfg, stop=self.stop))
            except PredictionStopped:
                self._check_stop()
                return None
            scored = time.monotonic()
            scores = _scores_from_probs(probs, d.val_targets, self.cfg, d.val_labels)
            self._predict_times.append(scored - started)
            self._score_times.append(time.monotonic() - scored)
            out.update({f"val_{k}": v for k, v in scores.items()})
            losses = [
                float(keras.ops.convert_to_numpy(self._loss(t[None, ..., None].astype(np.int32), p[None])))
                for p, t in zip(probs, d.val_targets)
            ]
            out["val_loss"] = float(np.mean(losses))
            if self.metric == "loss":
                parts.append(-out["val_loss"])
            elif self.metric == "object_f1":  # F1 leads; half the Dice breaks ties and damps noise
                parts.append(objective(scores, "instances"))
            else:
                parts.append(out["val_dice"])
        if self.guard is not None:
            probs = [predict_probabilities(self.model, image, self.cfg) for image in self.guard[0]]
            out["val_replay_dice"] = _scores_from_probs(probs, self.guard[1], self.cfg)["dice"]
            parts.append(out["val_replay_dice"])
        out["val_score"] = float(np.mean(parts))
        return out

    def restore(self, model: keras.Model) -> None:
        if self.weights is not None:
            model.set_weights(self.weights)

    def summary(self, status: str) -> str:
        what = "Stopped" if status == "stopped" else "Finished"
        why = " (time limit)" if self.time_up and status != "stopped" else " (early stopping)" if self.early else ""
        epoch = self.selection.selected_epoch
        if epoch is None:
            return f"{what}{why} after {self.elapsed():.0f} s (no complete epoch)."
        shown = ", ".join(f"{k} {v:.4f}" for k, v in self.selected_logs.items() if k in ("object_f1", "dice", "loss"))
        rule = "last epoch" if self.cfg.train.keep == "last" else f"best validation {self.metric}"
        return f"{what}{why} after {self.elapsed():.0f} s; kept epoch {epoch} ({rule}" + (f": {shown})." if shown else ").")


def _training_data(pairs: Sequence[TrainingPair], val_pairs: Sequence[TrainingPair] | None, cfg: Config) -> _Data:
    """Normalised images, targets and label images for training and validation (given, or split off)."""
    images, targets, _, labels = prepare_samples(pairs, cfg)
    if val_pairs:
        val_images, val_targets, _, val_labels = prepare_samples(val_pairs, cfg)
        train_images, train_targets, train_labels = images, targets, labels
    else:
        train_images, train_targets, val_images, val_targets = split_pairs(images, targets, cfg, cfg.train.seed)
        # The same split (it depends on the count and the targets only) applied to the label images.
        train_labels, _, val_labels, _ = split_pairs(labels, targets, cfg, cfg.train.seed)
    keep = [i for i, t in enumerate(val_targets) if np.any(t != IGNORE_TARGET)]
    val_images, val_targets, val_labels = ([x[i] for i in keep] for x in (val_images, val_targets, val_labels))
    sizes = reference_sizes(train_labels) if cfg.data.task != "classes" else np.zeros(0, dtype=np.int64)
    return _Data(train_images, train_targets, val_images, val_targets, val_labels, sizes)


def _replay_guard(
    images: list[np.ndarray], targets: list[np.ndarray], cfg: Config
) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """A few replay patches, evenly spread, scored after every fine-tuning epoch."""
    if not images:
        return None
    idx = np.unique(np.linspace(0, len(images) - 1, min(REPLAY_VAL_PATCHES, len(images))).astype(int))
    return [images[i] for i in idx], [targets[i] for i in idx]


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
    ).prefetch(2).with_options(static_options())


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
