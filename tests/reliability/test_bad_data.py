"""Bad data in the core: each case is refused with a message naming the data and the fix, or handled.

Handled cases are checked three ways: one real training step on the batch the pipeline makes from
them (eager, so no per-case graph tracing), a real `train()` run on all of them together, and a
prediction whose probabilities do not depend on the input dtype (normalisation makes them equal).
Widget-level cases are at the end.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.data import TrainingPair
from napari_unet.core.errors import InputError

from reliability_helpers import blob_pair, tiny_config

IMAGE, LABELS = blob_pair(64, 64, seed=3)


def _float_image() -> np.ndarray:
    return IMAGE.astype(np.float32)


def _with(value: float) -> np.ndarray:
    img = _float_image()
    img[LABELS > 0] = value
    return img


# (case id, image, labels, config sections, message pattern: what is wrong + which data + what to do)
REFUSED = [
    (
        "empty labels",
        IMAGE, np.zeros_like(LABELS), {},
        r"labels layer 'case' has no labelled pixels.*paint at least one object",
    ),
    (
        "labels all ignore label",
        IMAGE, np.full_like(LABELS, 9), {"data": {"ignore_label": 9}},
        r"labels layer 'case' has no labelled pixels \(only background or ignored\)",
    ),
    (
        "image/labels shape mismatch",
        IMAGE, LABELS[:60], {},
        r"labels for case have shape \(60, 64\) but the image's spatial shape is \(64, 64\).*pixel for pixel",
    ),
    (
        "2D labels on a 3D stack",
        np.stack([IMAGE, IMAGE, IMAGE]), LABELS, {},
        r"labels for case have shape \(64, 64\) but the image's spatial shape is \(3, 64, 64\)",
    ),
    (
        "1-pixel image",
        np.array([[7]], np.uint8), np.array([[1]], np.uint8), {},
        r"case is 1x1 pixels; images must be at least 4 pixels on each side",
    ),
    (
        "NaN in a float image",
        _with(np.nan), LABELS, {},
        r"case has \d+ NaN or infinite pixel\(s\); replace them .*nan_to_num",
    ),
    (
        "Inf in a float image",
        _with(np.inf), LABELS, {},
        r"case has \d+ NaN or infinite pixel\(s\)",
    ),
    (
        "-Inf in a float image",
        _with(-np.inf), LABELS, {},
        r"case has \d+ NaN or infinite pixel\(s\)",
    ),
    (
        "negative label values",
        IMAGE, LABELS.astype(np.int16) - 1, {},
        r"labels of 'case': Labels contain negative value\(s\) \[-1\].*set data.ignore_label",
    ),
    (
        "label ids beyond the configured classes",
        IMAGE, np.minimum(LABELS, 5), {"data": {"task": "classes", "n_classes": 3}},
        r"labels of 'case': Labels contain value\(s\) \[3, 4, 5\] but the classes task has n_classes=3"
        r".*raise data.n_classes",
    ),
    (
        "non-integer labels",
        IMAGE, LABELS.astype(np.float32) + 0.5, {},
        r"labels for case are not whole numbers",
    ),
    # "RGB image for a one-channel model" is no longer refused in training: the channel rule
    # (core/channels.py, docs/reliability.md) converts it to gray by luminance.
    (
        "complex image",
        IMAGE.astype(np.complex64), LABELS, {},
        r"case has dtype complex64; use an integer or float image",
    ),
    (
        "5D image",
        IMAGE[None, None, :, :, None], LABELS, {},
        r"case has 5 dimensions; use a 2D image, RGB, or a stack",
    ),
    (
        "empty image",
        np.zeros((0, 64), np.uint8), np.zeros((0, 64), np.uint8), {},
        r"case is empty \(shape \(0, 64\)\)",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    "image, labels, sections, message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused_before_any_training_with_an_actionable_message(image, labels, sections, message):
    from napari_unet.core.train import train

    events = []
    with pytest.raises(InputError, match=message):
        train([TrainingPair(image, labels, "case")], tiny_config(**sections), on_event=events.append)
    assert events == [], "nothing may start before the data is checked"


def test_no_pairs_at_all():
    from napari_unet.core.train import train

    with pytest.raises(InputError, match="No training pairs given; pick at least one image"):
        train([], tiny_config())


@pytest.mark.parametrize(
    "image, message",
    [
        (_with(np.nan), r"image has \d+ NaN or infinite pixel\(s\)"),
        (_with(np.inf), r"image has \d+ NaN or infinite pixel\(s\)"),
        (np.stack([IMAGE] * 3, axis=-1), r"image has 3 channel\(s\) but the model expects 1.*train a new model"),
        (IMAGE[None, None, :, :, None], r"image has 5 dimensions"),
        (np.zeros((64, 0), np.uint8), r"image is empty"),
    ],
    ids=["NaN", "Inf", "RGB on a gray model", "5D", "empty"],
)
def test_prediction_refuses_unusable_images(trained, image, message):
    from napari_unet.core.predict import predict_image

    with pytest.raises(InputError, match=message):
        predict_image(trained.model, image, trained.config)


# ---------------------------------------------------------------- handled cases


def _scaled(dtype) -> np.ndarray:
    """IMAGE's content in another dtype (same picture up to an affine intensity change)."""
    base = IMAGE.astype(np.float64)
    if dtype is np.int8:
        return (base - 128).astype(np.int8)
    if dtype is np.uint16:
        return (base * 257).astype(np.uint16)
    if dtype is np.uint32:
        return (base * 65536 + 1000).astype(np.uint32)
    if dtype is np.float64:
        return base / 255.0
    if dtype is np.float32:
        return (base / 255.0 - 0.5).astype(np.float32)
    raise AssertionError(dtype)


