"""Where the controller's heavy work runs: the :class:`Scheduler` interface and an inline one.

The :class:`~app.core.annotate.controller.AnnotationController` never calls a model itself; it
hands jobs to a scheduler and gets the results back through callbacks **on its own thread**
(the GUI thread in the app). The Qt side implements this interface with its engine thread
(:class:`app.widgets.workers.QtScheduler`): one worker that alone calls the engine, newest
prediction wins, results of overtaken predictions are never delivered. Tests, ``samscope
replay`` and scripts use :class:`ImmediateScheduler`, which runs every job inline.

Contract, for every implementation:

* ``predict(job, done)``: run ``job()`` on the engine's thread; deliver ``done(value, error)``
  unless a newer ``predict`` or a ``cancel_predictions`` came in meanwhile.
* ``run_task(steps, on_step, on_done)``: advance the iterator ``steps`` on the engine's thread,
  one item at a time (``on_step(item)``), then ``on_done(status, error)`` with status
  ``"done"``, ``"cancelled"`` or ``"failed"``. At most one task runs; predictions may run
  between its steps.
* ``prefetch(jobs, on_progress)``: run cheap-to-drop jobs (embeddings of neighbouring slices)
  when nothing else waits; a new call replaces the queue.
* ``background(job, done)``: run ``job()`` off the caller's thread but *not* on the engine's
  (reading a file, loading a model); ``done(value, error)`` always comes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

__all__ = ["Scheduler", "TaskHandle", "ImmediateScheduler"]

Done = Callable[[Any, BaseException | None], None]


class TaskHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def predict(self, job: Callable[[], Any], done: Done) -> None: ...

    def cancel_predictions(self) -> None: ...

    def run_task(self, steps: Iterator, on_step: Callable[[Any], None],
                 on_done: Callable[[str, BaseException | None], None]) -> TaskHandle: ...

    def cancel_task(self) -> None: ...

    def prefetch(self, jobs: list[Callable[[], Any]],
                 on_progress: Callable[[int, int], None] | None = None) -> None: ...

    def background(self, job: Callable[[], Any], done: Done) -> None: ...


class _InlineTask:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ImmediateScheduler:
    """Runs every job at once, on the caller's thread (tests, replay, scripts).

    ``prefetch`` jobs are skipped unless ``run_prefetch`` is set: headless work does not need
    the neighbours embedded ahead of time.
    """

    def __init__(self, run_prefetch: bool = False) -> None:
        self.run_prefetch = run_prefetch
        self._task: _InlineTask | None = None

    def predict(self, job, done) -> None:
        try:
            value = job()
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            done(None, exc)
        else:
            done(value, None)

    def cancel_predictions(self) -> None:
        pass

    def run_task(self, steps, on_step, on_done):
        task = self._task = _InlineTask()
        try:
            for item in steps:
                on_step(item)
                if task.cancelled:
                    on_done("cancelled", None)
                    return task
        except Exception as exc:  # noqa: BLE001
            on_done("failed", exc)
            return task
        finally:
            self._task = None
        on_done("done", None)
        return task

    def cancel_task(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def prefetch(self, jobs, on_progress=None) -> None:
        if not self.run_prefetch:
            return
        for i, job in enumerate(jobs, 1):
            job()
            if on_progress is not None:
                on_progress(i, len(jobs))

    def background(self, job, done) -> None:
        self.predict(job, done)
