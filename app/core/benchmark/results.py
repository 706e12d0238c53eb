"""The results table of a run folder: ``results.csv`` (appended as rows finish), Parquet, manifest.

A run folder ``OUT`` holds:

* ``results.csv`` -- one row per dataset x task x case x method x protocol x repeat x selection
  x click, columns :data:`COLUMNS`. The rows of one prompt group (a mode with all its
  selections, or one iterative run) are appended in one write + fsync after the group's masks
  are on disk, and carry the group's id, its row count and the plan's digest, so a resume can
  tell whole groups from cut-off ones and redoes the latter (see :class:`ResultsStore`).
  Columns beyond the paper's: everything-mode rows (``protocol = "everything{grid}"``,
  selections ``match_dice``/``match_iou``/``hungarian``) carry ``n_pred`` (masks kept on the
  image), ``matched``, and for ``hungarian`` the image's ``precision``/``recall``/``f1`` over
  objects; every row carries the ground truth's difficulty factors ``size_fraction``,
  ``boundary_complexity`` (P^2 / (4 pi A), 1 for a disc), ``curvature`` (mean absolute contour
  curvature, 1/px, largest component), ``contrast`` (|mean inside - mean of a ring around| /
  pooled sd, in the window the model saw) and ``n_components``; mode and COSMOS rows carry
  ``candidate_scores`` (JSON list of the K predicted IoUs, null for NaN) and, when masks are
  kept, ``candidates_file`` (JSON list of the K candidate PNGs, relative to the run folder).
* ``results.parquet`` -- the same table, written when a run ends, before the manifest says
  ``complete``, when it has fewer than :data:`PARQUET_PART_ROWS` rows; a larger table is split
  into ``results.parts/part-NNNNNN.parquet`` of that many rows, written as the run goes.
  ``parquet.json`` lists which byte range of ``results.csv`` each file holds and its CRC-32; a
  reader uses a file only while that range still has that CRC, and reads the rows after the
  last such file from the CSV (:mod:`app.core.benchmark._parquet`).
* ``manifest.json`` -- versions, checkpoint hashes, seed and options, start/end times, status
  (``running``/``complete``/``interrupted``), embedding statistics.
* ``skipped.csv`` -- files that could not be used and why.
* ``masks/`` -- predicted masks (PNG 0/255) for the example panels; everything mode's kept
  masks as one 16-bit PNG label map per image and grid (1-based, by descending predicted IoU).
* ``run.lock`` -- held (an OS lock) by the one process writing the folder.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from app.core.benchmark import _parquet
from app.core.errors import DatasetError, RunFolderError, WriteError
from app.core.io._atomic import append_durable, write_bytes_atomic

__all__ = [
    "COLUMNS",
    "GROUP_KEY",
    "PARQUET_PART_ROWS",
    "ResultsStore",
    "iter_result_frames",
    "iter_task_results",
    "load_results",
    "open_case",
    "read_manifest",
    "write_manifest",
]

#: Columns of ``results.csv``, in order.
COLUMNS = (
    "dataset", "task", "label", "case", "slice", "method", "protocol", "repeat", "click",
    "selection", "iou", "dice", "hd95_mm", "nsd", "nsd_tolerance_mm", "size_fraction",
    "points", "boxes", "candidate", "score", "n_calls", "seconds", "prepare_seconds",
    "prompt_supported", "note", "height", "width", "spacing_mm", "image_path", "label_path",
    "mask_file", "n_pred", "matched", "precision", "recall", "f1", "boundary_complexity",
    "curvature", "contrast", "n_components", "candidate_scores", "candidates_file",
    "group", "group_rows", "plan_digest", "row_crc",
)
_HEADER = (",".join(COLUMNS) + "\n").encode("utf-8")
#: rows per Parquet part file past which a table is partitioned (see :mod:`._parquet`)
PARQUET_PART_ROWS = _parquet.PART_ROWS
#: Columns identifying one results cell (a mode, or one iterative run with one selection).
GROUP_KEY = ("dataset", "task", "case", "method", "protocol", "repeat", "selection")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    # one physical line per row: resume relies on it
    return str(value).replace("\r", " ").replace("\n", " ")


class ResultsStore:
    """Append-only, group-committed writer of ``results.csv`` with a checked resume.

    Every row carries its prompt group's id (``group``), the number of rows that group has
    (``group_rows``), the plan's digest (``plan_digest``) and a CRC-32 of its other fields
    but the timings (``row_crc``). A group's rows are appended in one
    write and fsync'd after its mask files are on disk, so a group is *complete* when the table
    holds exactly ``group_rows`` rows with its id, no (selection, click) twice, and every mask
    file it names exists and is a whole PNG. On resume anything else (a cut-off line, a group
    cut short by a full disk, a doubled group, a missing or empty mask) is dropped by
    :meth:`repair` and redone by the runner.

    Parameters
    ----------
    out_dir : path
    resume : bool
        Keep existing complete groups and report them as done; without it a ``results.csv``
        with rows is an error (nothing is overwritten). A header-only table (a failed start)
        never blocks a new run.
    check_masks : bool
        Verify the mask files of existing groups (on resume).

    Raises
    ------
    DatasetError
        ``results.csv`` has rows and ``resume`` is False, is not UTF-8, or has other columns.
    """

    def __init__(self, out_dir: str | os.PathLike, *, resume: bool = False,
                 check_masks: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "results.csv"
        self.rows_existing = 0
        #: plan digests found in the complete groups
        self.digests: set[str] = set()
        #: (group id, reason) of the groups dropped on resume
        self.dropped: list[tuple[str, str]] = []
        self._done = _GroupSet()
        self._by_image: tuple[Any, Any] | None = None  # (image keys, group keys), sorted
        self._drop_lines: list[tuple[int, int]] = []  # [first, end) line numbers to drop
        self._needs_repair = False
        self._check_masks = check_masks
        has_rows = self._scan(keep=resume) if self.path.exists() else False
        if has_rows:
            if not resume:
                raise DatasetError(
                    f"{self.path} already exists: pass --resume to continue that run, "
                    "or choose another output folder"
                )
        else:
            # absent, empty or header-only (a start that failed before any row): start afresh
            write_bytes_atomic(self.path, _HEADER)
            self._needs_repair = False
            self.dropped = []
        #: the Parquet parts that hold the CSV up to byte ``_covered`` (see :mod:`._parquet`)
        self._parts: list[dict[str, Any]] = []
        self._covered = self._size = len(_HEADER)
        self._rows_uncovered = 0
        if not self._needs_repair:  # else repair() finds them once the CSV is rewritten
            self._sync_parts()

    @staticmethod
    def columns() -> tuple[str, ...]:
        return COLUMNS

    @property
    def done(self) -> _GroupSet:
        """The ids of the complete groups found on resume (``in``, ``len``; 8 bytes each)."""
        return self._done

    def done_for_image(self, dataset: str, image_path: str) -> frozenset[str]:
        """Ids of the complete groups of one image (what a Ray worker may skip)."""
        import numpy as np

        if self._by_image is None:
            return frozenset()
        keys, gids = self._by_image
        k = np.uint64(_image_key(dataset, image_path))
        lo, hi = np.searchsorted(keys, k, "left"), np.searchsorted(keys, k, "right")
        return frozenset(f"{int(g):016x}" for g in gids[lo:hi])

    @property
    def done_by_image(self) -> dict[str, int]:
        """Image key -> number of its complete groups (for inspection; O(images))."""
        import numpy as np

        if self._by_image is None:
            return {}
        keys, counts = np.unique(self._by_image[0], return_counts=True)
        return {f"{int(k):016x}": int(c) for k, c in zip(keys, counts, strict=True)}

    # --- reading --------------------------------------------------------------------------
    def _scan(self, keep: bool) -> bool:
        """One streamed pass over ``results.csv``: check the header and the text, find the
        complete groups (``keep``: remember them compactly, and what to drop). Returns
        whether the table has data lines. Memory: a few integers per group, never the rows.

        A group's rows are written in one append, so they are consecutive lines: each run
        of lines with one group id is checked on its own (:meth:`_incomplete`), and an id
        found in two runs (two writers) drops every one of its runs.
        """
        from array import array

        import numpy as np

        runs_gid, runs_img, runs_first, runs_n = array("Q"), array("Q"), array("q"), array("q")
        runs_digest = array("H")
        digests: list[str] = []
        run: list[dict[str, str]] = []
        run_start = 0
        has_rows = False

        def close_run() -> None:
            if not run:
                return
            gid = run[0]["group"]
            reason = self._incomplete(gid, run)
            key = int(gid, 16) if len(gid) == 16 and _is_hex(gid) else None
            if reason or key is None:
                self._drop(run_start, run_start + len(run), gid, reason or
                           f"{_where(run[0])}: a damaged group id")
                if key is not None:  # still counts as a run of that id (doubled?)
                    runs_gid.append(key)
                    runs_img.append(0)
                    runs_first.append(run_start)
                    runs_n.append(-len(run))
                    runs_digest.append(0)
                return
            d = run[0]["plan_digest"]
            if d not in digests:
                digests.append(d)
            runs_gid.append(key)
            runs_img.append(_image_key(run[0]["dataset"], run[0]["image_path"]))
            runs_first.append(run_start)
            runs_n.append(len(run))
            runs_digest.append(digests.index(d))

        with self.path.open("rb") as fh:
            first = fh.readline()
            offset = len(first)
            self._utf8(first, 0, 1)
            if not first.strip():
                if not any(line.strip() for line in fh):
                    return False  # empty or blank: a new table
            header = first.rstrip(b"\n").rstrip(b"\r").decode("utf-8")
            if tuple(header.split(",")) != COLUMNS:
                raise DatasetError(
                    f"{self.path}: columns differ from this version's ({header[:80]}...); "
                    "resume with the version that wrote it, or start a new folder"
                )
            line_no = 1
            for raw in fh:
                line_no += 1
                text = self._utf8(raw, offset, line_no)
                offset += len(raw)
                if not raw.endswith(b"\n"):
                    # killed in the middle of a write: the last line is incomplete
                    close_run()
                    run = []
                    self._drop(line_no, line_no + 1, "", "a cut-off last line")
                    break
                has_rows = True
                if not keep:
                    continue
                fields_ = next(csv.reader([text[:-1]]), [])
                if len(fields_) != len(COLUMNS):
                    close_run()
                    run = []
                    self._drop(line_no, line_no + 1, "",
                               f"line {line_no}: {len(fields_)} fields")
                    continue
                row = dict(zip(COLUMNS, fields_, strict=True))
                if _crc(fields_[:-1]) != row["row_crc"]:
                    row["group_rows"] = "damaged"  # fails its group's check
                if run and row["group"] != run[0]["group"]:
                    close_run()
                    run = []
                if not run:
                    run_start = line_no
                run.append(row)
            close_run()
        if not (keep and has_rows):
            return has_rows
        gids = np.frombuffer(runs_gid, np.uint64)
        n = np.frombuffer(runs_n, np.int64)
        uniq, counts = np.unique(gids, return_counts=True)
        doubled = np.isin(gids, uniq[counts > 1])
        for i in np.flatnonzero(doubled & (n > 0)):  # the others are dropped already
            first_line = int(runs_first[i])
            self._drop(first_line, first_line + int(n[i]), f"{int(gids[i]):016x}",
                       f"rows doubled (group {int(gids[i]):016x} written twice)")
        ok = ~doubled & (n > 0)
        self._done = _GroupSet(gids[ok])
        order = np.argsort(np.frombuffer(runs_img, np.uint64)[ok], kind="stable")
        self._by_image = (np.frombuffer(runs_img, np.uint64)[ok][order], gids[ok][order])
        self.digests = {digests[i] for i in np.unique(np.frombuffer(runs_digest, np.uint16)[ok])}
        self.rows_existing = int(n[ok].sum())
        self._drop_lines.sort()
        return has_rows

    def _drop(self, first: int, end: int, gid: str, reason: str) -> None:
        self._needs_repair = True
        self.dropped.append((gid, reason))
        self._drop_lines.append((first, end))

    def _utf8(self, raw: bytes, offset: int, line: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"{self.path}: not UTF-8 text (byte {offset + exc.start}, line {line}): not a "
                "results table written by samscope; move it away or choose another output "
                "folder"
            ) from None

    def _incomplete(self, gid: str, rows: list[dict[str, str]]) -> str:
        """Why the group's rows are not a whole group ('' when they are)."""
        first = rows[0]
        where = _where(first)
        if not gid:
            return f"{where}: rows without a group id"
        declared = {r["group_rows"] for r in rows}
        if "damaged" in declared:
            return f"{where}: a row whose check sum does not match (edited or damaged)"
        if len(declared) != 1 or not first["group_rows"].isdigit():
            return f"{where}: inconsistent group_rows {sorted(declared)}"
        if len({r["plan_digest"] for r in rows}) != 1:
            return f"{where}: rows of different plans in one group"
        n = int(first["group_rows"])
        if len(rows) < n:
            return f"{where}: {len(rows)} of {n} rows"
        if len(rows) > n or len({(r["selection"], r["click"]) for r in rows}) != len(rows):
            return f"{where}: rows doubled ({len(rows)} for {n})"
        if self._check_masks:
            for r in rows:
                if r["mask_file"] and not _png_ok(self.out_dir / r["mask_file"]):
                    return f"{where}: mask file {r['mask_file']} missing or damaged"
        return ""

    def repair(self) -> int:
        """Rewrite ``results.csv`` with only the complete groups (atomically, streamed line
        by line); returns the number of groups (or lines) dropped."""
        if not self._needs_repair:
            return 0
        drops = self._drop_lines

        def kept() -> Iterator[bytes]:
            k = 0
            buf: list[bytes] = []
            size = 0
            with self.path.open("rb") as fh:
                fh.readline()  # the header: written anew
                for line_no, raw in enumerate(fh, start=2):
                    while k < len(drops) and drops[k][1] <= line_no:
                        k += 1
                    if k < len(drops) and drops[k][0] <= line_no < drops[k][1]:
                        continue
                    if not raw.endswith(b"\n"):
                        continue  # a cut-off last line
                    buf.append(raw)
                    size += len(raw)
                    if size >= 1 << 20:
                        yield b"".join(buf)
                        buf, size = [], 0
            yield b"".join(buf)

        _rewrite_atomic(self.path, kept())
        self._needs_repair = False
        self._drop_lines = []
        self._sync_parts()
        return len(self.dropped)

    # --- writing --------------------------------------------------------------------------
    def is_done(self, group: str) -> bool:
        return group in self.done

    def write_group(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append the rows of one prompt group (same ``group``) in one write, then fsync.

        Sets each row's ``group_rows``. Raises :class:`~app.core.errors.WriteError` naming
        ``results.csv`` (disk full, ...); the group then counts as not done.
        """
        rows = list(rows)
        if not rows:
            return
        if self._needs_repair:
            self.repair()
        gids = {row["group"] for row in rows}
        if len(gids) != 1:
            raise ValueError(f"write_group: rows of several groups {sorted(gids)}")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for row in rows:
            row["group_rows"] = len(rows)
            values = [_fmt(row.get(c)) for c in COLUMNS[:-1]]
            row["row_crc"] = _crc(values)
            w.writerow([*values, row["row_crc"]])
        data = buf.getvalue().encode("utf-8")
        append_durable(self.path, data)
        self._size += len(data)
        self._rows_uncovered += len(rows)
        if self._rows_uncovered >= PARQUET_PART_ROWS and _have_pyarrow():
            self._flush_parquet(final=False)

    def _sync_parts(self) -> None:
        """Find the Parquet parts that still hold the CSV's rows (after a repair: none of the
        rewritten range); delete the others and list only these."""
        self._size = self.path.stat().st_size
        self._parts, self._covered = _parquet.trusted(self.out_dir, _HEADER)
        self._rows_uncovered = self.rows_existing - sum(p["rows"] for p in self._parts)
        _parquet.remove_untrusted(self.out_dir, self._parts)

    def _flush_parquet(self, final: bool) -> None:
        """Convert the CSV's rows after the last part into a part (``final``: the run's end; a
        table that has no part yet becomes ``results.parquet``, whole)."""
        in_dir = [p for p in self._parts if p["file"] != _parquet.SINGLE]
        if self._parts and self._size <= self._covered:
            return  # nothing new since the last part
        if final and not in_dir:
            start, parts = len(_HEADER), []
            name = self.out_dir / _parquet.SINGLE
        else:
            if self._size <= self._covered:
                return
            start, parts = self._covered, list(self._parts)
            name = self.out_dir / _parquet.PARTS_DIR / f"part-{len(parts):06d}.parquet"
        if any(p["file"] == name.relative_to(self.out_dir).as_posix() for p in self._parts):
            # delisted before it is replaced: a reader never pairs an entry with another file
            _parquet.write_index(self.out_dir, parts)
        entry = _parquet.write_part(self.path, start, self._size, name, COLUMNS)
        parts.append(entry)
        _parquet.write_index(self.out_dir, parts)
        self._parts, self._covered, self._rows_uncovered = parts, self._size, 0

    def write_parquet(self) -> Path | None:
        """Write the Parquet copy's last part when a run ends (None when pyarrow is missing).

        A table of fewer than :data:`PARQUET_PART_ROWS` rows becomes ``results.parquet``;
        a larger one already has its parts in ``results.parts/`` (written by
        :meth:`write_group` as the rows came) and gets the rest as its last part. Returns the
        file or the folder. Memory stays bounded: the CSV is converted a block at a time.
        """
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            return None
        if self._needs_repair:
            self.repair()
        self._flush_parquet(final=True)
        if [p["file"] for p in self._parts] == [_parquet.SINGLE]:
            return self.out_dir / _parquet.SINGLE
        return self.out_dir / _parquet.PARTS_DIR


#: columns left out of ``row_crc``: timings differ between identical runs
_NOT_CHECKED = frozenset(i for i, c in enumerate(COLUMNS) if c in ("seconds", "prepare_seconds"))


def _crc(values: list[str]) -> str:
    """Check sum of a row's fields but the timings and itself, as written (8 hex digits)."""
    import zlib

    text = chr(31).join(v for i, v in enumerate(values) if i not in _NOT_CHECKED)
    return f"{zlib.crc32(text.encode('utf-8')):08x}"


def _png_ok(path: Path) -> bool:
    """A whole PNG file: the signature at the start and the IEND chunk at the end."""
    try:
        size = path.stat().st_size
        if size < 8 + 12:
            return False
        with path.open("rb") as fh:
            head = fh.read(8)
            fh.seek(size - 12)
            tail = fh.read(12)
    except OSError:
        return False
    return head == b"\x89PNG\r\n\x1a\n" and tail[4:8] == b"IEND"


class _GroupSet:
    """Group ids (16 hex digits) held as a sorted array of 64-bit integers."""

    def __init__(self, keys: Any = None) -> None:
        import numpy as np

        self._keys = np.unique(np.asarray([] if keys is None else keys, np.uint64))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, gid: object) -> bool:
        import numpy as np

        if not (isinstance(gid, str) and len(gid) == 16 and _is_hex(gid)) or not len(self):
            return False
        k = np.uint64(int(gid, 16))
        i = int(np.searchsorted(self._keys, k))
        return i < len(self._keys) and self._keys[i] == k

    def __iter__(self) -> Iterator[str]:
        return (f"{int(k):016x}" for k in self._keys)


_HEX = frozenset("0123456789abcdef")


def _is_hex(text: str) -> bool:
    return set(text) <= _HEX


def _image_key(dataset: str, image_path: str) -> int:
    """64-bit key of an image (dataset, path): where its done groups are found."""
    import hashlib

    h = hashlib.blake2b(f"{dataset}\0{image_path}".encode("utf-8", "surrogateescape"),
                        digest_size=8)
    return int.from_bytes(h.digest(), "big")


