"""Paper-style figures, one function per figure, each from the results table to a Figure.

Every function takes the DataFrame of :func:`app.core.benchmark.results.load_results` and
returns a :class:`matplotlib.figure.Figure` (made with the object API: no pyplot state, safe in
threads and with the Agg backend), or ``None`` when the table has nothing to draw.

* :func:`fig_modes` -- Fig. 2: IoU per prompt mode per task, ``oracle`` as markers.
* :func:`fig_delta` -- Fig. 4: IoU of one method minus another's, per task, paired by case.
* :func:`fig_clicks` -- Fig. 5: IoU against the number of clicks with 95 % case-bootstrap bands.
* :func:`fig_size` -- Fig. 8: object size against IoU with a fitted trend (log-size regression).
* :func:`fig_examples` -- Fig. 3: examples at the 25th/50th/75th IoU percentile with prompts,
  ground-truth and prediction contours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from app.core.benchmark.stats import case_ids, paired_difference

__all__ = [
    "fig_modes",
    "fig_delta",
    "fig_clicks",
    "fig_size",
    "fig_examples",
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
    False, e.g. points for LiteMedSAM) are hatched and labelled in the legend.
    """
    d = _with_task(df[df["protocol"].astype(str).str.startswith("mode")])
    if d.empty:
        return None
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
                m, lo, hi = mean_ci(v["iou"], case_ids(v)) if len(v) else (np.nan,) * 3
                means.append(m)
                # the CI is clipped to [0, 1], where IoU lives
                err_lo.append(0.0 if np.isnan(lo) else m - max(lo, 0.0))
                err_hi.append(0.0 if np.isnan(hi) else min(hi, 1.0) - m)
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
                om = [orc[orc["task_label"] == t]["iou"].mean() for t in tasks]
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
    fig.suptitle("IoU per prompt mode (bars: selection first, 95 % case-bootstrap CI; ◆ oracle)", fontsize=10)
    return fig


def _paired(df, a: str, b: str, selection: str):
    import pandas as pd

    keys = [k for k in ("dataset", "task", "label", "case", "slice", "protocol", "click",
                        "repeat") if k in df]
    d = df[df["selection"] == selection]
    left = d[d["method"] == a][keys + ["iou"]].rename(columns={"iou": "iou_a"})
    right = d[d["method"] == b][keys + ["iou"]].rename(columns={"iou": "iou_b"})
    return pd.merge(left, right, on=keys)


def fig_delta(df, method_a: str, method_b: str, *, protocols: list[str] | None = None,
              selection: str = "first"):
    """Fig. 4: ΔIoU = IoU(``method_a``) − IoU(``method_b``) per task, paired by case.

    One panel per protocol (default: the five modes present, then the final click of each
    iterative protocol); bars are mean paired differences with 95 % case-bootstrap intervals
    (:func:`app.core.benchmark.stats.paired_difference`); positive means
    ``method_a`` is better.
    """
    d = df.copy()
    iterative = d["click"] > 0
    if iterative.any():  # compare iterative runs at their last common click
        last = d[iterative].groupby("protocol")["click"].transform("max")
        d = d[~iterative | (d["click"] == last.reindex(d.index).fillna(-1))]
    pairs = _with_task(_paired(d, method_a, method_b, selection))
    if pairs.empty:
        return None
    protocols = protocols or [p for p in [*_MODE_NAMES, "paper", "standard"]
                              if p in set(pairs["protocol"])]
    tasks = sorted(pairs["task_label"].unique())
    ncol = min(4, len(protocols))
    nrow = int(np.ceil(len(protocols) / ncol))
    fig = _figure(2.6 * ncol + 1.5, (0.45 * len(tasks) + 1.3) * nrow + 0.4)
    grid = fig.subplots(nrow, ncol, squeeze=False, sharey=True)
    axes = grid.ravel()
    for ax in axes[len(protocols):]:
        ax.set_visible(False)
    for ax, proto in zip(axes, protocols):
        p = pairs[pairs["protocol"] == proto]
        stats = []
        for t in tasks:
            pt = p[p["task_label"] == t]
            r = (paired_difference(pt["iou_a"], pt["iou_b"], case_ids(pt)) if len(pt)
                 else {"mean_diff": np.nan, "low": np.nan, "high": np.nan})
            stats.append((r["mean_diff"], r["low"], r["high"]))
        means = np.array([s[0] for s in stats])
        err = np.nan_to_num(np.array([[s[0] - s[1], s[2] - s[0]] for s in stats]).T)
        colors = ["#55A868" if m >= 0 else "#C44E52" for m in np.nan_to_num(means)]
        ax.barh(np.arange(len(tasks)), np.nan_to_num(means), xerr=np.nan_to_num(err),
                color=colors, capsize=2)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(_MODE_NAMES.get(proto, f"{proto} (last click)"), fontsize=9)
        ax.set_xlabel("ΔIoU")
        ax.grid(axis="x", alpha=0.3)
    for row in grid:
        row[0].set_yticks(np.arange(len(tasks)), tasks)
    fig.suptitle(f"IoU of {method_a} minus {method_b} (selection: {selection})", fontsize=10)
    return fig