def _tall(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return blob_pair(h, w, seed=seed, radius=3.0)


HANDLED = {
    "all-foreground labels": lambda: (IMAGE, np.ones_like(LABELS), {}),
    "all-foreground instance": lambda: (IMAGE, np.ones_like(LABELS), {"data": {"task": "instances"}}),
    "one class of three": lambda: (
        IMAGE,
        (LABELS > 0).astype(np.uint8),
        {"data": {"task": "classes", "n_classes": 3}},
    ),
    "image smaller than a patch (20x24)": lambda: (*_tall(20, 24, 4), {}),
    "elongated image (16x2000)": lambda: (*_tall(16, 2000, 5), {}),
    "elongated image (2000x16)": lambda: (*_tall(2000, 16, 6), {}),
    "constant image": lambda: (np.full((64, 64), 7, np.uint16), LABELS, {}),
    "int8 image": lambda: (_scaled(np.int8), LABELS, {}),
    "uint16 image": lambda: (_scaled(np.uint16), LABELS, {}),
    "uint32 image": lambda: (_scaled(np.uint32), LABELS, {}),
    "float64 image": lambda: (_scaled(np.float64), LABELS, {}),
    "bool image": lambda: (IMAGE > 100, LABELS, {}),
    "bool labels": lambda: (IMAGE, LABELS > 0, {}),
    "int8 labels": lambda: (IMAGE, np.minimum(LABELS, 100).astype(np.int8), {}),
    "uint32 labels with huge ids": lambda: (IMAGE, LABELS.astype(np.uint32) * 40_000_000, {}),
    "float labels with whole values": lambda: (IMAGE, LABELS.astype(np.float32), {}),
    "RGB image": lambda: (np.stack([IMAGE, IMAGE // 2, IMAGE], -1), LABELS, {"data": {"in_channels": 3}}),
    "RGBA image": lambda: (
        np.dstack([IMAGE, IMAGE, IMAGE, np.full_like(IMAGE, 255)]),
        LABELS,
        {"data": {"in_channels": 3}},
    ),
    "stack with 3D labels": lambda: (np.stack([IMAGE, IMAGE.T]), np.stack([LABELS, LABELS.T]), {}),
    "stack with one unlabelled slice": lambda: (np.stack([IMAGE, IMAGE]), np.stack([LABELS, 0 * LABELS]), {}),
    "labels with an unannotated strip": lambda: (IMAGE, _unannotated_strip(), {"data": {"ignore_label": 255}}),
}


def _unannotated_strip() -> np.ndarray:
    labels = np.minimum(LABELS, 200).astype(np.uint8)
    labels[:, :24] = 255  # the ignore label: not annotated
    return labels


def one_training_step(pairs: list[TrainingPair], cfg) -> tuple[float, float]:
    """The pipeline's first batch through one real (eager) optimisation step: (loss, gradient norm)."""
    import keras
    import tensorflow as tf

    from napari_unet.core.data import make_train_dataset, prepare_pairs, split_pairs, val_patches
    from napari_unet.core.losses import make_loss
    from napari_unet.core.model import build_model

    images, targets, _ = prepare_pairs(pairs, cfg)
    train_x, train_y, val_x, val_y = split_pairs(images, targets, cfg, seed=0)
    if val_x and any(np.any(t >= 0) for t in val_y):
        vx, vy = val_patches(val_x, val_y, cfg)
        assert np.isfinite(vx).all() and vy.min() >= -1 and vy.max() < max(cfg.n_outputs, 2)
    x, y = next(iter(make_train_dataset(train_x, train_y, cfg, seed=0)))
    assert np.isfinite(x.numpy()).all()
    assert y.numpy().min() >= -1 and y.numpy().max() < max(cfg.n_outputs, 2)
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    loss_fn = make_loss(cfg)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    norm = float(tf.linalg.global_norm(grads))
    before = [v.numpy().copy() for v in model.trainable_variables]
    keras.optimizers.Adam(1e-3).apply_gradients(zip(grads, model.trainable_variables))
    changed = any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))
    assert changed, "the optimisation step changed no weight"
    return float(loss), norm


@pytest.mark.parametrize("case", list(HANDLED))
def test_handled_cases_give_a_finite_training_step(case):
    image, labels, sections = HANDLED[case]()
    cfg = tiny_config(**sections)
    loss, grad_norm = one_training_step([TrainingPair(image, labels, case)], cfg)
    assert np.isfinite(loss) and loss > 0, loss
    assert np.isfinite(grad_norm) and grad_norm > 0, grad_norm


def test_odd_single_channel_pairs_train_together_end_to_end():
    """A real `train()` on tiny, elongated, constant, all-foreground and mixed-dtype pairs at once."""
    from napari_unet.core.predict import predict_image
    from napari_unet.core.train import train

    names = [
        "image smaller than a patch (20x24)", "elongated image (16x2000)", "constant image",
        "all-foreground labels", "int8 image", "uint32 image", "float64 image", "bool image",
        "int8 labels", "stack with one unlabelled slice",
    ]  # fmt: skip
    pairs = [TrainingPair(*HANDLED[n]()[:2], n) for n in names]
    events = []
    result = train(pairs, tiny_config(data={"val_fraction": 0.2}), on_event=events.append)
    assert result.status == "done" and events[-1].status == "done"
    assert len(result.history["loss"]) == 2 and np.isfinite(result.history["loss"]).all()
    assert np.isfinite(result.history["val_loss"]).all()
    assert [d["name"] for d in result.training_data] == names
    for name in ("elongated image (16x2000)", "image smaller than a patch (20x24)"):
        image = HANDLED[name]()[0]
        pred = predict_image(result.model, image, result.config)
        assert pred.labels.shape == image.shape and np.isfinite(pred.probabilities).all()


def test_rgb_and_rgba_pairs_train_one_three_channel_model():
    from napari_unet.core.predict import predict_image
    from napari_unet.core.train import train

    rgb, labels, sections = HANDLED["RGB image"]()
    rgba = HANDLED["RGBA image"]()[0]
    result = train(
        [TrainingPair(rgb, labels, "rgb"), TrainingPair(rgba, labels, "rgba")],
        tiny_config(**sections, train={"epochs": 1}),
    )
    assert result.status == "done" and np.isfinite(result.history["loss"]).all()
    assert result.model.input_shape[-1] == 3
    # RGBA drops its alpha: the same picture predicts the same with or without it.
    opaque = np.dstack([rgb, np.full(labels.shape, 255, np.uint8)])
    p_rgb = predict_image(result.model, rgb, result.config).probabilities
    p_rgba = predict_image(result.model, opaque, result.config).probabilities
    np.testing.assert_allclose(p_rgb, p_rgba, atol=1e-6)
    gray = predict_image(result.model, IMAGE, result.config)  # gray is repeated to 3 channels
    assert gray.labels.shape == IMAGE.shape


def test_one_class_present_of_several_trains_with_finite_scores():
    from napari_unet.core.train import train

    image, labels, sections = HANDLED["one class of three"]()
    result = train([TrainingPair(image, labels, "k")], tiny_config(**sections, train={"epochs": 1}))
    assert result.status == "done" and result.model.output_shape[-1] == 3
    for key, values in result.history.items():
        assert np.isfinite(values).all(), key
    assert np.isfinite(result.metrics["dice"])


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.uint32, np.float64, np.float32])
def test_prediction_is_the_same_for_any_dtype_of_the_same_picture(trained, dtype):
    """Percentile normalisation makes an affine intensity change (another dtype) irrelevant."""
    from napari_unet.core.predict import predict_image

    reference = predict_image(trained.model, IMAGE, trained.config)
    other = predict_image(trained.model, _scaled(dtype), trained.config)
    np.testing.assert_allclose(other.probabilities, reference.probabilities, atol=2e-3)
    assert np.mean(other.labels == reference.labels) > 0.99


