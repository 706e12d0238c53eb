"""The results table of a run folder: ``results.csv`` (appended as rows finish), Parquet, manifest.

A run folder ``OUT`` holds:

* ``results.csv`` -- one row per dataset x task x case x method x protocol x repeat x selection
  x click, columns :data:`COLUMNS`. Rows of one prompt group (a mode, or one iterative run) are
  written with a single ``write`` + flush, so an interrupted run leaves whole groups; a partial
  last line (killed mid-write) is cut off when the run is resumed.
* ``results.parquet`` -- the same table, written when a run ends (and by :func:`load_results`
  callers who want it).
* ``manifest.json`` -- versions, checkpoint hashes, seed and options, start/end times, status
  (``running``/``complete``/``interrupted``), embedding statistics.
* ``skipped.csv`` -- files that could not be used and why.
* ``masks/`` -- predicted masks (PNG 0/255) for the example panels.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app.core.errors import DatasetError

__all__ = [
    "COLUMNS",
    "GROUP_KEY",
    "ResultsStore",
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
    "mask_file",
)
#: Columns identifying one prompt group (a mode, or one iterative run with one selection).
GROUP_KEY = ("dataset", "task", "case", "method", "protocol", "repeat", "selection")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


class ResultsStore:
    """Append-only writer of ``results.csv`` with resume support.

    Parameters
    ----------
    out_dir : path
    resume : bool
        Keep existing rows and report their groups as done; without it an existing
        ``results.csv`` is an error (nothing is overwritten).
    """

    def __init__(self, out_dir: str | os.PathLike, *, resume: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "results.csv"
        self.done: set[tuple[str, ...]] = set()
        self.rows_existing = 0
        if self.path.exists() and self.path.stat().st_size > 0:
            if not resume:
                raise DatasetError(
                    f"{self.path} already exists: pass --resume to continue that run, "
                    "or choose another output folder"
                )
            self._load_done()
        else:
            with self.path.open("w", newline="", encoding="utf-8") as fh:
                fh.write(",".join(COLUMNS) + "\n")

    def _load_done(self) -> None:
        raw = self.path.read_bytes()
        if not raw.endswith(b"\n"):
            # killed in the middle of a write: the last line is incomplete, cut it off
            cut = raw.rfind(b"\n") + 1
            with self.path.open("r+b") as fh:
                fh.truncate(cut)
            raw = raw[:cut]
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise DatasetError(
                f"{self.path}: columns differ from this version's ({reader.fieldnames}); "
                "resume with the version that wrote it, or start a new folder"
            )
        for row in reader:
            self.done.add(tuple(row[k] for k in GROUP_KEY))
            self.rows_existing += 1

    @staticmethod
    def key(**values: Any) -> tuple[str, ...]:
        """The group key of a row, as strings (as read back from the CSV)."""
        return tuple(_fmt(values[k]) for k in GROUP_KEY)

    def is_done(self, **values: Any) -> bool:
        return self.key(**values) in self.done

    def write_group(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append the rows of one prompt group in one write, then flush to disk."""
        rows = list(rows)
        if not rows:
            return
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for row in rows:
            w.writerow([_fmt(row.get(c)) for c in COLUMNS])
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        for row in rows:
            self.done.add(self.key(**row))

    def write_parquet(self) -> Path | None:
        """Write ``results.parquet`` from the CSV (None when pyarrow is missing)."""
        df = load_results(self.out_dir)
        target = self.out_dir / "results.parquet"
        try:
            df.to_parquet(target, index=False)
        except ImportError:
            return None
        return target


def load_results(out_dir: str | os.PathLike):
    """``results.csv`` of a run folder as a pandas DataFrame (NaN where a metric is undefined).

    Raises
    ------
    DatasetError
        No results in ``out_dir``.
    """
    import pandas as pd

    path = Path(out_dir) / "results.csv"
    if not path.is_file():
        raise DatasetError(f"{out_dir}: no results.csv (not a benchmark run folder)")
    df = pd.read_csv(path, dtype={"case": str, "task": str, "dataset": str, "method": str,
                                  "note": str, "mask_file": str, "spacing_mm": str},
                     keep_default_na=False, na_values=["nan", ""])
    if "prompt_supported" in df:
        df["prompt_supported"] = df["prompt_supported"].astype(str).str.lower() == "true"
    for col in ("note", "mask_file", "spacing_mm", "points", "boxes"):
        if col in df:
            df[col] = df[col].fillna("").astype(str)
    return df


def write_manifest(out_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically."""
    path = Path(out_dir) / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """``manifest.json`` of a run folder ({} when absent)."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


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
