"""The report's analysis tables, each a function from the results table to a DataFrame.

Every mean carries a 95 % case-bootstrap interval (:mod:`app.core.benchmark.stats`: all rows of
a case -- the slices of one volume -- are resampled together); every method pair is compared on
the same rows. Functions return an empty DataFrame when the table has nothing to show.

* :func:`paired_table` -- every pair of methods on the same rows: mean ΔIoU with a bootstrap
  interval, Wilcoxon p and Holm's adjustment across tasks.
* :func:`strata_table` -- mean IoU by modality (or dataset), object-size tercile and number of
  components.
* :func:`difficulty_table` -- Spearman's rho of IoU with each difficulty factor, per method and
  protocol, with case-bootstrap intervals.
* :func:`randomness_table` -- the randomness test (jittered prompts, R repeats): per case the
  mean and spread over repeats, aggregated per task.
* :func:`everything_table` -- everything mode per task and grid: match Dice, match IoU,
  Hungarian precision / recall / F1, objects found.
* :func:`final_rows` -- the rows a one-number-per-prompt table uses (click 0, or the last click
  of each iterative run).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from app.core.benchmark.stats import (
    LEVEL,
    N_BOOT,
    bootstrap_ci,
    case_ids,
    holm,
    paired_difference,
    spearman_ci,
)

__all__ = [
    "FACTORS",
    "holm_adjust",
    "final_rows",
    "is_sam_family",
    "paired_table",
    "strata_table",
    "difficulty_table",
    "randomness_table",
    "everything_table",
    "size_terciles",
]

#: difficulty factors stored on every row (see :mod:`app.core.benchmark.results`)
FACTORS = ("size_fraction", "boundary_complexity", "curvature", "contrast", "n_components")
#: columns that identify "the same row" for two methods
PAIR_KEY = ["dataset", "task", "label", "case", "slice", "protocol", "selection", "click",
            "repeat"]
_ITERATIVE = ("paper", "standard")


def is_sam_family(method: str, manifest_methods: Mapping | None = None) -> bool:
    """Whether ``method`` is a SAM-family model (else a competitor: classical or plug-in).

    The run manifest's method description decides when given (its ``class`` is the SAM-family
    adapter, or it names a registry ``model``); otherwise any name that is not a classical method.
    """
    from app.core.methods import CLASSICAL_METHODS

    info = (manifest_methods or {}).get(method)
    if isinstance(info, Mapping):
        return "SamFamily" in str(info.get("class", "")) or "model" in info
    return method not in CLASSICAL_METHODS


def final_rows(df):
    """Rows with ``click == 0`` (modes, COSMOS strategies, everything mode) and, of each
    iterative run, the row of its last click (a standard run that stopped early keeps its last
    IoU)."""
    import pandas as pd

    if df.empty:
        return df
    once = df[df["click"] == 0]
    it = df[df["click"] > 0]
    if it.empty:
        return once
    keys = _present(df, ["dataset", "task", "label", "case", "slice", "method", "protocol",
                         "repeat", "selection"])
    last = it.loc[it.groupby(keys, sort=False, observed=True)["click"].idxmax()]
    return pd.concat([once, last], ignore_index=True)


def _present(df, keys) -> list[str]:
    """The key columns the table has (hand-made tables may lack ``label`` or ``slice``)."""
    return [k for k in keys if k in df.columns]


def _protocol_label(protocol: str) -> str:
    if protocol in _ITERATIVE:
        return f"{protocol} (last click)"
    return protocol


def _ci_fields(values, cases, prefix: str, n_boot: int, seed: int) -> dict:
    est, lo, hi = bootstrap_ci(values, cases, n_boot=n_boot, seed=seed)
    return {f"{prefix}_mean": est, f"{prefix}_ci_low": lo, f"{prefix}_ci_high": hi}


def paired_table(df, *, metric: str = "iou", manifest_methods: Mapping | None = None,
                 n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0,
                 adjust: bool = True):
    """Every pair of methods compared on the same rows, per task x protocol x selection.

    Rows of the two methods are paired on dataset, task, label, case, slice, protocol,
    selection, click and repeat; iterative protocols at each run's last click. A SAM-family
    model is put first when paired with a competitor (``kind``: ``SAM vs competitor``,
    ``SAM vs SAM``, ``competitor vs competitor``).

    Columns: ``method_a``, ``method_b``, ``kind``, ``dataset``, ``task``, ``protocol``,
    ``selection``, ``n_cases``, ``n_rows``, ``mean_a``, ``mean_b``, ``diff`` (mean of a - b),
    ``diff_ci_low``, ``diff_ci_high`` (case bootstrap), ``p_wilcoxon`` (per-case mean
    differences), ``p_holm`` (Holm over the tasks of one method pair x protocol x selection),
    ``significant`` (``p_holm < 1 - level``). ``adjust=False`` leaves those two out (a report
    that reads one task at a time adjusts the tables of all tasks with :func:`holm_adjust`).
    """
    import pandas as pd

    d = final_rows(df)
    if d.empty:
        return pd.DataFrame()
    methods = sorted(d["method"].unique())
    fam = {m: is_sam_family(m, manifest_methods) for m in methods}
    out = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            ma, mb = (b, a) if (fam[b] and not fam[a]) else (a, b)
            kind = ("SAM vs SAM" if fam[ma] and fam[mb] else
                    "SAM vs competitor" if fam[ma] else "competitor vs competitor")
            key = _present(d, PAIR_KEY)
            left = d[d["method"] == ma][key + [metric]]
            right = d[d["method"] == mb][key + [metric]]
            both = pd.merge(left, right, on=key, suffixes=("_a", "_b"))
            if both.empty:
                continue
            for (ds, task, proto, sel), g in both.groupby(
                    ["dataset", "task", "protocol", "selection"], sort=True):
                r = paired_difference(g[f"{metric}_a"], g[f"{metric}_b"], case_ids(g),
                                      n_boot=n_boot, level=level, seed=seed)
                if r["n_rows"] == 0:  # e.g. a model skipped for everything mode: no pair
                    continue
                out.append(dict(
                    method_a=ma, method_b=mb, kind=kind, dataset=ds, task=task,
                    protocol=_protocol_label(proto), selection=sel,
                    n_cases=r["n_cases"], n_rows=r["n_rows"],
                    mean_a=float(np.nanmean(g[f"{metric}_a"])),
                    mean_b=float(np.nanmean(g[f"{metric}_b"])),
                    diff=r["mean_diff"], diff_ci_low=r["low"], diff_ci_high=r["high"],
                    p_wilcoxon=r["p_wilcoxon"]))
    t = pd.DataFrame(out)
    return holm_adjust(t, level) if adjust else t


def holm_adjust(t, level: float = LEVEL):
    """Add ``p_holm`` (Holm over the tasks of one method pair x protocol x selection) and
    ``significant`` to rows of :func:`paired_table` (in place; returns ``t``)."""
    if t.empty:
        return t
    t["p_holm"] = np.nan
    for _, g in t.groupby(["method_a", "method_b", "protocol", "selection"], sort=False):
        t.loc[g.index, "p_holm"] = holm(g["p_wilcoxon"].to_numpy(float))
    t["significant"] = t["p_holm"] < (1.0 - level)
    return t


def size_terciles(df):
    """Object-size tercile of each row (``small``/``medium``/``large``, object dtype).

    Tercile edges are taken over the distinct objects of the table (dataset, task, case,
    slice, label), so every method and protocol is cut at the same sizes.
    """
    sizes = df["size_fraction"].to_numpy(float)
    objects = df.drop_duplicates(_present(df, ["dataset", "task", "case", "slice", "label"]))
    ref = objects["size_fraction"].to_numpy(float)
    ref = ref[np.isfinite(ref)]
    out = np.full(len(df), None, dtype=object)
    if ref.size == 0:
        return out
    q1, q2 = np.quantile(ref, [1 / 3, 2 / 3])
    ok = np.isfinite(sizes)
    out[ok & (sizes <= q1)] = f"small (≤{q1:.2g})"
    out[ok & (sizes > q1) & (sizes <= q2)] = f"medium (≤{q2:.2g})"
    out[ok & (sizes > q2)] = f"large (>{q2:.2g})"
    return out


def strata_table(df, *, metric: str = "iou", n_boot: int = N_BOOT, seed: int = 0,
                 final: bool = False):
    """Mean ``metric`` per stratum, per method x protocol x selection (last click of runs).

    Strata: ``modality`` (the rows' ``modality`` column where the dataset reader gave one,
    else the dataset), ``size`` (object-size tercile, :func:`size_terciles`) and
    ``components`` (number of connected components: 1, 2, 3+).

    Columns: ``method``, ``protocol``, ``selection``, ``stratum`` (which kind), ``level`` (the
    stratum's value), ``n_rows``, ``n_cases``, ``<metric>_mean``, ``<metric>_ci_low``,
    ``<metric>_ci_high``. ``final``: ``df`` holds final rows already (:func:`final_rows`;
    its key columns may be categorical, e.g. a report's pooled rows).
    """
    import pandas as pd

    d = df.copy(deep=False) if final else final_rows(df)
    if d.empty:
        return pd.DataFrame()
    # a new frame (pandas copy-on-write: the columns added never reach df)
    mod = d["modality"] if "modality" in d else d["dataset"]
    d["_modality"] = (mod.cat.rename_categories(str) if isinstance(mod.dtype, pd.CategoricalDtype)
                      else mod.astype(str))
    d["_size"] = size_terciles(d) if "size_fraction" in d else None
    if "n_components" in d:
        nc = pd.to_numeric(d["n_components"], errors="coerce")
        d["_components"] = np.where(nc.isna(), None,
                                    np.where(nc >= 3, "3+", nc.fillna(0).astype(int).astype(str)))
    else:
        d["_components"] = None
    strata = {"modality": "_modality", "size": "_size", "components": "_components"}
    out = []
    for (m, proto, sel), g in d.groupby(["method", "protocol", "selection"], sort=True,
                                        observed=True):
        if not np.isfinite(g[metric].to_numpy(float)).any():
            continue  # e.g. a model skipped for everything mode
        cases = case_ids(g)
        for name, col in strata.items():
            levels = g[col]
            for level in sorted({v for v in levels if v is not None and v == v}, key=str):
                mask = (levels == level).to_numpy()
                rec = dict(method=m, protocol=_protocol_label(proto), selection=sel,
                           stratum=name, level=level, n_rows=int(mask.sum()),
                           n_cases=len(set(cases[mask])))
                rec.update(_ci_fields(g[metric].to_numpy(float)[mask], cases[mask], metric,
                                      n_boot, seed))
                out.append(rec)
    return pd.DataFrame(out)


def difficulty_table(df, *, factors=FACTORS, metric: str = "iou", n_boot: int = N_BOOT,
                     seed: int = 0, final: bool = False):
    """Spearman's rank correlation of ``metric`` with each difficulty factor.

    Per method x protocol x selection (iterative runs at their last click), pooled over
    tasks. Columns: ``method``, ``protocol``, ``selection``, ``factor``, ``rho``,
    ``rho_ci_low``, ``rho_ci_high`` (case bootstrap), ``p`` (scipy's, rows independent),
    ``n_rows``, ``n_cases``. ``final``: as :func:`strata_table`'s.
    """
    import pandas as pd

    d = df if final else final_rows(df)
    present = [f for f in factors if f in d.columns]
    if d.empty or not present:
        return pd.DataFrame()
    out = []
    for (m, proto, sel), g in d.groupby(["method", "protocol", "selection"], sort=True,
                                        observed=True):
        cases = case_ids(g)
        y = g[metric].to_numpy(float)
        if not np.isfinite(y).any():
            continue  # e.g. a model skipped for everything mode
        for f in present:
            x = pd.to_numeric(g[f], errors="coerce").to_numpy(float)
            r = spearman_ci(x, y, cases, n_boot=n_boot, seed=seed)
            out.append(dict(method=m, protocol=_protocol_label(proto), selection=sel,
                            factor=f, rho=r["rho"], rho_ci_low=r["low"],
                            rho_ci_high=r["high"], p=r["p"], n_rows=r["n_rows"],
                            n_cases=r["n_cases"]))
    return pd.DataFrame(out)


def randomness_table(df, *, metric: str = "iou", n_boot: int = N_BOOT, seed: int = 0):
    """The randomness test: prompts jittered R times, per case the mean and spread.

    Uses the one-shot protocols (modes, COSMOS strategies; ``click == 0``) that have more than
    one repeat. Per object (dataset, task, case, slice, label) x method x protocol x selection
    the mean and the standard deviation (ddof 1) over its repeats; aggregated per task.

    Columns: ``dataset``, ``task``, ``method``, ``protocol``, ``selection``, ``repeats``,
    ``n_cases``, ``<metric>_mean`` with ``_ci_low``/``_ci_high`` (case bootstrap of the
    per-object means), ``std_mean`` (mean over objects of the spread over repeats, with
    ``std_ci_low``/``std_ci_high``), ``std_max``, ``range_mean`` (mean of max - min).
    """
    import pandas as pd

    d = df[(df["click"] == 0) & ~df["protocol"].astype(str).str.startswith("everything")]
    if d.empty:
        return pd.DataFrame()
    obj = _present(d, ["dataset", "task", "case", "slice", "label", "method", "protocol",
                       "selection"])
    per = (d.groupby(obj, sort=True)[metric]
           .agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if v.count() > 1
                else np.nan, lo="min", hi="max", repeats="count").reset_index())
    per = per[per["repeats"] > 1]
    if per.empty:
        return pd.DataFrame()
    out = []
    for (ds, task, m, proto, sel), g in per.groupby(
            ["dataset", "task", "method", "protocol", "selection"], sort=True):
        cases = case_ids(g)
        rec = dict(dataset=ds, task=task, method=m, protocol=proto, selection=sel,
                   repeats=int(g["repeats"].max()), n_cases=len(set(cases)))
        rec.update(_ci_fields(g["mean"].to_numpy(float), cases, metric, n_boot, seed))
        est, lo, hi = bootstrap_ci(g["std"].to_numpy(float), cases, n_boot=n_boot, seed=seed)
        rec.update(std_mean=est, std_ci_low=lo, std_ci_high=hi,
                   std_max=float(np.nanmax(g["std"])) if g["std"].notna().any() else np.nan,
                   range_mean=float((g["hi"] - g["lo"]).mean()))
        out.append(rec)
    return pd.DataFrame(out)


def everything_table(df, *, n_boot: int = N_BOOT, seed: int = 0):
    """Everything mode per task x method x grid: how well the automatic masks cover the
    ground-truth objects.

    Columns: ``dataset``, ``task``, ``method``, ``grid`` (points per side), ``images``,
    ``objects``, ``match_dice`` (mean best Dice per object, COSMOS's rule) with
    ``match_dice_ci_low/high``, ``match_iou`` (mean best IoU per object) with its interval,
    ``precision``, ``recall``, ``f1`` (Hungarian one-to-one at IoU >= 0.5, mean over images),
    ``found`` (fraction of objects matched one-to-one), ``masks_per_image`` (mean
    ``n_pred``), ``seconds_per_image``, ``note`` (e.g. why a model was skipped).
    """
    import pandas as pd

    proto = df["protocol"].astype(str)
    d = df[proto.str.fullmatch(r"everything\d+")].copy()
    if d.empty:
        return pd.DataFrame()
    d["grid"] = d["protocol"].astype(str).str.slice(len("everything")).astype(int)
    out = []
    img_key = _present(d, ["dataset", "case", "slice", "repeat"])
    for (ds, task, m, grid), g in d.groupby(["dataset", "task", "method", "grid"], sort=True):
        rec: dict = dict(dataset=ds, task=task, method=m, grid=int(grid))
        rec["images"] = int(len(g.drop_duplicates(img_key)))
        for sel, name in (("match_dice", "match_dice"), ("match_iou", "match_iou")):
            s = g[g["selection"] == sel]
            metric = "dice" if sel == "match_dice" else "iou"
            est, lo, hi = bootstrap_ci(s[metric].to_numpy(float), case_ids(s),
                                       n_boot=n_boot, seed=seed) if len(s) else (np.nan,) * 3
            rec.update({name: est, f"{name}_ci_low": lo, f"{name}_ci_high": hi})
        h = g[g["selection"] == "hungarian"]
        rec["objects"] = int(len(h)) if len(h) else int(len(g[g["selection"] == "match_dice"]))
        per_img = h.drop_duplicates(img_key)
        for col in ("precision", "recall", "f1"):
            vals = (pd.to_numeric(per_img[col], errors="coerce") if col in per_img
                    else pd.Series(dtype=float))
            rec[col] = float(vals.mean()) if vals.notna().any() else np.nan
        matched = pd.to_numeric(h["matched"], errors="coerce") if "matched" in h else None
        rec["found"] = (float(matched.mean()) if matched is not None and matched.notna().any()
                        else np.nan)
        imgs = g.drop_duplicates(img_key)
        rec["masks_per_image"] = (float(pd.to_numeric(imgs["n_pred"], errors="coerce").mean())
                                  if "n_pred" in imgs else np.nan)
        rec["seconds_per_image"] = float(imgs["seconds"].mean())
        notes = [n for n in g["note"] if isinstance(n, str) and n] if "note" in g else []
        rec["note"] = notes[0] if notes else ""
        out.append(rec)
    return pd.DataFrame(out)