def _curves(d, n_max: int):
    """Per run, IoU after clicks 1..n_max, carrying the last value forward after a stop.

    Returns the (runs, n_max) array and the case of each run (for the case bootstrap).
    """
    runs, cases = [], []
    keys = [k for k in ("dataset", "task", "label", "case", "slice", "repeat") if k in d]
    for _, g in d.groupby(keys):
        g = g.sort_values("click")
        v = np.full(n_max, np.nan)
        clicks = g["click"].to_numpy(int)
        v[clicks - 1] = g["iou"].to_numpy(float)
        # RITM convention: a run that reached the target keeps its IoU for later clicks
        for i in range(1, n_max):
            if np.isnan(v[i]):
                v[i] = v[i - 1]
        runs.append(v)
        cases.append(case_ids(g.iloc[:1])[0])
    return np.array(runs), np.array(cases, dtype=object)


def fig_clicks(df, protocol: str = "paper"):
    """Fig. 5: mean IoU against the number of clicks with 95 % confidence bands.

    One panel per task, one line per method x selection (``oracle`` dashed).
    """
    d = _with_task(df[(df["protocol"] == protocol) & (df["click"] > 0)])
    if d.empty:
        return None
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
            runs, cases = _curves(dt[(dt["method"] == m) & (dt["selection"] == s)], n_max)
            if runs.size == 0:
                continue
            stats = np.array([mean_ci(runs[:, i], cases) for i in range(n_max)])
            color = _COLORS[methods.index(m) % len(_COLORS)]
            ls = "--" if s == "oracle" else ":" if s == "best_score" else "-"
            ax.plot(x, stats[:, 0], ls, color=color, marker="o", ms=3, label=f"{m} ({s})")
            ax.fill_between(x, stats[:, 1], stats[:, 2], color=color, alpha=0.15, lw=0)
        ax.set_title(t, fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("clicks")
        ax.set_ylabel("IoU")
        ax.set_xticks(x if n_max <= 10 else x[:: max(1, n_max // 10)])
        ax.grid(alpha=0.3)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"IoU against clicks, {protocol} protocol (bands: 95 % case-bootstrap CI)", fontsize=10)
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
    fig.suptitle(f"{method}, {_MODE_NAMES.get(protocol, protocol)}, {selection} "
                 "(green: ground truth, red: prediction)", fontsize=10)
    return fig


def _zoom(ax, gt: np.ndarray, pred: np.ndarray | None) -> None:
    """Small objects: show the region around ground truth and prediction, not the whole image."""
    both = gt.copy()
    if pred is not None and pred.shape == gt.shape:
        both |= pred > 127
    if not both.any() or both.mean() > 0.02:
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
