"""The Adapt dock: fine-tune a model's prompt encoder + mask decoder on the user's labelled data.

Choose a dataset folder (``images/`` + ``masks/`` pairs, an MSD ``dataset.json`` folder, or a
folder of those), a base model and a budget in minutes; the dock trains in a background thread
(:func:`app.core.finetune.finetune`), shows the loss and the validation IoU as they come,
then the before/after comparison on the validation split, scored by the benchmark runner's
own code (:mod:`app.core.benchmark.evaluate`: one farthest-from-boundary click and a tight
box, first candidate), with the evidence-based box routing, and saves the result as a model folder that the
Segment dock, ``samscope segment --model`` and the benchmark load like any other.
"""

from __future__ import annotations

import threading
import traceback
from pathlib import Path

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

__all__ = ["AdaptDock"]


class _Signals(QObject):
    progress = Signal(object)  # FinetuneProgress
    finished = Signal(object, object)  # (FinetuneResult | None, error message | None)


def _fmt(x) -> str:
    return "" if x is None else f"{x:.3f}"


class AdaptDock(QWidget):
    """Fine-tune a model on a folder of labelled images within a time budget.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Given by napari (the parameter name is what napari looks for). The dock only shows
        notifications through it; training needs no layer.
    """

    def __init__(self, napari_viewer=None, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.result = None  # FinetuneResult of the last run
        self.saved_path: Path | None = None
        self.history: list = []  # FinetuneProgress reports with validation numbers
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._signals = _Signals()
        self._signals.progress.connect(self._on_progress)
        self._signals.finished.connect(self._on_finished)
        self._build_ui()
        self._populate_models()
        self._check_dataset()

    # --- UI -------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        from app.widgets._scroll import scrolling_layout

        layout = scrolling_layout(self)
        form = QFormLayout()
        row = QHBoxLayout()
        self.dataset_edit = QLineEdit()
        self.dataset_edit.setPlaceholderText("folder with images/ + masks/, or dataset.json")
        self.dataset_edit.textChanged.connect(lambda _t: self._check_dataset())
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_dataset)
        row.addWidget(self.dataset_edit)
        row.addWidget(browse)
        form.addRow("Dataset", row)
        self.model_combo = QComboBox()
        form.addRow("Base model", self.model_combo)
        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setRange(0.5, 600.0)
        self.minutes_spin.setValue(5.0)
        self.minutes_spin.setSuffix(" min")
        self.minutes_spin.setToolTip("Wall-clock budget for the whole run, embedding included")
        form.addRow("Budget", self.minutes_spin)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 100_000)
        self.steps_spin.setValue(300)
        form.addRow("Steps (at most)", self.steps_spin)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        form.addRow("Seed", self.seed_spin)
        self.val_spin = QDoubleSpinBox()
        self.val_spin.setRange(0.0, 0.9)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setValue(0.25)
        self.val_spin.setToolTip("Share of each dataset's cases held out for validation")
        form.addRow("Validation share", self.val_spin)
        layout.addLayout(form)

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)

        self.progress_bar = QProgressBar()
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel("Choose a dataset and press Start.")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        layout.addWidget(QLabel("Training (validation every few steps)"))
        self.history_table = QTableWidget(0, 4)
        self.history_table.setHorizontalHeaderLabels(["step", "loss", "val click IoU",
                                                      "val box IoU"])
        layout.addWidget(self.history_table)

        layout.addWidget(QLabel("Validation split: before → after"))
        self.compare_table = QTableWidget(0, 6)
        self.compare_table.setHorizontalHeaderLabels(
            ["task", "n", "click before", "click after", "box before", "box after"])
        layout.addWidget(self.compare_table)

        row = QHBoxLayout()
        self.name_edit = QLineEdit("my_model")
        self.save_button = QPushButton("Save model…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self._save_clicked)
        row.addWidget(QLabel("Name"))
        row.addWidget(self.name_edit)
        row.addWidget(self.save_button)
        layout.addLayout(row)

    def _populate_models(self) -> None:
        from app.core.models.registry import list_models, model_status

        for spec in list_models():
            status = model_status(spec.name)
            self.model_combo.addItem(f"{spec.title} ({status})", spec.name)
            self.model_combo.setItemData(self.model_combo.count() - 1, spec.description,
                                         Qt.ItemDataRole.ToolTipRole)
        idx = self.model_combo.findData("litemedsam")
        if idx >= 0:
            self.model_combo.setCurrentIndex(idx)

    def dataset_layout(self) -> str | None:
        """The layout of the dataset folder typed or chosen (one level of sub-folders is
        searched too), or None when it holds none."""
        from app.core.benchmark.datasets import detect_layout

        text = self.dataset_edit.text().strip()
        if not text:
            return None
        path = Path(text)
        layout = detect_layout(path)
        if layout is None and path.is_dir():
            try:
                children = sorted(p for p in path.iterdir() if p.is_dir())[:200]
            except OSError:
                children = []
            layout = next((lay for lay in map(detect_layout, children) if lay), None)
        return layout

    def _check_dataset(self) -> None:
        """Start is offered only for a folder that holds a labelled dataset."""
        layout = self.dataset_layout()
        self.start_button.setEnabled(layout is not None and not self.running)
        text = self.dataset_edit.text().strip()
        if not text:
            self.start_button.setToolTip("Choose a labelled dataset first")
        elif layout is None:
            self.start_button.setToolTip(f"{text} holds no labelled dataset (images/ + masks/ "
                                         "pairs, an MSD dataset.json, nnU-Net, .npz)")
        else:
            self.start_button.setToolTip(f"Fine-tune on this {layout} dataset")

    def _browse_dataset(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Labelled dataset folder")
        if path:
            self.dataset_edit.setText(path)

    def _notify(self, msg: str) -> None:
        try:
            from napari.utils.notifications import show_info

            show_info(msg)
        except Exception:  # noqa: BLE001 - notifications are a nicety
            pass

    # --- run ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start fine-tuning in a background thread with the dock's settings."""
        if self.running:
            return
        dataset = Path(self.dataset_edit.text().strip())
        if not dataset.is_dir():
            self._show_error(f"dataset folder {dataset} does not exist")
            return
        # torch & co. must be imported on the GUI thread with triton kept out (a triton import
        # after napari made its OpenGL context segfaults); the Segment dock owns that recipe
        from app.widgets.segment_dock import _import_model_libraries

        _import_model_libraries()
        from app.core.finetune import FinetuneConfig

        cfg = FinetuneConfig(steps=self.steps_spin.value(), minutes=self.minutes_spin.value(),
                             seed=self.seed_spin.value(), val_fraction=self.val_spin.value())
        base = self.model_combo.currentData() or "litemedsam"
        name = self.name_edit.text().strip() or "my_model"
        self.result = None
        self.saved_path = None
        self.error = None
        self.history = []
        self.history_table.setRowCount(0)
        self.compare_table.setRowCount(0)
        self._cancel.clear()
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.save_button.setEnabled(False)
        self.progress_bar.setRange(0, 0)
        self.status_label.setText(f"Reading {dataset} …")
        self._thread = threading.Thread(target=self._work, args=(dataset, base, name, cfg),
                                        name="samscope-adapt", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop after the current step; the best weights so far are kept."""
        self._cancel.set()
        self.status_label.setText("Cancelling after the current step …")

    def _work(self, dataset: Path, base: str, name: str, cfg) -> None:
        from app.core.errors import SamScopeError
        from app.core.finetune import finetune, load_training_samples, split_by_case

        try:
            samples = load_training_samples(dataset)
            train, val = split_by_case(samples, cfg.val_fraction, cfg.seed)
            result = finetune(train, val, base=base, name=name, config=cfg,
                              on_progress=self._signals.progress.emit, cancel=self._cancel,
                              data_description={"root": str(dataset.resolve())})
            self._signals.finished.emit(result, None)
        except (SamScopeError, ValueError, OSError) as exc:
            self._signals.finished.emit(None, str(exc))
        except Exception:  # noqa: BLE001 - shown to the user, the dock keeps running
            self._signals.finished.emit(None, traceback.format_exc(limit=3))

    def _on_progress(self, p) -> None:
        if p.phase == "embedding":
            self.progress_bar.setRange(0, p.total)
            self.progress_bar.setValue(p.done)
            self.status_label.setText(f"Embedding images {p.done}/{p.total} "
                                      f"({p.elapsed_s:.0f} s)")
            return
        self.progress_bar.setRange(0, p.total)
        self.progress_bar.setValue(p.done)
        loss = "" if p.loss is None else f", loss {p.loss:.3f}"
        if p.phase == "training":
            self.status_label.setText(f"Step {p.done}/{p.total}{loss} ({p.elapsed_s:.0f} s)")
        elif p.val_point_iou is not None and p.phase == "validating":
            self.history.append(p)
            r = self.history_table.rowCount()
            self.history_table.insertRow(r)
            for c, v in enumerate((str(p.done), _fmt(p.loss), _fmt(p.val_point_iou),
                                   _fmt(p.val_box_iou))):
                self.history_table.setItem(r, c, QTableWidgetItem(v))
            self.status_label.setText(f"Validation at step {p.done}: click IoU "
                                      f"{p.val_point_iou:.3f}, box IoU {p.val_box_iou:.3f}")
        elif p.message:
            self.status_label.setText(p.message)

    def _on_finished(self, result, error) -> None:
        self._thread = None  # its last act was to send this
        self.cancel_button.setEnabled(False)
        self._check_dataset()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        if error is not None:
            self._show_error(error)
            return
        self.result = result
        self._fill_comparison(result.manifest.get("validation", {}))
        tr = result.manifest["training"]
        self.status_label.setText(
            f"Done: {tr['steps_taken']} steps in {tr['seconds'] / 60:.1f} min "
            f"(stopped: {result.stopped}; best step {tr['best_step']}). "
            + (f"{routing}. " if (routing := result.manifest.get("validation", {}).get(
                "box_routing", {}).get("reason")) else "") + "Save it to use it.")
        self.save_button.setEnabled(True)

    def _fill_comparison(self, validation: dict) -> None:
        before, after = validation.get("before", {}), validation.get("after", {})
        self.compare_table.setRowCount(0)
        for task in sorted(after, key=lambda t: (t == "all", t)):
            b, a = before.get(task, {}), after[task]
            r = self.compare_table.rowCount()
            self.compare_table.insertRow(r)
            vals = (task, str(int(a.get("n", 0))), _fmt(b.get("mode1_first")),
                    _fmt(a.get("mode1_first")), _fmt(b.get("mode3_first")),
                    _fmt(a.get("mode3_first")))
            for c, v in enumerate(vals):
                self.compare_table.setItem(r, c, QTableWidgetItem(v))

    def _show_error(self, msg: str) -> None:
        self.error = msg
        self.status_label.setText(f"Error: {msg}")
        self._notify(f"Adapt: {msg}")

    # --- save -----------------------------------------------------------------------------
    def _save_clicked(self) -> None:
        from app.core.models.finetuned import user_models_dir

        default = user_models_dir() / (self.name_edit.text().strip() or "my_model")
        try:
            default.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the dialog then opens wherever Qt likes
        path = QFileDialog.getExistingDirectory(self, "Save the model in this folder",
                                                str(default.parent))
        if path:
            self.save(Path(path) / default.name)

    def save(self, path: str | Path | None = None, *, overwrite: bool = False) -> Path | None:
        """Save the last result as a model folder (default: the user models folder).

        Models saved in the user models folder are listed by
        :func:`app.core.models.finetuned.list_user_models` and load by name.
        """
        from app.core.errors import SamScopeError
        from app.core.models.finetuned import save_finetuned, user_models_dir

        if self.result is None:
            return None
        name = self.result.model.name
        out = Path(path) if path is not None else user_models_dir() / name
        try:
            self.saved_path = save_finetuned(self.result.model, out, self.result.manifest,
                                             overwrite=overwrite)
        except (SamScopeError, OSError, ValueError) as exc:
            self._show_error(str(exc))
            return None
        self.status_label.setText(f"Saved {name} to {self.saved_path}")
        self._notify(f"Saved fine-tuned model {name} to {self.saved_path}")
        return self.saved_path