def _where(row: dict[str, str]) -> str:
    return f"{row['case']} {row['method']} {row['protocol']} r{row['repeat']}"


def _rewrite_atomic(path: Path, chunks: Iterable[bytes]) -> None:
    """Replace ``path`` with ``_HEADER`` + ``chunks`` (temp file beside it, fsync, rename)."""
    import secrets

    from app.core.io._atomic import describe_os_error

    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as fh:
            fh.write(_HEADER)
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError(describe_os_error(path, exc)) from exc


def _have_pyarrow() -> bool:
    try:
        import pyarrow.csv  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def _typed_read(path: Path) -> bool:
    """Whether the typed (Arrow) reader can read this table: pyarrow present and the CSV's
    header this version's (else pandas reads it, naming what is wrong)."""
    try:
        with path.open("rb") as fh:
            return fh.read(len(_HEADER)) == _HEADER and _have_pyarrow()
    except OSError:
        return False


def parquet_current(out_dir: str | os.PathLike) -> list[Path] | None:
    """The Parquet files that hold all of ``results.csv``'s rows (``[results.parquet]`` for
    a finished table of fewer than :data:`PARQUET_PART_ROWS` rows, else its parts in order),
    or None when rows after them are only in the CSV (a run in progress or interrupted, a
    resume that rewrote the CSV) or pyarrow is missing. Every file is checked against the
    CRC-32 of the CSV bytes it was made from (:func:`._parquet.trusted`)."""
    out = Path(out_dir)
    csv_path = out / "results.csv"
    if not _typed_read(csv_path):
        return None
    parts, covered = _parquet.trusted(out, _HEADER)
    if not parts or _parquet._last_line_end(csv_path, covered) != covered:
        return None
    return [out / p["file"] for p in parts]


def iter_result_frames(out_dir: str | os.PathLike, columns: Iterable[str],
                       chunk_rows: int = 50_000):
    """The results table ``chunk_rows`` rows at a time as pandas DataFrames of ``columns``
    (those the table has), in the table's order: from the trusted Parquet parts, then the CSV's
    rows after them (typed alike: ints, floats, the bool, text with "" for empty); with
    pyarrow missing, text chunks of the CSV. Memory: one chunk."""
    import pandas as pd

    out = Path(out_dir)
    path = out / "results.csv"
    want = [c for c in COLUMNS if c in set(columns)]
    if not _typed_read(path):
        yield from pd.read_csv(path, dtype=str, keep_default_na=False,
                               usecols=lambda c: c in want, chunksize=chunk_rows)
        return
    for batch in _parquet.iter_tables(out, _HEADER, COLUMNS, want, chunk_rows):
        yield batch.to_pandas()


def load_results(out_dir: str | os.PathLike, columns: Iterable[str] | None = None):
    """``results.csv`` of a run folder as a pandas DataFrame (NaN where a metric is undefined).

    ``columns``: only these (those the table has), read from the trusted Parquet parts and the
    CSV rows after them (:func:`iter_result_frames`'s order and types; a column projection:
    the other columns are never decoded); the values are those of the full read.

    Raises
    ------
    DatasetError
        No results in ``out_dir``.
    """
    import pandas as pd

    path = Path(out_dir) / "results.csv"
    if not path.is_file():
        raise DatasetError(f"{out_dir}: no results.csv (not a benchmark run folder)")
    want = None if columns is None else list(dict.fromkeys(columns))
    typed = want is not None and _typed_read(path)
    try:
        if typed:
            import pyarrow as pa

            names = [c for c in COLUMNS if c in want]
            table = pa.Table.from_batches(
                list(_parquet.iter_tables(Path(out_dir), _HEADER, COLUMNS, names)),
                schema=_parquet.schema(names))
            df = _typed_frame(table, names)
            del table
        else:
            df = pd.read_csv(path, dtype={"case": str, "task": str, "dataset": str,
                                          "method": str, "note": str, "mask_file": str,
                                          "spacing_mm": str, "candidate_scores": str,
                                          "candidates_file": str, "group": str,
                                          "plan_digest": str, "row_crc": str},
                             keep_default_na=False, na_values=["nan", ""],
                             usecols=None if want is None else lambda c: c in want)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}): not a results table "
                           "written by samscope") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{path}: not a results table ({str(exc).strip()[:120]})") from None
    return _finish_frame(df)


