"""U-Net builders, the context (halo) a tile needs, and device set-up.

Models use only built-in Keras layers (no Lambda, no custom objects), so
``keras.saving.load_model(path, safe_mode=True, compile=False)`` reads them back.
The output layer computes in float32, so the models also work under mixed precision.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
import math
import os
import warnings
from pathlib import Path

import keras
import tensorflow as tf
from keras import layers

from .config import Config
from .errors import ConfigError

#: MobileNetV2 layers whose outputs feed the decoder (strides 2, 4, 8, 16; then the 1/32 bottleneck),
#: as in the TensorFlow pix2pix segmentation tutorial.
MOBILENET_SKIPS: tuple[str, ...] = (
    "block_1_expand_relu",
    "block_3_expand_relu",
    "block_6_expand_relu",
    "block_13_expand_relu",
)
MOBILENET_BOTTLENECK = "block_16_project"
MOBILENET_DECODER_FILTERS: tuple[int, ...] = (512, 256, 128, 64)


def build_model(cfg: Config) -> keras.Model:
    """Build the network `cfg.model` describes: input `(None, None, C)`, output `(None, None, n_outputs)`.

    "unet": `depth` poolings, `base_filters` doubled per level, blocks of two 3x3 conv (+ batch norm)
    + ReLU, dropout after the two deepest blocks, transposed-conv or bilinear upsampling, skip
    concatenation, 1x1 head. "mobilenetv2": MobileNetV2 encoder (inputs 0..1 rescaled to -1..1),
    pix2pix decoder of stride-2 transposed convs. Sigmoid head for binary, softmax otherwise.
    Height and width must be multiples of `cfg.size_multiple`.
    """
    cfg.validate()
    if cfg.model.architecture == "imported":
        raise ConfigError(
            "This model's network came from a bioimage.io package and cannot be built from scratch; "
            "fine-tune the imported model, or train a napari-unet U-Net (model.architecture 'unet')."
        )
    inputs = keras.Input((None, None, cfg.data.in_channels), name="image")
    if cfg.model.architecture == "mobilenetv2":
        logits = _mobilenet_unet(inputs, cfg)
    else:
        logits = _plain_unet(inputs, cfg)
    activation = "sigmoid" if cfg.n_outputs == 1 else "softmax"
    outputs = layers.Activation(activation, dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=f"{cfg.model.architecture}_{cfg.data.task}")


def _conv_block(
    x: keras.KerasTensor, filters: int, batch_norm: bool, name: str, n_convs: int = 2
) -> keras.KerasTensor:
    for i in range(1, n_convs + 1):
        x = layers.Conv2D(
            filters, 3, padding="same", use_bias=not batch_norm, kernel_initializer="he_normal", name=f"{name}_conv{i}"
        )(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def _plain_unet(inputs: keras.KerasTensor, cfg: Config) -> keras.KerasTensor:
    m = cfg.model
    depth, bn = m.depth, m.batch_norm
    x = inputs
    skips = []
    for level in range(depth + 1):
        x = _conv_block(x, m.base_filters * 2**level, bn, name=f"enc{level}" if level < depth else "bottleneck")
        if m.dropout > 0 and level >= depth - 1:  # the two deepest blocks
            x = layers.Dropout(m.dropout, name=f"drop{level}")(x)
        if level < depth:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    for level in reversed(range(depth)):
        filters = m.base_filters * 2**level
        if m.upsampling == "transpose":
            x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}")(x)
        else:
            x = _bilinear_up(x, name=f"up{level}")
            x = _conv_block(x, filters, bn, name=f"up{level}", n_convs=1)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, filters, bn, name=f"dec{level}")
    return layers.Conv2D(cfg.n_outputs, 1, name="head")(x)


#: Separable [1, 2, 1] / 4 smoothing: after nearest x2 upsampling it gives bilinear x2 (half-pixel centres).
_BILINEAR_KERNEL = [[[[a * b / 16.0]] for b in (1, 2, 1)] for a in (1, 2, 1)]


def _bilinear_up(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """Bilinear x2 upsampling that works for any input size inside tf.function.

    Keras 3.15's ``UpSampling2D(interpolation="bilinear")`` fails in a traced function whose height
    and width are unknown (``model.predict`` on a second image size), so it is built from nearest
    upsampling and a fixed depthwise smoothing. Equal to ``tf.image.resize(..., "bilinear")`` except
    on the outermost output row/column, where zero padding replaces edge clamping.
    """
    x = layers.UpSampling2D(2, interpolation="nearest", name=name)(x)
    return layers.DepthwiseConv2D(
        3,
        padding="same",
        use_bias=False,
        depthwise_initializer=keras.initializers.Constant(_BILINEAR_KERNEL),
        trainable=False,
        name=f"{name}_bilinear",
    )(x)


def _mobilenet_unet(inputs: keras.KerasTensor, cfg: Config) -> keras.KerasTensor:
    """MobileNetV2 encoder + pix2pix decoder; the encoder's layers are part of this model (flat graph)."""
    scaled = layers.Rescaling(2.0, offset=-1.0, name="to_mobilenet_range")(inputs)  # 0..1 -> -1..1
    base = keras.applications.MobileNetV2(input_tensor=scaled, include_top=False, weights=None)
    if cfg.model.encoder_weights:
        _load_encoder_weights(base, cfg.model.encoder_weights)
    else:
        warnings.warn(
            "The MobileNetV2 encoder is untrained (no encoder_weights file given and nothing can be "
            "downloaded); set model.encoder_weights to a local MobileNetV2 weights file for a pretrained encoder.",
            UserWarning,
            stacklevel=3,
        )
    x = base.get_layer(MOBILENET_BOTTLENECK).output
    skips = [base.get_layer(name).output for name in reversed(MOBILENET_SKIPS)]
    for i, (filters, skip) in enumerate(zip(MOBILENET_DECODER_FILTERS, skips, strict=True)):
        x = layers.Conv2DTranspose(
            filters, 3, strides=2, padding="same", use_bias=not cfg.model.batch_norm, name=f"decoder{i}_up"
        )(x)
        if cfg.model.batch_norm:
            x = layers.BatchNormalization(name=f"decoder{i}_bn")(x)
        if cfg.model.dropout > 0 and i < 2:  # the two deepest decoder blocks
            x = layers.Dropout(cfg.model.dropout, name=f"decoder{i}_drop")(x)
        x = layers.ReLU(name=f"decoder{i}_relu")(x)
        x = layers.Concatenate(name=f"decoder{i}_skip")([x, skip])
    return layers.Conv2DTranspose(cfg.n_outputs, 3, strides=2, padding="same", name="head")(x)


