"""Run a benchmark's cases on a Ray cluster: a pool of actors that load every method once.

Used by :func:`app.core.benchmark.runner.iter_benchmark` when ``plan.ray`` is set; nothing
else changes. The unit of work is one case (a 2D image, or the chosen slices of a volume) with
all its methods, modes, protocols, selections and repeats -- the same function a local run
calls (``runner._case_work``), so each image is embedded once per method wherever it runs and
the rows are those of a local run, bit for bit (per-group seeding makes them independent of
order and placement). Rows, mask PNGs and skipped files come back to the driver, which alone
writes the run folder (results store, manifest, lock), in the order cases finish.

What travels to a worker: the plan (options and paths) and, per case, its file paths and the
ids of its groups already done. Workers read the images themselves, so the dataset must be on
a path every node sees at the same place (a shared file system). SAMScope and its dependencies
must be installed on every node; the manifest records each worker's host and versions.

Faults: the actors are restarted by Ray when their process dies (``max_restarts=-1``); the
driver resubmits a case whose worker died (up to :data:`MAX_ATTEMPTS` times, then the case is
listed in ``skipped.csv`` with the error, and a resume tries it again). A Python error in a
case is raised in the driver, as it would be in a local run.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from app.core.errors import SamScopeError

__all__ = ["MAX_ATTEMPTS", "ClusterError", "RayPool"]

#: times a case is sent to a worker before it is given up (listed in skipped.csv)
MAX_ATTEMPTS = 3
#: cases queued per actor (one running, one ready, so an actor never waits for the driver)
PER_ACTOR = 2


class ClusterError(SamScopeError, RuntimeError):
    """Ray is missing, the cluster cannot be reached, or the workers could not start."""


class _Worker:
    """One Ray actor: the plan's methods, built once, and the per-case work."""

    def __init__(self, plan: Any) -> None:
        from app.core.benchmark.runner import _Run

        self.run = _Run(plan, None, keep_mask_bytes=True)
        self.methods = self.run.make_methods()

    def hello(self) -> dict[str, Any]:
        from app.core.benchmark.runner import _versions

        return {"pid": os.getpid(), "host": socket.gethostname(), "versions": _versions(),
                "methods": {n: m.describe() for n, m in self.methods.items()}}

    def run_case(self, ci: int, tasks: dict[int, str], ref: Any,
                 done: frozenset[str]) -> tuple[int, int, list[tuple]]:
        from app.core.benchmark.runner import _case_work

        self.run.pending_masks = []
        events = list(_case_work(self.run, self.methods, tasks, ref, done.__contains__))
        return ci, os.getpid(), events

    def stats(self) -> dict[str, dict[str, Any]]:
        return {n: dict(m.stats()) for n, m in self.methods.items()}


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError('--ray needs Ray: pip install "samscope[cluster]"') from None
    return ray


