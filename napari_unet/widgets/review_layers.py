"""The Review widget's layers: the shown image, its mask, its uncertainty map, and the user's edits of the mask."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from napari_unet.core.targets import compact_labels

from ._turns import LATER_MS

IMAGE_LAYER, LABELS_LAYER, UNCERTAINTY_LAYER = "review image", "review labels", "review uncertainty"
OWN_LAYERS = (IMAGE_LAYER, LABELS_LAYER, UNCERTAINTY_LAYER)


class ReviewLayers(QObject):
    """Shows one review image at a time in three layers it owns, re-used from image to image.

    An edit of the labels with napari's tools (brush, eraser, fill, new data) is remembered for the
    image shown and announced with `edited` once napari has written the pixels; `take_edit` hands
    it over (once) to whoever saves it.

    Creating a layer is the slow part of showing (napari builds its visuals and controls: 60-100 ms
    each), so when both the image and the labels layer are new, the labels follow in the next
    event-loop turn; anything that needs them before (`labels`, `show`, the uncertainty map) gets
    them at once.
    """

    #: The labels of this image were edited (and not yet taken with `take_edit`).
    edited = Signal(str)

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.shown: str | None = None
        self._pending: str | None = None
        self._loading = False  # True while this panel sets the labels' data itself
        self._rest: tuple[np.ndarray, np.ndarray | None] | None = None  # labels and map still to show
        self._rest_timer = QTimer(self)
        self._rest_timer.setSingleShot(True)
        self._rest_timer.timeout.connect(self.finish_showing)

    # ------------------------------------------------------------------ showing
    def show(self, name: str, image: np.ndarray, labels: np.ndarray | None, umap: np.ndarray | None) -> None:
        """Show an image with its labels (empty when None) and its uncertainty map (hidden when None)."""
        self.shown = name
        mask = labels if labels is not None else np.zeros(image.shape[:2], np.int32)
        reset = self._rest is not None  # a new layer of the previous call still wants the view reset
        self._rest = None
        self._rest_timer.stop()
        if self._set_image(image):
            labels_layer = self.layer(LABELS_LAYER)
            if labels_layer is None or labels_layer.data.shape != mask.shape:
                self._rest = (mask, umap)
                self._rest_timer.start(LATER_MS)
                return
            reset = True
        self._show_rest(mask, umap, reset)

    def finish_showing(self) -> None:
        """Show the labels (and map) still waiting for their turn, now."""
        if self._rest is not None:
            (mask, umap), self._rest = self._rest, None
            self._rest_timer.stop()
            self._show_rest(mask, umap, reset=True)

    def _show_rest(self, mask: np.ndarray, umap: np.ndarray | None, reset: bool) -> None:
        self._set_labels(mask)
        self._show_map(umap)
        if reset:
            self.viewer.reset_view()

    def show_uncertainty(self, umap: np.ndarray | None) -> None:
        """Show this uncertainty map over the image, or remove the map layer (None)."""
        self.finish_showing()
        self._show_map(umap)

    def _show_map(self, umap: np.ndarray | None) -> None:
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
        self.finish_showing()
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

    def release(self) -> None:
        """Stop following the labels layer (the review closed): what a later review shows in the same
        layer is not an edit of this one's image."""
        self.shown, self._pending, self._rest = None, None, None
        self._rest_timer.stop()
        layer = self.layer(LABELS_LAYER)
        if layer is not None:
            layer.events.paint.disconnect(self._on_labels_edited)
            layer.events.data.disconnect(self._on_labels_edited)

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
