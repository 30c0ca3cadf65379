"""Config validation and JSON round trip."""

import json

import pytest

from napari_unet.core.config import Config
from napari_unet.core.errors import ConfigError


def test_defaults_validate_and_round_trip_through_json():
    cfg = Config().validate()
    again = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize(
    ("task", "n_classes", "outputs", "loss"),
    [("binary", 2, 1, "bce_dice"), ("classes", 4, 4, "cce_dice"), ("instances", 2, 3, "cce_dice")],
)
def test_outputs_and_default_loss_follow_the_task(task, n_classes, outputs, loss):
    cfg = Config().replace(data={"task": task, "n_classes": n_classes})
    assert cfg.n_outputs == outputs and cfg.loss == loss
    assert len(cfg.class_names) == max(outputs, 2)


@pytest.mark.parametrize(
    ("sections", "fragment"),
    [
        ({"data": {"task": "semantic"}}, "data.task"),
        ({"data": {"patch_size": 100}}, "multiple of 16"),
        ({"model": {"depth": 0}}, "model.depth"),
        ({"train": {"class_weights": [1.0, 2.0, 3.0]}}, "class_weights"),
        ({"train": {"loss": "cce"}}, "Categorical losses"),
        ({"model": {"architecture": "mobilenetv2"}}, "3 input channels"),
        ({"data": {"norm_low": 99, "norm_high": 1}}, "norm_low"),
        ({"predict": {"tile_size": 64, "overlap": 32}}, "twice the overlap"),
    ],
)
def test_invalid_values_are_explained(sections, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Config().replace(**sections).validate()


def test_unknown_options_are_rejected():
    with pytest.raises(ConfigError, match="Unknown option"):
        Config.from_dict({"train": {"epochz": 3}})
    with pytest.raises(ConfigError, match="Unknown config section"):
        Config.from_dict({"optimizer": {}})
