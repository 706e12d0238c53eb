"""Summaries and the HTML report of a run folder.

:func:`write_report` reads ``OUT/results.csv`` (finished or interrupted) and writes
``summary.csv`` (IoU/Dice/HD95/NSD statistics per dataset x task x method x protocol x click x
selection, with 95 % case-bootstrap intervals), ``noc.csv`` (NoC@80/85/90 and failures per
iterative protocol), the analysis tables of :mod:`app.core.benchmark.tables` (``paired.csv``,
``strata.csv``, ``difficulty.csv``, ``randomness.csv``, ``everything.csv``, where the run has
their rows), the figures of :mod:`app.core.benchmark.figures` as PNG and SVG under
``figures/`` (a figure whose rows or masks are absent is listed with the reason), and
``report.html``.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from app.core.benchmark.figures import (
    fig_ambiguity,
    fig_clicks,
    fig_delta,
    fig_difficulty,
    fig_everything,
    fig_examples,
    fig_iterative,
    fig_modes,
    fig_size,
    save_figure,
)
from app.core.benchmark.results import read_manifest

__all__ = ["summarize", "noc_table", "analysis_tables", "write_report", "NOC_THRESHOLDS",
           "ANALYSIS_COLUMNS", "FILE_COLUMNS", "POOLED_COLUMNS"]

#: the columns summaries, statistics, tables and the figures without images read (a column
#: projection of ``results.parquet``: prompts, paths and check sums, most of the bytes, stay
#: on disk)
ANALYSIS_COLUMNS = (
    "dataset", "task", "label", "case", "slice", "method", "protocol", "repeat", "click",
    "selection", "iou", "dice", "hd95_mm", "nsd", "size_fraction", "seconds",
    "prompt_supported", "note", "n_pred", "matched", "precision", "recall", "f1",
    "boundary_complexity", "curvature", "contrast", "n_components",
)
#: what the figures drawing saved masks (Figs. 3, 6, 7, 9) need besides; read only for the
#: rows that name a mask or candidate file (:func:`file_rows`)
FILE_COLUMNS = ("points", "boxes", "height", "width", "spacing_mm", "image_path",
                "label_path", "mask_file", "candidate_scores", "candidates_file")
_CHUNK_ROWS = 50_000
#: what the two tables pooled over tasks (strata, difficulty) keep of each task's final rows
POOLED_COLUMNS = ("dataset", "task", "label", "case", "slice", "method", "protocol", "repeat",
                  "click", "selection", "iou", "size_fraction", "boundary_complexity",
                  "curvature", "contrast", "n_components")

NOC_THRESHOLDS = (0.80, 0.85, 0.90)
_GROUP = ["dataset", "task", "method", "protocol", "click", "selection"]


def summarize(df, *, n_boot: int = 2000, seed: int = 0):
    """Per dataset x task x method x protocol x click x selection statistics.

    Every mean has a 95 % case-bootstrap interval (:func:`app.core.benchmark.stats.bootstrap_ci`:
    the slices of one volume are resampled together, never as independent images).

    Columns: ``n``, ``n_cases``, ``iou_mean``, ``iou_ci_low``, ``iou_ci_high``, ``iou_std``,
    ``iou_median``, ``dice_mean``, ``dice_ci_low``, ``dice_ci_high``, ``hd95_mm_median``,
    ``nsd_mean``, ``nsd_ci_low``, ``nsd_ci_high``, ``seconds_mean``, ``prompt_supported``
    (all rows), ``note``.
    """
    import pandas as pd

    from app.core.benchmark.stats import bootstrap_ci, case_ids

    out = []
    for key, g in df.groupby(_GROUP, sort=True):
        cases = case_ids(g)
        rec = dict(zip(_GROUP, key))
        rec.update(n=len(g), n_cases=len(set(cases)))
        for metric in ("iou", "dice", "nsd"):
            m, lo, hi = bootstrap_ci(g[metric].to_numpy(float), cases, n_boot=n_boot,
                                     seed=seed)
            rec.update({f"{metric}_mean": m, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi})
        rec.update(
            iou_std=float(g["iou"].std(ddof=1)) if len(g) > 1 else 0.0,
            iou_median=float(g["iou"].median()),
            hd95_mm_median=float(g["hd95_mm"].median()) if g["hd95_mm"].notna().any()
            else np.nan,
            seconds_mean=float(g["seconds"].mean()),
            prompt_supported=bool(g["prompt_supported"].all()),
            note=next((n for n in g["note"] if isinstance(n, str) and n), ""),
        )
        out.append(rec)
    cols = [*_GROUP, "n", "n_cases", "iou_mean", "iou_ci_low", "iou_ci_high", "iou_std",
            "iou_median", "dice_mean", "dice_ci_low", "dice_ci_high", "hd95_mm_median",
            "nsd_mean", "nsd_ci_low", "nsd_ci_high", "seconds_mean", "prompt_supported", "note"]
    return pd.DataFrame(out, columns=cols)


def noc_table(df, thresholds=NOC_THRESHOLDS, max_clicks: dict[str, int] | None = None):
    """NoC@t and failures per dataset x task x method x iterative protocol x selection.

    NoC@t of a run is the first click whose IoU reaches t, and the protocol's maximum number of
    clicks when never reached (then it counts as a failure), as RITM computes it.
    ``max_clicks`` maps protocol -> the run's click budget; by default the largest click seen
    (a standard run that stopped early has fewer rows than its budget).
    """
    import pandas as pd

    d = df[df["click"] > 0]
    out = []
    keys = ["dataset", "task", "method", "protocol", "selection"]
    for key, g in d.groupby(keys, sort=True):
        budget = (max_clicks or {}).get(key[3], int(g["click"].max()))
        # one run = one (case, repeat); its clicks in order (a position k is click k + 1)
        g = g.sort_values(["case", "repeat", "click"], kind="stable")
        run = g.groupby(["case", "repeat"], sort=False).ngroup().to_numpy()
        pos = g.groupby(["case", "repeat"], sort=False).cumcount().to_numpy()
        n_runs = int(run.max()) + 1
        ious = g["iou"].to_numpy(float)
        rec = dict(zip(keys, key))
        rec["runs"] = n_runs
        rec["max_clicks"] = budget
        for t in thresholds:
            first = np.full(n_runs, np.iinfo(np.int64).max)
            hit = ious >= t
            np.minimum.at(first, run[hit], pos[hit])
            reached = first < np.iinfo(np.int64).max
            # as app.core.prompts.noc: the first click reaching t, else the click budget
            nocs = np.where(reached, first + 1, budget)
            tag = int(round(t * 100))
            rec[f"noc{tag}"] = float(nocs.mean())
            # a run fails at t when its IoU never reached t within max_clicks
            rec[f"fail{tag}"] = int(n_runs - reached.sum())
        out.append(rec)
    return pd.DataFrame(out)


def _table_html(df, float_fmt: str = "{:.3f}") -> str:
    if df is None or len(df) == 0:
        return "<p><em>none</em></p>"
    return df.to_html(index=False, na_rep="–", border=0, classes="t",
                      float_format=lambda v: float_fmt.format(v))


class _Gathered:
    """What the report gathers while it reads the table one task at a time: the small tables
    of each task, concatenated at the end, and the few facts that need the whole table (read
    in the partitioning pass, before the first task)."""

    #: what :meth:`see` reads of every batch
    COLUMNS = ("method", "protocol", "click")

    def __init__(self, figures: bool) -> None:
        self.figures = figures
        self.parts: dict[str, list] = {}
        self.n_rows = 0
        self.methods: set[str] = set()
        self.protocols: set[str] = set()
        self.last: dict[str, int] = {}  # largest click of each iterative protocol

    def see(self, batch) -> None:
        """A batch of the whole table (the partitioning pass)."""
        self.n_rows += len(batch)
        self.methods.update(str(m) for m in batch["method"].dropna().unique())
        self.protocols.update(str(p) for p in batch["protocol"].dropna().unique())
        from app.core.benchmark.figures import last_clicks

        for p, c in last_clicks(batch).items():
            self.last[p] = max(c, self.last.get(p, 0))

    def add(self, name: str, table) -> None:
        if table is not None and len(table):
            self.parts.setdefault(name, []).append(table)

    def table(self, name: str, like: tuple[str, ...] = ()):
        """The tasks' tables of ``name`` concatenated (their row numbers kept where ``like``
        names the columns of an empty one)."""
        import pandas as pd

        got = self.parts.get(name)
        if not got:
            return pd.DataFrame(columns=list(like))
        return pd.concat(got, ignore_index=not like)

    @property
    def size_protocol(self) -> str | None:
        """The prompt whose rows Figs. 3 and 8 show."""
        return next((p for p in ("mode5", "mode3", "mode1", "paper", "standard")
                     if p in self.protocols), None)


def _gather_task(g: _Gathered, t, budgets: dict[str, int], manifest_methods) -> None:
    """The tables and figure inputs of one (dataset, task) of the table, into ``g``."""
    from app.core.benchmark import figures as F
    from app.core.benchmark import tables

    g.add("summary", summarize(t))
    if (t["click"] > 0).any():
        g.add("noc", noc_table(t, max_clicks=budgets))
    g.add("paired", tables.paired_table(t, manifest_methods=manifest_methods, adjust=False))
    g.add("randomness", tables.randomness_table(t))
    g.add("everything", tables.everything_table(t))
    g.add("pooled", _compact(tables.final_rows(t)[[c for c in POOLED_COLUMNS if c in t]]))
    named = _named(t)
    g.add("named", t[named])
    if not g.figures:
        return
    for p in ("paper", "standard"):
        if p in g.protocols:
            g.add(f"curves:{p}", F.click_curves(t, p, n_max=g.last.get(p)))
    methods = sorted(g.methods)
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            g.add(f"delta:{a}\x1f{b}", F.delta_stats(t, a, b, last=g.last))
    sp = g.size_protocol
    if sp is not None:
        d = t[t["protocol"] == sp]
        if sp in ("paper", "standard"):  # each run at its last click
            d = d.loc[d.groupby(["dataset", "task", "case", "method", "repeat", "selection"])
                      ["click"].idxmax()]
        g.add("size", d[["method", "protocol", "selection", "size_fraction", "iou"]])


def _compact(d):
    """``d`` with its text columns categorical and its whole numbers int32 (what the pooled
    rows cost: about 60 bytes each)."""
    import pandas as pd

    out = {}
    for c in d.columns:
        v = d[c]
        if v.dtype.kind in "iu":
            out[c] = v.astype("int32") if len(v) == 0 or (
                v.min() >= -2**31 and v.max() < 2**31) else v
        elif v.dtype.kind in "fb" or isinstance(v.dtype, pd.CategoricalDtype):
            out[c] = v
        else:
            out[c] = v.astype("category")
    return pd.DataFrame(out, index=d.index)


def _concat_compact(frames):
    """Concatenate :func:`_compact` frames, their categorical columns kept categorical."""
    import pandas as pd
    from pandas.api.types import union_categoricals

    if not frames:
        return pd.DataFrame()
    cols = {}
    for c in frames[0].columns:
        parts = [f[c] for f in frames]
        if isinstance(parts[0].dtype, pd.CategoricalDtype):
            cols[c] = pd.Series(union_categoricals(parts, sort_categories=True))
        else:
            cols[c] = pd.Series(np.concatenate([p.to_numpy() for p in parts]))
    return pd.DataFrame(cols)


def _named(t):
    """Rows that name a saved mask or candidate file."""
    named = np.zeros(len(t), bool)
    for c in ("mask_file", "candidates_file"):
        if c in t:
            named |= (t[c].fillna("").astype(str) != "").to_numpy()
    return named


def _figures(g: _Gathered, out: Path, summary, difficulty=None, manifest_methods=None,
             files=None) -> tuple[list[tuple[str, str, list[Path]]], list[tuple[str, str]]]:
    """Draw and save the figures; returns (stem, title, paths) drawn and (title, why) left out.

    ``files``: the rows naming saved masks, with their paths and prompts (:func:`file_rows`).
    """
    import pandas as pd

    files = pd.DataFrame(columns=["method", "protocol", *FILE_COLUMNS]) if files is None \
        else files
    made: list[tuple[str, str, list[Path]]] = []
    left_out: list[tuple[str, str]] = []

    def add(stem: str, title: str, make, why: str = "") -> None:
        try:
            fig = make()
        except Exception as exc:  # noqa: BLE001 - one figure must not cost the report
            left_out.append((title, f"could not be drawn: {type(exc).__name__}: {exc}"))
            return
        if fig is None:
            if why:
                left_out.append((title, why))
            return
        made.append((stem, title, save_figure(fig, out / "figures" / stem)))

    from app.core.benchmark.tables import is_sam_family

    methods = sorted(g.methods)
    add("fig2_modes", "IoU per prompt mode and task (Fig. 2; diamonds: oracle selection)",
        lambda: fig_modes(summary))
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            stats = g.table(f"delta:{a}\x1f{b}")
            add(f"fig4_delta_{a}_vs_{b}", f"ΔIoU {a} − {b} per task (Fig. 4)",
                lambda a=a, b=b, stats=stats: fig_delta(stats, a, b) if len(stats) else None)
    for p in ("paper", "standard"):
        if p in g.protocols:
            curves = g.table(f"curves:{p}")
            add(f"fig5_clicks_{p}", f"IoU against clicks, {p} protocol (Fig. 5)",
                lambda p=p, curves=curves: fig_clicks(curves, p) if len(curves) else None)
    it_proto = next((p for p in ("paper", "standard") if p in g.protocols), None)
    if it_proto is None:
        left_out.append(("Fig. 6 (iterative examples)", "no iterative protocol in this run "
                         "(--protocol paper or standard)"))
    else:
        add("fig6_iterative", f"One object with 1 to 9 clicks, {it_proto} protocol (Fig. 6)",
            lambda: fig_iterative(files, out, protocol=it_proto),
            "no run has a saved mask for every click (run with masks kept)")
    with_cands = [m for m in methods if is_sam_family(m, manifest_methods)
                  and "candidates_file" in files
                  and (files.loc[files["method"] == m, "candidates_file"].astype(str)
                       != "").any()]
    if not with_cands:
        left_out.append(("Fig. 7 (ambiguity)", "no saved candidates (prompt modes or COSMOS "
                         "strategies of a SAM-family model, with masks kept)"))
    for m in with_cands:
        add(f"fig7_ambiguity_{m}", f"1st, 2nd and 3rd most confident candidate, {m} (Fig. 7)",
            lambda m=m: fig_ambiguity(files, out, m), f"{m}: its candidates could not be drawn")
    ev_rows = summary[summary["protocol"].astype(str).str.fullmatch(r"everything\d+")] \
        if len(summary) else summary
    ev = sorted(ev_rows["method"].unique()) if len(ev_rows) else []
    if not ev:
        left_out.append(("Fig. 9 (everything mode)", "no everything-mode rows (--modes "
                         "everything --grid 16,32,64)"))
    for m in ev:
        rows = ev_rows[ev_rows["method"] == m]
        notes = [n for n in rows["note"] if isinstance(n, str) and n]
        why = (notes[0] if notes and not rows["prompt_supported"].any()
               else "no saved label maps of everything mode")
        add(f"fig9_everything_{m}", f"Everything mode at several grid densities, {m} (Fig. 9)",
            lambda m=m: fig_everything(files, out, m), f"{m}: {why}")
    add("fig_difficulty", "Rank correlation of IoU with difficulty factors",
        lambda: fig_difficulty(difficulty), "no difficulty factors with enough varied rows")
    sp = g.size_protocol
    if sp is not None:
        size_rows = g.table("size")
        add("fig8_size", f"Object size against IoU, {sp} (Fig. 8)",
            lambda: fig_size(size_rows, sp) if len(size_rows) else None)
        for m in methods:
            add(f"fig3_examples_{m}", f"Examples at the 25/50/75th IoU percentile, {m}, "
                f"{sp} (Fig. 3)", lambda m=m: fig_examples(files, m, sp, run_dir=out))
    return made, left_out


def file_rows(out_dir: str | os.PathLike, df, n_rows: int | None = None):
    """The rows of ``df`` that name a saved mask or candidate file, with :data:`FILE_COLUMNS`
    added. ``df``: rows of a projected :func:`load_results` of ``out_dir``, indexed by their
    row number in the table (the whole table, its default index, or some of its rows);
    ``n_rows``: the table's rows (default ``len(df)``), checked against the rows read.

    Streams the table ``_CHUNK_ROWS`` rows at a time (:func:`~.results.iter_result_frames`:
    the trusted Parquet parts, then the CSV's rows after them), keeping only those rows: a run
    without saved masks costs nothing to hold.
    """
    import pandas as pd

    from app.core.benchmark.results import _TEXT_FILLED, iter_result_frames

    out = Path(out_dir)
    extra = [c for c in FILE_COLUMNS if c not in df.columns]
    if not len(df) and n_rows is not None:  # nothing to look up
        return df.assign(**{c: pd.Series(dtype=str) for c in extra})
    keep = []
    chunks = iter_result_frames(out, FILE_COLUMNS, _CHUNK_ROWS)
    start = 0
    for chunk in chunks:
        chunk.index = pd.RangeIndex(start, start + len(chunk))
        start += len(chunk)
        named = _named(chunk) & chunk.index.isin(df.index)
        if named.any():
            keep.append(chunk[named])
    expect = len(df) if n_rows is None else n_rows
    if start != expect:
        raise RuntimeError(f"{out}: the results table changed while the report read it "
                           f"({expect} rows, then {start})")
    if not keep:
        return df.iloc[:0].assign(**{c: pd.Series(dtype=str) for c in extra})
    files = pd.concat(keep)
    for c in ("height", "width"):  # as load_results reads them
        if c in files:
            files[c] = pd.to_numeric(files[c])
    for c in files.columns:
        if c not in ("height", "width") and c not in _TEXT_FILLED:
            files[c] = files[c].mask(files[c] == "")
        elif c in _TEXT_FILLED:
            files[c] = files[c].fillna("").astype(str)
    return df.loc[files.index].join(files[[c for c in extra if c in files.columns]])


def _ci_text(table, metric: str, digits: int = 3) -> list[str]:
    """``"0.823 [0.761, 0.880]"`` per row of a table with ``<metric>``, ``_ci_low``, ``_ci_high``."""
    def one(m, lo, hi):
        if not np.isfinite(m):
            return "–"
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return f"{m:.{digits}f}"
        return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    base = metric if metric in table else f"{metric}_mean"
    return [one(float(m), float(lo), float(hi)) for m, lo, hi in zip(
        table[base], table[f"{metric}_ci_low"], table[f"{metric}_ci_high"])]


def analysis_tables(df, *, manifest_methods=None, n_boot: int = 2000, seed: int = 0) -> dict:
    """The issue-16 analysis of a results table, by name: ``paired``, ``strata``,
    ``difficulty``, ``randomness``, ``everything`` (see :mod:`app.core.benchmark.tables`)."""
    from app.core.benchmark import tables

    return {
        "paired": tables.paired_table(df, manifest_methods=manifest_methods, n_boot=n_boot,
                                      seed=seed),
        "strata": tables.strata_table(df, n_boot=n_boot, seed=seed),
        "difficulty": tables.difficulty_table(df, n_boot=n_boot, seed=seed),
        "randomness": tables.randomness_table(df, n_boot=n_boot, seed=seed),
        "everything": tables.everything_table(df, n_boot=n_boot, seed=seed),
    }


def _analysis_html(an: dict) -> list[str]:
    parts: list[str] = []
    ev = an["everything"]
    if len(ev):
        t = ev[["dataset", "task", "method", "grid", "images", "objects"]].copy()
        t["match Dice [95 % CI]"] = _ci_text(ev, "match_dice")
        t["match IoU [95 % CI]"] = _ci_text(ev, "match_iou")
        for col in ("precision", "recall", "f1", "found", "masks_per_image",
                    "seconds_per_image", "note"):
            t[col] = ev[col]
        parts.append(
            "<h2>Everything mode (everything.csv)</h2><p>Per ground-truth object the best "
            "prediction by Dice (COSMOS's rule; a prediction may serve several objects) and "
            "by IoU; precision, recall and F1 of a one-to-one (Hungarian) assignment at "
            "IoU ≥ 0.5, averaged over images; <em>found</em>: the fraction of objects matched "
            "one-to-one.</p>" + _table_html(t))
    pt = an["paired"]
    if len(pt):
        t = pt[["kind", "method_a", "method_b", "dataset", "task", "protocol", "selection",
                "n_cases"]].copy()
        t["ΔIoU a−b [95 % CI]"] = _ci_text(pt, "diff")
        t["p (Wilcoxon)"] = pt["p_wilcoxon"]
        t["p (Holm)"] = pt["p_holm"]
        t["significant"] = np.where(pt["p_holm"].notna(), np.where(pt["significant"], "yes",
                                                                    "no"), "–")
        parts.append(
            "<h2>Paired differences between methods (paired.csv)</h2><p>Both methods on the "
            "same rows (dataset, task, case, slice, prompt, selection, repeat; iterative runs at "
            "their last click). Interval: 95 % bootstrap over cases (the slices of a volume "
            "move together); p: Wilcoxon signed-rank test on the per-case mean differences; "
            "Holm: adjusted across the tasks of each method pair, protocol and selection. "
            "SAM-family models come first against a competitor.</p>" + _table_html(t, "{:.3g}"))
    st = an["strata"]
    if len(st):
        t = st[["method", "protocol", "selection", "stratum", "level", "n_rows",
                "n_cases"]].copy()
        t["IoU [95 % CI]"] = _ci_text(st, "iou")
        parts.append("<h2>IoU by modality (dataset where none is known), object-size tercile "
                     "and number of components (strata.csv)</h2>" + _table_html(t))
    dt = an["difficulty"]
    if len(dt):
        t = dt[["method", "protocol", "selection", "factor", "n_rows", "n_cases"]].copy()
        t["Spearman ρ [95 % CI]"] = _ci_text(dt, "rho")
        t["p"] = dt["p"]
        parts.append("<h2>What makes an object hard: rank correlation of IoU with each "
                     "factor (difficulty.csv)</h2><p>Spearman's ρ; interval: 95 % bootstrap "
                     "over cases; p treats rows as independent (see the interval for cases)."
                     "</p>" + _table_html(t, "{:.3g}"))
    rt = an["randomness"]
    if len(rt):
        t = rt[["dataset", "task", "method", "protocol", "selection", "repeats",
                "n_cases"]].copy()
        t["IoU (mean over repeats) [95 % CI]"] = _ci_text(rt, "iou")
        t["spread: SD over repeats [95 % CI]"] = _ci_text(rt, "std")
        t["largest SD"] = rt["std_max"]
        t["mean range"] = rt["range_mean"]
        parts.append("<h2>Randomness test: jittered prompts, repeated (randomness.csv)</h2>"
                     "<p>Per object the mean and the standard deviation of IoU over the "
                     "repeats, then averaged over the task's cases.</p>" + _table_html(t))
    return parts


def write_report(out_dir: str | os.PathLike, *, figures: bool = True) -> Path:
    """Write summary.csv, noc.csv, the analysis tables, figures/ and report.html for a run
    folder.

    Works on finished and interrupted runs alike. Reads the table one (dataset, task) at a
    time (:func:`~.results.iter_task_results`), so memory follows the largest task, not the
    run: every table but two is computed per task and the tasks' tables concatenated (the
    numbers of the whole-table functions, e.g. :func:`summarize`, on the whole table); the
    two pooled over tasks (strata, difficulty) keep :data:`POOLED_COLUMNS` of each task's
    final rows. Returns the path of ``report.html``.
    """
    import pandas as pd

    from app.core.benchmark import tables
    from app.core.benchmark.results import iter_task_results

    out = Path(out_dir)
    manifest = read_manifest(out)
    opts: dict[str, Any] = manifest.get("options", {})
    methods_info = manifest.get("methods")
    budgets = {p: int(opts.get("clicks") or (20 if p == "standard" else 5))
               for p in ("paper", "standard")}
    g = _Gathered(figures)
    for _key, t in iter_task_results(out, (*ANALYSIS_COLUMNS, "mask_file", "candidates_file"),
                                     on_batch=g.see, batch_columns=_Gathered.COLUMNS):
        _gather_task(g, t, budgets, methods_info)
        del t
    summary = g.table("summary")
    summary.to_csv(out / "summary.csv", index=False)
    nocs = g.table("noc")
    if len(nocs):
        nocs.to_csv(out / "noc.csv", index=False)
    pooled = _concat_compact(g.parts.pop("pooled", []))
    an = {}
    if g.n_rows:
        paired = g.table("paired")
        if len(paired):  # the whole-table order: method pair, then task (stable)
            lo = paired[["method_a", "method_b"]].min(axis=1)
            hi = paired[["method_a", "method_b"]].max(axis=1)
            paired = paired.assign(_lo=lo, _hi=hi).sort_values(
                ["_lo", "_hi", "dataset", "task"], kind="stable").drop(
                columns=["_lo", "_hi"]).reset_index(drop=True)
        an = {"paired": tables.holm_adjust(paired),
              "strata": tables.strata_table(pooled, final=True),
              "difficulty": tables.difficulty_table(pooled, final=True),
              "randomness": g.table("randomness"),
              "everything": g.table("everything")}
    del pooled
    for name, table in an.items():
        if len(table):
            table.to_csv(out / f"{name}.csv", index=False)
    made, left_out = (_figures(g, out, summary, an.get("difficulty"), methods_info,
                               file_rows(out, g.table("named", like=ANALYSIS_COLUMNS),
                                         n_rows=g.n_rows))
                      if figures and g.n_rows else ([], []))
    n_rows = g.n_rows
    del g

    skipped = pd.read_csv(out / "skipped.csv") if (out / "skipped.csv").is_file() else None
    parts: list[str] = []
    parts.append(f"<h1>SAMScope benchmark: {html.escape(str(opts.get('data', out)))}</h1>")
    parts.append(
        f"<p>Status: <b>{html.escape(str(manifest.get('status', '?')))}</b>; "
        f"{n_rows} result rows; started {html.escape(str(manifest.get('started', '?')))}, "
        f"finished {html.escape(str(manifest.get('finished', '?')))}.</p>"
    )
    if n_rows:
        modes = summary[(summary["click"] == 0)
                        & ~summary["protocol"].astype(str).str.startswith("everything")]
        if len(modes):
            modes = modes.assign(cell=_ci_text(modes, "iou"))
            pivot = modes.pivot_table(index=["dataset", "task", "method", "selection"],
                                      columns="protocol", values="cell",
                                      aggfunc="first").reset_index()
            parts.append("<h2>Mean IoU per prompt mode and strategy [95 % CI over cases]</h2>"
                         + _table_html(pivot))
        unsupported = summary[~summary["prompt_supported"]]
        if len(unsupported):
            notes = sorted({n for n in unsupported["note"] if n})
            parts.append("<h2>Prompts a method is not meant for</h2><ul>" + "".join(
                f"<li>{html.escape(n)}</li>" for n in notes) + "</ul><p>These rows are "
                "included in every table and figure (hatched bars), not hidden.</p>")
        if len(nocs):
            parts.append("<h2>Clicks to reach IoU 0.80 / 0.85 / 0.90 (NoC)</h2>"
                         + _table_html(nocs, "{:.2f}"))
        parts.extend(_analysis_html(an))
    for _stem, title, paths in made:
        png = next(p for p in paths if p.suffix == ".png")
        svg = next(p for p in paths if p.suffix == ".svg")
        parts.append(
            f"<h2>{html.escape(title)}</h2><p><img src='{png.relative_to(out).as_posix()}' "
            f"style='max-width:100%'></p><p><a href='{svg.relative_to(out).as_posix()}'>SVG"
            "</a></p>"
        )
    if left_out:
        parts.append("<h2>Figures left out</h2><ul>" + "".join(
            f"<li>{html.escape(t)}: {html.escape(w)}</li>" for t, w in left_out) + "</ul>")
    if len(summary):
        parts.append("<h2>Summary (summary.csv; intervals: 95 % bootstrap over cases)</h2>"
                     + _table_html(summary))
    stats = manifest.get("embedding_stats", {})
    if stats:
        rows = pd.DataFrame([{"method": k, **v} for k, v in stats.items()])
        parts.append("<h2>Embeddings computed and reused</h2>" + _table_html(rows, "{:.0f}"))
    parts.append("<h2>Skipped files</h2>" + _table_html(skipped))
    meth = manifest.get("methods", {})
    if meth:
        parts.append("<h2>Methods</h2><pre>" + html.escape(
            "\n".join(f"{k}: {v}" for k, v in meth.items())) + "</pre>")
    parts.append("<h2>Options and versions</h2><pre>" + html.escape(
        "\n".join(f"{k}: {v}" for k, v in {**opts, **manifest.get("versions", {})}.items()))
        + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table.t{border-collapse:collapse;font-size:12px}table.t td,table.t th"
             "{border:1px solid #ccc;padding:2px 6px;text-align:right}"
             "pre{background:#f4f4f4;padding:8px;font-size:11px;white-space:pre-wrap}")
    doc = ("<!doctype html><html><head><meta charset='utf-8'><title>SAMScope benchmark"
           f"</title><style>{style}</style></head><body>" + "\n".join(parts) + "</body></html>")
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path
