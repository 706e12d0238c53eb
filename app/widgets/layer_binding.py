"""napari layers as a view of the :class:`~app.core.annotate.controller.AnnotationController`.

The binding owns the layers SAMScope draws (all share the image's scale/translate, so they line
up in mm):

* the image (one the binding added, or an Image layer the user opened through napari),
* ``SAMScope points``: clicks; green = object, red = background,
* ``SAMScope box``: at most one rectangle per slice,
* ``SAMScope candidate``: the chosen candidate, in its tile's colour,
* ``SAMScope labels``: the accepted objects (the controller's label map itself),
* ``ground truth``: when the controller has one.

Edits the user makes on the points and box layers (the layers' own add/select modes, i.e. the
mouse) become controller verbs; controller events redraw the layers. This is the only place
that guards against echoes: a redraw writes a layer inside ``layer.events.data.blocker()``, so
the controller never hears its own drawing. A click's sign comes from the controller (and the
Alt/Ctrl modifier), never from layer features, which napari resets when data are replaced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QGuiApplication

from app.core import coords
from app.core.annotate.controller import AnnotationController, CandidateSet

__all__ = ["LayerBinding", "POINTS_NAME", "BOX_NAME", "PREVIEW_NAME", "LABELS_NAME", "OWN_LAYERS",
           "CANDIDATE_COLOURS"]

POINTS_NAME = "SAMScope points"
BOX_NAME = "SAMScope box"
PREVIEW_NAME = "SAMScope candidate"
LABELS_NAME = "SAMScope labels"
TRUTH_NAME = "ground truth"
OWN_LAYERS = (POINTS_NAME, BOX_NAME, PREVIEW_NAME, LABELS_NAME)
_POSITIVE = np.array([0.1, 0.95, 0.2, 1.0], np.float32)
_NEGATIVE = np.array([1.0, 0.15, 0.15, 1.0], np.float32)
#: the candidate tiles' colours (app.widgets.candidates), so the overlay matches its tile
CANDIDATE_COLOURS = ("#ffc800", "#00c8ff", "#ff50c8")


class LayerBinding:
    """Keeps napari layers and one controller in step (see the module docstring).

    Parameters
    ----------
    viewer : napari.Viewer
    controller : AnnotationController
    """

    def __init__(self, viewer, controller: AnnotationController):
        self.viewer = viewer
        self.c = controller
        self.image_layer = None
        self.points_layer = None
        self.box_layer = None
        self.preview_layer = None
        self.labels_layer = None
        self.truth_layer = None
        #: set by a view that made the controller's truth from a Labels layer the user chose
        self.truth_from_user = False
        self.ndim = 2
        self._adopting = None  # an Image layer the user opened, while the controller opens it
        self._owned: list = []  # layers this binding added for the current image
        self._drawn_points: list[tuple[int, int]] = []  # layer index -> (z, click index)
        self._drawn_boxes: list[int] = []  # shape index -> z
        self._redraw = QTimer()
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(0)
        self._redraw.timeout.connect(self.draw_prompts)
        ev = controller.events
        ev.image_changed.connect(self._on_image)
        ev.slice_changed.connect(self._on_slice)
        ev.window_changed.connect(self._on_window)
        ev.prompts_changed.connect(self._redraw.start)
        ev.candidates_changed.connect(self._on_candidates)
        ev.selection_changed.connect(lambda _i: self._draw_preview())  # follows a new set
        ev.labels_changed.connect(self._on_labels)
        ev.truth_changed.connect(self._on_truth)
        viewer.dims.events.current_step.connect(self._on_dims)
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        viewer.layers.events.removed.connect(self._on_layer_removed)

    # ======================================================================================
    # images
    # ======================================================================================
    @staticmethod
    def is_adoptable(layer) -> bool:
        from napari.layers import Image

        meta = getattr(layer, "metadata", None) or {}
        # cases opened from the Benchmark dock are for looking at, not a new session
        return (isinstance(layer, Image) and layer.name not in OWN_LAYERS
                and not meta.get("samscope_benchmark_case"))

    def adopt(self, layer) -> bool:
        """Annotate the image of an Image layer the user opened (asks about unsaved work)."""
        from app.napari_io import volume_from_layer

        try:
            volume = volume_from_layer(np.asarray(layer.data), {
                "scale": layer.scale, "translate": layer.translate, "rgb": layer.rgb,
                "metadata": layer.metadata, "name": layer.name})
        except ValueError as exc:
            self.c.events.error.emit(str(exc))
            return False
        self._adopting = layer
        try:
            ok = self.c.open(volume)
        finally:
            self._adopting = None
        if not ok and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)  # the user kept the current image
        return ok

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        if self._adopting is None and layer is not self.image_layer and \
                layer not in self._owned and self.is_adoptable(layer):
            # after napari has finished adding it (and its siblings from the same file)
            QTimer.singleShot(0, lambda: self._maybe_adopt(layer))

    def _maybe_adopt(self, layer) -> None:
        if layer in self.viewer.layers and layer is not self.image_layer:
            self.adopt(layer)

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        for attr in ("points_layer", "box_layer", "preview_layer", "labels_layer", "truth_layer",
                     "image_layer"):
            if getattr(self, attr) is layer:
                setattr(self, attr, None)
        if layer in self._owned:
            self._owned.remove(layer)

    def _on_image(self, volume) -> None:
        from app.napari_io import volume_layer_data

        old = [ly for ly in self._owned if ly is not self._adopting]
        if self.image_layer is not None and self.image_layer is not self._adopting:
            old.append(self.image_layer)
        for layer in {id(ly): ly for ly in old}.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._owned = []
        self.truth_layer, self.truth_from_user = None, False
        for name in OWN_LAYERS:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        if volume is None:
            self.image_layer = None
            return
        if self._adopting is not None:
            self.image_layer = self._adopting
        else:
            data, kwargs, _ = volume_layer_data(volume)
            self._adopting = object()  # not a layer: only blocks re-adoption of our own add
            try:
                self.image_layer = self.viewer.add_image(data, **kwargs)
            finally:
                self._adopting = None
            self._owned.append(self.image_layer)
        self.ndim = 2 if np.asarray(self.image_layer.data).ndim - int(self.image_layer.rgb) == 2 \
            else 3
        if self.ndim == 3:  # napari's default axis labels are -3, -2, -1
            labels = list(self.viewer.dims.axis_labels)
            labels[-3:] = ["slice", "row", "col"]
            self.viewer.dims.axis_labels = labels
        self._make_layers()
        self._on_window(self.c.session.window)
        self.viewer.reset_view()

    def _geometry(self) -> dict:
        layer, n = self.image_layer, self.ndim
        kw = {"scale": tuple(layer.scale[-n:]), "translate": tuple(layer.translate[-n:])}
        units = getattr(layer, "units", None)
        if units is not None:
            kw["units"] = tuple(str(u) for u in units[-n:])
        return kw

    def _view(self, zyx: np.ndarray) -> np.ndarray:
        """A (Z, Y, X) array as this image's layers hold it ((Y, X) for 2D images)."""
        return zyx[0] if self.ndim == 2 else zyx

    def _make_layers(self) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        geom, n = self._geometry(), self.ndim
        labels = self.c.labels
        self.labels_layer = self.viewer.add_labels(
            self._view(labels), name=LABELS_NAME, opacity=0.55, **geom,
            metadata={"samscope_volume": self.c.volume, "source": self.c.volume.source})
        self.labels_layer.editable = False  # objects change through the controller only
        self._colour_key = None
        self._colour_labels()
        self.preview_layer = self.viewer.add_labels(
            np.zeros(self._view(labels).shape, np.uint8), name=PREVIEW_NAME, opacity=0.5, **geom)
        self.preview_layer.colormap = DirectLabelColormap(color_dict={
            None: "transparent", 0: "transparent",
            **{i + 1: c for i, c in enumerate(CANDIDATE_COLOURS)}})
        self.preview_layer.editable = False
        self.box_layer = self.viewer.add_shapes(
            ndim=n, name=BOX_NAME, edge_color="#ffd000", face_color="transparent",
            edge_width=2, **geom)
        self.points_layer = self.viewer.add_points(
            np.zeros((0, n)), ndim=n, name=POINTS_NAME, size=10, face_color=_POSITIVE,
            border_color="white", border_width=0.15, **geom)
        self._owned += [self.labels_layer, self.preview_layer, self.box_layer, self.points_layer]
        self.points_layer.events.data.connect(self._on_points_edited)
        self.box_layer.events.data.connect(self._on_boxes_edited)
        for layer in (self.points_layer, self.box_layer):
            # napari's own hints name its layer keys (e.g. <3> for select), which SAMScope
            # uses for the candidates: say what the keys do here instead
            layer.events.mode.connect(lambda _e, ly=layer: self._set_help(ly))
            self._set_help(layer)
        self._drawn_points, self._drawn_boxes = [], []
        self.activate_box_mode()

    # ======================================================================================
    # modes
    # ======================================================================================
    _KEYS_HELP = "1/2/3 choose a candidate · Enter accept · Ctrl+Z undo · Esc clear prompts"

    def _set_help(self, layer) -> None:
        mode = str(layer.mode)
        if layer is self.points_layer and mode == "add":
            text = ("click: object point (N or Alt-click: background) · " + self._KEYS_HELP)
        elif layer is self.box_layer and mode == "add_rectangle":
            text = "drag a box around the object · " + self._KEYS_HELP
        else:
            text = "Draw box / Add points in the Segment dock to prompt · " + self._KEYS_HELP
        layer.help = text
        if self.viewer.layers.selection.active is layer:
            self.viewer.help = text  # the status bar (napari copied the old text already)
    def activate_box_mode(self) -> None:
        """Select the box layer in rectangle mode: the next drag draws a box."""
        if self.box_layer is not None:
            self.viewer.layers.selection.active = self.box_layer
            self.box_layer.mode = "add_rectangle"

    def activate_point_mode(self) -> None:
        """Select the points layer in add mode: the next click adds a point."""
        if self.points_layer is not None:
            self.viewer.layers.selection.active = self.points_layer
            self.points_layer.mode = "add"

    # ======================================================================================
    # layers -> controller
    # ======================================================================================
    def _rowcol_z(self, coords_nd: np.ndarray) -> tuple[int, float, float]:
        v = np.asarray(coords_nd, float).reshape(-1)
        z = 0 if self.ndim == 2 else int(round(v[-3]))
        return z, float(v[-2]), float(v[-1])

    def _on_points_edited(self, event) -> None:
        action = str(getattr(event, "action", ""))
        data = np.asarray(self.points_layer.data, float)
        idx = [int(i) % max(len(data), 1) for i in (getattr(event, "data_indices", ()) or ())]
        if action.endswith("added"):
            mods = QGuiApplication.queryKeyboardModifiers()
            negative = bool(mods & (Qt.KeyboardModifier.AltModifier
                                    | Qt.KeyboardModifier.ControlModifier))
            for i in idx:
                z, row, col = self._rowcol_z(data[i])
                self.c.add_point(col, row, positive=False if negative else None, z=z)
        elif action.endswith("removed"):
            by_slice: dict[int, list[int]] = {}
            for i in idx:
                if i < len(self._drawn_points):
                    z, k = self._drawn_points[i]
                    by_slice.setdefault(z, []).append(k)
            for z, ks in by_slice.items():
                self.c.remove_points(ks, z=z)
        elif action.endswith("changed"):
            for i in idx:
                if i < len(self._drawn_points) and i < len(data):
                    z, k = self._drawn_points[i]
                    _, row, col = self._rowcol_z(data[i])
                    self.c.move_point(k, col, row, z=z)
        self._redraw.start()

    def _on_boxes_edited(self, event) -> None:
        action = str(getattr(event, "action", ""))
        shapes = list(self.box_layer.data)
        if action.endswith("added"):
            self._drawn_boxes = self._drawn_boxes + [-1] * (len(shapes) - len(self._drawn_boxes))
        idx = [int(i) % max(len(shapes), 1) for i in (getattr(event, "data_indices", ()) or ())]
        shape_hw = self.c.volume.shape[1:]
        if action.endswith("added") or action.endswith("changed"):
            for i in idx:
                if i >= len(shapes):
                    continue
                verts = np.asarray(shapes[i], float)
                z = 0 if self.ndim == 2 else int(round(verts[0, 0]))
                try:
                    box = coords.rectangle_to_box_xyxy(verts[:, -2:], shape_hw)
                except ValueError:
                    self.c.events.status.emit("That rectangle lies outside the image.")
                    continue
                self.c.set_box(box, z=z)
        elif action.endswith("removed"):
            for i in idx:
                if i < len(self._drawn_boxes):
                    self.c.clear_box(z=self._drawn_boxes[i])
        self._redraw.start()

    def _on_dims(self, event=None) -> None:
        if self.c.session is None or self.image_layer is None or self.ndim == 2:
            return
        pos = self.image_layer.world_to_data(self.viewer.dims.point)
        self.c.set_slice(int(round(float(np.asarray(pos)[-3]))))

    # ======================================================================================
    # controller -> layers
    # ======================================================================================
    def _with_z(self, z: int, rc: np.ndarray) -> np.ndarray:
        rc = np.asarray(rc, float).reshape(-1, 2)
        return rc if self.ndim == 2 else np.column_stack([np.full(len(rc), float(z)), rc])

    def draw_prompts(self) -> None:
        """Write the controller's clicks and boxes into the two prompt layers."""
        self._redraw.stop()
        store = self.c.prompts
        if store is None or self.points_layer is None or self.box_layer is None:
            return
        clicks = store.all_clicks()
        rows = [self._with_z(z, [[cl.y, cl.x]])[0] for z, cl in clicks]
        data = np.asarray(rows, float).reshape(-1, self.ndim)
        colours = np.array([_POSITIVE if cl.positive else _NEGATIVE for _, cl in clicks],
                           np.float32).reshape(-1, 4)
        per_slice: dict[int, int] = {}
        self._drawn_points = []
        for z, _ in clicks:
            self._drawn_points.append((z, per_slice.get(z, 0)))
            per_slice[z] = per_slice.get(z, 0) + 1
        layer = self.points_layer
        with layer.events.data.blocker():
            have = np.asarray(layer.data, float)
            if len(data) == len(have) + 1 and np.allclose(data[:-1], have):
                layer.add(data[-1:])  # one new click (from a script): append, no rebuild
                layer.selected_data = set()
            elif len(data) != len(have) or not np.allclose(data, have):
                layer.data = data
                layer.selected_data = set()
            if len(data) and not np.allclose(layer.face_color, colours):
                layer.face_color = colours
        # what the next click will be
        layer.current_face_color = "#19f233" if self.c.positive else "#ff2626"
        self._draw_boxes([(z, self._with_z(z, coords.box_xyxy_to_rectangle(b)))
                          for z, b in store.all_boxes()])

    def _draw_boxes(self, wanted: list[tuple[int, np.ndarray]]) -> None:
        """Make the box layer hold exactly ``wanted`` rectangles, touching as little as
        possible: a new drag usually only needs the slice's older rectangle removed."""
        layer = self.box_layer
        have = [np.asarray(v, float) for v in layer.data]
        if len(have) > len(self._drawn_boxes):
            # a rectangle is being drawn (napari reports it when the mouse is released):
            # redrawing now would delete it under the user's hand; draw when it lands
            QTimer.singleShot(50, self._redraw.start)
            return

        def same(a, b):
            return a.shape == b.shape and np.allclose(a, b, atol=1e-3)

        keep: list[int] = []
        for _, rect in wanted:
            hit = next((i for i, v in enumerate(have) if i not in keep and same(v, rect)), None)
            if hit is None:
                keep = []
                break
            keep.append(hit)
        with layer.events.data.blocker():
            if keep and len(keep) == len(wanted):
                extra = set(range(len(have))) - set(keep)
                if extra:
                    layer.selected_data = extra
                    layer.remove_selected()
            else:
                layer.data = []
                if wanted:
                    layer.add_rectangles([rect for _, rect in wanted])
        self._drawn_boxes = []
        for v in layer.data:
            v = np.asarray(v, float)
            self._drawn_boxes.append(0 if self.ndim == 2 else int(round(v[0, 0])))

    def _on_slice(self, z: int) -> None:
        if self.ndim == 3 and self.image_layer is not None:
            step = list(self.viewer.dims.current_step)
            if step and step[0] != z:
                # world position of slice z along the first axis
                world = self.image_layer.data_to_world([z, 0, 0])
                self.viewer.dims.set_point(0, float(np.asarray(world)[0]))

    def _on_window(self, window) -> None:
        if self.image_layer is not None and not self.image_layer.rgb and window is not None:
            self.image_layer.contrast_limits = (window.low, window.high)

    def _on_candidates(self, cs: CandidateSet | None) -> None:
        if cs is None:  # a new set is drawn when its preselection arrives (selection_changed)
            self._draw_preview()

    def _draw_preview(self) -> None:
        layer = self.preview_layer
        if layer is None:
            return
        data = layer.data
        cs, i = self.c.candidate_set, self.c.selected
        if not data.any() and (cs is None or i < 0):
            return  # nothing shown, nothing to show
        data[...] = 0
        if cs is not None and i >= 0:
            target = data if self.ndim == 2 else data[cs.z]
            target[cs.candidates.masks[i]] = min(i, 2) + 1
        # the extent and the thumbnail stay as they are: only the pixels changed
        layer.refresh(extent=False, thumbnail=False, highlight=False)

    def _on_labels(self) -> None:
        if self.labels_layer is not None:
            self._colour_labels()
            self.labels_layer.refresh(extent=False)

    def _colour_labels(self) -> None:
        """Objects in the export palette (the Objects panel's swatches, DICOM SEG, ITK-SNAP);
        hidden objects transparent."""
        from napari.utils.colormaps import DirectLabelColormap

        from app.core.annotate.controller import object_colour

        hidden = set(self.c.hidden)
        n = max(64, int(self.c.next_label) + 1)
        colours = {None: "transparent", 0: "transparent"}
        for v in range(1, n):
            colours[v] = "transparent" if v in hidden else \
                "#{:02x}{:02x}{:02x}".format(*object_colour(v))
        key = (n, frozenset(hidden))
        if getattr(self, "_colour_key", None) != key:
            self._colour_key = key
            self.labels_layer.colormap = DirectLabelColormap(color_dict=colours)

    def _on_truth(self) -> None:
        if self.truth_from_user:
            self.truth_from_user = False  # drawn already: it is the user's own layer
            return
        truth = self.c.truth
        if self.truth_layer is not None and self.truth_layer in self.viewer.layers:
            if self.truth_layer in self._owned:
                self.viewer.layers.remove(self.truth_layer)
            self.truth_layer = None
        if truth is None or self.image_layer is None:
            return
        self.truth_layer = self.viewer.add_labels(
            self._view(truth).astype(np.uint16), name=TRUTH_NAME, opacity=0.6,
            **self._geometry())
        self.truth_layer.contour = 2
        self.truth_layer.editable = False
        from napari.utils.colormaps import DirectLabelColormap

        # ground truth is a white outline: never mistaken for an object's colour
        self.truth_layer.colormap = DirectLabelColormap(
            color_dict={None: "#ffffff", 0: "transparent"})
        self._owned.append(self.truth_layer)
        # keep the prompt layers on top and active
        for layer in (self.preview_layer, self.box_layer, self.points_layer):
            if layer is not None:
                self.viewer.layers.move(self.viewer.layers.index(layer),
                                        len(self.viewer.layers))
        self.activate_box_mode()

    def image_name(self) -> str:
        if self.image_layer is not None:
            return self.image_layer.name
        return Path(self.c.volume.source).name if self.c.volume is not None else ""
