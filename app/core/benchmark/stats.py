"""Statistics a reviewer accepts: case bootstrap, paired differences, Holm, rank correlation.

Slices of one volume (or images of one patient) are not independent, so every interval here
resamples **cases**: all rows of a drawn case move together. Two methods evaluated on the same
rows are paired: their difference is bootstrapped and tested with a Wilcoxon signed-rank test
on per-case mean differences. Everything is seeded (``numpy.random.default_rng(seed)``); the
same inputs and seed give the same interval.

* :func:`bootstrap_ci` -- estimate and percentile interval of a statistic, resampling cases.
* :func:`mean_of_tasks_ci` -- the mean over tasks of each task's mean, cases resampled within
  each task.
* :func:`paired_difference` -- mean of ``a - b`` with a case-bootstrap interval and Wilcoxon p.
* :func:`holm` -- Holm's step-down adjustment of a family of p-values.
* :func:`spearman_ci` -- Spearman's rho with a case-bootstrap interval and its p-value.
* :func:`case_ids` -- one case key per row of a results table (``dataset`` + ``case``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "bootstrap_ci",
    "mean_of_tasks_ci",
    "paired_difference",
    "holm",
    "spearman_ci",
    "case_ids",
    "case_key",
    "N_BOOT",
    "LEVEL",
]

#: default number of bootstrap resamples
N_BOOT = 2000
#: default confidence level
LEVEL = 0.95
# bootstrap draws are made in chunks of at most this many case indices (memory bound)
_CHUNK_ELEMENTS = 4_000_000


#: the suffix the runner gives a slice of a volume (``<case>:z<k>``, see ``ImageSample``)
_SLICE_SUFFIX = r":z\d+$"


def case_key(dataset: Any, case: Any) -> str:
    """The case of one results row, ``"<dataset>/<case>"``: a slice's ``:z<k>`` dropped."""
    return f"{dataset}/{re.sub(_SLICE_SUFFIX, '', str(case))}"