@pytest.mark.parametrize(
    "image",
    [
        np.array([[5]], np.uint8),
        np.zeros((3, 5), np.uint16),
        np.full((64, 64), 7.0),
        _tall(16, 2000, 5)[0],
        _tall(2000, 16, 6)[0],
        IMAGE > 100,
        np.stack([IMAGE[:7, :9]] * 2),
    ],
    ids=["1 pixel", "3x5", "constant", "16x2000", "2000x16", "bool", "stack of 7x9"],
)
def test_prediction_handles_tiny_elongated_and_constant_images(trained, image):
    from napari_unet.core.predict import predict_image

    pred = predict_image(trained.model, image, trained.config)
    assert pred.labels.shape == image.shape
    assert pred.probabilities.shape == image.shape + (1,)
    assert np.isfinite(pred.probabilities).all()
    assert pred.probabilities.min() >= 0 and pred.probabilities.max() <= 1


def test_prediction_finds_the_objects_of_an_elongated_image(trained):
    """Sensible, not just shaped right: the trained model finds the disks in a 16x2000 strip."""
    from napari_unet.core.predict import predict_image
    from napari_unet.core.scores import dice_score

    image, labels = _tall(16, 2000, 5)
    pred = predict_image(trained.model, image, trained.config)
    chance = dice_score(np.ones_like(labels, bool), labels > 0)
    assert dice_score(pred.labels > 0, labels > 0) > max(0.5, chance + 0.2)