def _load_encoder_weights(base: keras.Model, path_str: str) -> None:
    """Copy weights from a local MobileNetV2 (include_top=False) weights file into `base`.

    Accepts Keras 3 ``.weights.h5`` files (``model.save_weights``), legacy ``.h5`` files such as
    keras-applications' ``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5``,
    and whole ``.keras`` models whose layers carry MobileNetV2's names.
    """
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.encoder_weights: no file at {path}. Give a local MobileNetV2 weights file "
            "(.weights.h5, .h5 or .keras) or leave it empty for an untrained encoder."
        )
    source = keras.applications.MobileNetV2(input_shape=(None, None, 3), include_top=False, weights=None)
    try:
        if path.name.endswith(".keras"):
            loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
            for layer in source.layers:
                if layer.weights:
                    layer.set_weights(loaded.get_layer(layer.name).get_weights())
        else:
            source.load_weights(path)
    except Exception as exc:  # h5py, Keras and value errors all mean "not usable weights"
        raise ConfigError(
            f"model.encoder_weights: {path} could not be read as MobileNetV2 encoder weights "
            f"(include_top=False, alpha 1.0): {exc}"
        ) from exc
    for layer in source.layers:
        if layer.weights:
            base.get_layer(layer.name).set_weights(layer.get_weights())


# --- halo -------------------------------------------------------------------------------------


def halo(cfg: Config) -> int:
    """Context in pixels a tile needs on each side so that tiled prediction equals whole-image prediction.

    Computed, not guessed: the receptive field of `build_model(cfg)` is traced through the layer graph
    (see `receptive_halo`). It depends only on architecture, depth and upsampling: plain U-Net with
    transposed convolutions 9, 23, 51, 107, 219, 443 for depth 1..6 (bilinear: 65 at depth 3, 569 at
    depth 6); mobilenetv2 276. Single-pixel perturbation tests reproduce these numbers exactly.
    Tiles must start at multiples of `cfg.size_multiple` so pooling grids align; then pixels at least
    `halo` away from a tile's inner edges see exactly what they see in the whole image.
    """
    m = cfg.model
    if m.architecture == "imported":
        return 0  # an imported network's context is its package's halo, stored as predict.overlap
    known = KNOWN_HALOS.get((m.architecture, m.depth, m.upsampling))
    return known if known is not None else _halo_for(m.architecture, m.depth, m.upsampling)


#: `_halo_for` of every plain U-Net, so that prediction does not build a model (0.2-0.4 s) to learn it;
#: tests/core/test_predict_startup.py recomputes each entry.
KNOWN_HALOS: dict[tuple[str, int, str], int] = {
    ("unet", 1, "transpose"): 9, ("unet", 2, "transpose"): 23, ("unet", 3, "transpose"): 51,
    ("unet", 4, "transpose"): 107, ("unet", 5, "transpose"): 219, ("unet", 6, "transpose"): 443,
    ("unet", 1, "bilinear"): 11, ("unet", 2, "bilinear"): 29, ("unet", 3, "bilinear"): 65,
    ("unet", 4, "bilinear"): 137, ("unet", 5, "bilinear"): 281, ("unet", 6, "bilinear"): 569,
}  # fmt: skip


@functools.lru_cache(maxsize=None)
def _halo_for(architecture: str, depth: int, upsampling: str) -> int:
    cfg = Config().replace(
        model={"architecture": architecture, "depth": depth, "upsampling": upsampling, "base_filters": 1},
        data={"in_channels": 3 if architecture == "mobilenetv2" else 1, "patch_size": 256},
        predict={"tile_size": 1024, "overlap": 0},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg)
    return receptive_halo(model, cfg.size_multiple)


def receptive_halo(model: keras.Model, size_multiple: int) -> int:
    """Largest distance from an output pixel to an input pixel that influences it (one axis).

    Walks the functional graph from the output back to the input with index intervals, for every
    output position modulo `size_multiple` (inputs whose height and width are multiples of it).
    Raises ValueError for layers whose spatial footprint it does not know.
    """
    base = size_multiple * 4096  # far from index 0, so no interval reaches negative positions
    reach = 0
    for o in range(base, base + size_multiple):
        lo, hi = _input_interval(model, o)
        reach = max(reach, o - lo, hi - o)
    return reach


def _input_interval(model: keras.Model, position: int) -> tuple[int, int]:
    demand: dict[int, tuple[int, int]] = {id(t): (position, position) for t in model.outputs}
    for depth in sorted(model._nodes_by_depth):  # outputs first, inputs last
        for node in model._nodes_by_depth[depth]:
            wanted = [demand[id(t)] for t in node.output_tensors if id(t) in demand]
            if not wanted or not node.input_tensors:
                continue
            lo = min(w[0] for w in wanted)
            hi = max(w[1] for w in wanted)
            in_lo, in_hi = _layer_interval(node.operation, lo, hi)
            for t in node.input_tensors:
                old = demand.get(id(t))
                demand[id(t)] = (in_lo, in_hi) if old is None else (min(old[0], in_lo), max(old[1], in_hi))
    found = [demand[id(t)] for t in model.inputs if id(t) in demand]
    if not found:
        raise ValueError("The model's output does not depend on its input.")
    return min(f[0] for f in found), max(f[1] for f in found)


_POINTWISE = (
    layers.BatchNormalization,
    layers.Activation,
    layers.ReLU,
    layers.LeakyReLU,
    layers.Dropout,
    layers.SpatialDropout2D,
    layers.GaussianNoise,
    layers.Rescaling,
    layers.Concatenate,
    layers.Add,
    layers.Multiply,
    layers.Identity,
    layers.InputLayer,
)


