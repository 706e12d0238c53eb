"""The session log: one JSON-lines file of controller actions per image and session.

Every verb of the :class:`~app.core.annotate.controller.AnnotationController` appends one line
(``{"t": unix time, "action": ..., ...}``). Accepts and other label changes carry the mask they
wrote (cropped, bit-packed, zlib, base64), and are flushed **and fsynced before the accept
returns**: the log is the crash-recovery journal, and an object accepted a second before a
crash is in it. Clicks and boxes are flushed but not fsynced (losing the last click of an
unaccepted object costs nothing).

The log also answers questions later: which model (name and SHA-256 of its weights) produced
which object from which clicks, and the annotation effort per object (clicks, boxes, seconds
from the first prompt to the accept). ``samscope replay LOG`` re-runs it
(:mod:`app.core.annotate.replay`).

While its session lives, the process holds an exclusive ``flock`` on the file: another instance
sees the lock and never offers (or deletes) a live session's work as a crash. The OS drops the
lock when the process dies, ``kill -9`` included.
"""

from __future__ import annotations

import base64
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SessionLog",
    "LogFile",
    "read_log",
    "encode_mask",
    "decode_mask",
    "encode_labels",
    "decode_labels",
    "FORMAT",
]

FORMAT = "samscope-session-log/1"


def _b64(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 6)).decode("ascii")


def _unb64(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text.encode("ascii")))


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A bool (H, W) mask as JSON: its bounding box and the bit-packed crop."""
    mask = np.asarray(mask, bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return {"shape": list(mask.shape), "bbox": None}
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = np.packbits(mask[r0:r1, c0:c1], axis=None)
    return {"shape": list(mask.shape), "bbox": [r0, r1, c0, c1], "bits": _b64(crop.tobytes())}


def decode_mask(data: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_mask`: bool (H, W)."""
    h, w = (int(v) for v in data["shape"])
    out = np.zeros((h, w), bool)
    if data.get("bbox") is None:
        return out
    r0, r1, c0, c1 = (int(v) for v in data["bbox"])
    n = (r1 - r0) * (c1 - c0)
    bits = np.unpackbits(np.frombuffer(_unb64(data["bits"]), np.uint8), count=n)
    out[r0:r1, c0:c1] = bits.reshape(r1 - r0, c1 - c0).astype(bool)
    return out


def encode_labels(labels: np.ndarray) -> dict[str, Any]:
    """A whole label map as JSON (zlib + base64 of its bytes)."""
    labels = np.ascontiguousarray(labels)
    return {"shape": list(labels.shape), "dtype": str(labels.dtype), "data": _b64(labels.tobytes())}


def decode_labels(data: dict[str, Any]) -> np.ndarray:
    arr = np.frombuffer(_unb64(data["data"]), dtype=np.dtype(data["dtype"]))
    return arr.reshape([int(s) for s in data["shape"]]).copy()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None  # strict JSON: no NaN / Infinity
    return value


class SessionLog:
    """An open, locked, append-only session log.

    Parameters
    ----------
    path : path
        Created (with its folder) if missing; appended to otherwise.

    Raises
    ------
    OSError
        The folder or file cannot be written, or another live process holds the log.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the session
        try:
            _lock(self._fh)
        except OSError:
            self._fh.close()
            raise
        self.closed = False

    def append(self, action: str, *, durable: bool = False, **fields: Any) -> dict[str, Any]:
        """Write one entry; ``durable`` also fsyncs (accepts, label changes, exports).

        Raises ``OSError`` (e.g. ENOSPC) naming the log when the write fails.
        """
        entry = {"t": round(time.time(), 3), "action": action, **_jsonable(fields)}
        line = json.dumps(entry, separators=(",", ":"), allow_nan=False) + "\n"
        try:
            self._fh.write(line)
            self._fh.flush()
            if durable:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            raise OSError(exc.errno, f"could not write the session log {self.path}: "
                          f"{exc.strerror or exc}") from exc
        return entry

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._fh.close()  # closing the file releases the lock
            except OSError:
                pass


def _lock(fh) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; liveness falls back to the pid
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def is_locked(path: str | os.PathLike) -> bool:
    """True when a live process holds the log ``path`` open (its session is running)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        with open(path, "rb") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False
    except OSError:
        return False


@dataclass
class LogFile:
    """A session log read back: its entries and what could not be read."""

    path: Path
    entries: list[dict[str, Any]] = field(default_factory=list)
    #: lines that were not valid entries (a torn last line after a crash is expected)
    problems: list[str] = field(default_factory=list)

    @property
    def header(self) -> dict[str, Any]:
        return self.entries[0] if self.entries and self.entries[0].get("action") == "log" else {}

    def first(self, action: str) -> dict[str, Any] | None:
        return next((e for e in self.entries if e.get("action") == action), None)


def read_log(path: str | os.PathLike) -> LogFile:
    """Read a session log; damaged lines are reported in ``problems``, never raised.

    Raises
    ------
    OSError
        The file cannot be read at all.
    ValueError
        The file is not a SAMScope session log (naming the file).
    """
    path = Path(path)
    log = LogFile(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    lines = raw.split(b"\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line.decode("utf-8"))
            if not isinstance(entry, dict) or "action" not in entry:
                raise ValueError("not an entry")
        except (UnicodeDecodeError, ValueError) as exc:
            last = i == len(lines) or (i == len(lines) - 1 and not lines[-1])
            log.problems.append(f"{path.name} line {i}: " +
                                ("incomplete last line (written during a crash), ignored"
                                 if last else f"unreadable ({exc}), ignored"))
            continue
        log.entries.append(entry)
    if not log.entries or log.entries[0].get("action") != "log" or \
            log.entries[0].get("format") != FORMAT:
        raise ValueError(f"{path} is not a SAMScope session log (no '{FORMAT}' header line)")
    return log
