"""Live dock widget: paint strokes, and a U-Net trains while you paint; its prediction follows the brush.

The compute worker trains continuously (`jobs/live.py`). This widget only sends what changed: the
bounding box of each stroke (from the labels layer's `paint` events, one per finished brush
stroke, fill or polygon, whose history atoms say where; undo and redo, which napari applies without
a paint event, from the history items they move; gathered for `STROKE_DELAY_MS`) and the field of
view after a pan, zoom or plane change. Frames come back as small arrays for the visible region,
shown in a "live" labels layer placed on the image there. A zarr-backed image goes to the worker
as its path (`_live_source.py`), so a large image is read there region by region, never copied.
Nothing heavy runs on the GUI thread and TensorFlow never enters this process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox

from napari_unet.core.config import DEFAULT_BACKGROUND_LABEL, Config
from napari_unet.core.errors import InputError, NapariUNetError
from napari_unet.core.live_defaults import live_config
from napari_unet.core.paths import check_model_name, default_model_root
from napari_unet.core.states import JobState
from napari_unet.jobs import arrays
from napari_unet.jobs.client import session_client
from napari_unet.jobs.live_messages import LiveFrame, LiveFreeze, LiveOutcome, LiveRequest, LiveStroke, LiveView, LiveViewport
from napari_unet.jobs.live import READY
from napari_unet.jobs.messages import Progress, Started

from ._base import JobWidget
from ._jobs import WorkerJob
from ._layers import META_KEY, layer_array, safe_folder_name, unique_name
from ._live_source import painted_regions, zarr_path
from ._notify import failure_message, show_error, show_info
from ._pickers import LayerPicker
from .models_registry import ModelEntry, ModelRegistry

#: Painted pixels are gathered this long before they are sent (one message per pause or per interval).
STROKE_DELAY_MS = 250
#: The field of view is sent this long after the camera or the plane stopped moving.
VIEW_DELAY_MS = 150
#: Strokes layers up to this size are scanned for the next free object label (a few ms).
SCAN_MAX_PIXELS = 4_000_000
NEW_BINARY, NEW_INSTANCES, STARTER = "New model: objects vs background", "New model: instances", "Starter model (nuclei)"


class LiveWidget(JobWidget):
    """Pick an image and a (possibly empty) labels layer, press Live, paint; Freeze saves a version."""

    def __init__(self, napari_viewer: Any, registry: ModelRegistry | None = None) -> None:
        super().__init__(napari_viewer, registry)
        self.job: WorkerJob = self.new_job("Live training")
        self.live_layer: Labels | None = None
        self.last_outcome: LiveOutcome | None = None
        self.frames = 0
        self.learnt = 0  # the newest stroke the last frame had learnt from
        self.sent = 0
        self._dirty: dict[int, list[int]] = {}  # plane -> [top, left, bottom, right] painted since the last send
        self._watched: Labels | None = None
        self._history_tops: tuple[Any, Any] = (None, None)
        self._source: Image | None = None
        self._camera_connected = False

        self.image_picker = self.track_picker(LayerPicker(napari_viewer, Image))
        self.labels_picker = self.track_picker(
            LayerPicker(napari_viewer, Labels, allow_none=True, none_text="(new strokes layer)", prefer=self._labels_score)
        )
        self.image_picker.layerChanged.connect(lambda _l: self.labels_picker.update_choice())
        self.image_picker.layerChanged.connect(self._suggest_name)
        self.start_combo = QComboBox()
        self.start_combo.setToolTip("Train a new network from scratch, or keep training a model you have")
        self.background = QSpinBox()
        self.background.setRange(1, 65535)
        self.background.setValue(DEFAULT_BACKGROUND_LABEL)
        self.background.setToolTip("Label value of painted background; 0 stays 'not annotated' (ignored)")
        self.name_edit = QLineEdit()
        self.folder_edit = QLineEdit(str(default_model_root()))
        self.folder_edit.setToolTip("Freeze saves the model in <folder>/<name>/vNNN")
        form_box = QGroupBox("Live training")
        form = QFormLayout(form_box)
        form.addRow("Image", self.image_picker)
        form.addRow("Strokes", self.labels_picker)
        form.addRow("Start from", self.start_combo)
        form.addRow("Background label", self.background)
        form.addRow("Name", self.name_edit)
        form.addRow("Save in", self.folder_edit)

        self.object_button = QPushButton("Paint object")
        self.object_button.setToolTip("Brush with a new object label (0 = not annotated is never learnt from)")
        self.background_button = QPushButton("Paint background")
        self.object_button.clicked.connect(lambda: self.choose_brush(background=False))
        self.background_button.clicked.connect(lambda: self.choose_brush(background=True))
        brushes = QHBoxLayout()
        brushes.addWidget(self.object_button)
        brushes.addWidget(self.background_button)
        self.live_button = QPushButton("Live")
        self.live_button.setToolTip("Train while you paint; the prediction of the visible region follows")
        self.freeze_button = QPushButton("Freeze")
        self.freeze_button.setToolTip("Stop and save the model as a new version (for Predict, Fine-tune, Review)")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop at once without saving")
        self.live_button.clicked.connect(self.start_live)
        self.freeze_button.clicked.connect(self.freeze)
        self.stop_button.clicked.connect(self.stop_live)
        buttons = QHBoxLayout()
        for button in (self.live_button, self.freeze_button, self.stop_button):
            buttons.addWidget(button)
        self.status_label = QLabel("Paint a few object strokes and background strokes, then press Live (or the other way round).")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body_layout.addWidget(form_box)
        self.body_layout.addLayout(brushes)
        self.body_layout.addLayout(buttons)
        self.body_layout.addWidget(self.status_label)

        self._stroke_timer = QTimer(self)
        self._stroke_timer.setSingleShot(True)
        self._stroke_timer.timeout.connect(self.flush_strokes)
        self._view_timer = QTimer(self)
        self._view_timer.setSingleShot(True)
        self._view_timer.timeout.connect(self.send_view)
        self._set_running(False)
        self._on_registry_changed()
        self._suggest_name()
        self.finish_layout()

    # ------------------------------------------------------------------ choices
    def _labels_score(self, labels: Labels) -> float:
        image = self.image_picker.layer() if hasattr(self, "image_picker") else None
        if image is None or labels.metadata.get(META_KEY):
            return 0.0  # never the live layer or other layers the widgets made
        return 1.0 + (tuple(labels.data.shape) == layer_array(image).spatial_shape)

    def _suggest_name(self, *_: Any) -> None:
        image = self.image_picker.layer()
        self.name_edit.setText(safe_folder_name(f"{image.name}-live") if image is not None else "live")

    def _on_registry_changed(self) -> None:
        chosen = self.start_combo.currentText()
        self._entries = list(self.registry.entries)
        self.start_combo.clear()
        self.start_combo.addItems([NEW_BINARY, NEW_INSTANCES, STARTER] + [f"{e.label} ({e.source})" for e in self._entries])
        if chosen:
            self.start_combo.setCurrentText(chosen)

    def _start_point(self) -> tuple[dict, str | None]:
        """(config of a new model, or the version folder to start from)."""
        from napari_unet.core.starter import starter_model_path

        text, index = self.start_combo.currentText(), self.start_combo.currentIndex()
        if text in (NEW_BINARY, NEW_INSTANCES):
            return {"task": "binary" if text == NEW_BINARY else "instances"}, None
        if text == STARTER:
            return {}, str(starter_model_path())
        entry = self._entries[index - 3]
        if entry.path is None:
            raise InputError(f"{entry.label} has no folder on disk to start from.")
        return {}, str(entry.path)

    def choose_brush(self, background: bool) -> None:
        """Select the strokes layer in paint mode with the background label or a new object label."""
        layer = self._strokes_layer(create=True)
        if layer is None:
            return
        bg = self.background.value()
        if background:
            layer.selected_label = bg
        elif self._task() == "instances":  # a new label for every object
            data = np.asarray(layer.data) if layer.data.size <= SCAN_MAX_PIXELS else np.zeros(1, np.int64)
            highest = int(np.max(np.where(data == bg, 0, data), initial=0))
            layer.selected_label = highest + 1 + (highest + 1 == bg)
        else:
            layer.selected_label = 1 if bg != 1 else 2
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"

    def _task(self) -> str:
        return "instances" if self.start_combo.currentText() in (NEW_INSTANCES, STARTER) else "binary"

    def _strokes_layer(self, create: bool) -> Labels | None:
        layer = self.labels_picker.layer()
        if layer is not None or not create:
            return layer
        image = self.image_picker.layer()
        if image is None:
            show_error("Open an image first (File > Open, or File > Open Sample > napari-unet).")
            return None
        shape = layer_array(image).spatial_shape
        layer = self.viewer.add_labels(np.zeros(shape, dtype=np.uint16), name=unique_name(self.viewer, f"strokes [{image.name}]"),
                                       scale=image.scale[-len(shape):], translate=image.translate[-len(shape):])  # fmt: skip
        self.labels_picker.set_layer(layer)
        return layer

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self.job.running

    def start_live(self) -> bool:
        """What the Live button does; returns whether a live job started."""
        if self.job.running:
            show_info("Live training is already running; Freeze or Stop it first.")
            return False
        image = self.image_picker.layer()
        try:
            if image is None:
                raise InputError("Pick an image layer to paint on (File > Open, or File > Open Sample > napari-unet).")
            arr = layer_array(image)
            if len(arr.spatial_shape) not in (2, 3):
                raise InputError(f"Live mode needs a 2D image or a stack of 2D planes; {image.name} is {arr.data.shape}.")
            name = self.name_edit.text().strip() or "live"
            check_model_name(name)
            data_cfg, parent = self._start_point()
            labels = self._strokes_layer(create=True)
            if labels is None:
                return False
            if tuple(labels.data.shape) != arr.spatial_shape:
                raise InputError(f"The strokes layer {labels.name} is {labels.data.shape}; it must match the image {arr.spatial_shape}.")
        except (NapariUNetError, FileNotFoundError) as exc:
            show_error(str(exc))
            return False
        channels = min(arr.channels, 3) if arr.rgb else 1
        bg_label = self.background.value()
        cfg = live_config(data_cfg.get("task", "binary"), channels, background_label=bg_label) if parent is None else Config()
        self._source, self.sent, self._dirty, self.frames, self.learnt = image, 0, {}, 0, 0
        self._watch(labels)
        self._prepare_live_layer(image)
        view = self.viewport()
        root = Path(self.folder_edit.text().strip() or default_model_root()).expanduser()
        image_data, labels_data, rgb, bg = arr.data, labels.data, arr.rgb, self.background.value()

        def build(scratch: Path) -> LiveRequest:
            source = zarr_path(image, image_data)  # read there by the worker, region by region
            pixels = None if source is not None else arrays.put(scratch, image_data)
            regions = [LiveStroke(0, plane, top, left, arrays.put(scratch, region))
                       for plane, top, left, region in painted_regions(labels_data)]  # fmt: skip
            return LiveRequest(pixels, rgb, None, cfg.to_dict(), parent, str(root), name, bg, view, source=source,
                               regions=regions)  # fmt: skip

        self._set_running(True)
        self.status_label.setText("Starting the compute worker… paint meanwhile: strokes are kept.")
        self.run_job(self.job, build, self._on_event, self._on_finished)
        return True

    def freeze(self) -> None:
        if self.job.running and self.job.send(LiveFreeze()):
            self.status_label.setText("Freezing: saving the model…")
            self.freeze_button.setEnabled(False)

    def stop_live(self) -> None:
        if self.job.running:
            self.job.stop()
            self.status_label.setText("Stopping…")
            self.stop_button.setEnabled(False)

    def _set_running(self, running: bool) -> None:
        self.live_button.setEnabled(not running)
        self.freeze_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        for widget in (self.image_picker, self.labels_picker, self.start_combo, self.background):
            widget.setEnabled(not running)

    # ------------------------------------------------------------------ strokes and view -> worker
    def _watch(self, labels: Labels | None) -> None:
        if self._watched is not None:
            self._watched.events.paint.disconnect(self._on_paint)
            self._watched.events.set_data.disconnect(self._on_set_data)
        self._watched = labels
        self._history_tops = _history_tops(labels)
        if labels is not None:
            labels.events.paint.connect(self._on_paint)
            labels.events.set_data.connect(self._on_set_data)
        if not self._camera_connected:
            viewer_camera(self.viewer).events.center.connect(self._on_camera)
            viewer_camera(self.viewer).events.zoom.connect(self._on_camera)
            self.viewer.dims.events.current_step.connect(self._on_camera)
            self._camera_connected = True

    def _on_paint(self, event: Any) -> None:
        """Grow the painted box of each plane from a finished stroke (napari's paint event: its history atoms)."""
        self._history_tops = _history_tops(self._watched)
        self._mark(event.value or [])

    def _on_set_data(self, _event: Any = None) -> None:
        """Undo and redo: napari writes the pixels and refreshes, with no paint event.

        Each moves one history item between the undo and redo lists; the items now on top that
        were not on top before name the regions that changed (also sending one that did not is harmless).
        """
        tops = _history_tops(self._watched)
        changed = [item for item, old in zip(tops, self._history_tops) if item is not None and item is not old]
        self._history_tops = tops
        self._mark([atom for item in changed for atom in item])

    def _mark(self, atoms: list[Any]) -> None:
        if not self.job.running:
            return
        ndim = self._watched.ndim if self._watched is not None else 2
        for atom in atoms:
            box = _atom_box(atom[0], ndim)
            if box is None:
                continue
            planes, (top, bottom), (left, right) = (range(*box[0]) if ndim == 3 else [0]), box[-2], box[-1]
            for plane in planes:
                old = self._dirty.get(plane)
                self._dirty[plane] = [top, left, bottom, right] if old is None else [
                    min(old[0], top), min(old[1], left), max(old[2], bottom), max(old[3], right)]  # fmt: skip
        if self._dirty and not self._stroke_timer.isActive():
            self._stroke_timer.start(STROKE_DELAY_MS)

    def flush_strokes(self) -> None:
        """Send the painted boxes (their current labels, a copy of a small region) to the worker."""
        layer, dirty, self._dirty = self._watched, self._dirty, {}
        if layer is None or not self.job.running:
            return
        stack = layer.data.ndim == 3
        for plane, (top, left, bottom, right) in dirty.items():
            region = layer.data[plane, top:bottom, left:right] if stack else layer.data[top:bottom, left:right]
            self.sent += 1
            ref = arrays.put(session_client().session_dir, np.array(region, dtype=np.int32))
            if not self.job.send(LiveStroke(self.sent, plane, top, left, ref)):
                arrays.release(ref)

    def _on_camera(self, *_: Any) -> None:
        if self.job.running:
            self._view_timer.start(VIEW_DELAY_MS)

    def viewport(self) -> LiveViewport | None:
        """The visible part of the image in its pixels (the current plane of a stack)."""
        image = self._source if self._source is not None else self.image_picker.layer()
        if image is None:
            return None
        shape = layer_array(image).spatial_shape
        corners = self._visible_corners(image)
        if corners is None or not np.all(corners[1] > corners[0]):  # unknown: the whole plane
            corners = np.array([[0.0, 0.0], [shape[-2], shape[-1]]])
        plane = 0
        if len(shape) == 3:
            point = image.world_to_data(self.viewer.dims.point)
            plane = int(np.clip(round(float(point[-3])), 0, shape[0] - 1))
        return LiveViewport(plane, float(corners[0][0]), float(corners[0][1]), float(corners[1][0]) + 1, float(corners[1][1]) + 1)

    def _visible_corners(self, image: Image) -> np.ndarray | None:
        """Top-left and bottom-right of the canvas in the image's pixels, from the camera (2D view).

        Computed from the camera's centre and zoom and the canvas size, so it is right before the
        canvas has drawn the new view (the layers' `corner_pixels` are updated only by drawing).
        """
        canvas = getattr(getattr(self.viewer, "canvas", None), "size", None) or getattr(self.viewer, "_canvas_size", None)
        camera = viewer_camera(self.viewer)
        if canvas is None or self.viewer.dims.ndisplay != 2 or camera.zoom <= 0:
            return None
        centre = np.asarray(camera.center, dtype=float)[-2:]
        half = np.asarray(canvas, dtype=float)[-2:] / camera.zoom / 2
        point = np.asarray(self.viewer.dims.point, dtype=float).copy()
        corners = []
        for world in (centre - half, centre + half):
            point[-2:] = world
            corners.append(np.asarray(image.world_to_data(point), dtype=float)[-2:])
        low, high = np.minimum(*corners), np.maximum(*corners)  # a flipped scale swaps them
        return np.array([low, high])

    def send_view(self) -> None:
        view = self.viewport()
        if view is not None and self.job.running:
            self.job.send(LiveView(view))

    # ------------------------------------------------------------------ frames <- worker
    def _prepare_live_layer(self, image: Image) -> None:
        layer = self.live_layer
        if layer is None or layer not in self.viewer.layers:
            ndim = len(layer_array(image).spatial_shape)
            self.live_layer = self.viewer.add_labels(
                np.zeros((1,) * ndim, dtype=np.int32), name=unique_name(self.viewer, f"live [{image.name}]"),
                opacity=0.5, metadata={META_KEY: {"live": True}},
            )  # fmt: skip
        self.viewer.layers.selection.active = self._strokes_layer(create=False)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, LiveFrame):
            self._show_frame(event)
        elif isinstance(event, Started):
            self.status_label.setText(f"Live on {event.device}: preparing the network… paint meanwhile.")
            self.send_view()
        elif isinstance(event, Progress) and event.text == READY:
            self.status_label.setText("Live: paint object and background strokes; the prediction follows.")

    def _show_frame(self, frame: LiveFrame) -> None:
        labels = arrays.take(frame.labels)
        layer, image = self.live_layer, self._source
        if layer is None or layer not in self.viewer.layers or image is None:
            return  # the user removed the live layer: frames are dropped
        stack = layer.ndim == 3
        data = labels[None] if stack else labels
        offset = np.array(([frame.plane] if stack else []) + [frame.top, frame.left], dtype=float)
        scale = np.asarray(image.scale[-layer.ndim:], dtype=float)
        translate = np.asarray(image.translate[-layer.ndim:], dtype=float) + offset * scale
        if layer.data.shape == data.shape:
            layer.data[...] = data  # in place: cheaper for napari than a new array
        else:
            layer.data = data
        if not np.allclose(layer.translate, translate) or not np.allclose(layer.scale, scale):
            layer.scale, layer.translate = scale, translate
        layer.refresh()
        self.frames += 1
        self.learnt = frame.strokes
        self.status_label.setText(
            f"Live: {frame.steps} training steps, loss {frame.loss:.3f}; strokes learnt: {frame.strokes}/{self.sent} "
            f"(prediction {frame.predict_s * 1000:.0f} ms)."
        )

    def _on_finished(self, job: WorkerJob) -> None:
        self._set_running(False)
        self._watch(None)
        if job.failure is not None:
            message = failure_message(job.failure, "Live training")
            self.status_label.setText(message)
            show_error(message)
            return
        self._keep(job.result)

    def _keep(self, outcome: Any) -> None:
        if not isinstance(outcome, LiveOutcome):
            outcome = LiveOutcome("Stopped; nothing was saved (Freeze saves).", None, 0)
        self.last_outcome = outcome
        if outcome.model is not None:
            self.registry.add(ModelEntry.from_info(outcome.model, "live"), make_current=True)
        if not self._shut_down:
            self.status_label.setText(outcome.message)
            show_info(outcome.message)

    def on_shutdown(self, job: WorkerJob) -> None:
        if job.result is not None:
            self._keep(job.result)

    def shutdown(self) -> None:
        self._watch(None)
        if self._camera_connected:
            for emitter in (viewer_camera(self.viewer).events.center, viewer_camera(self.viewer).events.zoom,
                            self.viewer.dims.events.current_step):  # fmt: skip
                emitter.disconnect(self._on_camera)
            self._camera_connected = False
        super().shutdown()


def _history_tops(layer: Labels | None) -> tuple[Any, Any]:
    """The newest items of a labels layer's undo and redo histories (napari keeps them as lists of atoms).

    napari 0.9 has no public history API; its private-access warning is silenced here, and without
    the histories (a later napari) undo and redo are simply not followed.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        undo, redo = (getattr(layer, name, None) or () for name in ("_undo_history", "_redo_history"))
        return (undo[-1] if undo else None, redo[-1] if redo else None)


def _atom_box(key: Any, ndim: int) -> list[tuple[int, int]] | None:
    """(start, stop) per axis of a paint history atom's key: slices, index arrays or ints."""
    if not isinstance(key, tuple) or len(key) != ndim:
        return None
    box = []
    for part in key:
        if isinstance(part, slice):
            box.append((int(part.start or 0), int(part.stop)))
        else:
            values = np.asarray(part)
            if values.size == 0:
                return None
            box.append((int(values.min()), int(values.max()) + 1))
    return box


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera (`viewer.scene.camera` from napari 0.9; `viewer.camera` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera
