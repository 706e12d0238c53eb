"""The engine thread: one background thread that runs all model work for a dock, in order of
urgency, so the GUI thread never waits on a model.

Three kinds of work, highest priority first:

1. **Predictions** (latest request wins). A new request replaces the one waiting; a result whose
   request has been overtaken by a newer one (or cancelled by a slice/image change) is dropped,
   never shown. An embedding already being computed is not interrupted -- it lands in the
   engine's cache and serves the next request.
2. **Tasks**: long generators (propagation) run one step at a time; a step is e.g. one slice.
   Predictions may run between steps; :meth:`EngineThread.cancel_task` stops at the next step.
3. **Prefetch**: background embeddings of neighbouring slices, one per step, dropped when the
   slice or image changes.

Results come back as Qt signals, delivered on the GUI thread (queued connections), where the dock
updates layers. The model itself is only ever called from this one thread.
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from qtpy.QtCore import QObject, Signal

__all__ = ["EngineThread", "PredictionResult", "TaskHandle", "QtScheduler"]


@dataclass
class PredictionResult:
    """What a prediction request produced (delivered on the GUI thread)."""

    request_id: int
    context: Any  # what the requester attached (slice index, prompt, ...)
    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    submitted_at: float = 0.0


@dataclass(eq=False)
class TaskHandle:
    """A long task running in the engine thread; ``cancel()`` stops it at its next step."""

    task_id: int
    name: str
    steps: Iterator = field(repr=False)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class EngineThread(QObject):
    """A single worker thread with latest-wins predictions, step-wise tasks and prefetching.

    Signals
    -------
    predicted(PredictionResult)
        A current (not overtaken) prediction finished or failed.
    task_step(int, object)
        ``(task_id, item)`` for each item a task's generator yields.
    task_finished(int, str, object)
        ``(task_id, status, error)`` with status ``"done"``, ``"cancelled"`` or ``"failed"``.
    prefetch_progress(int, int)
        ``(done, total)`` of the current prefetch batch.
    """

    predicted = Signal(object)
    task_step = Signal(int, object)
    task_finished = Signal(int, str, object)
    prefetch_progress = Signal(int, int)

    def __init__(self, parent: QObject | None = None, name: str = "samscope-engine"):
        super().__init__(parent)
        self._cond = threading.Condition()
        self._pending: tuple[int, Callable[[], Any], Any, float] | None = None
        self._latest_id = 0
        self._ids = itertools.count(1)
        self._task: TaskHandle | None = None
        self._prefetch: list[Callable[[], Any]] = []
        self._prefetch_total = 0
        self._prefetch_done = 0
        self._stopping = False
        self._busy = False
        #: counters for tests and the status line
        self.stats = {"run": 0, "dropped_before_run": 0, "dropped_after_run": 0, "prefetched": 0}
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # --- GUI-thread API --------------------------------------------------------------------
    def request(self, fn: Callable[[], Any], context: Any = None) -> int:
        """Queue ``fn()`` as the newest prediction; any request still waiting is dropped."""
        with self._cond:
            rid = next(self._ids)
            if self._pending is not None:
                self.stats["dropped_before_run"] += 1
            self._pending = (rid, fn, context, time.perf_counter())
            self._latest_id = rid
            self._cond.notify_all()
        return rid

    def cancel_predictions(self) -> None:
        """Forget the waiting request and make any running one's result stale."""
        with self._cond:
            if self._pending is not None:
                self.stats["dropped_before_run"] += 1
            self._pending = None
            self._latest_id = next(self._ids)

    def is_current(self, request_id: int) -> bool:
        """True when no newer request (or cancel) has happened since ``request_id``."""
        return request_id == self._latest_id

    def prefetch(self, jobs: list[Callable[[], Any]]) -> None:
        """Replace the prefetch queue (e.g. embeddings of the slices around the shown one)."""
        with self._cond:
            self._prefetch = list(jobs)
            self._prefetch_total = len(jobs)
            self._prefetch_done = 0
            self._cond.notify_all()

    def start_task(self, name: str, steps: Iterator) -> TaskHandle:
        """Run a generator step by step; cancels a task of the same engine that is running."""
        with self._cond:
            if self._task is not None:
                self._task.cancel()
            handle = TaskHandle(next(self._ids), name, steps)
            self._task = handle
            self._cond.notify_all()
        return handle

    def cancel_task(self) -> None:
        with self._cond:
            if self._task is not None:
                self._task.cancel()
                self._cond.notify_all()

    @property
    def busy(self) -> bool:
        """True while anything is running or waiting."""
        with self._cond:
            return self._busy or self._pending is not None or self._task is not None or bool(
                self._prefetch
            )

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Block (non-GUI callers, scripts) until nothing runs or waits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.busy:
                return True
            time.sleep(0.01)
        return False

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the thread after the step it is running."""
        with self._cond:
            self._stopping = True
            self._pending = None
            self._prefetch = []
            if self._task is not None:
                self._task.cancel()
            self._cond.notify_all()
        self._thread.join(timeout_s)

    # --- engine thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._pending or self._task or self._prefetch):
                    self._cond.wait()
                if self._stopping:
                    return
                self._busy = True
                if self._pending is not None:
                    job, self._pending = ("predict", self._pending), None
                elif self._task is not None:
                    job = ("task", self._task)
                else:
                    job = ("prefetch", self._prefetch.pop(0))
            try:
                kind, payload = job
                if kind == "predict":
                    self._run_prediction(*payload)
                elif kind == "task":
                    self._run_task_step(payload)
                else:
                    self._run_prefetch(payload)
            finally:
                with self._cond:
                    self._busy = False

    def _run_prediction(self, rid: int, fn: Callable[[], Any], context: Any, submitted: float):
        t0 = time.perf_counter()
        try:
            value, error = fn(), None
        except Exception as exc:  # noqa: BLE001 - relayed to the GUI as a message
            value, error = None, exc
            exc.__samscope_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
        self.stats["run"] += 1
        if not self.is_current(rid):
            self.stats["dropped_after_run"] += 1
            return
        self.predicted.emit(
            PredictionResult(rid, context, value, error, time.perf_counter() - t0, submitted)
        )

    def _run_task_step(self, task: TaskHandle) -> None:
        status, error = None, None
        if task.cancelled:
            status = "cancelled"
        else:
            try:
                item = next(task.steps)
            except StopIteration:
                status = "done"
            except Exception as exc:  # noqa: BLE001
                status, error = "failed", exc
            else:
                self.task_step.emit(task.task_id, item)
                if task.cancelled:
                    status = "cancelled"
        if status is not None:
            with self._cond:
                if self._task is task:
                    self._task = None
            self.task_finished.emit(task.task_id, status, error)

    def _run_prefetch(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - a failed prefetch only costs time later
            pass
        with self._cond:
            self._prefetch_done += 1
            done, total = self._prefetch_done, self._prefetch_total
        self.stats["prefetched"] += 1
        self.prefetch_progress.emit(done, total)


class QtScheduler(QObject):
    """The controller's :class:`~app.core.annotate.scheduler.Scheduler` on Qt: model work in
    one :class:`EngineThread` (newest prediction wins), file reads and model loads in plain
    threads, every callback delivered on the GUI thread through queued signals."""

    _background_done = Signal(object, object, object)  # (callback, value, error)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.engine_thread = EngineThread(self)
        self.engine_thread.predicted.connect(self._on_predicted)
        self.engine_thread.task_step.connect(self._on_task_step)
        self.engine_thread.task_finished.connect(self._on_task_finished)
        self.engine_thread.prefetch_progress.connect(self._on_prefetch_progress)
        self._background_done.connect(self._on_background_done)
        self._task_callbacks: dict[int, tuple[Callable, Callable]] = {}
        self._prefetch_progress: Callable[[int, int], None] | None = None
        self._background: list[threading.Thread] = []

    # --- Scheduler -------------------------------------------------------------------------
    def predict(self, job, done) -> None:
        self.engine_thread.request(job, context=done)

    def cancel_predictions(self) -> None:
        self.engine_thread.cancel_predictions()

    def run_task(self, steps, on_step, on_done) -> TaskHandle:
        handle = self.engine_thread.start_task("task", steps)
        self._task_callbacks[handle.task_id] = (on_step, on_done)
        return handle

    def cancel_task(self) -> None:
        self.engine_thread.cancel_task()

    def prefetch(self, jobs, on_progress=None) -> None:
        self._prefetch_progress = on_progress
        self.engine_thread.prefetch(jobs)

    def background(self, job, done) -> None:
        def run():
            try:
                value, error = job(), None
            except BaseException as exc:  # noqa: BLE001 - handed to the GUI thread
                value, error = None, exc
            self._background_done.emit(done, value, error)

        thread = threading.Thread(target=run, name="samscope-background", daemon=True)
        self._background = [t for t in self._background if t.is_alive()] + [thread]
        thread.start()

    # --- delivery on the GUI thread --------------------------------------------------------
    def _on_predicted(self, result: PredictionResult) -> None:
        if self.engine_thread.is_current(result.request_id):
            result.context(result.value, result.error)

    def _on_task_step(self, task_id: int, item) -> None:
        cbs = self._task_callbacks.get(task_id)
        if cbs is not None:
            cbs[0](item)

    def _on_task_finished(self, task_id: int, status: str, error) -> None:
        cbs = self._task_callbacks.pop(task_id, None)
        if cbs is not None:
            cbs[1](status, error)

    def _on_prefetch_progress(self, done: int, total: int) -> None:
        if self._prefetch_progress is not None:
            self._prefetch_progress(done, total)

    def _on_background_done(self, done, value, error) -> None:
        done(value, error)

    @property
    def busy(self) -> bool:
        return self.engine_thread.busy

    def shutdown(self, timeout_s: float = 1.0, background_timeout_s: float = 30.0) -> None:
        """Stop the engine thread, and let a model load or file read still running finish
        (up to ``background_timeout_s``): a thread killed inside torch or ONNX Runtime at
        interpreter exit aborts the process ("terminate called without an active
        exception")."""
        self.engine_thread.shutdown(timeout_s)
        for thread in self._background:
            thread.join(background_timeout_s)
