"""Paper-style figures, one function per figure, each from the results table to a Figure.

Every function takes the DataFrame of :func:`app.core.benchmark.results.load_results` and
returns a :class:`matplotlib.figure.Figure` (made with the object API: no pyplot state, safe in
threads and with the Agg backend), or ``None`` when the table has nothing to draw. Figs. 2, 4
and 5 also draw from what they show -- the summary, :func:`delta_stats`,
:func:`click_curves` -- which a report reading one task at a time gathers task by task.

* :func:`fig_modes` -- Fig. 2: IoU per prompt mode per task, ``oracle`` as markers.
* :func:`fig_delta` -- Fig. 4: IoU of one method minus another's, per task, paired by case.
* :func:`fig_clicks` -- Fig. 5: IoU against the number of clicks with 95 % case-bootstrap bands.
* :func:`fig_size` -- Fig. 8: object size against IoU with a fitted trend (log-size regression).
* :func:`fig_examples` -- Fig. 3: examples at the 25th/50th/75th IoU percentile with prompts,
  ground-truth and prediction contours.
* :func:`fig_iterative` -- Fig. 6: one object with 1..9 clicks, positive and negative clicks.
* :func:`fig_ambiguity` -- Fig. 7: the 1st/2nd/3rd most confident candidates for one prompt.
* :func:`fig_everything` -- Fig. 9: everything mode at three grid densities.
* :func:`fig_difficulty` -- Spearman's rho of IoU with each difficulty factor, with CIs.

The example figures (3, 6, 7, 9) read the masks saved in the run folder and the original
images again; without them they return None (the report says why it left them out).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from app.core.benchmark.stats import case_ids, paired_difference

__all__ = [
    "click_curves",
    "delta_stats",
    "last_clicks",
    "fig_modes",
    "fig_delta",
    "fig_clicks",
    "fig_size",
    "fig_examples",
    "fig_difficulty",
    "fig_iterative",
    "fig_ambiguity",
    "fig_everything",
    "task_label",
    "mean_ci",
    "save_figure",
]

_MODE_NAMES = {
    "mode1": "1 point",
    "mode2": "points (≤3)",
    "mode3": "box (largest)",
    "mode4": "boxes (≤3)",
    "mode5": "box (whole)",
}
_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3",
           "#8C8C8C", "#CCB974", "#64B5CD"]


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _suptitle(fig, text: str, fontsize: float = 10) -> None:
    """The figure's title, wrapped to the figure's width (a long title was cut off) and
    aligned left."""
    import textwrap

    per_line = max(30, int(fig.get_figwidth() * 72 / (fontsize * 0.56)))
    lines = [w for line in text.split("\n") for w in textwrap.wrap(line, per_line) or [""]]
    # left-aligned: in the dock's scroll view a wide figure shows its left part first
    fig.suptitle("\n".join(lines), fontsize=fontsize, x=0.01, ha="left")


def task_label(dataset: str, task: str) -> str:
    """``task`` when it names its dataset already, else ``dataset/task``."""
    return str(task) if str(task) == str(dataset) else f"{dataset}/{task}"


def mean_ci(values: Any, cases: Any = None, level: float = 0.95,
            seed: int = 0) -> tuple[float, float, float]:
    """Mean and a 95 % case-bootstrap interval ``(mean, low, high)`` (NaN-safe).

    ``cases`` names the case of each value (rows of a case are resampled together, see
    :func:`app.core.benchmark.stats.bootstrap_ci`); None: every value is its own case.
    """
    from app.core.benchmark.stats import bootstrap_ci

    v = np.asarray(values, float).ravel()
    if cases is None:
        cases = np.arange(v.size)
    return bootstrap_ci(v, cases, level=level, seed=seed)


def _with_task(df):
    df = df.copy()
    df["task_label"] = [task_label(d, t) for d, t in zip(df["dataset"], df["task"])]
    return df


def fig_modes(df, methods: list[str] | None = None):
    """Fig. 2: mean IoU per mode per task (bars, selection ``first``), oracle as black markers.

    One panel per method. Bars of prompts the method is not meant for (``prompt_supported``
    False, e.g. points for LiteMedSAM) are hatched and labelled in the legend. ``df``: a
    results table, or its summary (:func:`app.core.benchmark.report.summarize`: what the
    figure draws, so a report that has it draws without the rows).
    """
    if "iou_mean" not in df:
        from app.core.benchmark.report import summarize

        df = summarize(df[df["protocol"].astype(str).str.startswith("mode")])
    d = df[df["protocol"].astype(str).str.startswith("mode") & (df["click"] == 0)]
    if d.empty:
        return None
    d = _with_task(d)
    methods = methods or sorted(d["method"].unique())
    modes = [m for m in _MODE_NAMES if m in set(d["protocol"])]
    tasks = sorted(d["task_label"].unique())
    fig = _figure(max(7.0, 1.3 * len(tasks) * len(modes) / 3 + 2), 2.6 * len(methods) + 0.9)
    axes = fig.subplots(len(methods), 1, squeeze=False)[:, 0]
    width = 0.8 / len(modes)
    x = np.arange(len(tasks))
    for ax, method in zip(axes, methods):
        dm = d[d["method"] == method]
        for j, mode in enumerate(modes):
            first = dm[(dm["protocol"] == mode) & (dm["selection"] == "first")]
            means, err_lo, err_hi, hatched = [], [], [], []
            for t in tasks:
                v = first[first["task_label"] == t]
                m, lo, hi = ((float(v["iou_mean"].iloc[0]), float(v["iou_ci_low"].iloc[0]),
                              float(v["iou_ci_high"].iloc[0])) if len(v) else (np.nan,) * 3)
                means.append(m)
                # the CI is clipped to [0, 1], where IoU lives
                err_lo.append(0.0 if np.isnan(lo) else max(0.0, m - max(lo, 0.0)))
                err_hi.append(0.0 if np.isnan(hi) else max(0.0, min(hi, 1.0) - m))
                hatched.append(bool(len(v)) and not bool(v["prompt_supported"].all()))
            pos = x - 0.4 + width * (j + 0.5)
            bars = ax.bar(pos, np.nan_to_num(means), width, yerr=[err_lo, err_hi], capsize=2,
                          color=_COLORS[j % len(_COLORS)], label=_MODE_NAMES[mode],
                          error_kw={"elinewidth": 0.8})
            for b, h, m in zip(bars, hatched, means):
                if h:
                    b.set_hatch("///")
                    b.set_alpha(0.6)
                    ax.text(b.get_x() + b.get_width() / 2, np.nan_to_num(m) + 0.02, "†",
                            ha="center", va="bottom", fontsize=9)
            orc = dm[(dm["protocol"] == mode) & (dm["selection"] == "oracle")]
            if not orc.empty:
                om = [orc.loc[orc["task_label"] == t, "iou_mean"].mean() for t in tasks]
                ax.scatter(pos, om, marker="D", s=18, color="black", zorder=3,
                           label="oracle" if j == 0 else None)
        ax.set_xticks(x, tasks, rotation=20 if len(tasks) > 4 else 0, ha="right"
                      if len(tasks) > 4 else "center")
        ax.set_ylim(0, 1)
        ax.set_ylabel("IoU")
        title = method
        if not dm["prompt_supported"].all():
            title += "  († hatched: a prompt type this model is not meant for)"
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # the oracle marker may only appear in a later panel
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)),
               fontsize=8, frameon=False)
    _suptitle(fig, "IoU per prompt mode (bars: selection first, 95 % case-bootstrap CI; ◆ oracle)", fontsize=10)
    return fig


def _paired(df, a: str, b: str, selection: str):
    import pandas as pd

    keys = [k for k in ("dataset", "task", "label", "case", "slice", "protocol", "click",
                        "repeat") if k in df]
    d = df[df["selection"] == selection]
    left = d[d["method"] == a][keys + ["iou"]].rename(columns={"iou": "iou_a"})
    right = d[d["method"] == b][keys + ["iou"]].rename(columns={"iou": "iou_b"})
    return pd.merge(left, right, on=keys)


def last_clicks(df) -> dict[str, int]:
    """The largest click of each iterative protocol in ``df`` (where Fig. 4 compares runs)."""
    it = df[df["click"] > 0]
    return {str(p): int(c) for p, c in it.groupby("protocol")["click"].max().items()}


def delta_stats(df, method_a: str, method_b: str, *, selection: str = "first",
                last: dict[str, int] | None = None):
    """What Fig. 4 draws: per protocol x task the mean paired difference of IoU (``method_a``
    minus ``method_b``) with its 95 % case-bootstrap interval
    (:func:`app.core.benchmark.stats.paired_difference`). Iterative protocols are compared at
    click ``last[protocol]`` (default :func:`last_clicks` of ``df``; a report that reads one
    task at a time passes the whole table's). Columns: ``protocol``, ``dataset``, ``task``,
    ``mean_diff``, ``low``, ``high``."""
    import pandas as pd

    d = df  # filtered below, never written to (no copy of the whole table)
    iterative = d["click"] > 0
    if iterative.any():  # compare iterative runs at their last common click
        last = last_clicks(d) if last is None else last
        want = d["protocol"].map(lambda p: last.get(str(p), -1)).astype(float)
        d = d[~iterative | (d["click"] == want)]
    pairs = _paired(d, method_a, method_b, selection)
    out = []
    for (proto, ds, task), g in pairs.groupby(["protocol", "dataset", "task"], sort=True):
        r = paired_difference(g["iou_a"], g["iou_b"], case_ids(g))
        out.append(dict(protocol=proto, dataset=ds, task=task, mean_diff=r["mean_diff"],
                        low=r["low"], high=r["high"]))
    return pd.DataFrame(out, columns=["protocol", "dataset", "task", "mean_diff", "low",
                                      "high"])


def fig_delta(df, method_a: str, method_b: str, *, protocols: list[str] | None = None,
              selection: str = "first"):
    """Fig. 4: ΔIoU = IoU(``method_a``) − IoU(``method_b``) per task, paired by case.

    One panel per protocol (default: the five modes present, then the final click of each
    iterative protocol); bars are mean paired differences with 95 % case-bootstrap intervals
    (:func:`delta_stats`); positive means ``method_a`` is better. ``df``: a results table, or
    its :func:`delta_stats` for these two methods.
    """
    stats = df if "mean_diff" in df else delta_stats(df, method_a, method_b,
                                                      selection=selection)
    if stats.empty:
        return None
    stats = _with_task(stats)
    protocols = protocols or [p for p in [*_MODE_NAMES, "paper", "standard"]
                              if p in set(stats["protocol"])]
    tasks = sorted(stats["task_label"].unique())
    ncol = min(4, len(protocols))
    nrow = int(np.ceil(len(protocols) / ncol))
    fig = _figure(2.6 * ncol + 1.5, (0.45 * len(tasks) + 1.3) * nrow + 0.4)
    grid = fig.subplots(nrow, ncol, squeeze=False, sharey=True)
    axes = grid.ravel()
    for ax in axes[len(protocols):]:
        ax.set_visible(False)
    for ax, proto in zip(axes, protocols):
        p = stats[stats["protocol"] == proto].set_index("task_label")
        rows = [p.loc[t] if t in p.index else None for t in tasks]
        means = np.array([np.nan if r is None else r["mean_diff"] for r in rows], float)
        lows = np.array([np.nan if r is None else r["low"] for r in rows], float)
        highs = np.array([np.nan if r is None else r["high"] for r in rows], float)
        err = np.clip(np.nan_to_num(np.array([means - lows, highs - means])), 0.0, None)
        colors = ["#55A868" if m >= 0 else "#C44E52" for m in np.nan_to_num(means)]
        ax.barh(np.arange(len(tasks)), np.nan_to_num(means), xerr=err,
                color=colors, capsize=2)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(_MODE_NAMES.get(proto, f"{proto} (last click)"), fontsize=9)
        ax.set_xlabel("ΔIoU")
        ax.grid(axis="x", alpha=0.3)
    for row in grid:
        row[0].set_yticks(np.arange(len(tasks)), tasks)
    _suptitle(fig, f"IoU of {method_a} minus {method_b} (selection: {selection})", fontsize=10)
    return fig


def _curves(d, n_max: int):
    """Per run, IoU after clicks 1..n_max, carrying the last value forward after a stop.

    Returns the (runs, n_max) array and the case of each run (for the case bootstrap).
    """
    keys = [k for k in ("dataset", "task", "label", "case", "slice", "repeat") if k in d]
    if d.empty:
        return np.array([]), np.array([], dtype=object)
    run = d.groupby(keys, sort=True).ngroup().to_numpy()
    ok = run >= 0  # a row with a missing key is in no run (as groupby drops it)
    n_runs = int(run.max()) + 1 if ok.any() else 0
    runs = np.full((n_runs, n_max), np.nan)
    runs[run[ok], d["click"].to_numpy(int)[ok] - 1] = d["iou"].to_numpy(float)[ok]
    # RITM convention: a run that reached the target keeps its IoU for later clicks
    for i in range(1, n_max):
        gap = np.isnan(runs[:, i])
        runs[gap, i] = runs[gap, i - 1]
    first = np.full(n_runs, -1)
    first[run[ok][::-1]] = np.flatnonzero(ok)[::-1]  # a row of each run (all share its case)
    cases = case_ids(d.iloc[first]) if n_runs else np.array([], dtype=object)
    return runs, np.asarray(cases, dtype=object)


def click_curves(df, protocol: str = "paper", n_max: int | None = None):
    """What Fig. 5 draws: per task x method x selection the mean IoU after clicks 1..``n_max``
    (default: the protocol's largest click in ``df``; a report that reads one task at a time
    passes the whole table's) with its 95 % case-bootstrap interval; a run that stopped early
    keeps its last IoU (RITM's convention). Columns: ``dataset``, ``task``, ``method``,
    ``selection``, ``click``, ``iou_mean``, ``iou_ci_low``, ``iou_ci_high``."""
    import pandas as pd

    cols = ["dataset", "task", "method", "selection", "click", "iou_mean", "iou_ci_low",
            "iou_ci_high"]
    d = df[(df["protocol"] == protocol) & (df["click"] > 0)]
    if d.empty:
        return pd.DataFrame(columns=cols)
    n_max = int(d["click"].max()) if n_max is None else int(n_max)
    out = []
    for (ds, task, m, s), g in d.groupby(["dataset", "task", "method", "selection"],
                                         sort=True):
        runs, cases = _curves(g, n_max)
        if runs.size == 0:
            continue
        for i in range(n_max):
            est, lo, hi = mean_ci(runs[:, i], cases)
            out.append(dict(dataset=ds, task=task, method=m, selection=s, click=i + 1,
                            iou_mean=est, iou_ci_low=lo, iou_ci_high=hi))
    return pd.DataFrame(out, columns=cols)


def fig_clicks(df, protocol: str = "paper"):
    """Fig. 5: mean IoU against the number of clicks with 95 % confidence bands.

    One panel per task, one line per method x selection (``oracle`` dashed). ``df``: a
    results table, or its :func:`click_curves` for ``protocol``.
    """
    curves = df if "iou_mean" in df else click_curves(df, protocol)
    if curves.empty:
        return None
    d = _with_task(curves)
    tasks = sorted(d["task_label"].unique())
    n_max = int(d["click"].max())
    ncol = min(3, len(tasks))
    nrow = int(np.ceil(len(tasks) / ncol))
    fig = _figure(3.6 * ncol, 2.8 * nrow + 0.3)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    combos = sorted({(m, s) for m, s in zip(d["method"], d["selection"])})
    methods = sorted({m for m, _ in combos})
    x = np.arange(1, n_max + 1)
    for ax, t in zip(axes, tasks):
        dt = d[d["task_label"] == t]
        for m, s in combos:
            c = dt[(dt["method"] == m) & (dt["selection"] == s)].sort_values("click")
            if c.empty:
                continue
            color = _COLORS[methods.index(m) % len(_COLORS)]
            ls = "--" if s == "oracle" else ":" if s == "best_score" else "-"
            ax.plot(c["click"], c["iou_mean"], ls, color=color, marker="o", ms=3,
                    label=f"{m} ({s})")
            ax.fill_between(c["click"], c["iou_ci_low"].astype(float),
                            c["iou_ci_high"].astype(float), color=color, alpha=0.15, lw=0)
        ax.set_title(t, fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("clicks")
        ax.set_ylabel("IoU")
        ax.set_xticks(x if n_max <= 10 else x[:: max(1, n_max // 10)])
        ax.grid(alpha=0.3)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    _suptitle(fig, f"IoU against clicks, {protocol} protocol (bands: 95 % case-bootstrap CI)", fontsize=10)
    return fig


def fig_size(df, protocol: str = "mode5", selection: str = "first"):
    """Fig. 8: object size (fraction of the image, log scale) against IoU, per method.

    The trend is a least-squares fit ``IoU ~ a + b log10(size)``; the legend gives its slope
    and Pearson r.
    """
    d = df[(df["protocol"] == protocol) & (df["selection"] == selection)]
    d = d[np.isfinite(d["size_fraction"]) & (d["size_fraction"] > 0)]
    if d.empty:
        return None
    fig = _figure(6.0, 4.2)
    ax = fig.subplots()
    for i, (m, g) in enumerate(sorted(d.groupby("method"), key=lambda kv: kv[0])):
        color = _COLORS[i % len(_COLORS)]
        xs = np.log10(g["size_fraction"].to_numpy(float))
        ys = g["iou"].to_numpy(float)
        ax.scatter(10 ** xs, ys, s=12, alpha=0.6, color=color)
        label = m
        if len(xs) >= 3 and np.ptp(xs) > 0:
            b, a = np.polyfit(xs, ys, 1)
            r = float(np.corrcoef(xs, ys)[0, 1]) if np.std(ys) > 0 else float("nan")
            grid = np.linspace(xs.min(), xs.max(), 50)
            ax.plot(10 ** grid, a + b * grid, color=color, lw=1.5)
            label += f" (slope {b:+.2f}/decade, r={r:.2f})"
        ax.plot([], [], color=color, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("object size (fraction of image pixels)")
    ax.set_ylabel("IoU")
    ax.set_title(f"object size against IoU ({_MODE_NAMES.get(protocol, protocol)}, "
                 f"{selection})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _load_display(row, cache: dict) -> tuple[np.ndarray, np.ndarray]:
    from app.core.benchmark.datasets import CaseRef, load_case

    key = (row["image_path"], row["label_path"])
    if key not in cache:
        image = Path(row["image_path"])
        label = Path(row["label_path"]) if row["label_path"] else None
        cache[key] = load_case(CaseRef(str(row["dataset"]), str(row["case"]), image, label))
    vol, labels = cache[key]
    z = int(row["slice"])
    return vol.slice(z).unit_range(), labels[z] == int(row["label"])


def fig_examples(df, method: str, protocol: str = "mode5", selection: str = "first",
                 run_dir: str | Path | None = None, percentiles=(25, 50, 75)):
    """Fig. 3: per task, the cases at the 25th/50th/75th IoU percentile.

    Shows the image, the ground-truth contour (green), the prediction contour (red), positive
    points (green stars), negative points (red crosses) and boxes (yellow). Needs the run's
    saved masks (``run_dir``) and the original images, which are read again.
    """
    d = df[(df["method"] == method) & (df["protocol"] == protocol)
           & (df["selection"] == selection) & (df["mask_file"].astype(str) != "")]
    if d.empty or run_dir is None:
        return None
    if protocol in ("paper", "standard"):
        d = d.loc[d.groupby(["dataset", "task", "case", "repeat"])["click"].idxmax()]
    d = _with_task(d)
    tasks = sorted(d["task_label"].unique())
    fig = _figure(3.0 * len(percentiles), 3.0 * len(tasks) + 0.3)
    axes = fig.subplots(len(tasks), len(percentiles), squeeze=False)
    cache: dict = {}
    import cv2

    for r, t in enumerate(tasks):
        dt = d[d["task_label"] == t].sort_values("iou").reset_index(drop=True)
        used: set[int] = set()
        for c, pct in enumerate(percentiles):
            ax = axes[r, c]
            ax.axis("off")
            if dt.empty:
                continue
            target = np.percentile(dt["iou"], pct)
            # the closest case to the percentile not shown yet (few cases: avoid repeats)
            dist = np.abs(dt["iou"].to_numpy() - target)
            dist[list(used)] = np.inf if len(used) < len(dt) else dist[list(used)]
            idx = int(np.argmin(dist))
            used.add(idx)
            row = dt.iloc[idx]
            try:
                img, gt = _load_display(row, cache)
            except Exception as exc:  # noqa: BLE001 - a missing source file leaves a note
                ax.text(0.5, 0.5, f"image unavailable:\n{exc}", ha="center", fontsize=6,
                        transform=ax.transAxes, wrap=True)
                continue
            pred = cv2.imread(str(Path(run_dir) / row["mask_file"]), cv2.IMREAD_GRAYSCALE)
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray", interpolation="nearest")
            ax.contour(gt, levels=[0.5], colors=["#00e000"], linewidths=1.0)
            if pred is not None and pred.any():
                ax.contour(pred > 127, levels=[0.5], colors=["#ff3030"], linewidths=1.0)
            for x, y, lab in json.loads(row["points"] or "[]"):
                ax.plot(x, y, marker="*" if lab else "x", ms=10, mew=1.5,
                        color="#00ff00" if lab else "#ff0000", mec="black" if lab else None)
            for x0, y0, x1, y1 in json.loads(row["boxes"] or "[]"):
                ax.add_patch(_rect(x0, y0, x1, y1))
            _zoom(ax, gt, pred)
            ax.set_title(f"{t} p{pct}: {row['case']}\nIoU {row['iou']:.3f}", fontsize=8)
    _suptitle(fig, f"{method}, {_MODE_NAMES.get(protocol, protocol)}, {selection} "
                 "(green: ground truth, red: prediction)", fontsize=10)
    return fig


def _zoom(ax, gt: np.ndarray, pred: np.ndarray | None, *, always: bool = False) -> None:
    """Small objects: show the region around ground truth and prediction, not the whole image.

    ``always``: zoom to the objects whatever their size (with a margin), unless they fill most
    of the image.
    """
    both = gt.copy()
    if pred is not None and pred.shape == gt.shape:
        both |= pred > 127
    if not both.any() or both.mean() > (0.5 if always else 0.02):
        return
    rows, cols = np.nonzero(both)
    h, w = gt.shape
    half = max(np.ptp(rows), np.ptp(cols), 24) * 1.5
    cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    ax.set_xlim(max(cx - half, -0.5), min(cx + half, w - 0.5))
    ax.set_ylim(min(cy + half, h - 0.5), max(cy - half, -0.5))


def _rect(x0, y0, x1, y1):
    from matplotlib.patches import Rectangle

    # inclusive pixel corners: the box covers pixel edges from x0 - 0.5 to x1 + 0.5
    return Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                     edgecolor="yellow", lw=1.2)


def save_figure(fig, path_stem: str | Path) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``<stem>.svg`` (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "svg"):
        p = stem.with_suffix(f".{ext}")
        fig.savefig(p, dpi=110 if ext == "png" else None)
        out.append(p)
    return out


# --- issue 16: difficulty, Fig. 6 (iterative examples), Fig. 7 (ambiguity), Fig. 9 (everything)

_FACTOR_NAMES = {
    "size_fraction": "size (fraction of image)",
    "boundary_complexity": "boundary complexity (P²/4πA)",
    "curvature": "mean |curvature| (1/px)",
    "contrast": "contrast (object vs ring)",
    "n_components": "components",
}


def fig_difficulty(table, *, selection: str | None = None, max_panels: int = 6):
    """What makes an object hard: Spearman's rho of IoU with each difficulty factor.

    ``table`` is :func:`app.core.benchmark.tables.difficulty_table`. One panel per protocol
    (at most ``max_panels``), one row per factor, one marker per method with its 95 %
    case-bootstrap interval. Selection: ``first`` where present (``match_dice`` for everything
    mode), else the first one of the table.
    """
    if table is None or len(table) == 0:
        return None
    t = table[np.isfinite(table["rho"].to_numpy(float))]
    if t.empty:
        return None
    keep = []
    for _proto, g in t.groupby("protocol", sort=False):
        sels = list(dict.fromkeys(g["selection"]))
        want = selection if selection in sels else next(
            (s for s in ("first", "match_dice") if s in sels), sels[0])
        keep.append(g[g["selection"] == want])
    import pandas as pd

    t = pd.concat(keep)
    protocols = list(dict.fromkeys(t["protocol"]))[:max_panels]
    factors = [f for f in _FACTOR_NAMES if f in set(t["factor"])]
    methods = sorted(t["method"].unique())
    ncol = min(3, len(protocols))
    nrow = int(np.ceil(len(protocols) / ncol))
    fig = _figure(3.4 * ncol + 1.6, (0.42 * len(factors) + 1.2) * nrow + 0.9)
    grid = fig.subplots(nrow, ncol, squeeze=False, sharex=True)
    axes = grid.ravel()
    for ax in axes[len(protocols):]:
        ax.set_visible(False)
    step = 0.7 / max(len(methods), 1)
    for ax, proto in zip(axes, protocols):
        p = t[t["protocol"] == proto]
        for j, m in enumerate(methods):
            pm = p[p["method"] == m].set_index("factor")
            ys, xs, lo, hi = [], [], [], []
            for i, f in enumerate(factors):
                if f not in pm.index:
                    continue
                r = pm.loc[f]
                ys.append(i - 0.35 + step * (j + 0.5))
                xs.append(float(r["rho"]))
                # a percentile interval need not contain the estimate (few cases, ties)
                lo.append(max(0.0, float(r["rho"]) - float(r["rho_ci_low"]))
                          if np.isfinite(r["rho_ci_low"]) else 0.0)
                hi.append(max(0.0, float(r["rho_ci_high"]) - float(r["rho"]))
                          if np.isfinite(r["rho_ci_high"]) else 0.0)
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", ms=4, capsize=2, lw=1,
                        color=_COLORS[j % len(_COLORS)], label=m)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlim(-1, 1)
        # end ticks of neighbouring panels would collide
        ax.set_xticks([-0.5, 0, 0.5])
        ax.set_xticks([-1, 1], minor=True)
        ax.set_ylim(len(factors) - 0.5, -0.5)
        sel = p["selection"].iloc[0]
        ax.set_title(f"{_MODE_NAMES.get(proto, proto)} ({sel})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_yticks(np.arange(len(factors)), [_FACTOR_NAMES[f] for f in factors]
                      if ax in grid[:, 0] else [""] * len(factors), fontsize=8)
    for ax in grid[-1]:
        ax.set_xlabel("Spearman ρ with IoU")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(5, len(labels)),
               fontsize=8, frameon=False)
    _suptitle(fig, "Rank correlation of IoU with difficulty factors (95 % case-bootstrap CI; "
                 "ρ > 0: larger factor, higher IoU)", fontsize=10)
    return fig


def _aspect(row) -> float:
    """Height / width of the row's image (1 when unknown), bounded to keep panels readable."""
    try:
        a = float(row["height"]) / float(row["width"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 1.0
    return float(np.clip(a, 0.5, 1.5)) if np.isfinite(a) else 1.0


def _on_disk(run_dir: str | Path, rels) -> np.ndarray:
    """Whether each relative path names a file of the run folder (bool array)."""
    root = Path(run_dir)
    seen: dict[str, bool] = {}
    out = []
    for rel in rels:
        rel = rel if isinstance(rel, str) else ""
        if rel not in seen:
            seen[rel] = bool(rel) and (root / rel).is_file()
        out.append(seen[rel])
    return np.asarray(out, dtype=bool)


def _read_png(run_dir: str | Path, rel: str, *, labels: bool = False) -> np.ndarray | None:
    """A saved mask (bool) or label map (int, ``labels``) of the run folder; None if absent."""
    import cv2

    if not isinstance(rel, str) or not rel:
        return None
    a = cv2.imread(str(Path(run_dir) / rel), cv2.IMREAD_UNCHANGED)
    if a is None:
        return None
    if a.ndim == 3:
        a = a[..., 0]
    return a.astype(np.int64) if labels else a > (127 if a.dtype == np.uint8 else 0)


def _show(ax, img: np.ndarray) -> None:
    ax.imshow(img, cmap=None if img.ndim == 3 else "gray", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _points(ax, points_json: str, *, last_large: bool = False) -> None:
    pts = json.loads(points_json) if isinstance(points_json, str) and points_json else []
    for i, (x, y, lab) in enumerate(pts):
        big = last_large and i == len(pts) - 1
        ax.plot(x, y, marker="*" if lab else "X", ms=13 if big else 8, mew=0.8,
                color="#00ff00" if lab else "#ff2020", mec="white" if big else "black",
                ls="none")


def _note_figure(text: str):
    fig = _figure(6.0, 1.2)
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True)
    return fig


def fig_iterative(df, run_dir: str | Path | None, *, protocol: str = "paper",
                  selection: str = "first", max_clicks: int = 9, max_methods: int = 3):
    """Fig. 6: one object segmented with 1..``max_clicks`` clicks, one row per method.

    The object is the same for every row: among the runs whose masks are saved for every
    click, one with at least one negative click when there is one, at the median final IoU.
    Each panel shows the prediction after that click (red contour), the ground truth (green
    contour) and the clicks so far (green stars: positive, red crosses: negative; the newest
    click larger). Returns None without saved masks.
    """
    if run_dir is None or df.empty or "mask_file" not in df:
        return None
    d = df[(df["protocol"] == protocol) & (df["selection"] == selection) & (df["click"] > 0)
           & (df["mask_file"].fillna("").astype(str) != "")]
    d = d[_on_disk(run_dir, d["mask_file"])]
    if d.empty:
        return None
    obj = ["dataset", "task", "case", "slice", "label", "repeat"]
    n = min(max_clicks, int(d["click"].max()))
    methods = sorted(d["method"].unique())[:max_methods]
    complete = None
    finals = []
    for m in methods:
        dm = d[(d["method"] == m) & (d["click"] <= n)]
        counts = dm.groupby(obj)["click"].nunique()
        full = set(counts.index[counts == n])
        complete = full if complete is None else complete & full
    if not complete:
        return None
    last = d[d["click"] == n].set_index(obj)
    for key in sorted(complete):
        rows = last.loc[[key]]
        neg = any(lab == 0 for pts in rows["points"] for *_, lab in json.loads(pts or "[]"))
        finals.append((key, float(rows["iou"].mean()), neg))
    pool = [f for f in finals if f[2]] or finals
    pool.sort(key=lambda f: f[1])
    key = pool[len(pool) // 2][0]
    run = d.set_index(obj).loc[[key]].reset_index()
    cache: dict = {}
    try:
        img, gt = _load_display(run.iloc[0], cache)
    except Exception as exc:  # noqa: BLE001 - the note names the missing source
        return _note_figure(f"Fig. 6: image unavailable: {exc}")
    aspect = _aspect(run.iloc[0])
    fig = _figure(1.75 * n + 0.6, (1.75 * aspect + 0.35) * len(methods) + 0.5)
    axes = fig.subplots(len(methods), n, squeeze=False)
    union = gt.copy()
    preds = {}
    for m in methods:
        for k in range(1, n + 1):
            r = run[(run["method"] == m) & (run["click"] == k)].iloc[0]
            pred = _read_png(run_dir, r["mask_file"])
            preds[m, k] = (r, pred)
            if pred is not None and pred.shape == gt.shape:
                union |= pred
    for i, m in enumerate(methods):
        for k in range(1, n + 1):
            ax = axes[i, k - 1]
            r, pred = preds[m, k]
            _show(ax, img)
            ax.contour(gt, levels=[0.5], colors=["#00e000"], linewidths=0.9)
            if pred is not None and pred.any():
                ax.contour(pred, levels=[0.5], colors=["#ff3030"], linewidths=0.9)
            _points(ax, r["points"], last_large=True)
            _zoom(ax, union, None, always=True)
            ax.set_title(f"{k} click{'s' if k > 1 else ''}: IoU {r['iou']:.2f}", fontsize=7)
        supported = bool(run.loc[run["method"] == m, "prompt_supported"].astype(str).str.lower()
                         .isin(("true", "1", "1.0")).all()) if "prompt_supported" in run else True
        axes[i, 0].set_ylabel(m if supported else f"{m}\n(not meant for clicks)", fontsize=8)
    ds, task, case = key[0], key[1], key[2]
    _suptitle(fig, f"Fig. 6: {task_label(ds, task)} {case}, {protocol} protocol, {selection} "
                 "(green: ground truth, red: prediction; ★ positive, ✖ negative click)",
                 fontsize=9)
    return fig


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


_AMBIGUITY_PROTOCOLS = ("mode1", "cosmos-centroid", "cosmos-1pos", "mode2")


def fig_ambiguity(df, run_dir: str | Path | None, method: str, *, protocol: str | None = None,
                  max_tasks: int = 4):
    """Fig. 7: the 1st, 2nd and 3rd most confident candidates for one prompt, per task.

    Uses the candidates the run saved (``candidates_file``, ``candidate_scores``) for a
    single-point prompt where there is one (mode 1, COSMOS centroid), else the first prompt
    protocol with candidates. Per task, the prompt whose candidates' predicted IoUs spread most
    is shown. Each panel: the candidate (red fill), the ground truth (green contour), the
    prompt, the predicted IoU and the IoU against the ground truth. Returns None without
    saved candidates.
    """
    if run_dir is None or df.empty or "candidates_file" not in df:
        return None
    d = df[(df["method"] == method) & (df["candidates_file"].fillna("").astype(str) != "")]
    d = d[_on_disk(run_dir, [(json.loads(f) or [""])[0] for f in d["candidates_file"]])]
    if d.empty:
        return None
    protos = list(dict.fromkeys(d["protocol"]))
    if protocol is None:
        protocol = next((p for p in _AMBIGUITY_PROTOCOLS if p in protos), protos[0])
    d = _with_task(d[d["protocol"] == protocol]).drop_duplicates(
        ["dataset", "task", "case", "slice", "label", "repeat"])
    if d.empty:
        return None
    tasks = sorted(d["task_label"].unique())[:max_tasks]
    fig = _figure(8.4, (2.7 * _aspect(d.iloc[0]) + 0.4) * len(tasks) + 0.7)
    axes = fig.subplots(len(tasks), 3, squeeze=False)
    cache: dict = {}
    near_copies = []
    for r_i, t in enumerate(tasks):
        dt = d[d["task_label"] == t].copy()

        def spread(s):
            v = [x for x in json.loads(s or "[]") if x is not None]
            return (max(v) - min(v)) if len(v) > 1 else -1.0

        dt["_spread"] = [spread(s) for s in dt["candidate_scores"]]
        row = dt.sort_values(["_spread", "case"], ascending=[False, True]).iloc[0]
        files = json.loads(row["candidates_file"])
        scores = json.loads(row["candidate_scores"] or "[]")
        scores = (scores + [None] * len(files))[:len(files)]
        order = sorted(range(len(files)), key=lambda k: -(scores[k] if scores[k] is not None
                                                          else -np.inf))
        for ax in axes[r_i]:
            ax.axis("off")
        try:
            img, gt = _load_display(row, cache)
        except Exception as exc:  # noqa: BLE001 - the panel names the missing source
            axes[r_i, 0].text(0, 0.5, f"image unavailable: {exc}", fontsize=7, wrap=True)
            continue
        masks = [_read_png(run_dir, files[k]) for k in order[:3]]
        ok = [m for m in masks if m is not None and m.shape == gt.shape]
        if len(ok) > 1:
            near_copies.append(min(_iou(ok[0], m) for m in ok[1:]))
        union = gt.copy()
        for m in ok:
            union |= m
        for c, (k, mask) in enumerate(zip(order[:3], masks)):
            ax = axes[r_i, c]
            ax.axis("on")
            _show(ax, img)
            if mask is not None and mask.shape == gt.shape:
                overlay = np.zeros((*mask.shape, 4))
                overlay[mask] = (1.0, 0.2, 0.2, 0.45)
                ax.imshow(overlay, interpolation="nearest")
                ax.contour(mask, levels=[0.5], colors=["#ff3030"], linewidths=0.8)
                true = f"IoU {_iou(mask, gt):.2f}"
            else:
                true = "mask missing"
            ax.contour(gt, levels=[0.5], colors=["#00e000"], linewidths=0.9)
            _points(ax, row["points"])
            for x0, y0, x1, y1 in json.loads(row["boxes"] or "[]"):
                ax.add_patch(_rect(x0, y0, x1, y1))
            _zoom(ax, union, None, always=True)
            pred = "–" if scores[k] is None else f"{scores[k]:.2f}"
            ax.set_title(f"{('1st', '2nd', '3rd')[c]}: predicted {pred}, {true}", fontsize=7)
        axes[r_i, 0].set_ylabel(f"{t}\n{row['case']}", fontsize=7)
    note = ""
    if near_copies:
        least = min(near_copies)
        note = (f"\nleast overlap of the 2nd/3rd with the 1st candidate: IoU {least:.2f}"
                + (" (near-copies: these outputs offer no real choice)" if least > 0.9 else ""))
    _suptitle(fig, f"Fig. 7: ambiguity, {method}, {_MODE_NAMES.get(protocol, protocol)} "
                 f"(red: candidate, green: ground truth){note}", fontsize=9)
    return fig


def _label_overlay(labels: np.ndarray) -> np.ndarray:
    """RGBA overlay of a label map, each label its own colour (label 0 transparent)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    rgba = np.zeros((*labels.shape, 4))
    for v in np.unique(labels):
        if v == 0:
            continue
        rgba[labels == v] = (*cmap((int(v) * 7) % 20)[:3], 0.5)
    return rgba


def fig_everything(df, run_dir: str | Path | None, method: str, *, grids=None,
                   max_tasks: int = 4):
    """Fig. 9: everything mode at (up to) three grid densities, one image per task.

    Each panel shows the kept masks (one colour each) with the ground truth (white contour),
    the number of masks and the mean match Dice (COSMOS's best Dice per object). The image is
    one whose match Dice at the middle grid is the median of its task. Returns None without
    everything-mode rows with saved label maps.
    """
    if run_dir is None or df.empty:
        return None
    proto = df["protocol"].astype(str)
    d = df[(df["method"] == method) & proto.str.fullmatch(r"everything\d+")
           & (df["mask_file"].fillna("").astype(str) != "")]
    d = d[_on_disk(run_dir, d["mask_file"])]
    if d.empty:
        return None
    d = _with_task(d)
    d["grid"] = d["protocol"].astype(str).str.slice(len("everything")).astype(int)
    have = sorted(d["grid"].unique())
    if grids is None:
        grids = have if len(have) <= 3 else [have[0], have[len(have) // 2], have[-1]]
    grids = [g for g in grids if g in have]
    sel = "match_dice" if (d["selection"] == "match_dice").any() else d["selection"].iloc[0]
    d = d[d["selection"] == sel]
    tasks = sorted(d["task_label"].unique())[:max_tasks]
    img_key = ["dataset", "case", "slice"]
    fig = _figure(max(2.9 * len(grids) + 0.4, 5.0),
                  (2.8 * _aspect(d.iloc[0]) + 0.4) * len(tasks) + 0.8)
    axes = fig.subplots(len(tasks), len(grids), squeeze=False)
    cache: dict = {}
    mid = grids[len(grids) // 2]
    for r_i, t in enumerate(tasks):
        dt = d[d["task_label"] == t]
        per = dt[dt["grid"] == mid].groupby(img_key)["dice"].mean().sort_values()
        common = set(per.index)
        for g in grids:
            common &= set(dt[dt["grid"] == g].groupby(img_key).size().index)
        per = per[[k in common for k in per.index]]
        for ax in axes[r_i]:
            ax.axis("off")
        if per.empty:
            continue
        key = per.index[len(per) // 2]
        rows = dt.set_index(img_key).loc[[key]].reset_index()
        for c, g in enumerate(grids):
            ax = axes[r_i, c]
            rg = rows[rows["grid"] == g]
            r = rg.iloc[0]
            try:
                img, _ = _load_display(r, cache)
                gt_all = _gt_labels(r, cache)
            except Exception as exc:  # noqa: BLE001 - the panel names the missing source
                ax.text(0, 0.5, f"image unavailable: {exc}", fontsize=7, wrap=True)
                continue
            ax.axis("on")
            _show(ax, img)
            lab = _read_png(run_dir, r["mask_file"], labels=True)
            if lab is not None and lab.shape == gt_all.shape:
                ax.imshow(_label_overlay(lab), interpolation="nearest")
            for v in np.unique(gt_all[gt_all > 0]):
                ax.contour(gt_all == v, levels=[0.5], colors=["white"], linewidths=0.9)
            n_pred = r.get("n_pred", np.nan)
            n_txt = (f"{int(n_pred)} mask{'' if int(n_pred) == 1 else 's'}"
                     if np.isfinite(float(n_pred)) else "masks ?")
            ax.set_title(f"{g}×{g} points: {n_txt}, match Dice {rg['dice'].mean():.2f}",
                         fontsize=7)
        axes[r_i, 0].set_ylabel(f"{t}\n{key[1]}", fontsize=7)
    _suptitle(fig, f"Fig. 9: everything mode, {method} (colours: kept masks; white: ground "
                 "truth)\nwhere masks overlap the more confident one is drawn; match Dice may "
                 "come from a mask hidden under it", fontsize=9)
    return fig


def _gt_labels(row, cache: dict) -> np.ndarray:
    """The whole ground-truth label map of the row's slice (all objects, for Fig. 9)."""
    _load_display(row, cache)
    _, labels = cache[(row["image_path"], row["label_path"])]
    return np.asarray(labels[int(row["slice"])])
