"""What `napari-unet predict` does not repeat at start-up: no model built to learn the halo, one trace for all shapes."""

from __future__ import annotations

import numpy as np
import pytest

import keras  # noqa: E402

from napari_unet.core import model as model_mod  # noqa: E402
from napari_unet.core import predict as predict_mod  # noqa: E402
from napari_unet.core.config import Config  # noqa: E402


@pytest.mark.parametrize("key", sorted(model_mod.KNOWN_HALOS))
def test_tabulated_halos_equal_the_computed_ones(key):
    assert model_mod.KNOWN_HALOS[key] == model_mod._halo_for.__wrapped__(*key)


def test_halo_of_a_known_architecture_builds_no_model(monkeypatch):
    def no_build(cfg):
        raise AssertionError("a model was built to find the halo")

    monkeypatch.setattr(model_mod, "build_model", no_build)
    cfg = Config().replace(model={"depth": 3, "upsampling": "bilinear"})
    assert model_mod.halo(cfg) == 65


def test_images_of_many_sizes_share_one_trace():
    cfg = Config().replace(model={"depth": 2, "base_filters": 4}, predict={"tile_size": 256})
    model = model_mod.build_model(cfg)
    shapes = [(36, 52), (64, 64), (100, 40), (20, 300)]
    for h, w in shapes:
        image = np.random.default_rng(h).random((h, w, 1), dtype=np.float32)
        probs = predict_mod.predict_probabilities(model, image, cfg)
        assert probs.shape == (h, w, 1)
    function = predict_mod._PREDICT_FUNCTIONS[model]
    assert function.experimental_get_tracing_count() == 1
    # Same numbers as Keras's own predict.
    x = np.random.default_rng(0).random((1, 64, 64, 1), dtype=np.float32)
    assert np.allclose(function(x).numpy(), model.predict_on_batch(x), atol=1e-6)


def test_the_trace_cache_does_not_keep_models_alive():
    import gc
    import weakref

    cfg = Config().replace(model={"depth": 1, "base_filters": 2})
    model = model_mod.build_model(cfg)
    predict_mod.predict_probabilities(model, np.zeros((16, 16, 1), np.float32), cfg)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
