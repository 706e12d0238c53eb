"""The Benchmark dock: run the paper's prompt modes and click protocols on a dataset folder.

Drives the same core as ``samscope benchmark`` (:func:`app.core.benchmark.iter_benchmark`) in a
background thread: progress bar, Cancel (the run folder stays resumable), Resume, reopen a run
folder, a sortable summary table and per-case table, the paper-style figures in tabs, and
double-click on a case to show it in the viewer (image, ground truth, prediction, prompts).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Qt, QTimer, QUrl, Signal
from qtpy.QtGui import QDesktopServices
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QWidget,
)

__all__ = ["BenchmarkDock", "CASE_LAYER_KEY"]

#: metadata flag on layers opened from a results row (the Segment dock leaves them alone)
CASE_LAYER_KEY = "samscope_benchmark_case"

# the figures first: the IoU column used to be off-screen
_SUMMARY_COLUMNS = ["method", "protocol", "iou_mean", "iou_ci_low", "iou_ci_high", "dice_mean",
                    "n", "n_cases", "task", "click", "selection", "dataset", "seconds_mean"]
#: the prompt modes as the paper names them
MODE_TITLES = {1: "1 point, largest part", 2: "1 point per part (≤3)", 3: "box, largest part",
               4: "1 box per part (≤3)", 5: "box around all parts"}
#: methods the default plan runs: the box model for boxes, the click model for points
DEFAULT_METHODS = ("litemedsam", "litemedsam_points")
#: everything-mode grid densities offered (points per side)
GRID_CHOICES = (16, 32, 64, 128)
#: COSMOS prompt strategies offered: (key, label, protocol name with {n} for the point count)
COSMOS_CHOICES = (("centroid", "centroid point", "cosmos-centroid"),
                  ("box", "box", "cosmos-box"),
                  ("box_centroid", "box + centroid", "cosmos-box-centroid"),
                  ("pos", "N positive", "cosmos-{n}pos"),
                  ("posneg", "N pos + N neg", "cosmos-{n}pos{n}neg"))


def default_run_folder(dataset_root) -> Path:
    """``<Documents>/SAMScope runs/<dataset>-<date-time>``: never inside the dataset (which
    may be read-only, and must not fill up with results)."""
    import time

    import platformdirs

    base = Path(platformdirs.user_documents_dir()) / "SAMScope runs"
    return base / f"{Path(dataset_root).name or 'dataset'}-{time.strftime('%Y%m%d-%H%M')}"
_CASE_COLUMNS = ["dataset", "task", "case", "slice", "method", "protocol", "click",
                 "selection", "iou", "dice", "seconds"]


class _Signals(QObject):
    discovered = Signal(object, object)  # (suite, error)
    progress = Signal(object)
    log = Signal(str)
    finished = Signal(str, object)  # (status, error)
    report_ready = Signal(object, object)  # (path, error)
    results_loaded = Signal(object)  # _Loaded


@dataclass
class _Loaded:
    """What a background read of the results gives the GUI thread."""

    token: int
    final: bool
    df: Any = None
    files: Any = None
    summary: Any = None
    error: Exception | None = None
    unchanged: bool = False
    figures: list | None = None  # made by make_figures, or None: none asked for


class _NumericItem(QTableWidgetItem):
    """Sorts by number, not by text."""

    def __init__(self, value):
        text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else (
            f"{value:.3f}" if isinstance(value, float) else str(value))
        super().__init__(text)
        self._key = value if isinstance(value, int | float) and not (
            isinstance(value, float) and np.isnan(value)) else float("-inf")

    def __lt__(self, other):  # noqa: D105
        if isinstance(other, _NumericItem):
            return self._key < other._key
        return super().__lt__(other)


class BenchmarkDock(QWidget):
    """Benchmark prompting on a dataset folder (see the module docstring).

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.suite = None
        self.out_dir: Path | None = None
        self.results = None  # pandas DataFrame: results.csv's analysis columns
        self.files = None  # its rows that name saved masks, with paths and prompts
        self.summary = None
        self._load_token = 0  # the newest background read of the results
        self._loading = False  # that read is under way
        self._figures_after_load = False
        self.status = "idle"  # idle | running | done | cancelled | interrupted | failed
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._signals = _Signals()
        self._signals.discovered.connect(self._on_discovered)
        self._signals.progress.connect(self._on_progress)
        self._signals.log.connect(self._on_log)
        self._signals.finished.connect(self._on_finished)
        self._signals.report_ready.connect(self._on_report_ready)
        self._signals.results_loaded.connect(self._on_results_loaded)
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setInterval(2000)
        self._refresh_timer.timeout.connect(self.refresh_results)
        self._build_ui()

    # ======================================================================================
    # UI
    # ======================================================================================
    def _build_ui(self) -> None:
        from app.widgets._scroll import scrolling_layout

        lay = scrolling_layout(self)  # the plan form scrolls rather than widen the docks
        lay.setContentsMargins(6, 6, 6, 6)

        box = QGroupBox("Dataset")
        g = QGridLayout(box)
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("MSD, nnU-Net v2, images/+masks/ or .npz folder")
        self.data_button = QPushButton("Choose…")
        self.data_button.clicked.connect(self._choose_data)
        self.data_edit.editingFinished.connect(lambda: self.set_dataset(self.data_edit.text()))
        g.addWidget(self.data_edit, 0, 0)
        g.addWidget(self.data_button, 0, 1)
        self.data_info = QLabel("No dataset chosen.")
        self.data_info.setWordWrap(True)
        g.addWidget(self.data_info, 1, 0, 1, 2)
        lay.addWidget(box)

        box = QGroupBox("Plan")
        # label | one layout per row: rows do not share columns, so the form is as narrow as
        # its widest row (a shared 4-column grid summed every row's widest cells and the dock
        # scrolled sideways)
        g = QGridLayout(box)
        g.setColumnStretch(1, 1)

        def add_row(r: int, label: str, *items, top: bool = False, stretch: bool = True):
            g.addWidget(QLabel(label), r, 0, Qt.AlignmentFlag.AlignTop if top
                        else Qt.AlignmentFlag.AlignVCenter)
            if len(items) == 1 and not isinstance(items[0], QWidget):
                g.addLayout(items[0], r, 1)
                return
            h = QHBoxLayout()
            for w in items:
                h.addWidget(w)
            if stretch:
                h.addStretch(1)
            g.addLayout(h, r, 1)

        self.methods_list = QListWidget()
        self.methods_list.setMaximumHeight(110)
        self._fill_methods()
        add_row(0, "Methods:", self.methods_list, top=True, stretch=False)
        col = QGridLayout()
        self.mode_checks = []
        for m in range(1, 6):
            c = QCheckBox(f"{m}: {MODE_TITLES[m]}")
            c.setChecked(True)
            c.setToolTip(f"Prompt mode {m} of Mazurowski et al. 2023: {MODE_TITLES[m]}")
            self.mode_checks.append(c)
            col.addWidget(c, m - 1, 0)
        add_row(1, "Modes:", col, top=True)
        self.protocol_combo = QComboBox()
        for label, value in (("none", ()), ("paper", ("paper",)), ("standard", ("standard",)),
                             ("paper + standard", ("paper", "standard"))):
            self.protocol_combo.addItem(label, value)
        self.clicks_spin = QSpinBox()
        self.clicks_spin.setRange(1, 20)
        self.clicks_spin.setValue(5)
        self.clicks_spin.setPrefix("clicks ")
        add_row(2, "Clicks:", self.protocol_combo, self.clicks_spin)
        self.grid_checks = {}
        for n in GRID_CHOICES:
            c = QCheckBox(f"{n}²")
            c.setToolTip(f"everything mode with a grid of {n}×{n} point prompts (SAM's "
                         "automatic mask generator; masks matched to the ground truth)")
            self.grid_checks[n] = c
        add_row(3, "Everything:", *self.grid_checks.values())
        cosmos = QGridLayout()
        self.cosmos_checks = {}
        for i, (key, label, name) in enumerate(COSMOS_CHOICES):
            c = QCheckBox(label)
            c.setToolTip("COSMOS 1050K prompt strategy (Huang et al. 2023): "
                         + name.replace("{n}", "N"))
            self.cosmos_checks[key] = c
            cosmos.addWidget(c, i // 2, i % 2)
        self.cosmos_n_spin = QSpinBox()
        self.cosmos_n_spin.setRange(1, 20)
        self.cosmos_n_spin.setValue(5)
        self.cosmos_n_spin.setPrefix("N = ")
        self.cosmos_n_spin.setToolTip("points per sign for the N-point strategies")
        cosmos.addWidget(self.cosmos_n_spin, 2, 1)
        cosmos.setColumnStretch(2, 1)
        add_row(4, "COSMOS:", cosmos, top=True)
        self.jitter_spin = QDoubleSpinBox()
        self.jitter_spin.setRange(0.0, 0.5)
        self.jitter_spin.setSingleStep(0.05)
        self.jitter_spin.setDecimals(2)
        self.jitter_spin.setSuffix(" × size")
        self.jitter_spin.setToolTip("randomness test: prompt noise as a fraction of the "
                                    "object's size (modes and COSMOS strategies); 0 = exact")
        self.repeats_spin = QSpinBox()
        self.repeats_spin.setRange(1, 100)
        self.repeats_spin.setPrefix("repeats ")
        self.repeats_spin.setToolTip("jittered repetitions of every prompt (mean and spread "
                                     "per case in the report)")
        add_row(5, "Jitter:", self.jitter_spin, self.repeats_spin)
        self.selection_checks = {}
        for name in ("first", "best_score", "oracle"):
            c = QCheckBox(name)
            c.setChecked(name != "best_score")
            self.selection_checks[name] = c
        self.selection_auto = QCheckBox("auto")
        self.selection_auto.setToolTip("first + oracle where the model's outputs can be "
                                       "ranked, first only otherwise")
        self.selection_auto.setChecked(True)
        add_row(6, "Selection:", *self.selection_checks.values(), self.selection_auto)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setMinimumWidth(90)  # its hint is sized for ten digits
        add_row(7, "Seed:", self.seed_spin)
        self.max_cases_spin = QSpinBox()
        self.max_cases_spin.setRange(0, 100000)
        self.max_cases_spin.setSpecialValueText("all cases")
        self.max_cases_spin.setPrefix("≤ ")
        self.max_cases_spin.setSuffix(" cases")
        self.max_slices_spin = QSpinBox()
        self.max_slices_spin.setRange(0, 10000)
        self.max_slices_spin.setSpecialValueText("all slices")
        self.max_slices_spin.setPrefix("≤ ")
        self.max_slices_spin.setSuffix(" slices")
        add_row(8, "Subset:", self.max_cases_spin, self.max_slices_spin)
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("run folder (results.csv, report.html)")
        self.out_button = QPushButton("Choose…")
        self.out_button.clicked.connect(self._choose_out)
        add_row(9, "Output:", self.out_edit, self.out_button, stretch=False)
        self.run_on_combo = QComboBox()
        self.run_on_combo.addItem("this computer", None)
        self.run_on_combo.addItem("Ray cluster at …", "ray")
        self.run_on_combo.setToolTip("a Ray cluster needs samscope[cluster] and the dataset "
                                     "at the same path on every node")
        self.ray_address_edit = QLineEdit("auto")
        self.ray_address_edit.setToolTip("auto (RAY_ADDRESS, the cluster 'ray start' began "
                                         "here, else a local Ray) or HOST:PORT of the head")
        self.ray_address_edit.setEnabled(False)
        self.run_on_combo.currentIndexChanged.connect(
            lambda _i: self.ray_address_edit.setEnabled(self.run_on_combo.currentData() == "ray"))
        add_row(10, "Run on:", self.run_on_combo, self.ray_address_edit, stretch=False)
        lay.addWidget(box)

        row = QGridLayout()  # two rows of buttons: five in one did not fit the dock
        self.run_button = QPushButton("Run")
        self.run_button.setStyleSheet("font-weight: bold;")
        self.cancel_button = QPushButton("Cancel")
        self.resume_button = QPushButton("Resume")
        self.open_run_button = QPushButton("Open run…")
        self.report_button = QPushButton("Open report")
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button.clicked.connect(self.resume)
        self.open_run_button.clicked.connect(self._choose_run)
        self.report_button.clicked.connect(self.open_report)
        for i, w in enumerate((self.run_button, self.cancel_button, self.resume_button)):
            row.addWidget(w, 0, i)
        row.addWidget(self.open_run_button, 1, 0, 1, 2)
        row.addWidget(self.report_button, 1, 2)
        lay.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        lay.addWidget(self.progress)
        self.log_label = QLabel()
        self.log_label.setWordWrap(True)
        lay.addWidget(self.log_label)

        self.tabs = QTabWidget()
        self.summary_table = self._make_table(_SUMMARY_COLUMNS)
        # a view over a model: a run's rows are drawn as they scroll into sight, not built
        # as one widget item per cell (10^6 of them for a 10^5-row run)
        from app.widgets.frame_model import FrameModel

        self.cases_model = FrameModel(self)
        self.cases_table = QTableView()
        self.cases_table.setModel(self.cases_model)
        self.cases_table.setSortingEnabled(True)
        self.cases_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.cases_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.cases_table.setMinimumHeight(160)
        self.cases_table.doubleClicked.connect(self._on_case_double_clicked)
        self.cases_table.setToolTip("Double-click a row to open the case in the viewer")
        self.tabs.addTab(self.summary_table, "Summary")
        self.tabs.addTab(self.cases_table, "Cases")
        self.figure_tabs: dict[str, QWidget] = {}
        lay.addWidget(self.tabs, 1)
        self._update_buttons()

    def _make_table(self, columns) -> QTableWidget:
        t = QTableWidget(0, len(columns))
        t.setHorizontalHeaderLabels(columns)
        t.setSortingEnabled(True)
        t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        t.setMinimumHeight(160)
        return t

    def _fill_methods(self) -> None:
        try:
            from app.core.methods import available_methods

            names = available_methods()
        except Exception:  # noqa: BLE001 - the list is a convenience
            names = ["litemedsam"]
        from app.core.models.registry import list_models, model_status

        unavailable = {s.name for s in list_models() if model_status(s.name) == "not downloaded"}
        for name in names:
            item = QListWidgetItem(name + ("  (needs download)" if name in unavailable else ""))
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in DEFAULT_METHODS
                               else Qt.CheckState.Unchecked)
            self.methods_list.addItem(item)

    def _update_buttons(self) -> None:
        running = self.status == "running"
        self.run_button.setEnabled(not running and self.suite is not None)
        self.cancel_button.setEnabled(running)
        self.resume_button.setEnabled(not running and self.out_dir is not None and
                                      (self.out_dir / "manifest.json").is_file()
                                      and self.status != "done")
        self.report_button.setEnabled(self.out_dir is not None and not running)

    # ======================================================================================
    # choosing
    # ======================================================================================
    def _choose_data(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Dataset folder")
        if path:
            self.set_dataset(path)

    def _choose_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder")
        if path:
            self.out_edit.setText(path)

    def _choose_run(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a run folder")
        if path:
            self.open_run(path)

    def set_dataset(self, path) -> None:
        """Detect the dataset(s) at ``path`` in the background; shows layout/tasks/skipped."""
        path = str(path).strip()
        if not path:
            return
        self.data_edit.setText(path)
        self.data_info.setText("Looking at the folder …")

        def work():
            try:
                from app.core.benchmark import discover

                self._signals.discovered.emit(discover(path), None)
            except Exception as exc:  # noqa: BLE001 - shown to the user
                self._signals.discovered.emit(None, exc)

        threading.Thread(target=work, name="samscope-discover", daemon=True).start()

    def _on_discovered(self, suite, error) -> None:
        self.suite = suite
        if error is not None:
            self.data_info.setText(f"<span style='color:#ff6060'>{error}</span>")
        else:
            lines = []
            for d in suite.datasets:
                tasks = ", ".join(f"{t.name} ({t.label})" for t in d.tasks) or "no labels"
                lines.append(f"<b>{d.name}</b>: {d.layout}, {len(d.cases)} cases; tasks: "
                             f"{tasks}; {len(d.skipped)} file(s) skipped")
            skipped = [f"{Path(s.path).name}: {s.reason}" for s in suite.skipped[:5]]
            if skipped:
                lines.append("Skipped: " + "; ".join(skipped) +
                             (" …" if len(suite.skipped) > 5 else ""))
            self.data_info.setText("<br>".join(lines))
            if not self.out_edit.text():
                self.out_edit.setText(str(default_run_folder(suite.root)))
        self._update_buttons()

    # ======================================================================================
    # running
    # ======================================================================================
    def ray_address(self) -> str | None:
        """The Ray cluster chosen in "Run on" (None: this computer)."""
        if self.run_on_combo.currentData() != "ray":
            return None
        return self.ray_address_edit.text().strip() or "auto"

    def cosmos_protocols(self) -> tuple[str, ...]:
        """The COSMOS strategy names the checkboxes choose (e.g. ``cosmos-5pos5neg``)."""
        n = self.cosmos_n_spin.value()
        return tuple(name.format(n=n) for key, _label, name in COSMOS_CHOICES
                     if self.cosmos_checks[key].isChecked())

    def plan(self, resume: bool = False):
        """The :class:`~app.core.benchmark.BenchmarkPlan` the controls describe."""
        from app.core.benchmark import BenchmarkPlan

        methods = [self.methods_list.item(i).data(Qt.ItemDataRole.UserRole)
                   for i in range(self.methods_list.count())
                   if self.methods_list.item(i).checkState() == Qt.CheckState.Checked]
        if not methods:
            raise ValueError("choose at least one method")
        protocols = tuple(self.protocol_combo.currentData() or ()) + self.cosmos_protocols()
        selections = None if self.selection_auto.isChecked() else tuple(
            n for n, c in self.selection_checks.items() if c.isChecked())
        out = self.out_edit.text().strip()
        if not out:
            raise ValueError("choose an output folder")
        data = Path(self.data_edit.text().strip()).resolve()
        if data.is_dir() and Path(out).resolve().is_relative_to(data):
            raise ValueError(f"the run folder {out} is inside the dataset {data}: choose one "
                             "outside it (results must not mix with the data)")
        return BenchmarkPlan(
            data=self.data_edit.text().strip(), out_dir=out, methods=tuple(methods),
            modes=tuple(i + 1 for i, c in enumerate(self.mode_checks) if c.isChecked()),
            protocols=protocols, clicks=self.clicks_spin.value()
            if self.protocol_combo.currentData() else None,
            grids=tuple(n for n, c in self.grid_checks.items() if c.isChecked()),
            jitter=float(self.jitter_spin.value()), repeats=self.repeats_spin.value(),
            selections=selections, seed=self.seed_spin.value(), resume=resume,
            max_cases=self.max_cases_spin.value() or None,
            max_slices=self.max_slices_spin.value() or None, ray=self.ray_address())

    def run(self, resume: bool = False) -> bool:
        """Start the run the controls describe (in the background)."""
        if self.status == "running":
            return False
        try:
            plan = self.plan(resume=resume)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._on_log(f"Cannot start: {exc}")
            return False
        self._start(plan)
        return True

    def resume(self) -> bool:
        """Continue the run in the output folder from where it stopped."""
        if self.status == "running" or self.out_dir is None:
            return False
        from app.core.benchmark import plan_from_manifest

        try:
            plan = plan_from_manifest(self.out_dir, ray=self.ray_address())
        except Exception as exc:  # noqa: BLE001
            self._on_log(f"Cannot resume: {exc}")
            return False
        self._start(plan)
        return True

    def _start(self, plan) -> None:
        self.out_dir = Path(plan.out_dir)
        self.out_edit.setText(str(self.out_dir))
        self._cancel.clear()
        self.status = "running"
        self.progress.setValue(0)
        self._on_log("Starting …")
        self._update_buttons()
        _import_model_libraries()

        def on_progress(p):
            self._signals.progress.emit(p)

        def on_log(msg):
            self._signals.log.emit(msg)

        def work():
            try:
                from app.core.benchmark import iter_benchmark

                for _row in iter_benchmark(plan, on_progress=on_progress, on_log=on_log,
                                           cancel=self._cancel):
                    pass
                status = "cancelled" if self._cancel.is_set() else "done"
                if status == "done":
                    self._signals.log.emit("Writing the report and figures …")
                    from app.core.benchmark import write_report

                    write_report(plan.out_dir)
                self._signals.finished.emit(status, None)
            except Exception as exc:  # noqa: BLE001 - shown to the user
                self._signals.finished.emit("failed", exc)

        self._thread = threading.Thread(target=work, name="samscope-benchmark", daemon=True)
        self._thread.start()
        self._refresh_timer.start()

    def cancel(self) -> None:
        """Stop after the prompt group in progress; the folder stays resumable."""
        if self.status == "running":
            self._cancel.set()
            self._on_log("Cancelling after the current image …")

    def _on_progress(self, p) -> None:
        self.progress.setValue(int(1000 * p.fraction))
        self.progress.setFormat(f"{p.cases_done}/{p.cases_total} cases · %p%")
        if p.message:
            self.log_label.setText(p.message)

    def _on_log(self, msg: str) -> None:
        self.log_label.setText(msg)

    def _on_finished(self, status: str, error) -> None:
        self._refresh_timer.stop()
        self.status = status
        if error is not None:
            self._on_log(f"Run failed: {error}")
        elif status == "cancelled":
            self._on_log("Cancelled. The run folder is resumable: press Resume to continue.")
        else:
            self.progress.setValue(1000)
            self._on_log(f"Done: {self.out_dir}")
        self._figures_after_load = status == "done"
        self.refresh_results(final=True)
        self._update_buttons()

    @property
    def running(self) -> bool:
        return self.status == "running"

    # ======================================================================================
    # results
    # ======================================================================================
    def open_run(self, path) -> bool:
        """Show a finished or interrupted run folder (table, figures; Resume if unfinished)."""
        from app.core.benchmark import read_manifest
        from app.core.errors import SamScopeError

        path = Path(path)
        try:
            manifest = read_manifest(path)
        except (SamScopeError, OSError, ValueError) as exc:  # a damaged manifest, named
            self._on_log(f"{path}: cannot be opened: {exc}")
            return False
        if not manifest:
            self._on_log(f"{path}: not a run folder (no manifest.json)")
            return False
        self.out_dir = path
        self.out_edit.setText(str(path))
        # the runner's manifest says complete, incomplete (cases failed), interrupted or
        # running (a killed run): only a complete one has nothing left to resume
        complete = manifest.get("status") == "complete"
        self.status = "done" if complete else "interrupted"
        self.progress.setValue(self.progress.maximum() if complete else 0)
        self.progress.setFormat("complete" if complete else
                                f"{manifest.get('status', 'unfinished')}: Resume continues it")
        self._on_log(f"Opened {path}: {manifest.get('status', '?')}")
        self._figures_after_load = True
        self.refresh_results(final=True)
        self._update_buttons()
        return True

    @property
    def loading(self) -> bool:
        """A read of the results is under way (the tables and figures follow it)."""
        return self._loading

    def refresh_results(self, final: bool | None = None) -> None:
        """Read the run's results in a background thread, then show them in the tables.

        While a run goes (the 2 s timer) a read is skipped when one is still under way, and
        the summary takes 200 resamples; a final read (the run ended, a folder opened) takes
        2000, also reads the rows that name saved masks (for the figures), and draws the
        figures when asked. Only the analysis columns are read (a column projection).
        """
        if self.out_dir is None or not (self.out_dir / "results.csv").is_file():
            return
        if final is None:
            final = self.status != "running"
        if self._loading and not final:
            return  # the previous tick's read is still going
        self._load_token += 1
        token, out = self._load_token, self.out_dir
        shown = None if self.results is None else len(self.results)
        want_figures = final and self._figures_after_load
        if final:
            self._figures_after_load = False
        emit = self._signals.results_loaded.emit

        def work():
            try:
                from app.core.benchmark import load_results, summarize
                from app.core.benchmark.report import ANALYSIS_COLUMNS, file_rows

                df = load_results(out, columns=ANALYSIS_COLUMNS)
                if not final and shown == len(df):
                    emit(_Loaded(token, final, unchanged=True))  # nothing new since the last
                    return
                summary = summarize(df, n_boot=2000 if final else 200) if len(df) else None
                files = file_rows(out, df) if final else None
                made = make_figures(df, files, out) if want_figures and len(df) else None
                emit(_Loaded(token, final, df, files, summary, figures=made))
            except Exception as exc:  # noqa: BLE001 - a half-written file: the next tick
                emit(_Loaded(token, final, error=exc))

        self._loading = True
        threading.Thread(target=work, name="samscope-results", daemon=True).start()

    def _on_results_loaded(self, r: _Loaded) -> None:
        if r.token != self._load_token:
            return  # superseded by a newer read
        self._loading = False
        if r.error is not None:
            if r.final:
                self._on_log(f"Cannot read the results of {self.out_dir}: {r.error}")
            return
        if r.unchanged:
            return
        self.results, self.summary = r.df, r.summary
        if r.final:
            self.files = r.files
        self._fill_table(self.summary_table, self.summary, _SUMMARY_COLUMNS)
        self._mark_unanswerable(r.df)
        self.cases_model.set_frame(r.df, _CASE_COLUMNS)
        self.cases_table.resizeColumnsToContents()
        if r.figures is not None:
            self._show_figures(r.figures)
        if r.final:
            self._reveal_results()

    def _reveal_results(self) -> None:
        """Scroll the dock to its results: at the window's opening size the plan fills the
        dock and the tables start below its fold."""
        parent = self.tabs.parentWidget()  # the dock's own scroll area holds its form
        while parent is not None and not isinstance(parent, QScrollArea):
            parent = parent.parentWidget()
        if parent is not None:
            parent.ensureWidgetVisible(self.tabs, 0, 0)

    def unanswerable(self, df) -> set[tuple[str, str]]:
        """(method, protocol) pairs whose every row is a prompt the method is not meant for
        (a box-only model given points): their IoU says nothing about the method."""
        if df is None or "prompt_supported" not in df.columns:
            return set()
        ok = df["prompt_supported"].astype(str).str.lower().isin(("true", "1", "1.0"))
        grouped = ok.groupby([df["method"], df["protocol"]]).any()
        return {(str(m), str(p)) for (m, p), any_ok in grouped.items() if not any_ok}

    def _mark_unanswerable(self, df) -> None:
        """Show such rows as 'not meant for this prompt', not as a failure at 0.000."""
        bad = self.unanswerable(df)
        table = self.summary_table
        if not bad or table.rowCount() == 0:
            return
        header = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
        col = {name: i for i, name in enumerate(header)}
        for r in range(table.rowCount()):
            key = (table.item(r, col["method"]).text(), table.item(r, col["protocol"]).text())
            if key not in bad:
                continue
            for name in ("iou_mean", "iou_ci_low", "iou_ci_high", "dice_mean"):
                if name in col:
                    item = QTableWidgetItem("n/a" if name != "iou_mean"
                                            else "n/a: not meant for this prompt")
                    item.setToolTip(f"{key[0]} is not meant for {key[1]} prompts (a box model "
                                    "given points); see the click model's rows")
                    table.setItem(r, col[name], item)
        table.resizeColumnsToContents()

    def _fill_table(self, table: QTableWidget, df, columns) -> None:
        """A small table (the summary) as one item per cell; see FrameModel for the cases."""
        table.setSortingEnabled(False)
        table.setRowCount(0)
        if df is None or not len(df):
            return
        cols = [c for c in columns if c in df.columns]
        table.setColumnCount(len(cols))
        table.setHorizontalHeaderLabels(cols)
        table.setRowCount(len(df))
        for r, (_idx, row) in enumerate(df.iterrows()):
            for c, col in enumerate(cols):
                v = row[col]
                if isinstance(v, np.integer):
                    v = int(v)
                elif isinstance(v, np.floating):
                    v = float(v)
                table.setItem(r, c, _NumericItem(v))
        table.setSortingEnabled(True)
        table.resizeColumnsToContents()

    def show_figures(self) -> None:
        """Draw the paper-style figures of the current results, one tab each (on this
        thread; a final read of the results makes them in its background thread)."""
        if self.results is None or not len(self.results):
            return
        self._show_figures(make_figures(self.results, self.files, self.out_dir))

    def _show_figures(self, made) -> None:
        """Put figures made by :func:`make_figures` in tabs (a Qt canvas each)."""
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

        for name, widget in list(self.figure_tabs.items()):
            self.tabs.removeTab(self.tabs.indexOf(widget))
            widget.deleteLater()
            del self.figure_tabs[name]
        for name, fig, error in made:
            if error is not None:
                self._on_log(f"figure {name!r} not drawn: {error}")
                continue
            view = _FigureView(FigureCanvasQTAgg(fig))
            self.figure_tabs[name] = view
            self.tabs.addTab(view, name)

    def open_report(self) -> None:
        """Open report.html in the browser (written first if the run has none yet)."""
        if self.out_dir is None:
            return
        report = self.out_dir / "report.html"
        if report.is_file():
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(report)))
            return
        self._on_log("Writing the report …")
        out = self.out_dir

        def work():
            try:
                from app.core.benchmark import write_report

                self._signals.report_ready.emit(write_report(out), None)
            except Exception as exc:  # noqa: BLE001
                self._signals.report_ready.emit(None, exc)

        threading.Thread(target=work, name="samscope-report", daemon=True).start()

    def _on_report_ready(self, path, error) -> None:
        if error is not None:
            self._on_log(f"Report failed: {error}")
            return
        self._on_log(f"Report: {path}")
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))

    # ======================================================================================
    # open a case in the viewer
    # ======================================================================================
    def _on_case_double_clicked(self, index) -> None:
        if not index.isValid() or self.results is None or self.out_dir is None:
            return
        key = self.cases_model.row_key(index.row())
        try:
            row = _full_row(self.out_dir, int(key))
        except Exception as exc:  # noqa: BLE001 - a damaged or changed file, named
            self._on_log(f"Cannot open the case: {exc}")
            return
        self.open_case(row)

    def open_case(self, row) -> list:
        """Show one results row in the viewer: image, ground truth, prediction, prompts."""
        from app.core.benchmark import open_case

        try:
            case = open_case(self.out_dir, row)
        except Exception as exc:  # noqa: BLE001
            self._on_log(f"Cannot open the case: {exc}")
            return []
        image = case["image"]
        title = f"{row['case']} · {row['method']} · {row['protocol']}"
        meta = {CASE_LAYER_KEY: True}
        layers = []
        win = image.window
        kw = {} if image.is_rgb else {"colormap": "gray", "contrast_limits": (win.low, win.high)}
        layers.append(self.viewer.add_image(image.pixels, name=f"{title}: image",
                                            rgb=image.is_rgb, metadata=meta, **kw))
        gt = self.viewer.add_labels(np.asarray(case["gt"], np.uint8), name=f"{title}: truth",
                                    metadata=meta, opacity=0.8)
        gt.contour = 2
        layers.append(gt)
        if case.get("prediction") is not None:
            layers.append(self.viewer.add_labels(
                np.asarray(case["prediction"], np.uint8) * 2, name=f"{title}: prediction",
                metadata=meta, opacity=0.45))
        pts = np.asarray(case.get("points") or np.zeros((0, 3)), float).reshape(-1, 3)
        if len(pts):
            colours = np.where(pts[:, 2:3] > 0, [[0.1, 0.95, 0.2, 1]], [[1, 0.15, 0.15, 1]])
            layers.append(self.viewer.add_points(pts[:, [1, 0]], name=f"{title}: clicks",
                                                 face_color=colours, size=10, metadata=meta))
        boxes = np.asarray(case.get("boxes") or np.zeros((0, 4)), float).reshape(-1, 4)
        if len(boxes):
            from app.core import coords

            rects = [coords.box_xyxy_to_rectangle(b) for b in boxes]
            layers.append(self.viewer.add_shapes(rects, shape_type="rectangle",
                                                 edge_color="#ffd000", face_color="transparent",
                                                 edge_width=2, name=f"{title}: boxes",
                                                 metadata=meta))
        self._on_log(f"Opened {title}: IoU {float(row['iou']):.3f}")
        return layers


class _FigureView(QScrollArea):
    """A figure at the size it was laid out for (readable titles and panels), scrolled inside
    the dock instead of squeezed to its width; ``figure`` and ``canvas`` for tests."""

    def __init__(self, canvas, parent=None):
        super().__init__(parent)
        self.canvas = canvas
        self.figure = canvas.figure
        w, h = (self.figure.get_size_inches() * self.figure.dpi).round().astype(int)
        canvas.setFixedSize(int(w), int(h))
        self.setWidget(canvas)
        self.setWidgetResizable(False)
        # tall enough to show the whole figure without a second vertical scroll bar (up to a
        # screenful), the dock's own scroll area takes the rest
        self.setMinimumHeight(min(int(h) + 24, 720))


def make_figures(df, files, out) -> list[tuple[str, object, Exception | None]]:
    """The dock's figures of results ``df`` (analysis columns) as ``(tab name, Figure or None,
    error or None)``: matplotlib's object API, no Qt, so a background thread can make them
    (on a 10^5-row run the difficulty figure's bootstrap alone takes seconds). ``files``: the
    rows naming saved masks (:func:`app.core.benchmark.report.file_rows`), or None."""
    from app.core.benchmark import figures
    from app.core.benchmark.tables import difficulty_table

    # the figures that draw saved masks read the rows naming them (paths, prompts)
    files = files if files is not None else df.iloc[:0]
    methods = sorted(df["method"].unique())
    protos = set(df["protocol"].astype(str))
    makers = [("IoU per mode", lambda: figures.fig_modes(df))]
    if "paper" in protos or "standard" in protos:
        proto = "paper" if "paper" in protos else "standard"
        makers.append(("IoU vs clicks", lambda: figures.fig_clicks(df, proto)))
        makers.append(("Clicks (Fig. 6)",
                       lambda: figures.fig_iterative(files, out, protocol=proto)))
    size_proto = "mode5" if "mode5" in protos else sorted(protos)[0]
    makers.append(("Size vs IoU", lambda: figures.fig_size(df, size_proto)))
    if len(methods) >= 2:
        makers.append((f"ΔIoU {methods[0]} − {methods[1]}",
                       lambda: figures.fig_delta(df, methods[0], methods[1])))
    cands = [m for m in methods if "candidates_file" in files and
             (files.loc[files["method"] == m, "candidates_file"].astype(str) != "").any()]
    if cands:
        makers.append(("Ambiguity (Fig. 7)",
                       lambda: figures.fig_ambiguity(files, out, cands[0])))
    ev_rows = files[files["protocol"].astype(str).str.fullmatch(r"everything\d+")
                    & (files["mask_file"].astype(str) != "")] if "mask_file" in files \
        else files.iloc[:0]
    every = sorted(ev_rows["method"].unique())  # models skipped there have no label maps
    if every:
        makers.append(("Everything (Fig. 9)",
                       lambda: figures.fig_everything(files, out, every[0])))
    makers.append(("Difficulty", lambda: figures.fig_difficulty(
        difficulty_table(df, n_boot=500))))
    made = []
    for name, make in makers:
        try:
            fig = make()
        except Exception as exc:  # noqa: BLE001 - one bad figure must not hide the others
            made.append((name, None, exc))
            continue
        if fig is not None:
            made.append((name, fig, None))
    return made


def _full_row(out_dir: Path, position: int):
    """Every column of results row ``position`` (its place in the table), read a chunk at a
    time: the paths and prompts a case needs are not kept for every row in memory."""
    from app.core.benchmark.results import COLUMNS, iter_result_frames

    start = 0
    for chunk in iter_result_frames(out_dir, COLUMNS, 50_000):
        if position < start + len(chunk):
            return chunk.iloc[position - start]
        start += len(chunk)
    raise IndexError(f"{out_dir / 'results.csv'} has no row {position} (it has {start})")


def _import_model_libraries() -> None:
    from app.widgets.segment_dock import _import_model_libraries as imp

    imp()

