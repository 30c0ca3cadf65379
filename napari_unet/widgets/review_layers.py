"""The Review widget's layers: the shown image, its mask, its uncertainty map, and the user's edits of the mask."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from napari_unet.core.targets import compact_labels

IMAGE_LAYER, LABELS_LAYER, UNCERTAINTY_LAYER = "review image", "review labels", "review uncertainty"
OWN_LAYERS = (IMAGE_LAYER, LABELS_LAYER, UNCERTAINTY_LAYER)


class ReviewLayers(QObject):
    """Shows one review image at a time in three layers it owns, re-used from image to image.

    An edit of the labels with napari's tools (brush, eraser, fill, new data) is remembered for the
    image shown and announced with `edited` once napari has written the pixels; `take_edit` hands
    it over (once) to whoever saves it.
    """

    #: The labels of this image were edited (and not yet taken with `take_edit`).
    edited = Signal(str)

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.shown: str | None = None
        self._pending: str | None = None
        self._loading = False  # True while this panel sets the labels' data itself

    # ------------------------------------------------------------------ showing
    def show(self, name: str, image: np.ndarray, labels: np.ndarray | None, umap: np.ndarray | None) -> None:
        """Show an image with its labels (empty when None) and its uncertainty map (hidden when None)."""
        self.shown = name
        reset = self._set_image(image)
        self._set_labels(labels if labels is not None else np.zeros(image.shape[:2], np.int32))
        self.show_uncertainty(umap)
        if reset:
            self.viewer.reset_view()

    def show_uncertainty(self, umap: np.ndarray | None) -> None:
        """Show this uncertainty map over the image, or remove the map layer (None)."""
        layer = self.layer(UNCERTAINTY_LAYER)
        if umap is None:
            if layer is not None:  # removed, not hidden: a stale shape would skew reset_view
                self.viewer.layers.remove(layer)
            return
        if layer is None or layer.data.shape != umap.shape:
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_image(
                umap, name=UNCERTAINTY_LAYER, colormap="magma", blending="additive", contrast_limits=(0, 1), opacity=0.6
            )
        else:
            layer.data = umap
        layer.visible = True
        labels = self.layer(LABELS_LAYER)
        if labels is not None:
            self.viewer.layers.selection.active = labels

    def labels(self) -> np.ndarray | None:
        """The labels as shown (with the user's edits)."""
        layer = self.layer(LABELS_LAYER)
        return np.asarray(layer.data) if layer is not None else None

    def layer(self, name: str) -> Any:
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _set_image(self, image: np.ndarray) -> bool:
        """Put the image in its layer; True when the layer is new (the view should be reset)."""
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
        layer = self.layer(IMAGE_LAYER)
        if layer is not None and (layer.rgb != rgb or layer.data.shape != image.shape):
            self.viewer.layers.remove(layer)
            layer = None
        if layer is None:
            layer = self.viewer.add_image(image, name=IMAGE_LAYER, rgb=rgb)
            self.viewer.layers.move(self.viewer.layers.index(layer), 0)
            return True
        layer.data = image
        layer.reset_contrast_limits()
        return False

    def _set_labels(self, labels: np.ndarray) -> None:
        labels = compact_labels(labels)
        layer = self.layer(LABELS_LAYER)
        self._loading = True
        try:
            if layer is None or layer.data.shape != labels.shape:
                if layer is not None:
                    self.viewer.layers.remove(layer)
                layer = self.viewer.add_labels(labels, name=LABELS_LAYER, opacity=0.5)
                layer.events.paint.connect(self._on_labels_edited)
                layer.events.data.connect(self._on_labels_edited)
            else:
                layer.data = labels
                # Undo must not reach into the previous image's strokes (napari has no public API).
                if hasattr(layer, "_reset_history"):
                    layer._reset_history()
        finally:
            self._loading = False
        self.viewer.layers.selection.active = layer

    # ------------------------------------------------------------------ edits
    def _on_labels_edited(self, _event: Any = None) -> None:
        if self._loading or self.shown is None or self._pending is not None:
            return
        # napari reports a fill or a programmatic paint before it writes the pixels: announce it a moment later.
        self._pending = self.shown
        QTimer.singleShot(0, self._announce)

    def _announce(self) -> None:
        if self._pending is not None:
            self.edited.emit(self._pending)

    def take_edit(self) -> str | None:
        """The image whose shown labels were edited since the last call, or None."""
        name, self._pending = self._pending, None
        return name if name is not None and name == self.shown else None
