"""The benchmark on images in memory: the runner's prompt simulation, selection and metrics.

Fine-tuning's validation, its before/after table, the model card and the Adapt dock's
comparison call :func:`evaluate` instead of keeping their own copy of the benchmark's logic.
It drives the runner's own pieces (``_Run``, ``_run_mode``, ``_run_clicks``,
:func:`~app.core.benchmark.runner.select_candidate`) on :class:`ImageSample` objects with a
:class:`~app.core.benchmark.runner.BenchmarkPlan` that writes nothing (``save_masks=False``),
so a row here is the row ``samscope benchmark`` writes for the same image, label, method,
prompt and seed (prompts are drawn from ``derive_rng(seed, dataset, case, label, protocol,
repeat)`` in both).

>>> rows = evaluate({"litemedsam": method}, samples, modes=(1, 3), protocols=("paper",),
...                 clicks=9)                                          # doctest: +SKIP
>>> table = summarize(rows)                                            # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from app.core.benchmark.datasets import ImageSample
from app.core.benchmark.stats import case_key, mean_of_tasks_ci

__all__ = ["evaluate", "summarize", "task_table", "Summary", "mean_of_tasks_ci",
           "case_of", "PrecomputedMethod", "paired_by_task", "task_differences",
           "significantly_worse"]


def case_of(row: Mapping[str, Any]) -> str:
    """The resampling unit of a results row: its dataset and case (slices of a volume share
    one), as ``"dataset/case"``."""
    return case_key(row["dataset"], row["case"])


class PrecomputedMethod:
    """A SAM-family model as a benchmark method whose ``prepare`` returns an embedding given
    in advance (by image identity): evaluation without running the image encoder again.

    Parameters
    ----------
    model : PromptableModel
        Predicts on the embeddings (a fine-tuned decoder shares its base's image encoder).
    embeddings : mapping id(Image2D) -> Embedding
    name : str, optional
        Method name in the rows (default: the model's).
    """

    def __init__(self, model, embeddings: Mapping[int, Any], name: str | None = None) -> None:
        self.model = model
        self.embeddings = embeddings
        self.name = name or model.name
        self.capabilities = model.capabilities
        self.note = ""
        self.images_prepared = 0

    def prepare(self, image):
        self.images_prepared += 1
        emb = self.embeddings.get(id(image))
        if emb is None:
            return self.model.embed(image)
        return replace(emb, model_name=self.model.name)

    def predict(self, state, prompt, multimask: bool = True):
        return self.model.predict(state, prompt, multimask=multimask)

    def supports(self, prompt) -> bool:
        if prompt.has_box and not prompt.has_points:
            return bool(self.capabilities.boxes)
        return bool(self.capabilities.points)

    def stats(self) -> dict[str, int]:
        return {"prepared": self.images_prepared}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model.name}


def _default_task(sample: ImageSample, label: int) -> str:
    return sample.ref.dataset if len(sample.masks) <= 1 and label == 1 else (
        f"{sample.ref.dataset}/{label}")


def evaluate(methods: Mapping[str, Any], samples: Sequence[ImageSample], *,
             modes: Sequence[int] = (1, 3, 5), protocols: Sequence[str] = (),
             clicks: int | None = None, selections: Sequence[str] | None = None,
             seed: int = 0, jitter: float = 0.0, repeats: int = 1, target_iou: float = 0.9,
             task_name: Callable[[ImageSample, int], str] | None = None,
             surface_metrics: bool = False,
             cancel: threading.Event | None = None,
             on_progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Benchmark rows for ``methods`` on ``samples``, exactly as the runner makes them.

    Parameters
    ----------
    methods : mapping name -> InteractiveMethod
        E.g. :class:`~app.core.methods.sam_family.SamFamilyMethod`, or
        :class:`PrecomputedMethod` to reuse embeddings.
    samples : sequence of ImageSample
        From :func:`app.core.benchmark.datasets.iter_images` (or built the same way: the
        ``ref.dataset``, ``case_id`` and label values seed the prompts).
    modes, protocols, clicks, selections, seed, jitter, repeats, target_iou
        As in :class:`~app.core.benchmark.runner.BenchmarkPlan`.
    task_name : callable (sample, label) -> str, optional
        The ``task`` column (default: the dataset, or ``dataset/label`` for several labels).
    surface_metrics : bool
        Also compute HD95 and NSD (slow); without it only IoU and Dice are filled (they do not
        depend on the pixel spacing).
    cancel : threading.Event, optional
        Stops after the image in progress.
    on_progress : callable (done, total), optional
        After each image.

    Returns
    -------
    list of dict
        One results row per (image, label, method, mode or protocol click, selection), the
        columns of ``results.csv``.
    """
    from app.core.benchmark.runner import BenchmarkPlan, _Run, _run_clicks, _run_mode

    plan = BenchmarkPlan(
        data=".", out_dir=".", methods=tuple(methods), modes=tuple(modes),
        protocols=tuple(protocols), clicks=clicks, target_iou=target_iou,
        selections=None if selections is None else tuple(selections), seed=seed,
        jitter=jitter, repeats=repeats, save_masks=False, prebuilt_methods=dict(methods))
    plan.validate()
    run = _Run(plan, None)
    name_of = task_name or _default_task
    rows: list[dict[str, Any]] = []
    for i, sample in enumerate(samples):
        if cancel is not None and cancel.is_set():
            break
        if not surface_metrics and sample.spacing_mm is not None:
            sample = replace(sample, spacing_mm=None)
        for method in methods.values():
            sels = run.selections_for(method)
            state = method.prepare(sample.image)
            for label in sample.masks:
                task = name_of(sample, label)
                for rep in range(plan.repeats):
                    for mode in plan.modes:
                        rows += _run_mode(run, method, state, sample, label, task, mode, rep,
                                          sels, 0.0)
                    for proto in plan.protocols:
                        for sel in sels:
                            rows += _run_clicks(run, method, state, sample, label, task, proto,
                                                rep, sel, 0.0)
        if on_progress is not None:
            on_progress(i + 1, len(samples))
    return rows


# --------------------------------------------------------------------------------------------
# summaries with case-bootstrap intervals
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """Mean IoU of one (method, protocol, selection, click) with a 95 % case-bootstrap interval.

    ``task == "mean of tasks"`` is the unweighted mean over tasks (its interval resamples cases
    within each task).
    """

    method: str
    protocol: str
    selection: str
    click: int
    task: str
    n: int
    mean: float
    low: float
    high: float


def _stats():
    from app.core.benchmark import stats

    return stats


def _groups(rows: Sequence[Mapping[str, Any]]):
    out: dict[tuple, dict[str, tuple[list, list]]] = {}
    for r in rows:
        if r.get("iou") is None:
            continue
        key = (r["method"], r["protocol"], r["selection"], int(r["click"]))
        v, c = out.setdefault(key, {}).setdefault(r["task"], ([], []))
        v.append(float(r["iou"]))
        c.append(case_of(r))
    return out


def carry_forward(rows: Sequence[Mapping[str, Any]], clicks: int) -> list[dict[str, Any]]:
    """Iterative rows extended to ``clicks`` clicks: a run that stopped early (the standard
    protocol reached its target IoU) keeps its last IoU for the clicks it did not need."""
    by_run: dict[tuple, list[Mapping[str, Any]]] = {}
    out: list[dict[str, Any]] = []
    for r in rows:
        if str(r["protocol"]).startswith("mode"):
            out.append(dict(r))
            continue
        key = (r["method"], r["dataset"], r["task"], r["case"], r["label"], r["protocol"],
               r["repeat"], r["selection"])
        by_run.setdefault(key, []).append(r)
    for run_rows in by_run.values():
        run_rows = sorted(run_rows, key=lambda r: int(r["click"]))
        out += [dict(r) for r in run_rows]
        last = run_rows[-1]
        for k in range(int(last["click"]) + 1, clicks + 1):
            out.append({**last, "click": k, "carried": True})
    return out


def summarize(rows: Sequence[Mapping[str, Any]], *, n_boot: int = 2000,
              seed: int = 0) -> list[Summary]:
    """Per task and over tasks: mean IoU and 95 % case-bootstrap interval of every
    (method, protocol, selection, click) in ``rows`` (refused prompts left out)."""
    stats = _stats()
    out = []
    for (method, proto, sel, click), tasks in sorted(_groups(rows).items()):
        arrays = {t: (np.asarray(v), np.asarray(c)) for t, (v, c) in sorted(tasks.items())}
        for task, (v, c) in arrays.items():
            est, lo, hi = stats.bootstrap_ci(v, c, n_boot=n_boot, seed=seed)
            out.append(Summary(method, proto, sel, click, task, len(v), float(est), float(lo),
                               float(hi)))
        est, lo, hi = mean_of_tasks_ci(arrays, n_boot=n_boot, seed=seed)
        out.append(Summary(method, proto, sel, click, "mean of tasks",
                           sum(len(v) for v, _ in arrays.values()), est, lo, hi))
    return out


def paired_by_task(rows: Sequence[Mapping[str, Any]], method_a: str, method_b: str,
                   protocol: str, selection: str = "first", click: int = 0,
                   unit: str = "case", **kw) -> dict[str, dict[str, float]]:
    """Per task, ``method_a - method_b`` IoU on the same images (paired, bootstrap):
    ``{task: {"mean_diff", "low", "high", "p_wilcoxon", "n_cases", "n_rows"}}``.

    ``unit="case"`` resamples cases (the slices of a volume move together); ``"image"``
    resamples images (each slice on its own): the only noise estimate a task of one volume
    has, and a narrower one, since neighbouring slices are alike."""
    if unit not in ("case", "image"):
        raise ValueError(f"unit must be 'case' or 'image'; got {unit!r}")
    stats = _stats()
    pairs: dict[str, dict[tuple, dict[str, float]]] = {}
    for r in rows:
        if (r["protocol"] != protocol or r["selection"] != selection
                or int(r["click"]) != click or r.get("iou") is None):
            continue
        key = (r["dataset"], r["case"], r["label"], r["repeat"])
        pairs.setdefault(r["task"], {}).setdefault(key, {})[r["method"]] = float(r["iou"])
    out = {}
    for task, by_img in sorted(pairs.items()):
        both = [(k, d) for k, d in by_img.items() if method_a in d and method_b in d]
        if not both:
            continue
        a = np.array([d[method_a] for _, d in both])
        b = np.array([d[method_b] for _, d in both])
        cases = np.array([f"{k[0]}/{k[1] if unit == 'image' else str(k[1]).split(':z')[0]}"
                          for k, _ in both])
        out[task] = dict(stats.paired_difference(a, b, cases, **kw))
    return out


def task_differences(rows: Sequence[Mapping[str, Any]], method_a: str, method_b: str,
                     protocol: str, selection: str = "first", click: int = 0,
                     **kw) -> dict[str, dict[str, Any]]:
    """:func:`paired_by_task` with each task's own noise estimate, as routing and the model
    card judge "significantly worse": the case bootstrap where a task has two cases or more;
    for a task of one case (one volume's slices), the bootstrap over its images; for a task
    of one image, none (``low``/``high`` NaN). ``noise`` says which: ``"cases"``,
    ``"images"`` or ``"none"``."""
    out = paired_by_task(rows, method_a, method_b, protocol, selection, click, **kw)
    single = [t for t, r in out.items() if r["n_cases"] < 2]
    by_image = (paired_by_task(rows, method_a, method_b, protocol, selection, click,
                               unit="image", **kw) if single else {})
    for task in out:
        if task in single:
            r = {**by_image[task], "n_cases": out[task]["n_cases"]}
            r["noise"] = "images" if r["n_rows"] >= 2 else "none"
        else:
            r = {**out[task], "noise": "cases"}
        out[task] = r
    return out


def significantly_worse(diffs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The tasks of :func:`task_differences` whose whole 95 % interval lies below 0."""
    return [t for t, r in diffs.items() if r["high"] < 0]


def task_table(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean IoU per task and ``"all"`` (mean over images) keyed ``"<protocol>_<selection>"``
    for click 0 and ``"<protocol><click>_<selection>"`` for iterative clicks; plus ``n``."""
    acc: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r.get("iou") is None:
            continue
        proto = str(r["protocol"])
        key = (f"{proto}_{r['selection']}" if proto.startswith("mode")
               else f"{proto}{int(r['click'])}_{r['selection']}")
        for task in (r["task"], "all"):
            acc.setdefault(task, {}).setdefault(key, []).append(float(r["iou"]))
    out: dict[str, dict[str, float]] = {}
    for task in sorted(acc, key=lambda t: (t == "all", t)):
        d = {k: float(np.mean(v)) for k, v in sorted(acc[task].items())}
        d["n"] = max(len(v) for v in acc[task].values())
        out[task] = d
    return out