def _connect(ray: Any, address: str) -> bool:
    """Connect to ``address`` (``auto``: RAY_ADDRESS or this machine's cluster, else a new
    local one). Returns whether this call started the connection (and so must end it)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address == "auto":
            try:
                ray.init(address="auto", **quiet)
            except ConnectionError:
                # no cluster to join: a Ray on this machine only (no dashboard, nothing online)
                ray.init(include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as exc:  # noqa: BLE001 - Ray raises several types here
        raise ClusterError(f"Ray cluster {address}: could not connect ({exc})") from exc
    return True


class RayPool:
    """Actors on a Ray cluster that run the cases of one benchmark plan.

    Parameters
    ----------
    plan : BenchmarkPlan
        ``plan.ray`` (``auto`` or an address), ``plan.workers``, ``plan.gpus_per_worker``.
    log : callable (str) -> None

    Raises
    ------
    ClusterError
        Ray missing, the cluster unreachable, or a worker failing to build the methods (the
        worker's error is named).
    """

    def __init__(self, plan: Any, log: Callable[[str], None]) -> None:
        self.ray = ray = _import_ray()
        self.log = log
        self.plan = plan
        self._owns_connection = _connect(ray, plan.ray)
        self._closed = False
        self.actors: list[Any] = []
        try:
            self._start(plan)
        except BaseException:
            self.close()
            raise

    def _start(self, plan: Any) -> None:
        ray = self.ray
        resources = ray.cluster_resources()
        gpus = float(plan.gpus_per_worker or 0.0)
        if plan.workers is not None:
            n = int(plan.workers)
        elif gpus > 0:
            n = max(1, int(resources.get("GPU", 0) / gpus))
        else:
            n = max(1, int(resources.get("CPU", 1)))
        if gpus > 0 and plan.device is None:
            from dataclasses import replace

            plan = replace(plan, device="cuda")
        # the actors' plan: no Ray fields (they would only travel for nothing)
        from dataclasses import replace

        worker_plan = replace(plan, ray=None, workers=None, resume=False, prebuilt_methods={})
        cls = ray.remote(_Worker).options(num_cpus=1, num_gpus=gpus, max_restarts=-1,
                                          max_task_retries=0)
        self.actors = [cls.remote(worker_plan) for _ in range(n)]
        self.log(f"Ray: {n} workers ({gpus:g} GPU each) on {len(ray.nodes())} node(s), "
                 f"cluster resources {dict(sorted(resources.items()))}")
        try:
            self.hellos = ray.get([a.hello.remote() for a in self.actors])
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            raise ClusterError(f"Ray workers could not start: {_short(cause)}") from None
        self.pids = [h["pid"] for h in self.hellos]
        for i, h in enumerate(self.hellos):
            self.log(f"Ray worker {i}: pid {h['pid']} on {h['host']}")

    # --- what the manifest records --------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return self.hellos[0]["methods"]

    def info(self) -> dict[str, Any]:
        return {"ray": self.plan.ray, "workers": len(self.actors),
                "gpus_per_worker": float(self.plan.gpus_per_worker or 0.0),
                "hosts": sorted({h["host"] for h in self.hellos}),
                "worker_versions": self.hellos[0]["versions"]}

    # --- the work ---------------------------------------------------------------------------
    def run(self, cases: Sequence[tuple[Any, Any]], store: Any,
            cancelled: Callable[[], bool]) -> Iterator[tuple[int, list[tuple]]]:
        """Yield ``(case index, events)`` as cases finish (see ``runner._case_work``).

        At most :data:`PER_ACTOR` cases per actor are in flight, so the driver holds a bounded
        number of results whatever the dataset's size. After ``cancelled()`` no new case is
        sent; those in flight are still committed.
        """
        ray = self.ray
        from app.core.benchmark.datasets import Skipped

        tasks_of: dict[str, dict[int, str]] = {}
        pending: dict[Any, tuple[int, int, int]] = {}  # future -> (actor, case, attempt)
        free = [i for _ in range(PER_ACTOR) for i in range(len(self.actors))]
        todo = iter(range(len(cases)))
        exhausted = False

        def submit(ai: int, ci: int, attempt: int) -> None:
            ds, ref = cases[ci]
            if ds.name not in tasks_of:
                tasks_of[ds.name] = {t.label: t.name for t in ds.tasks}
            done = frozenset(store.done_by_image.get((ref.dataset, str(ref.image)), ()))
            fut = self.actors[ai].run_case.remote(ci, tasks_of[ds.name], ref, done)
            pending[fut] = (ai, ci, attempt)

        def fill() -> None:
            nonlocal exhausted
            while free and not exhausted and not cancelled():
                ci = next(todo, None)
                if ci is None:
                    exhausted = True
                    return
                submit(free.pop(0), ci, 1)

        fill()
        while pending:
            (fut,), _ = ray.wait(list(pending), num_returns=1)
            ai, ci, attempt = pending.pop(fut)
            ref = cases[ci][1]
            try:
                _, pid, events = ray.get(fut)
            except ray.exceptions.RayActorError as exc:
                # the worker process died (killed, out of memory, node lost); Ray restarts it
                if attempt < MAX_ATTEMPTS:
                    self.log(f"Ray worker {ai} lost during {ref.case} (attempt {attempt}): "
                             f"redoing the case ({_short(exc)})")
                    submit(ai, ci, attempt + 1)
                    continue
                why = f"its Ray worker died {attempt} times: {_short(exc)}"
                events = [("skipped", Skipped(str(ref.image), why), f"skipped {ref.image}: {why}")]
                pid = self.pids[ai]
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None
                raise
            if pid != self.pids[ai]:
                self.log(f"Ray worker {ai} was replaced (pid {self.pids[ai]} -> {pid})")
                self.pids[ai] = pid
            free.append(ai)
            fill()
            yield ci, events

    # --- the end ----------------------------------------------------------------------------
    def close(self) -> dict[str, dict[str, Any]]:
        """Collect the workers' method statistics (summed), end the actors; idempotent."""
        if self._closed:
            return {}
        self._closed = True
        ray = self.ray
        total: dict[str, dict[str, Any]] = {}
        if self.actors:
            try:
                per_actor = ray.get([a.stats.remote() for a in self.actors], timeout=30)
            except Exception:  # noqa: BLE001 - statistics are informative only
                per_actor = []
            for stats in per_actor:
                for name, s in stats.items():
                    t = total.setdefault(name, {})
                    for k, v in s.items():
                        if isinstance(v, int | float) and not isinstance(v, bool):
                            t[k] = t.get(k, 0) + v
                        else:
                            t.setdefault(k, v)
            for a in self.actors:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:  # noqa: BLE001, S110 - already gone
                    pass
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
        return total


def _short(exc: BaseException) -> str:
    """First line of an error (Ray's messages carry whole tracebacks)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