#: at most this many task files are open for writing at once (more tasks: more files each)
_SPILL_OPEN = 64
#: rows per record batch of the partitioning pass
_SPILL_BATCH_ROWS = 65536


def iter_task_results(out_dir: str | os.PathLike, columns: Iterable[str], *,
                      spill_dir: str | os.PathLike | None = None, on_batch=None,
                      batch_columns: Iterable[str] = ()):
    """The results table one (dataset, task) at a time, as :func:`load_results` (``columns``)
    gives its rows: ``((dataset, task), frame)`` in sorted order (rows without a dataset or
    task last), each frame's rows in table order, indexed by their row number in the table.

    Memory: one record batch while the table is partitioned, then one task. The one pass over
    the table (trusted Parquet parts, then the CSV rows after them) writes each task's rows to
    a Parquet file in a temporary folder under ``spill_dir`` (default: the run folder, so it
    is on the results' disk; removed when the iteration ends or is abandoned).
    ``on_batch(frame)``: called with each batch of the partitioning pass (its
    ``batch_columns``, as read: count columns untyped) -- where a caller gathers what needs
    the whole table before the first task.
    A table without pyarrow or of an older header is read whole and split in memory.

    Raises
    ------
    DatasetError
        No results in ``out_dir``, or not a results table.
    WriteError
        The temporary task files could not be written (e.g. a full disk): names the folder.
    """
    import tempfile
    from collections import OrderedDict

    out = Path(out_dir)
    path = out / "results.csv"
    if not path.is_file():
        raise DatasetError(f"{out_dir}: no results.csv (not a benchmark run folder)")
    want = list(dict.fromkeys(columns))
    names = [c for c in COLUMNS if c in want]
    if not _typed_read(path) or not {"dataset", "task"} <= set(names):
        df = load_results(out, names)
        if on_batch is not None and len(df):
            on_batch(df[[c for c in names if c in set(batch_columns)]])
        for key, idx in sorted(_task_index(df).items(), key=lambda kv: _key_order(kv[0])):
            yield key, df.iloc[idx]
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    sch = _parquet.schema(names).append(pa.field("__row", pa.int64()))
    root = Path(spill_dir) if spill_dir is not None else out
    try:
        spill = tempfile.TemporaryDirectory(prefix=".report-tasks-", dir=root)
    except OSError as exc:
        raise WriteError(f"{root}: could not make the report's temporary task folder "
                         f"({exc.strerror or exc})") from exc
    with spill as tmp:
        files: dict[tuple, list[Path]] = {}
        writers: OrderedDict[tuple, Any] = OrderedDict()
        whole = {c: True for c in _COUNT_COLUMNS if c in names}
        pool = pa.default_memory_pool()
        start = 0
        try:
            for batch in _parquet.iter_tables(out, _HEADER, COLUMNS, names,
                                              _SPILL_BATCH_ROWS):
                n = batch.num_rows
                batch = pa.RecordBatch.from_arrays(
                    [*batch.columns, pa.array(range(start, start + n), pa.int64())],
                    schema=sch)
                extra = [c for c in names if c in set(batch_columns)]
                frame = batch.select(list(dict.fromkeys(["dataset", "task", *whole, *extra]))
                                     ).to_pandas()
                for c in whole:
                    whole[c] = whole[c] and _whole(frame[c])
                if on_batch is not None:
                    on_batch(frame[extra])
                for key, idx in _task_index(frame).items():
                    w = writers.pop(key, None)
                    if w is None:
                        if len(writers) >= _SPILL_OPEN:
                            writers.popitem(last=False)[1].close()
                        part = files.setdefault(key, [])
                        part.append(Path(tmp) / f"t{len(files):06d}-{len(part):04d}.parquet")
                        # no dictionaries: each open writer would hold its own (MBs)
                        w = pq.ParquetWriter(part[-1], sch, use_dictionary=False)
                    w.write_batch(batch.take(pa.array(idx)))
                    writers[key] = w
                start += n
                del batch, frame
                pool.release_unused()  # Arrow's allocator keeps freed pages otherwise
            while writers:
                writers.popitem()[1].close()
        except OSError as exc:
            raise WriteError(f"{tmp}: could not write the report's task files "
                             f"({exc.strerror or exc})") from exc
        finally:
            for w in writers.values():
                with contextlib.suppress(Exception):
                    w.close()
        keep = [c for c in whole if whole[c]]
        for key in sorted(files, key=_key_order):
            table = pa.concat_tables([pq.read_table(f) for f in files[key]])
            rows = table.column("__row").to_numpy()
            df = _typed_frame(table.drop_columns(["__row"]), names, keep)
            del table
            pool.release_unused()
            df.index = rows
            yield key, _finish_frame(df)


def _task_index(df) -> dict[tuple, Any]:
    """Row positions (a NumPy array) of each (dataset, task) of ``df``; a missing key is None."""
    import pandas as pd

    keys = [df[c].astype(object).to_numpy() for c in ("dataset", "task")]
    groups = pd.Series(range(len(df))).groupby(keys, sort=False, dropna=False).indices
    return {tuple(None if _missing(k) else str(k) for k in key): pos
            for key, pos in groups.items()}


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _key_order(key: tuple) -> tuple:
    """Sorted as pandas sorts the keys (text order), a missing part last."""
    return tuple((k is None, "" if k is None else k) for k in key)


def _typed_frame(table, names: list[str], whole: Iterable[str] | None = None):
    """A typed Arrow table of the results as :func:`load_results` gives it (before
    :func:`_finish_frame`): an empty text field missing, the count columns ``whole`` (default:
    those whose values in ``table`` are all whole numbers) as int."""
    # one column at a time out of Arrow (the table is freed as it goes)
    df = table.to_pandas(split_blocks=True, self_destruct=True)
    for c in names:  # as the CSV reads them: an empty text field is missing
        if (c not in _parquet.INT_COLUMNS and c not in _parquet.FLOAT_COLUMNS
                and c not in ("prompt_supported", *_TEXT_FILLED)
                and (empty := df[c] == "").any()):
            df[c] = df[c].mask(empty)
    for c in _COUNT_COLUMNS:  # whole numbers in the CSV read as int when none is empty
        if c in df and len(df) and (c in whole if whole is not None else _whole(df[c])):
            df[c] = df[c].astype("int64")
    return df


def _whole(values) -> bool:
    """Whether every value is a finite whole number (how the CSV reader types a column)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    return bool(np.isfinite(v).all() and (v == np.round(v)).all())


def _finish_frame(df):
    """The last step of every read: ``prompt_supported`` as bool, the text columns of
    :data:`_TEXT_FILLED` with "" for empty."""
    if "prompt_supported" in df and df["prompt_supported"].dtype != bool:
        df["prompt_supported"] = df["prompt_supported"].astype(str).str.lower() == "true"
    for col in _TEXT_FILLED:
        if col in df:
            df[col] = df[col].fillna("").astype(str)
    return df


#: float columns of the Parquet that the runner writes as whole numbers
_COUNT_COLUMNS = ("n_pred", "matched", "n_components")
#: text columns where an empty field reads as "" (the others as NaN)
_TEXT_FILLED = ("note", "mask_file", "spacing_mm", "points", "boxes", "candidate_scores",
                "candidates_file")


def write_manifest(out_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (checked: a full disk names the manifest)."""
    path = Path(out_dir) / "manifest.json"
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    return write_bytes_atomic(path, text.encode("utf-8"))


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """``manifest.json`` of a run folder ({} when absent).

    Raises
    ------
    RunFolderError
        The file exists but is not a JSON object (the message names it and where it broke).
    """
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RunFolderError(f"{path}: damaged (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise RunFolderError(
            f"{path}: damaged ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except OSError as exc:
        raise RunFolderError(f"{path}: could not be read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: damaged (not a JSON object)")
    return data


def open_case(out_dir: str | os.PathLike, row: Any) -> dict[str, Any]:
    """Everything needed to show one results row: image, ground truth, prediction, prompts.

    Parameters
    ----------
    out_dir : path
        The run folder (for the saved mask).
    row : mapping or pandas Series
        A row of :func:`load_results`.

    Returns
    -------
    dict
        ``image`` (:class:`~app.core.image.Image2D`), ``gt`` (H, W) bool, ``prediction``
        (H, W) bool or None (masks not kept), ``points`` [[x, y, label], ...], ``boxes``
        [[x0, y0, x1, y1], ...] (inclusive), ``volume`` and ``slice`` (for 3D viewers).
    """
    import numpy as np

    from app.core.benchmark.datasets import CaseRef, load_case

    label_path = str(row["label_path"] or "")
    ref = CaseRef(str(row["dataset"]), str(row["case"]), Path(str(row["image_path"])),
                  Path(label_path) if label_path else None)
    vol, labels = load_case(ref)
    z = int(row["slice"])
    pred = None
    mask_file = str(row.get("mask_file", "") or "")
    if mask_file and (Path(out_dir) / mask_file).is_file():
        from PIL import Image

        with Image.open(Path(out_dir) / mask_file) as im:
            pred = np.asarray(im) > 127
    return {
        "volume": vol, "slice": z, "image": vol.slice(z), "gt": labels[z] == int(row["label"]),
        "prediction": pred, "points": json.loads(row["points"] or "[]"),
        "boxes": json.loads(row["boxes"] or "[]"),
    }