def _same_pad(kernel: int, stride: int, dilation: int = 1) -> int:
    """Leading zero padding of TensorFlow's "same" for inputs divisible by the stride."""
    return max((kernel - 1) * dilation + 1 - stride, 0) // 2


def _layer_interval(layer: keras.layers.Layer, lo: int, hi: int) -> tuple[int, int]:
    """Input index interval (one spatial axis) that output indices lo..hi of `layer` depend on."""
    if isinstance(layer, layers.Conv2DTranspose):
        k, s = layer.kernel_size[0], layer.strides[0]
        pad = _same_pad(k, s) if layer.padding == "same" else 0
        return -((-(lo + pad - k + 1)) // s), (hi + pad) // s
    if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)):
        k, s, d = layer.kernel_size[0], layer.strides[0], layer.dilation_rate[0]
        pad = _same_pad(k, s, d) if layer.padding == "same" else 0
        return lo * s - pad, hi * s - pad + (k - 1) * d
    if isinstance(layer, (layers.MaxPooling2D, layers.AveragePooling2D)):
        p, s = layer.pool_size[0], layer.strides[0]
        pad = _same_pad(p, s) if layer.padding == "same" else 0
        return lo * s - pad, hi * s - pad + p - 1
    if isinstance(layer, layers.UpSampling2D):
        s = layer.size[0]
        if layer.interpolation == "nearest":
            return lo // s, hi // s
        # half-pixel centres: output o samples input (o + 0.5) / s - 0.5 and its right neighbour
        return math.floor((lo + 0.5) / s - 0.5), math.floor((hi + 0.5) / s - 0.5) + 1
    if isinstance(layer, layers.ZeroPadding2D):
        top = layer.padding[0][0]
        return lo - top, hi - top
    if isinstance(layer, layers.Cropping2D):
        top = layer.cropping[0][0]
        return lo + top, hi + top
    if isinstance(layer, _POINTWISE):
        return lo, hi
    raise ValueError(f"Cannot compute the halo through layer {layer.name!r} ({type(layer).__name__}).")


# --- devices ----------------------------------------------------------------------------------


def configure_devices(cfg: Config) -> tf.distribute.Strategy:
    """Set the Keras precision policy and return the distribution strategy for training.

    ``train.mixed_precision == "auto"``: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with
    bfloat16 instructions (`cpu_has_bfloat16`: about twice the float32 training speed), float32
    otherwise or with "off", resetting any policy set earlier. Models are saved in float32 either
    way (`float32_model`). More than one GPU: MirroredStrategy; else the default strategy.
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:  # share the GPU with napari's rendering instead of grabbing all its memory
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised: the setting can no longer change
    policy = "float32"
    if cfg.train.mixed_precision == "auto":
        policy = "mixed_float16" if gpus else ("mixed_bfloat16" if cpu_has_bfloat16() else "float32")
    keras.mixed_precision.set_global_policy(policy)
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@contextmanager
def training_scope(cfg: Config) -> Iterator[tf.distribute.Strategy]:
    """Build (and compile) a model to train inside this: `configure_devices` and its strategy's scope.

    The global precision policy is restored on exit: the built layers keep theirs, and nothing built
    later in the process (another job's model, a float32 copy to save) inherits a mixed policy.
    """
    previous = keras.mixed_precision.global_policy()
    try:
        strategy = configure_devices(cfg)
        with strategy.scope():
            yield strategy
    finally:
        keras.mixed_precision.set_global_policy(previous)


@functools.lru_cache(maxsize=1)
def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX-512 BF16; Linux only, else False)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def float32_model(model: keras.Model, cfg: Config) -> keras.Model:
    """The model with float32 layers: a mixed-precision one rebuilt from `cfg` with its weights.

    What is saved: a model saved with mixed layers would compute in 16 bits wherever it is loaded.
    """
    if cfg.model.architecture == "imported" or all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_model(cfg)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


@functools.lru_cache(maxsize=1)
def device_info() -> str:
    """Human-readable compute device, e.g. "CPU (2 cores)" or "GPU: NVIDIA H100 80GB HBM3"."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return f"CPU ({cores} core{'s' if cores != 1 else ''})"
    names = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    return "GPU: " + ", ".join(names)