# ---------------------------------------------------------------- in the widgets (real viewer)


def _layers(kind: str):
    """(image, labels, image kwargs, task settings) of a bad pair as the widgets receive it."""
    img, lab = blob_pair(64, 64, seed=40)
    if kind == "negative labels":
        return img, lab.astype(np.int16) - 1, {}, {}
    if kind == "label ids beyond the classes":
        return img, np.minimum(lab, 5).astype(np.uint8), {}, {"task": "classes", "n_classes": 3}
    if kind == "2D labels on a 3D stack":
        return np.stack([img, img]), lab, {}, {}
    if kind == "Inf in a float image":
        bad = img.astype(np.float32)
        bad[3, 4] = np.inf
        return bad, lab, {}, {}
    if kind == "1-pixel image":
        return np.array([[5]], np.uint8), np.array([[1]], np.uint8), {}, {}
    if kind == "4D image":
        return np.stack([np.stack([img, img])] * 2), np.stack([np.stack([lab, lab])] * 2), {}, {}
    if kind == "image/labels shape mismatch (RGB)":
        return np.stack([img] * 3, -1)[:, :60], lab, {"rgb": True}, {}
    raise AssertionError(kind)


WIDGET_REFUSALS = {
    "negative labels": r"Labels 'bad labels' contain negative values; labels must be 0 or positive",
    "label ids beyond the classes": r"Labels 'bad labels' contain the value 5 but the task has 3 classes \(0\.\.2\); "
    r"raise the number of classes",
    "2D labels on a 3D stack": r"Image 'bad' is a stack of 2 images .* but labels 'bad labels' are a single 2D image"
    r".*one plane per image",
    "Inf in a float image": r"Image 'bad' has 1 NaN or infinite pixel\(s\); replace them",
    "1-pixel image": r"Image 'bad' is 1 x 1 pixels, smaller than the 32-pixel training patch; use a larger image",
    "4D image": r"Image 'bad' has 4 spatial dimension\(s\).*use a 2D image, an RGB image or a stack",
    "image/labels shape mismatch (RGB)": r"Labels 'bad labels' have shape 64 x 64 but image 'bad' is 64 x 60 "
    r"\(the colour axis of an RGB image does not count\)",
}


