"""Live training: a U-Net that keeps learning from strokes while the user paints (imports TensorFlow).

`LiveTrainer` holds one model, the image and a `strokes.StrokeStore`. `step()` trains one batch of
patches centred on painted pixels (half objects, half background); `paint()` adds a stroke without
restarting anything; `predict(view)` returns the labels of a field of view, computed on the view
plus the network's halo, so its cost follows the screen, not the image. `bundle()` is an ordinary
model (sparse labels, `data.sparse`) for Predict, Fine-tune and Review.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from . import bundle as bundle_io
from .channels import to_channels
from .config import IGNORE_TARGET, Config
from .data import INTENSITY_SCALE, INTENSITY_SHIFT, pad_pair
from .errors import InputError
from .live_source import LazyPlanes
from .model import build_model, halo, training_scope
from .normalize import normalize, percentiles
from .predict import predict_probabilities
from .strokes import StrokeStore, View, clip_view, context_window, patch_origin
from .targets import labels_to_target, probabilities_to_labels

#: Fine-tuning a given model live: this share of its learning rate (it already knows a lot).
LIVE_FINETUNE_LR_FACTOR = 0.3
#: Gradient norm clip: a few strokes give sharp losses whose big steps saturate the output (then
#: its gradient vanishes and the model stays "all background"); clipped steps do not.
CLIP_NORM = 1.0
#: Replay patches saved with a frozen model, cut around the strokes (for later fine-tuning).
FREEZE_REPLAY_PATCHES = 48
#: The shown model's weights are an exponential moving average of the trained ones with this decay
#: per step (Polyak averaging): single batches on a few strokes swing the raw weights, and one
#: background stroke could flip large regions for a frame or two; the average does not.
EMA_DECAY = 0.98


def as_planes(image: Any, rgb: bool) -> np.ndarray | LazyPlanes:
    """A layer's data as `(planes, H, W, C)` without copying: 2D, RGB, stacks, RGB stacks.

    A lazy array (zarr, dask) stays lazy: `LazyPlanes` reads only the regions asked for.
    """
    if isinstance(image, LazyPlanes):
        return image
    if not isinstance(image, np.ndarray):
        return LazyPlanes(image, rgb)
    spatial = image.ndim - (1 if rgb else 0)
    if spatial not in (2, 3):
        raise InputError(f"Live mode needs a 2D image or a stack of 2D planes; got shape {image.shape}.")
    if not rgb:
        image = image[..., None]
    return image[None] if spatial == 2 else image


def logit_loss(n_outputs: int) -> Any:
    """Cross-entropy of the logits over the annotated pixels (`IGNORE_TARGET` pixels count 0)."""
    from keras import ops

    def loss(y_true: Any, logits: Any) -> Any:
        labels = ops.cast(ops.round(ops.cast(y_true, "float32")), "int32")[..., 0]
        valid = ops.cast(labels >= 0, "float32")
        labels = ops.maximum(labels, 0)
        logits = ops.cast(logits, "float32")
        if n_outputs == 1:
            per_pixel = ops.binary_crossentropy(ops.cast(labels, "float32")[..., None], logits, from_logits=True)[..., 0]
        else:
            per_pixel = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return ops.sum(per_pixel * valid) / ops.maximum(ops.sum(valid), 1.0)

    loss.__name__ = "live_logit_loss"
    return loss


@dataclass
class LiveStats:
    steps: int = 0
    loss: float = float("nan")


class LiveTrainer:
    """Continuous training on a growing set of strokes (see the module docstring)."""

    def __init__(
        self,
        image: Any,
        labels: np.ndarray | StrokeStore,
        cfg: Config,
        parent: bundle_io.ModelBundle | None = None,
        rgb: bool = False,
        seed: int = 0,
        ema_decay: float | None = None,
    ) -> None:
        self.image = as_planes(image, rgb)
        self.rgb = rgb
        cfg = cfg.replace(data={"sparse": True}).validate()
        self.cfg = cfg
        self.parent = parent
        shape = labels.shape
        if tuple(shape) != tuple(self.image.shape[:3]):
            raise InputError(f"The labels ({tuple(shape)}) must have the image's shape {tuple(self.image.shape[:3])}.")
        self.store = labels if isinstance(labels, StrokeStore) else StrokeStore(labels, cfg.data.background_label)
        self.rng = np.random.default_rng(seed)
        self.stats = LiveStats()
        self._bounds: dict[int, tuple[float, float]] = {}
        keras.utils.set_random_seed(seed)
        with training_scope(cfg):
            self.model = build_model(cfg)
            if parent is not None:
                self.model.set_weights(parent.model.get_weights())
            lr = cfg.train.learning_rate * (LIVE_FINETUNE_LR_FACTOR if parent is not None else 1.0)
            # Trained on the logits (the same weights as `model`): a few strokes are fitted exactly
            # within seconds, which drives a probability output into saturation, where its gradient
            # vanishes and later strokes can no longer change it. A loss of the logits keeps learning.
            logits = self.model.get_layer("probabilities").input
            self.train_model = keras.Model(self.model.input, logits, name="live_logits")
            self.train_model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr, clipnorm=CLIP_NORM),
                                     loss=logit_loss(cfg.n_outputs))  # fmt: skip
            self.shown = WeightAverage(self.model, EMA_DECAY if ema_decay is None else ema_decay)
        self.halo = halo(cfg)

    # ------------------------------------------------------------------ data
    def bounds(self, plane: int) -> tuple[float, float]:
        """Normalisation percentiles of a plane (a strided subsample of large planes), computed once."""
        if plane not in self._bounds:
            d = self.cfg.data
            pixels = self.image.sample(plane) if isinstance(self.image, LazyPlanes) else self.image[plane]
            self._bounds[plane] = percentiles(self._channels(pixels), d.norm_low, d.norm_high)
        return self._bounds[plane]

    def _channels(self, region: np.ndarray) -> np.ndarray:
        """An `(h, w, C)` region with the model's channel count (luminance for RGB into gray)."""
        have, want = region.shape[-1], self.cfg.data.in_channels
        if have == want:
            return np.asarray(region)
        out = to_channels(np.asarray(region), want, rgb=True)
        return out[..., None] if out.ndim == 2 else out

    def normalised(self, plane: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        region = self._channels(self.image[plane, top:bottom, left:right])
        return normalize(region, bounds=self.bounds(plane))

    def paint(self, plane: int, top: int, left: int, patch: np.ndarray) -> None:
        self.store.paint(plane, top, left, patch)

    @property
    def ready(self) -> bool:
        """Whether both an object and background are painted.

        Training on one kind alone teaches "everything is that kind" within a few steps and
        saturates the output, which later strokes then struggle to undo.
        """
        objects, background = self.store.counts()
        return objects > 0 and background > 0

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Augmented patches around painted pixels: x `(B, P, P, C)`, y `(B, P, P, 1)` (-1: not painted)."""
        d, size = self.cfg.data, self.cfg.data.patch_size
        centres = self.store.sample(self.cfg.train.batch_size, self.rng)
        xs, ys = [], []
        for centre in centres:
            x, y = self._patch(centre, size)
            if d.flips and self.rng.random() < 0.5:
                x, y = x[::-1], y[::-1]
            if d.flips and self.rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            if d.rotations:
                k = int(self.rng.integers(4))
                x, y = np.rot90(x, k), np.rot90(y, k)
            if d.intensity:
                x = x * np.float32(self.rng.uniform(*INTENSITY_SCALE)) + np.float32(self.rng.uniform(*INTENSITY_SHIFT))
            xs.append(x)
            ys.append(y)
        return np.stack(xs).astype(np.float32), np.stack(ys)[..., None].astype(np.int32)

    def _patch(self, centre: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        plane = int(centre[0])
        top, left = patch_origin(centre, size, self.store.shape, self.rng)
        bottom, right = top + size, left + size
        x = self.normalised(plane, top, left, bottom, right)
        y = labels_to_target(np.asarray(self.store.labels[plane, top:bottom, left:right]), self.cfg.data)
        return pad_pair(x, y, size, size)  # images smaller than a patch: reflection, ignored target

    # ------------------------------------------------------------------ training and prediction
    def warm_up(self, view: View | None = None) -> None:
        """Trace the training and prediction functions now, not on the first stroke (seconds on a CPU).

        The training batch is all "not annotated": the loss and its gradients are 0, and Adam's first
        update of a zero gradient is 0, so the weights do not change.
        """
        size, c = self.cfg.data.patch_size, self.cfg.data.in_channels
        x = np.zeros((self.cfg.train.batch_size, size, size, c), np.float32)
        self.train_model.train_on_batch(x, np.full(x.shape[:3] + (1,), IGNORE_TARGET, np.int32))
        self.shown.trace()
        if view is not None:
            self.predict(view)

    def step(self) -> float | None:
        """One training batch on the strokes painted so far; None while nothing is painted."""
        if not self.ready:
            return None
        x, y = self.batch()
        loss = self.train_model.train_on_batch(x, y, return_dict=True)["loss"]
        self.shown.update()
        self.stats.steps += 1
        self.stats.loss = float(loss)
        return self.stats.loss

    def predict(self, view: View) -> tuple[View, np.ndarray, np.ndarray]:
        """(the view predicted, its labels int32 `(h, w)`, its probabilities `(h, w, K)`).

        The view is clipped to the image and to `strokes.MAX_VIEW` pixels per side; the network
        sees it with `halo` pixels of context on every side, so its borders are seamless.
        """
        view = clip_view(view, self.store.shape)
        window = context_window(view, self.store.shape, self.halo)
        image = self.normalised(view.plane, window.top, window.left, window.bottom, window.right)
        probs = predict_probabilities(self.shown.model, image, self._predict_cfg(window))
        rows = slice(view.top - window.top, view.bottom - window.top)
        cols = slice(view.left - window.left, view.right - window.left)
        probs = probs[rows, cols]
        return view, probabilities_to_labels(probs, self.cfg), probs

    def _predict_cfg(self, window: View) -> Config:
        """One tile for the whole window (its context is the image around it, not a tile overlap)."""
        m = self.cfg.size_multiple
        side = -(-max(window.shape) // m) * m
        tile = max(self.cfg.predict.tile_size, side + 2 * -(-self.halo // m) * m)
        return self.cfg.replace(predict={"tile_size": tile})

    # ------------------------------------------------------------------ freezing
    def replay(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Patches around the strokes (normalised image, target with -1 where not painted)."""
        rng = np.random.default_rng(0)
        n = min(FREEZE_REPLAY_PATCHES, max(1, self.store.annotated // 64))
        size = self.cfg.data.patch_size
        pairs = [self._patch(c, size) for c in self.store.sample(n, rng)] if self.ready else []
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def bundle(self, name: str) -> bundle_io.ModelBundle:
        """The model as it is now, with what a version folder records about it."""
        fg, bg = self.store.counts()
        planes = self.image.shape[0]
        history = {"loss": [self.stats.loss], "steps": [float(self.stats.steps)]}
        data = {"name": name, "shape": list(self.image.shape), "live_object_pixels": fg, "live_background_pixels": bg,
                "planes": planes}  # fmt: skip
        parent = str(self.parent.path) if self.parent is not None and self.parent.path is not None else None
        return bundle_io.ModelBundle(self.shown.model, self.cfg, history, [data], parent, {})  # what was shown


class WeightAverage:
    """A copy of `trained` whose weights are an exponential moving average of its weights.

    The decay grows as `min(decay, (1 + n) / (10 + n))` over the `n` updates so far, so the first
    steps are not averaged with the random initialisation (TensorFlow's `num_updates` rule).
    """

    def __init__(self, trained: keras.Model, decay: float) -> None:
        import tensorflow as tf

        self.model = keras.models.clone_model(trained)
        self.model.set_weights(trained.get_weights())
        self.decay = float(decay)
        self.updates = 0
        pairs = list(zip(self.model.weights, trained.weights))

        @tf.function
        def blend(rate: tf.Tensor) -> None:
            for average, current in pairs:
                average.assign(average + (current - average) * tf.cast(rate, average.dtype))

        self._blend = blend

    def trace(self) -> None:
        """Trace the update now (a blend at rate 0 changes nothing)."""
        import tensorflow as tf

        self._blend(tf.constant(0.0, tf.float32))

    def update(self) -> None:
        import tensorflow as tf

        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))  # 0: no averaging
        self._blend(tf.constant(1.0 - decay, tf.float32))


def from_parent(parent: bundle_io.ModelBundle, background_label: int) -> Config:
    """A given model's configuration, switched to sparse labels for live training."""
    return parent.config.replace(data={"sparse": True, "background_label": background_label})
