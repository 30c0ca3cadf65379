"""The session model list and fine-tuning set (Qt-free)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_unet.core.config import Config
from napari_unet.widgets.models_registry import CorrectedPair, ModelEntry, ModelRegistry, Round


def _entry(tmp_path: Path, name: str, version: int) -> ModelEntry:
    return ModelEntry(name, version, tmp_path / name / f"v{version:03d}", Config())


def test_add_select_and_replace(tmp_path):
    registry = ModelRegistry()
    seen = []
    registry.changed.connect(lambda: seen.append(registry.current))
    first, second = _entry(tmp_path, "a", 1), _entry(tmp_path, "b", 1)
    registry.add(first)
    registry.add(second, make_current=False)
    assert registry.current is first and registry.entries == [first, second]
    registry.set_current(second)
    assert registry.current is second and seen[-1] is second
    again = _entry(tmp_path, "b", 1)
    registry.add(again)  # the same folder loaded again replaces its entry
    assert registry.entries == [first, again] and registry.current is again
    assert again.label == "b v1"
    with pytest.raises(ValueError):
        registry.set_current(_entry(tmp_path, "c", 1))


def test_rounds_and_roll_back(tmp_path):
    registry = ModelRegistry()
    parent, child = _entry(tmp_path, "m", 1), _entry(tmp_path, "m", 2)
    registry.add(parent)
    pair = CorrectedPair(np.zeros((8, 8)), np.ones((8, 8), np.int32), "img + fixed")
    registry.add_pair(pair)
    registry.add_pair(CorrectedPair(np.zeros((8, 8)), np.ones((8, 8), np.int32), "img + fixed"))
    assert len(registry.pending) == 1  # same name: the newer snapshot replaces the older
    round_ = Round(parent, child, list(registry.pending), before_dice=0.8, after_dice=0.7)
    registry.record_round(round_)
    assert registry.current is child and registry.pending == [] and round_.improved is False
    undone = registry.roll_back()
    assert undone is round_ and registry.current is parent
    assert [p.name for p in registry.pending] == ["img + fixed"]
    with pytest.raises(ValueError):
        registry.roll_back()
