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
driver sends a case whose worker was lost to a worker that is up, and a lost worker gets work
again only once a ping shows it restarted. A case lost :data:`MAX_ATTEMPTS` times (or left
when no worker comes back for :data:`WORKER_WAIT_S` s) is listed in ``skipped.csv`` with the
error, the manifest's ``failed_cases`` names it and the run ends ``incomplete`` (the CLI exits
1); a resume tries it again. A Python error in a case is raised in the driver, as it would be
in a local run.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from app.core.errors import SamScopeError

__all__ = ["MAX_ATTEMPTS", "NOT_FINISHED", "WORKER_WAIT_S", "ClusterError", "RayPool"]

#: times a case may lose its worker while in flight before it is given up (listed in
#: skipped.csv, the run ``incomplete``)
MAX_ATTEMPTS = 3
#: seconds without any worker up (all lost, none restarted by Ray) before the cases left are
#: given up
WORKER_WAIT_S = 300.0
#: first and longest wait between pings of a lost worker (seconds)
PING_FIRST_S = 0.1
PING_MAX_S = 2.0
#: start of the ``skipped.csv`` reason of a case given up (a resume tries it again)
NOT_FINISHED = "not finished: "
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

    def ping(self) -> int:
        return os.getpid()

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

        A case whose worker was lost goes back to the front of the queue, for any worker
        that is up; the lost worker gets no case until a ping shows that Ray has restarted
        it (a restarting actor refuses tasks at once, so sending it the case again would
        spend the case's tries in milliseconds). A case lost :data:`MAX_ATTEMPTS` times, or
        left when no worker has come back for :data:`WORKER_WAIT_S` seconds, is yielded as
        a ``("failed", Skipped, log_line)`` event: the runner lists it in ``skipped.csv``
        and the run ends ``incomplete``, never ``complete``.
        """
        ray = self.ray
        from app.core.benchmark.datasets import Skipped

        n = len(self.actors)
        tasks_of: dict[str, dict[int, str]] = {}
        pending: dict[Any, tuple[int, int, int]] = {}  # future -> (actor, case, attempt)
        inflight = [0] * n
        probes: dict[Any, int] = {}  # ping future -> actor
        down: dict[int, list[float]] = {}  # actor -> [lost since, next ping at, ping delay]
        retry: deque[tuple[int, int]] = deque()  # (case, attempts so far), sent first
        todo = iter(range(len(cases)))
        exhausted = False

        def submit(ai: int, ci: int, attempt: int) -> None:
            ds, ref = cases[ci]
            if ds.name not in tasks_of:
                tasks_of[ds.name] = {t.label: t.name for t in ds.tasks}
            done = store.done_for_image(ref.dataset, str(ref.image))
            fut = self.actors[ai].run_case.remote(ci, tasks_of[ds.name], ref, done)
            pending[fut] = (ai, ci, attempt)
            inflight[ai] += 1

        def next_job() -> tuple[int, int] | None:
            nonlocal exhausted
            if retry:
                return retry.popleft()
            if exhausted:
                return None
            ci = next(todo, None)
            if ci is None:
                exhausted = True
                return None
            return ci, 0

        def fill() -> None:
            while not cancelled():
                up = [i for i in range(n) if i not in down and inflight[i] < PER_ACTOR]
                if not up:
                    return
                job = next_job()
                if job is None:
                    return
                submit(min(up, key=inflight.__getitem__), job[0], job[1] + 1)

        def failed(ci: int, why: str) -> tuple[int, list[tuple]]:
            image = str(cases[ci][1].image)
            return ci, [("failed", Skipped(image, f"{NOT_FINISHED}{why}"),
                         f"not finished: {image}: {why}")]

        def lost(ai: int, exc: BaseException) -> None:
            if ai not in down:
                now = time.monotonic()
                down[ai] = [now, now + PING_FIRST_S, PING_FIRST_S]
                self.log(f"Ray worker {ai} lost ({_short(exc)}); waiting for Ray to restart it")

        def replaced(ai: int, pid: int) -> None:
            if pid != self.pids[ai]:
                self.log(f"Ray worker {ai} was replaced (pid {self.pids[ai]} -> {pid})")
                self.pids[ai] = pid

        fill()
        while True:
            if cancelled():
                retry.clear()  # not done: the run is interrupted and a resume does them
            if not pending and not retry and (exhausted or cancelled()):
                break
            now = time.monotonic()
            if not pending and len(down) == n and all(now - d[0] > WORKER_WAIT_S
                                                      for d in down.values()):
                why = (f"no Ray worker came back within {WORKER_WAIT_S:g} s of being lost "
                       f"(workers {sorted(down)})")
                self.log(f"Ray: {why}; giving up the cases left")
                for ci, _ in retry:
                    yield failed(ci, why)
                retry.clear()
                if not cancelled():
                    for ci in todo:
                        yield failed(ci, why)
                exhausted = True
                break
            for ai, d in down.items():
                if d[1] <= now and ai not in probes.values():
                    probes[self.actors[ai].ping.remote()] = ai
            waiting = [*pending, *probes]
            if not waiting:
                time.sleep(max(0.0, min(d[1] for d in down.values()) - now))
                continue
            ready, _ = ray.wait(waiting, num_returns=1, timeout=PING_MAX_S)
            for fut in ready:
                if fut in probes:
                    ai = probes.pop(fut)
                    try:
                        pid = ray.get(fut)
                    except ray.exceptions.RayActorError:
                        d = down[ai]  # still restarting: ping again later, less often
                        d[2] = min(2 * d[2], PING_MAX_S)
                        d[1] = time.monotonic() + d[2]
                        continue
                    down.pop(ai)
                    replaced(ai, pid)
                    continue
                ai, ci, attempt = pending.pop(fut)
                inflight[ai] -= 1
                ref = cases[ci][1]
                try:
                    _, pid, events = ray.get(fut)
                except ray.exceptions.RayActorError as exc:
                    # the worker process died (killed, out of memory, node lost) or is being
                    # restarted; either way the case's results never came back: redo it
                    lost(ai, exc)
                    if attempt < MAX_ATTEMPTS:
                        self.log(f"Ray worker {ai} lost during {ref.case} (attempt {attempt}): "
                                 f"redoing the case ({_short(exc)})")
                        retry.append((ci, attempt))
                        continue
                    yield failed(ci, f"its Ray worker was lost {attempt} times while it ran: "
                                     f"{_short(exc)}")
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, BaseException):
                        raise cause from None
                    raise
                replaced(ai, pid)
                fill()
                yield ci, events
            fill()

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