def case_ids(df) -> np.ndarray:
    """One case key per row of a results table: :func:`case_key` of each row (object array).

    A case is a patient/volume/image of one dataset; slices of one volume share it (the
    runner names a slice ``<case>:z<k>``; the suffix is dropped here).
    """
    import pandas as pd

    if len(df) == 0:
        return np.array([], dtype=object)
    # the text is built once per distinct (dataset, case), not once per row
    kd, ud = pd.factorize(df["dataset"], use_na_sentinel=False)
    kc, uc = pd.factorize(df["case"], use_na_sentinel=False)
    pair = kd.astype(np.int64) * len(uc) + kc
    uniq, inverse = np.unique(pair, return_inverse=True)
    case = pd.Series(np.asarray(uc, dtype=object)[uniq % len(uc)]).astype(str).str.replace(
        _SLICE_SUFFIX, "", regex=True)
    dataset = pd.Series(np.asarray(ud, dtype=object)[uniq // len(uc)]).astype(str)
    return (dataset + "/" + case).to_numpy(object)[inverse.ravel()]


def _codes(cases: Any, n: int) -> np.ndarray:
    """Integer codes 0..k-1 for the case labels (any hashable values, compared as strings)."""
    import pandas as pd

    labels = [c if isinstance(c, str) else str(c) for c in cases]
    if len(labels) != n:
        raise ValueError(f"values and cases differ in length ({n} values, {len(labels)} cases)")
    codes, _ = pd.factorize(pd.Series(labels, dtype=object), sort=True)
    return codes.astype(np.intp)


def _draws(rng: np.random.Generator, n_cases: int, n_boot: int, rows: int = 0):
    """Yield arrays (chunk, n_cases) of case indices drawn with replacement.

    Chunks hold at most ``_CHUNK_ELEMENTS`` draws (or per-row weights, when ``rows`` is given);
    the draws do not depend on the chunking.
    """
    per = max(1, _CHUNK_ELEMENTS // max(n_cases, rows, 1))
    done = 0
    while done < n_boot:
        k = min(per, n_boot - done)
        yield rng.integers(0, n_cases, size=(k, n_cases))
        done += k


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return (np.nan, np.nan)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def bootstrap_ci(values: Any, cases: Any, *, statistic: Callable = np.mean,
                 n_boot: int = N_BOOT, level: float = LEVEL,
                 seed: int = 0) -> tuple[float, float, float]:
    """Estimate and case-bootstrap percentile interval ``(estimate, low, high)``.

    Parameters
    ----------
    values : array-like of float, shape (N,)
        One value per row (e.g. the IoU of each slice). NaN rows are dropped first.
    cases : array-like, shape (N,)
        The case each row belongs to (any hashable; rows of one case move together).
    statistic : callable
        Maps a 1-D float array to a number; ``np.mean`` (default) uses a fast weighted path.
    n_boot, level, seed
        Number of resamples, confidence level, seed of ``numpy.random.default_rng``.

    Returns
    -------
    (estimate, low, high) : floats
        ``estimate`` is ``statistic`` over all kept rows. With one case the interval is
        ``(nan, nan)``; with no finite value all three are NaN.
    """
    v = np.asarray(values, dtype=float).ravel()
    codes = _codes(cases, v.size)
    keep = np.isfinite(v)
    v, codes = v[keep], codes[keep]
    if v.size == 0:
        return (np.nan, np.nan, np.nan)
    estimate = float(statistic(v))
    uniq, codes = np.unique(codes, return_inverse=True)
    n_cases = uniq.size
    if n_cases < 2:
        return (estimate, np.nan, np.nan)
    rng = np.random.default_rng(seed)
    if statistic is np.mean or statistic is np.nanmean:
        sums = np.bincount(codes, weights=v, minlength=n_cases)
        counts = np.bincount(codes, minlength=n_cases).astype(float)
        boot = np.concatenate([sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
                               for idx in _draws(rng, n_cases, n_boot)])
    else:
        order = np.argsort(codes, kind="stable")
        starts = np.searchsorted(codes[order], np.arange(n_cases))
        ends = np.append(starts[1:], v.size)
        rows_of = [order[s:e] for s, e in zip(starts, ends)]
        boot = np.array([float(statistic(v[np.concatenate([rows_of[i] for i in idx])]))
                         for chunk in _draws(rng, n_cases, n_boot) for idx in chunk])
    lo, hi = _interval(boot, level)
    return (estimate, lo, hi)


def paired_difference(a: Any, b: Any, cases: Any, *, n_boot: int = N_BOOT,
                      level: float = LEVEL, seed: int = 0) -> dict[str, float]:
    """Paired difference ``a - b`` over the same rows, with a case bootstrap and Wilcoxon p.

    Parameters
    ----------
    a, b : array-like of float, shape (N,)
        The two methods' values on the same N rows (same dataset/task/case/slice/prompt).
        Rows where either is NaN are dropped.
    cases : array-like, shape (N,)
        The case of each row.

    Returns
    -------
    dict
        ``mean_diff`` (mean of ``a - b`` over rows), ``low``, ``high`` (case-bootstrap
        interval of that mean), ``p_wilcoxon`` (two-sided ``scipy.stats.wilcoxon`` on the
        per-case mean differences; NaN when fewer than 2 cases have a non-zero difference),
        ``n_cases``, ``n_rows``.
    """
    from scipy import stats

    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.size != b.size:
        raise ValueError(f"paired values differ in length ({a.size} and {b.size})")
    codes = _codes(cases, a.size)
    keep = np.isfinite(a) & np.isfinite(b)
    diff, codes = (a - b)[keep], codes[keep]
    est, lo, hi = bootstrap_ci(diff, codes, n_boot=n_boot, level=level, seed=seed)
    uniq, inv = np.unique(codes, return_inverse=True)
    p = np.nan
    if uniq.size:
        per_case = (np.bincount(inv, weights=diff, minlength=uniq.size)
                    / np.bincount(inv, minlength=uniq.size))
        # float noise from the case means must not count as a difference
        nonzero = per_case[np.abs(per_case) > 1e-12]
        if nonzero.size >= 2:
            p = float(stats.wilcoxon(nonzero).pvalue)
    return {"mean_diff": est, "low": lo, "high": hi, "p_wilcoxon": p,
            "n_cases": int(uniq.size), "n_rows": int(diff.size)}


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order; NaN stays NaN.

    With the m finite p-values sorted ascending, ``p_adj(i) = max_{j <= i} min(1, (m - j + 1)
    p(j))`` (1-based ranks); the family is the finite values only.
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def _case_counts(idx: np.ndarray, n_cases: int) -> np.ndarray:
    """(k, n_cases) how often each case was drawn in each of the k resamples."""
    k = idx.shape[0]
    flat = (idx + np.arange(k)[:, None] * n_cases).ravel()
    return np.bincount(flat, minlength=k * n_cases).reshape(k, n_cases).astype(float)


def _weighted_ranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average ranks (ties averaged) of ``x`` in resamples where row i appears ``w[b, i]`` times.

    Equal to ``scipy.stats.rankdata`` of the concatenated resample, row by row; shape (B, N).
    """
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    group = np.cumsum(np.r_[True, xs[1:] != xs[:-1]]) - 1
    gw = np.add.reduceat(w[:, order], starts, axis=1)
    rank_of_group = np.cumsum(gw, axis=1) - gw + (gw + 1.0) / 2.0
    ranks = np.empty_like(w)
    ranks[:, order] = rank_of_group[:, group]
    return ranks


def _weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    sw = w.sum(axis=1, keepdims=True)
    ma = (w * a).sum(axis=1, keepdims=True) / sw
    mb = (w * b).sum(axis=1, keepdims=True) / sw
    da, db = a - ma, b - mb
    cov = (w * da * db).sum(axis=1)
    va, vb = (w * da * da).sum(axis=1), (w * db * db).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(va * vb)
    # a constant variable in a resample has no rank correlation
    r[(va <= 1e-12 * sw[:, 0] ** 3) | (vb <= 1e-12 * sw[:, 0] ** 3)] = np.nan
    return r


#: above this many (rows x resamples), :func:`spearman_ci` keeps the sample's ranks
EXACT_SPEARMAN_WORK = 2_000_000


def spearman_ci(x: Any, y: Any, cases: Any, *, n_boot: int = N_BOOT, level: float = LEVEL,
                seed: int = 0, rerank: bool | None = None) -> dict[str, float]:
    """Spearman's rank correlation of ``x`` and ``y`` with a case-bootstrap interval.

    Parameters
    ----------
    x, y : array-like of float, shape (N,)
        E.g. a difficulty factor and the IoU of each row; rows with a NaN in either are dropped.
    cases : array-like, shape (N,)

    Returns
    -------
    dict
        ``rho`` (``scipy.stats.spearmanr``), ``low``, ``high`` (percentile interval over case
        resamples; resamples where a variable is constant are left out), ``p``
        (``spearmanr``'s p-value, which treats rows as independent), ``n_rows``, ``n_cases``.

    Notes
    -----
    ``rerank`` True ranks every resample anew (exact; O(rows x resamples)); False keeps the
    ranks of the whole sample and takes the Pearson correlation of those ranks over each
    resample, computed from per-case sums (O(cases x resamples): a run of 10^5 images stays
    fast). Both use the same case draws; they agree closely once there are more than a few
    hundred rows (tested). None: rerank while rows x ``n_boot`` <= ``EXACT_SPEARMAN_WORK``.
    """
    from scipy import stats

    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.size != y.size:
        raise ValueError(f"x and y differ in length ({x.size} and {y.size})")
    codes = _codes(cases, x.size)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, codes = x[keep], y[keep], codes[keep]
    uniq, codes = np.unique(codes, return_inverse=True)
    res = {"rho": np.nan, "low": np.nan, "high": np.nan, "p": np.nan,
           "n_rows": int(x.size), "n_cases": int(uniq.size)}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return res
    r = stats.spearmanr(x, y)
    res["rho"], res["p"] = float(r.statistic), float(r.pvalue)
    if uniq.size < 2:
        return res
    if rerank is None:
        rerank = x.size * n_boot <= EXACT_SPEARMAN_WORK
    rng = np.random.default_rng(seed)
    boot = []
    if rerank:
        # the same case draws as bootstrap_ci; a resample is a weight per row (its case's count)
        for idx in _draws(rng, uniq.size, n_boot, rows=x.size):
            w = _case_counts(idx, uniq.size)[:, codes]
            boot.append(_weighted_pearson(_weighted_ranks(x, w), _weighted_ranks(y, w), w))
    else:
        from scipy.stats import rankdata

        rx, ry = rankdata(x), rankdata(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()  # centred: better conditioned sums
        sums = np.stack([np.bincount(codes, weights=v, minlength=uniq.size) for v in (
            np.ones_like(rx), rx, ry, rx * rx, ry * ry, rx * ry)], axis=1)
        for idx in _draws(rng, uniq.size, n_boot):
            n, sx, sy, sxx, syy, sxy = (_case_counts(idx, uniq.size) @ sums).T
            cov = sxy - sx * sy / n
            vx, vy = sxx - sx * sx / n, syy - sy * sy / n
            with np.errstate(invalid="ignore", divide="ignore"):
                r = cov / np.sqrt(vx * vy)
            r[(vx <= 0) | (vy <= 0)] = np.nan
            boot.append(r)
    res["low"], res["high"] = _interval(np.concatenate(boot), level)
    return res


def mean_of_tasks_ci(values_by_task: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                     n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """The mean over tasks of each task's mean, with a case bootstrap stratified by task.

    Parameters
    ----------
    values_by_task : mapping task -> (values, cases)
        ``values`` float (n,), ``cases`` (n,) the resampling unit of each value.

    Returns
    -------
    (estimate, low, high)
    """
    rng = np.random.default_rng(seed)
    est = float(np.mean([np.mean(v) for v, _ in values_by_task.values()]))
    boots = np.zeros(n_boot)
    for v, c in values_by_task.values():
        v = np.asarray(v, float)
        c = np.asarray(c)
        uniq, inv = np.unique(c, return_inverse=True)
        sums = np.bincount(inv, weights=v, minlength=len(uniq))
        counts = np.bincount(inv, minlength=len(uniq)).astype(float)
        pick = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
        boots += sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    boots /= len(values_by_task)
    alpha = (1 - level) / 2
    return est, float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))
