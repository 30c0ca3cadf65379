"""Layer pickers that follow the viewer: layers added, removed and renamed update them at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.layers import Image, Labels, Layer
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QSizePolicy

from ._layers import META_KEY


class LayerPicker(QComboBox):
    """A combo box of the viewer's layers of one type; keeps the chosen layer across changes.

    `prefer(layer)` (optional) ranks candidates when the picker chooses by itself (nothing chosen in
    the picker yet, or the chosen layer was removed): the newest layer with the highest score is taken,
    so a newly opened layer replaces the automatic choice. An image picker also follows the layer the
    user selects in the layer list.
    """

    layerChanged = Signal(object)  # the new layer or None

    def __init__(
        self,
        viewer: Any,
        layer_type: type[Layer],
        allow_none: bool = False,
        none_text: str = "(none)",
        prefer: Callable[[Layer], float] | None = None,
        parent: Any = None,
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.layer_type = layer_type
        self.allow_none = allow_none
        self.none_text = none_text
        self.prefer = prefer
        self._layers: list[Layer | None] = []
        self._current: Layer | None = None
        self._user_chose = False
        self._watched: list[Layer] = []
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(6)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        events = viewer.layers.events
        events.inserted.connect(self.refresh)
        events.removed.connect(self.refresh)
        events.moved.connect(self.refresh)
        self._follow_selection = issubclass(layer_type, Image)
        if self._follow_selection:
            viewer.layers.selection.events.active.connect(self._on_active)
        self.activated.connect(self._on_user_choice)
        self.refresh()

    # ------------------------------------------------------------------ public
    def layer(self) -> Layer | None:
        """The chosen layer (None when there is none or "(none)" is chosen)."""
        return self._current

    def set_layer(self, layer: Layer | None) -> None:
        """Choose a layer programmatically (as a user would)."""
        if layer is not None and layer not in self._layers:
            raise ValueError(f"Layer {layer.name!r} is not a {self.layer_type.__name__} layer in the viewer.")
        self._user_chose = True
        self._select(layer)

    def update_choice(self) -> None:
        """Re-rank the layers (the preference changed) unless the user chose one."""
        if not self._user_chose:
            self._select(self._auto_choice())

    def close_picker(self) -> None:
        """Stop following the viewer (the widget is closing)."""
        events = self.viewer.layers.events
        for signal in (events.inserted, events.removed, events.moved):
            signal.disconnect(self.refresh)
        if self._follow_selection:
            self.viewer.layers.selection.events.active.disconnect(self._on_active)
        for layer in self._watched:
            layer.events.name.disconnect(self._on_rename)
        self._watched = []

    # ------------------------------------------------------------------ internals
    def refresh(self, *_: Any) -> None:
        """Rebuild the list from the viewer, keeping the chosen layer when it still exists."""
        layers = [lyr for lyr in self.viewer.layers if isinstance(lyr, self.layer_type)]
        for layer in self._watched:
            if layer not in layers:
                layer.events.name.disconnect(self._on_rename)
        for layer in layers:
            if layer not in self._watched:
                layer.events.name.connect(self._on_rename)
        self._watched = layers
        self._layers = ([None] if self.allow_none else []) + layers
        if self._current in layers:
            # Chosen by the picker itself: re-choose, so a layer just opened is taken.
            keep = self._current if self._user_chose else self._auto_choice()
        elif self._current is None and self._user_chose and self.allow_none:
            keep = None  # the user chose "(none)"
        else:
            self._user_chose = False  # nothing chosen yet, or the chosen layer is gone
            keep = self._auto_choice()
        self.blockSignals(True)
        self.clear()
        for layer in self._layers:
            self.addItem(self.none_text if layer is None else layer.name)
        self.blockSignals(False)
        self._select(keep)

    def _auto_choice(self) -> Layer | None:
        candidates = [lyr for lyr in self._layers if lyr is not None]
        if not candidates:
            return None
        # The newest of the best-ranked layers is what the user just opened; among equals, the user's
        # own layers beat results the widgets made.
        return max(reversed(candidates), key=self._rank)

    def _rank(self, layer: Layer) -> tuple[float, bool]:
        return (self.prefer(layer) if self.prefer is not None else 0.0, not layer.metadata.get(META_KEY))

    def _select(self, layer: Layer | None) -> None:
        if layer is None and not self.allow_none and self._layers:
            layer = self._layers[0]
        index = self._layers.index(layer) if layer in self._layers else -1
        self.blockSignals(True)
        self.setCurrentIndex(index)
        self.blockSignals(False)
        changed = layer is not self._current
        self._current = layer
        if changed:
            self.layerChanged.emit(layer)

    def _on_active(self, event: Any = None) -> None:
        active = self.viewer.layers.selection.active
        # Layers the widgets made (predictions, probabilities) are results, not inputs to follow.
        made_here = active is not None and bool(active.metadata.get(META_KEY))
        if isinstance(active, self.layer_type) and active in self._layers and not made_here:
            self._user_chose = True
            self._select(self._layers[self._layers.index(active)])  # the picker's own object, not a proxy

    def _on_user_choice(self, index: int) -> None:
        self._user_chose = True
        self._select(self._layers[index] if 0 <= index < len(self._layers) else None)

    def _on_rename(self, event: Any = None) -> None:
        for i, layer in enumerate(self._layers):
            if layer is not None and self.itemText(i) != layer.name:
                self.setItemText(i, layer.name)


def image_picker(viewer: Any, **kwargs: Any) -> LayerPicker:
    return LayerPicker(viewer, Image, **kwargs)


def labels_picker(viewer: Any, **kwargs: Any) -> LayerPicker:
    return LayerPicker(viewer, Labels, **kwargs)
