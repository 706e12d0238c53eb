"""Crash recovery from the session logs: find unexported work, rebuild it, retire it.

Each image a session opens gets its own log in ``state_dir() / "sessions"``
(:mod:`~app.core.annotate.journal`). At start the app asks :func:`find_pending` for logs that

* no live process holds (a running instance's log is locked, so it is never offered as a
  crash, nor retired, by a second instance), and
* end with labels that were neither exported nor discarded.

:func:`rebuild` replays such a log with its recorded masks (no model needed) into the label map
as it was after the last durable entry; a torn last line is ignored and said so; a damaged log
is reported, not raised. After a restore or a discard the log gets a closing ``retired`` entry
and is never offered again, but it stays on disk as a record (``samscope replay``) until
:func:`prune_logs` drops the oldest retired ones.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.annotate import journal as _journal

__all__ = ["state_dir", "sessions_dir", "PendingWork", "find_pending", "rebuild", "retire",
           "prune_logs"]

#: retired logs kept as a record (the newest first); pending ones are always kept
KEEP_RETIRED_LOGS = 200


def state_dir() -> Path:
    """Per-user state folder (``$SAMSCOPE_STATE_DIR`` overrides)."""
    env = os.environ.get("SAMSCOPE_STATE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_state_dir("samscope", appauthor=False))


def sessions_dir() -> Path:
    """Where the session logs live."""
    return state_dir() / "sessions"


@dataclass(frozen=True)
class PendingWork:
    """Unexported labels left by a session that is no longer running."""

    path: Path
    source: str
    n_objects: int
    last_saved: float  # unix time of the log's last entry
    problems: tuple[str, ...] = ()

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.last_saved))
        return (f"{self.n_objects} object(s) on {Path(self.source).name or self.source}, "
                f"last change {when}")


def _is_retired(entries) -> bool:
    return any(e.get("action") == "retired" for e in entries)


def find_pending(folder: str | os.PathLike | None = None) -> tuple[list[PendingWork], list[str]]:
    """Logs in ``folder`` (default :func:`sessions_dir`) holding unexported work, newest
    first, and one message per log that could not be read (naming the file)."""
    from app.core.annotate.replay import replay_log

    folder = Path(folder) if folder is not None else sessions_dir()
    pending: list[PendingWork] = []
    problems: list[str] = []
    if not folder.is_dir():
        return pending, problems
    for path in sorted(folder.glob("*.jsonl"), reverse=True):
        if _journal.is_locked(path):
            continue  # a live session: not ours to offer
        try:
            lf = _journal.read_log(path)
            if _is_retired(lf.entries):
                continue
            result = replay_log(lf)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"Session log {path} is damaged and cannot be recovered: {exc}")
            continue
        if result.unexported and result.labels.any():
            pending.append(PendingWork(path=path, source=result.source,
                                       n_objects=int(len(np.unique(result.labels)) - 1),
                                       last_saved=float(lf.entries[-1].get("t", 0.0)),
                                       problems=tuple(lf.problems)))
    return pending, problems


def rebuild(work: PendingWork | str | os.PathLike):
    """The label map (Z, Y, X) and object names that a pending log holds."""
    from app.core.annotate.replay import replay_log

    path = work.path if isinstance(work, PendingWork) else Path(work)
    result = replay_log(path)
    return result.labels, result.names


def retire(work: PendingWork | str | os.PathLike, why: str) -> None:
    """Mark a log as dealt with (restored elsewhere, or discarded): never offered again.

    Raises ``OSError`` naming the log when it cannot be written.
    """
    path = work.path if isinstance(work, PendingWork) else Path(work)
    entry = {"t": round(time.time(), 3), "action": "retired", "why": why}
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OSError(exc.errno, f"could not update the session log {path}: "
                      f"{exc.strerror or exc}") from exc


def prune_logs(folder: str | os.PathLike | None = None, keep: int = KEEP_RETIRED_LOGS) -> int:
    """Delete the oldest retired or empty logs beyond ``keep``; returns how many went."""
    folder = Path(folder) if folder is not None else sessions_dir()
    if not folder.is_dir():
        return 0
    done = []
    for path in sorted(folder.glob("*.jsonl"), reverse=True):
        if _journal.is_locked(path):
            continue
        try:
            lf = _journal.read_log(path)
        except (OSError, ValueError):
            continue
        if _is_retired(lf.entries) or not any(e.get("action") in ("accept", "propagate",
                                                                  "restore")
                                              for e in lf.entries):
            done.append(path)
    removed = 0
    for path in done[keep:]:
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed
