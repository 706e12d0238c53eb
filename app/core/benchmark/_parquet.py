"""Parquet copies of ``results.csv``: parts made from byte ranges of the CSV, and their index.

``results.csv`` stays the run's journal (group-committed, checked on resume). Its Parquet
copy is a chain of files, each the exact conversion of one byte range of the CSV (whole
lines, whole prompt groups), listed in ``parquet.json``::

    {"format": 1, "parts": [{"file": "results.parts/part-000000.parquet", "start": 1107,
      "end": 48123456, "rows": 100000, "bytes": 7340032, "crc32": "1c291ca3"}, ...]}

* A table of fewer than :data:`PART_ROWS` rows is one file, ``results.parquet``, written when
  the run ends (as before).
* A larger one is split into ``results.parts/part-NNNNNN.parquet`` of :data:`PART_ROWS` rows
  (rounded up to whole groups), each written while the run goes as soon as its rows are in the
  CSV, and the rest when the run ends. A killed run leaves the parts it finished.
* Every part is written to a temporary name and renamed, *then* listed in ``parquet.json``
  (itself replaced atomically): a part not listed is never read, and a cut-off temporary file
  has no name a reader looks for.
* A reader trusts a listed part only when the CSV's bytes in its range still have the
  recorded CRC-32 (and the part its recorded size), from the header on, in order; the rows
  after the last trusted part are read from the CSV. A resume that rewrites the CSV (dropping
  an incomplete group), an edited row or a replaced file therefore never serves stale rows:
  the check fails and those rows come from the CSV.

Column types are fixed (:data:`SCHEMA`), whatever a part holds. Conversion and reading use
Arrow's CSV reader in blocks (no Python object per value), so memory stays bounded by a block
(:data:`BLOCK_BYTES`) whatever the table's size.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from app.core.errors import DatasetError, WriteError
from app.core.io._atomic import describe_os_error, write_bytes_atomic

#: rows per part file (a part ends at the first group boundary past it)
PART_ROWS = 100_000
#: bytes of CSV parsed at a time (one Arrow record batch, one Parquet row group)
BLOCK_BYTES = 4 << 20
INDEX = "parquet.json"
SINGLE = "results.parquet"
PARTS_DIR = "results.parts"

INT_COLUMNS = ("label", "slice", "repeat", "click", "n_calls", "height", "width", "group_rows")
FLOAT_COLUMNS = ("iou", "dice", "hd95_mm", "nsd", "nsd_tolerance_mm", "size_fraction",
                 "candidate", "score", "seconds", "prepare_seconds", "n_pred", "matched",
                 "precision", "recall", "f1", "boundary_complexity", "curvature", "contrast",
                 "n_components")


def schema(columns: Iterable[str]):
    """The Arrow schema of the results table: ints, floats (NaN where the CSV is empty), the
    ``prompt_supported`` bool, the rest text."""
    import pyarrow as pa

    def typ(c: str):
        if c in INT_COLUMNS:
            return pa.int64()
        if c in FLOAT_COLUMNS:
            return pa.float64()
        return pa.bool_() if c == "prompt_supported" else pa.string()

    return pa.schema([(c, typ(c)) for c in columns])


class _Range:
    """A read-only file object over bytes ``[start, end)`` of a file (what Arrow's CSV reader
    is given: the lines of a part, without the header)."""

    def __init__(self, path: Path, start: int, end: int) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._fh.seek(start)
        self._left = end - start
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._left:
            n = self._left
        data = self._fh.read(n)
        self._left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self._fh.close()
        self.closed = True


def crc_range(path: Path, start: int, end: int) -> str:
    """CRC-32 of bytes ``[start, end)`` of ``path`` (8 hex digits), read in blocks."""
    r = _Range(path, start, end)
    crc = 0
    try:
        while block := r.read(BLOCK_BYTES):
            crc = zlib.crc32(block, crc)
    finally:
        r.close()
    return f"{crc:08x}"


def iter_csv_range(csv_path: Path, start: int, end: int, all_columns: tuple[str, ...],
                   columns: list[str] | None = None) -> Iterator[Any]:
    """Typed Arrow record batches of the CSV lines in ``[start, end)`` (no header there),
    only ``columns`` (default all), one block at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    if end <= start:
        return
    want = list(all_columns) if columns is None else columns
    sch = schema(want)
    read_options = pacsv.ReadOptions(column_names=list(all_columns), use_threads=False)
    parse_options = pacsv.ParseOptions(newlines_in_values=False)
    convert_options = pacsv.ConvertOptions(
        column_types={f.name: f.type for f in sch}, include_columns=want, null_values=[""],
        strings_can_be_null=False, quoted_strings_can_be_null=False, true_values=["true"],
        false_values=["false"])
    try:
        # blocks cut at a line end, each parsed on its own: Arrow's streaming reader reads
        # ahead without a bound (the whole file in memory), this holds one block
        for block in _line_blocks(csv_path, start, end):
            table = pacsv.read_csv(pa.py_buffer(block), read_options=read_options,
                                   parse_options=parse_options,
                                   convert_options=convert_options)
            del block
            cols = []
            for f, col in zip(sch, table.columns, strict=True):
                if pa.types.is_floating(f.type) and col.null_count:
                    col = pc.fill_null(col, float("nan"))  # as the CSV reads: NaN
                cols.append(col)
            yield from pa.Table.from_arrays(cols, schema=sch).combine_chunks().to_batches()
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise DatasetError(f"{csv_path}: not a results table written by samscope "
                           f"({str(exc).strip()[:160]})") from None


def _line_blocks(path: Path, start: int, end: int) -> Iterator[bytes]:
    """Bytes ``[start, end)`` of ``path`` in blocks of about :data:`BLOCK_BYTES`, each ending
    at a line end (the last one at ``end``)."""
    r = _Range(path, start, end)
    carry = b""
    try:
        while True:
            data = r.read(BLOCK_BYTES)
            if not data:
                if carry:
                    yield carry
                return
            block = carry + data
            cut = block.rfind(b"\n") + 1
            if cut == 0:  # one line longer than a block: read on
                carry = block
                continue
            carry = block[cut:]
            yield block[:cut]
    finally:
        r.close()


def write_part(csv_path: Path, start: int, end: int, target: Path,
               all_columns: tuple[str, ...]) -> dict[str, Any]:
    """Convert CSV bytes ``[start, end)`` to the Parquet file ``target`` (temporary name,
    fsync, rename); returns its index entry (the caller lists it after this returns)."""
    import pyarrow.parquet as pq

    out_dir = csv_path.parent
    tmp = target.parent / f".{target.name}.tmp"
    writer = None
    rows = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        writer = pq.ParquetWriter(tmp, schema(all_columns))
        for batch in iter_csv_range(csv_path, start, end, all_columns):
            writer.write_batch(batch)
            rows += batch.num_rows
        writer.close()
        writer = None
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        raise WriteError(describe_os_error(target, exc)) from exc
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    return {"file": target.relative_to(out_dir).as_posix(), "start": start, "end": end,
            "rows": rows, "bytes": target.stat().st_size,
            "crc32": crc_range(csv_path, start, end)}


def read_index(out_dir: Path) -> list[dict[str, Any]]:
    """The parts listed in ``parquet.json`` ([] when absent or damaged: the CSV serves)."""
    try:
        data = json.loads((out_dir / INDEX).read_text(encoding="utf-8"))
        parts = data["parts"] if data.get("format") == 1 else []
        return [p for p in parts if isinstance(p, dict)
                and {"file", "start", "end", "rows", "bytes", "crc32"} <= set(p)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def write_index(out_dir: Path, parts: list[dict[str, Any]]) -> None:
    text = json.dumps({"format": 1, "parts": parts}, indent=1)
    write_bytes_atomic(out_dir / INDEX, text.encode("utf-8"))


def trusted(out_dir: Path, header: bytes) -> tuple[list[dict[str, Any]], int]:
    """The listed parts that still hold the CSV's rows, from the header on, and the CSV byte
    offset they cover up to (``len(header)`` when none)."""
    csv_path = out_dir / "results.csv"
    covered = len(header)
    good: list[dict[str, Any]] = []
    try:
        size = csv_path.stat().st_size
        with csv_path.open("rb") as fh:
            if fh.read(len(header)) != header:
                return [], covered
    except OSError:
        return [], covered
    for p in sorted(read_index(out_dir), key=lambda p: p["start"]):
        f = out_dir / p["file"]
        try:
            ok = (p["start"] == covered and p["end"] <= size and f.stat().st_size == p["bytes"]
                  and crc_range(csv_path, p["start"], p["end"]) == p["crc32"])
        except (OSError, TypeError):
            ok = False
        if not ok:
            break
        good.append(p)
        covered = p["end"]
    return good, covered


def remove_untrusted(out_dir: Path, keep: list[dict[str, Any]]) -> None:
    """Delete part files (and temporary ones) not in ``keep``; rewrite the index to ``keep``."""
    names = {p["file"] for p in keep}
    if read_index(out_dir) != keep:
        write_index(out_dir, keep)
    cands = [out_dir / SINGLE, *(out_dir / PARTS_DIR).glob("*.parquet"),
             *(out_dir / PARTS_DIR).glob(".*.tmp"), *out_dir.glob(f".{SINGLE}*.tmp")]
    for f in cands:
        if f.is_file() and f.relative_to(out_dir).as_posix() not in names:
            try:
                f.unlink()
            except OSError:
                pass


def iter_tables(out_dir: Path, header: bytes, all_columns: tuple[str, ...],
                columns: list[str] | None, batch_rows: int | None = None) -> Iterator[Any]:
    """The results table as typed Arrow record batches: the trusted parts (column projection),
    then the CSV's lines after them (whole lines only: a cut-off last line is left out)."""
    import pyarrow.parquet as pq

    want = list(all_columns) if columns is None else [c for c in all_columns if c in columns]
    parts, covered = trusted(out_dir, header)
    for p in parts:
        f = pq.ParquetFile(out_dir / p["file"])
        try:
            yield from f.iter_batches(batch_size=batch_rows or 65536, columns=want)
        finally:
            f.close()
    csv_path = out_dir / "results.csv"
    end = _last_line_end(csv_path, covered)
    yield from iter_csv_range(csv_path, covered, end, all_columns, want)


def _last_line_end(path: Path, start: int) -> int:
    """Offset just past the last newline at or after ``start`` (``start`` when none)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        pos = size
        while pos > start:
            step = min(65536, pos - start)
            fh.seek(pos - step)
            block = fh.read(step)
            i = block.rfind(b"\n")
            if i >= 0:
                return pos - step + i + 1
            pos -= step
    return start
