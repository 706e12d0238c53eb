"""Summaries and the HTML report of a run folder.

:func:`write_report` reads ``OUT/results.csv`` (finished or interrupted) and writes
``summary.csv`` (IoU/Dice/HD95/NSD statistics per dataset x task x method x protocol x click x
selection), ``noc.csv`` (NoC@80/85/90 and failures per iterative protocol), the figures of
:mod:`app.core.benchmark.figures` as PNG and SVG under ``figures/``, and ``report.html``.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from app.core.benchmark.figures import (
    fig_clicks,
    fig_delta,
    fig_examples,
    fig_modes,
    fig_size,
    save_figure,
)
from app.core.benchmark.results import load_results, read_manifest

__all__ = ["summarize", "noc_table", "write_report", "NOC_THRESHOLDS"]

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

    from app.core.prompts import noc

    d = df[df["click"] > 0]
    out = []
    keys = ["dataset", "task", "method", "protocol", "selection"]
    for key, g in d.groupby(keys, sort=True):
        budget = (max_clicks or {}).get(key[3], int(g["click"].max()))
        nocs = {t: [] for t in thresholds}
        for _, run in g.groupby(["case", "repeat"]):
            ious = run.sort_values("click")["iou"].to_numpy(float)
            for t in thresholds:
                nocs[t].append(noc(ious, t, budget))
        rec = dict(zip(keys, key))
        rec["runs"] = len(nocs[thresholds[0]])
        rec["max_clicks"] = budget
        for t in thresholds:
            arr = np.asarray(nocs[t])
            tag = int(round(t * 100))
            rec[f"noc{tag}"] = float(arr.mean())
            # a run fails at t when its IoU never reached t within max_clicks
            reached = [bool((r.sort_values("click")["iou"] >= t).any())
                       for _, r in g.groupby(["case", "repeat"])]
            rec[f"fail{tag}"] = int(len(reached) - sum(reached))
        out.append(rec)
    return pd.DataFrame(out)


def _table_html(df, float_fmt: str = "{:.3f}") -> str:
    if df is None or len(df) == 0:
        return "<p><em>none</em></p>"
    return df.to_html(index=False, na_rep="–", border=0, classes="t",
                      float_format=lambda v: float_fmt.format(v))


def _figures(df, out: Path) -> list[tuple[str, str, list[Path]]]:
    made: list[tuple[str, str, list[Path]]] = []

    def add(stem: str, title: str, fig) -> None:
        if fig is None:
            return
        made.append((stem, title, save_figure(fig, out / "figures" / stem)))

    methods = sorted(df["method"].unique())
    add("fig2_modes", "IoU per prompt mode and task (Fig. 2; diamonds: oracle selection)",
        fig_modes(df))
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            add(f"fig4_delta_{a}_vs_{b}", f"ΔIoU {a} − {b} per task (Fig. 4)",
                fig_delta(df, a, b))
    for proto in ("paper", "standard"):
        if (df["protocol"] == proto).any():
            add(f"fig5_clicks_{proto}", f"IoU against clicks, {proto} protocol (Fig. 5)",
                fig_clicks(df, proto))
    size_proto = next((p for p in ("mode5", "mode3", "mode1", "paper", "standard")
                       if (df["protocol"] == p).any()), None)
    if size_proto is not None:
        d = df if not size_proto.startswith(("paper", "standard")) else df.loc[
            df[df["protocol"] == size_proto].groupby(
                ["dataset", "task", "case", "method", "repeat", "selection"])["click"].idxmax()]
        add("fig8_size", f"Object size against IoU, {size_proto} (Fig. 8)",
            fig_size(d, size_proto))
    ex_proto = next((p for p in ("mode5", "mode3", "mode1", "paper", "standard")
                     if (df["protocol"] == p).any()), None)
    if ex_proto is not None:
        for m in methods:
            add(f"fig3_examples_{m}", f"Examples at the 25/50/75th IoU percentile, {m}, "
                f"{ex_proto} (Fig. 3)", fig_examples(df, m, ex_proto, run_dir=out))
    return made


def write_report(out_dir: str | os.PathLike, *, figures: bool = True) -> Path:
    """Write summary.csv, noc.csv, figures/ and report.html for a run folder.

    Works on finished and interrupted runs alike. Returns the path of ``report.html``.
    """
    import pandas as pd

    out = Path(out_dir)
    df = load_results(out)
    manifest = read_manifest(out)
    opts: dict[str, Any] = manifest.get("options", {})
    summary = summarize(df) if len(df) else pd.DataFrame()
    summary.to_csv(out / "summary.csv", index=False)
    budgets = {p: int(opts.get("clicks") or (20 if p == "standard" else 5))
               for p in ("paper", "standard")}
    nocs = (noc_table(df, max_clicks=budgets) if len(df) and (df["click"] > 0).any()
            else pd.DataFrame())
    if len(nocs):
        nocs.to_csv(out / "noc.csv", index=False)
    made = _figures(df, out) if figures and len(df) else []

    skipped = pd.read_csv(out / "skipped.csv") if (out / "skipped.csv").is_file() else None
    parts: list[str] = []
    parts.append(f"<h1>SAMScope benchmark: {html.escape(str(opts.get('data', out)))}</h1>")
    parts.append(
        f"<p>Status: <b>{html.escape(str(manifest.get('status', '?')))}</b>; "
        f"{len(df)} result rows; started {html.escape(str(manifest.get('started', '?')))}, "
        f"finished {html.escape(str(manifest.get('finished', '?')))}.</p>"
    )
    if len(df):
        modes = summary[summary["click"] == 0]
        if len(modes):
            pivot = modes.pivot_table(index=["dataset", "task", "method", "selection"],
                                      columns="protocol", values="iou_mean").reset_index()
            parts.append("<h2>Mean IoU per prompt mode</h2>" + _table_html(pivot))
        unsupported = summary[~summary["prompt_supported"]]
        if len(unsupported):
            notes = sorted({n for n in unsupported["note"] if n})
            parts.append("<h2>Prompts a method is not meant for</h2><ul>" + "".join(
                f"<li>{html.escape(n)}</li>" for n in notes) + "</ul><p>These rows are "
                "included in every table and figure (hatched bars), not hidden.</p>")
        if len(nocs):
            parts.append("<h2>Clicks to reach IoU 0.80 / 0.85 / 0.90 (NoC)</h2>"
                         + _table_html(nocs, "{:.2f}"))
    for _stem, title, paths in made:
        png = next(p for p in paths if p.suffix == ".png")
        svg = next(p for p in paths if p.suffix == ".svg")
        parts.append(
            f"<h2>{html.escape(title)}</h2><p><img src='{png.relative_to(out).as_posix()}' "
            f"style='max-width:100%'></p><p><a href='{svg.relative_to(out).as_posix()}'>SVG"
            "</a></p>"
        )
    if len(summary):
        parts.append("<h2>Summary (summary.csv)</h2>" + _table_html(summary))
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