@pytest.mark.gui
@pytest.mark.parametrize("kind", list(WIDGET_REFUSALS))
def test_train_widget_refuses_bad_layers_and_leaves_the_viewer_as_it_was(kind, viewer, dock, messages):
    import re

    from reliability_helpers import layer_state, make_tiny

    image, labels, image_kwargs, task = _layers(kind)
    viewer.add_image(image, name="bad", **image_kwargs)
    viewer.add_labels(labels, name="bad labels")
    widget = dock(viewer, "Train")
    make_tiny(widget)  # 32-pixel patches: the 64 x 64 layers fit
    if task:
        widget.settings.task.setCurrentText(task["task"])
        widget.settings.n_classes.setValue(task["n_classes"])
    before = layer_state(viewer)
    assert not widget.start_training()
    errors = messages("error")
    assert any(re.search(WIDGET_REFUSALS[kind], m) for m in errors), errors
    assert layer_state(viewer) == before, "no layer added, removed or changed"
    assert not widget.running and widget.status == "idle" and widget.train_button.isEnabled()


@pytest.mark.gui
def test_train_widget_offers_a_patch_that_fits_a_16_pixel_high_strip(viewer, dock, notes):
    from reliability_helpers import layer_state, make_tiny

    image, labels = _tall(16, 2000, 5)
    viewer.add_image(image, name="strip")
    viewer.add_labels(labels, name="strip labels")
    widget = dock(viewer, "Train")
    make_tiny(widget)
    before = layer_state(viewer)
    assert not widget.start_training()
    offers = [n for n in notes if n.actions]
    assert offers and "Image 'strip' is 16 x 2000 pixels, smaller than the 32-pixel training patch" in offers[0].message
    ((text, action),) = offers[0].actions
    assert text == "Use 16-pixel patches"
    action(None)
    assert widget.settings.patch.value() == 16
    assert layer_state(viewer) == before and not widget.running


@pytest.mark.gui
def test_train_widget_trains_on_an_rgba_layer(viewer, dock, qtbot, tmp_path):
    from reliability_helpers import layer_state, make_tiny, wait_idle

    from napari_unet.jobs.models import model_info

    rgba = HANDLED["RGBA image"]()[0]
    viewer.add_image(rgba, name="rgba", rgb=True)
    viewer.add_labels(LABELS, name="rgba labels")
    widget = dock(viewer, "Train")
    make_tiny(widget, epochs=1, steps=2)
    before = layer_state(viewer)
    assert widget.start_training()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    wait_idle(qtbot)
    assert widget.status == "done", widget.result_label.text()
    info = model_info(tmp_path / "models" / "rgba-unet" / "v001")
    assert info.config["data"]["in_channels"] == 3
    preview = viewer.layers["preview [rgba-unet]"]
    assert preview.data.shape == (64, 64)  # the colour axis is not a spatial one
    assert {k: v for k, v in layer_state(viewer).items() if k in before} == before


PREDICTABLE = {
    "1-pixel image": lambda: np.array([[5]], np.uint8),
    "16x2000 strip": lambda: _tall(16, 2000, 5)[0],
    "int8 image": lambda: _scaled(np.int8),
    "uint32 image": lambda: _scaled(np.uint32),
    "float64 image": lambda: _scaled(np.float64),
    "constant image": lambda: np.full((40, 50), 9, np.uint16),
    "stack of 3": lambda: np.stack([IMAGE, IMAGE.T, IMAGE]),
}


@pytest.mark.gui
@pytest.mark.parametrize("kind", list(PREDICTABLE))
def test_predict_widget_handles_odd_images(kind, viewer, dock, qtbot, current_model):
    from reliability_helpers import wait_idle

    image = PREDICTABLE[kind]()
    layer = viewer.add_image(image, name="odd")
    widget = dock(viewer, "Predict")
    widget.image_picker.set_layer(layer)
    assert widget.start_prediction()
    qtbot.waitUntil(lambda: not widget.job.running, timeout=60_000)
    qtbot.wait(20)
    wait_idle(qtbot)
    assert widget.status == "done", widget.status_label.text()
    result = viewer.layers[f"odd [{current_model.label}]"]
    assert result.data.shape == image.shape and result.data.dtype.kind in "iu"
    if kind in ("int8 image", "uint32 image", "float64 image"):  # the same picture as IMAGE
        reference = viewer.add_image(IMAGE, name="reference")
        widget.image_picker.set_layer(reference)
        assert widget.start_prediction()
        qtbot.waitUntil(lambda: not widget.job.running, timeout=60_000)
        qtbot.wait(20)
        expected = viewer.layers[f"reference [{current_model.label}]"].data
        assert np.mean(result.data == expected) > 0.99


@pytest.mark.gui
@pytest.mark.parametrize(
    "kind, message",
    [
        ("NaN", r"Image 'odd' has 1 NaN or infinite pixel\(s\)"),
        ("4D", r"Image 'odd' has 4 spatial dimension\(s\)"),
        ("RGBA on a gray model", r"The image has 4 channel\(s\) but the model was trained on 1"),
    ],
    ids=["NaN", "4D", "RGBA on a gray model"],
)
def test_predict_widget_refuses_unusable_images_without_adding_a_layer(
    kind, message, viewer, dock, messages, current_model
):
    import re

    if kind == "NaN":
        image = _float_image()
        image[5, 5] = np.nan
    else:
        image = IMAGE[None, None].repeat(2, 0) if kind == "4D" else HANDLED["RGBA image"]()[0]
    viewer.add_image(image, name="odd", rgb=kind == "RGBA on a gray model")
    widget = dock(viewer, "Predict")
    assert not widget.start_prediction()
    assert any(re.search(message, m) for m in messages("error")), messages("error")
    assert [lyr.name for lyr in viewer.layers] == ["odd"] and not widget.job.running
