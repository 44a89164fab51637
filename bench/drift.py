"""Benchmark: the drift check (``mlcycle.monitoring.feature_drift``) vs raw NumPy / SciPy, plus Evidently.

A reference window (default 200k rows) and a current window (default 1M rows) of generated
features, 3/4 numeric and 1/4 categorical, with a few features shifted on purpose (a mean shift, a
scale change, a jump in missing values, a 0/1 feature from 7% to 30% ones, a categorical mixture change
with a new category).

- The reference summary (``mlcycle.monitoring.reference_stats``: sorted sample, category shares,
  missing rates) is built once and timed on its own: in production it is cached per champion,
  so it is not part of a check.
- mlcycle: ``feature_drift(reference_stats, current, MonitoringSpec())``.
- raw: the same statistics written directly with NumPy / SciPy from the same reference summary
  and the same current frame, independently of mlcycle's code (a copy would check nothing): per
  numeric feature PSI on the reference deciles or, for few distinct values, per value (add-half
  smoothing), ``scipy.stats.ks_2samp``, ``scipy.stats.wasserstein_distance`` and the missing rate;
  per categorical feature PSI, the two-sample chi-squared test on counts, the total variation
  distance, new categories (and their share) and the missing rate. Only the numbers: no verdicts.

Both are first checked to give the same numbers (``np.isclose``), then timed alternately; each
side's best of ``--repeat`` runs is reported. Then Evidently's report
(``mlcycle.drift_report.evidently_report``: DataDriftPreset, HTML + JSON written) on the same
data, on the sample sizes given by ``--evidently-rows`` (rows per side; ``full`` = no sampling).

    uv run python bench/drift.py [--rows 1000000] [--features 20] [--reference-rows 200000]
                                 [--repeat 3] [--evidently-rows 20000,200000,full]

Target: the mlcycle check within 2x of the raw NumPy / SciPy computation.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

import mlcycle  # noqa: F401  (telemetry off)
from mlcycle.monitoring.drift import ReferenceStats, feature_drift, reference_stats
from mlcycle.monitoring.report import evidently_report
from mlcycle.project.config import MonitoringSpec

TARGET_RATIO = 2.0
BINS = 10
CATEGORIES = 12


# ------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class Windows:
    reference: pd.DataFrame
    current: pd.DataFrame
    numeric: list[str]
    categorical: list[str]
    shifted: dict[str, str]  # feature → what was changed


def generate(rows: int, reference_rows: int, features: int, seed: int = 0) -> Windows:
    """Numeric features from a few distribution families (1% missing), categoricals with skewed
    shares over 12 values (1% missing), the fourth numeric one 0/1; the current window shifts five."""
    rng = np.random.default_rng(seed)
    n_cat = max(1, features // 4)
    numeric = [f"num_{i:02d}" for i in range(features - n_cat)]
    categorical = [f"cat_{i:02d}" for i in range(n_cat)]
    values = np.array([f"v{j:02d}" for j in range(CATEGORIES)], dtype=object)
    weights = 1.0 / np.arange(1, CATEGORIES + 1)
    shares = weights / weights.sum()

    def numeric_column(i: int, n: int, shift: str | None) -> np.ndarray:
        family = i % 3
        if i == 3:  # a 0/1 feature (7% ones, 30% when shifted): deciles have one distinct edge
            x = (rng.random(n) < (0.30 if shift == "flag" else 0.07)).astype(float)
        elif family == 0:
            x = rng.normal(0.0, 1.0, n)
        elif family == 1:
            x = rng.lognormal(3.0, 1.0, n)
        else:
            x = rng.exponential(5.0, n)
        if shift == "mean":
            x = x + 0.5 * x.std()
        elif shift == "scale":
            x = x * 1.5
        missing = 0.15 if shift == "missing" else 0.01
        x[rng.random(n) < missing] = np.nan
        return x

    def categorical_column(n: int, shift: bool) -> np.ndarray:
        if shift:
            p = np.append(shares[::-1] * 0.95, 0.05)  # reversed mixture, plus 5% of a new category
            col = rng.choice(np.append(values, "v_new"), n, p=p / p.sum())
        else:
            col = rng.choice(values, n, p=shares)
        col[rng.random(n) < 0.01] = None
        return col

    shifts: dict[str, str] = {}
    if len(numeric) >= 1:
        shifts[numeric[0]] = "mean"
    if len(numeric) >= 2:
        shifts[numeric[1]] = "scale"
    if len(numeric) >= 3:
        shifts[numeric[2]] = "missing"
    if len(numeric) >= 4:
        shifts[numeric[3]] = "flag"
    shifts[categorical[0]] = "mixture + new category"

    def window(n: int, shifted: bool) -> pd.DataFrame:
        cols: dict[str, np.ndarray] = {}
        for i, name in enumerate(numeric):
            cols[name] = numeric_column(i, n, shifts.get(name) if shifted else None)
        for name in categorical:
            cols[name] = categorical_column(n, shifted and name in shifts)
        return pd.DataFrame(cols)

    return Windows(window(reference_rows, False), window(rows, True), numeric, categorical, shifts)


# ------------------------------------------------------------------------------------------ raw side
# Written independently of mlcycle.stats (a copy would check nothing): decile edges interpolated by
# hand on the sorted reference, bins by digitize, discrete features counted with pandas, PSI as the
# sum of the two relative entropies (scipy.special.rel_entr), the chi-squared test of homogeneity by
# hand. The definitions are the documented ones — add-half smoothing; per-value bins when the
# reference's decile edges coincide and it has at most MAX_DISCRETE distinct values, else the tied
# edges as bins of their own; no Yates correction — so the numbers must agree to rounding.
MAX_DISCRETE = 10


def raw_psi_shares(e_counts: np.ndarray, a_counts: np.ndarray) -> float:
    e = (e_counts + 0.5) / (e_counts.sum() + 0.5 * len(e_counts))
    a = (a_counts + 0.5) / (a_counts.sum() + 0.5 * len(a_counts))
    return float(special.rel_entr(a, e).sum() + special.rel_entr(e, a).sum())


def raw_psi(ref_sorted: np.ndarray, cur: np.ndarray) -> float:
    """PSI of ``cur`` against the (sorted) reference sample."""
    n = len(ref_sorted)
    pos = np.linspace(0, 1, BINS + 1) * (n - 1)  # "linear" quantiles: interpolate between order statistics
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    edges = ref_sorted[lo] + (pos - lo) * (ref_sorted[hi] - ref_sorted[lo])
    cuts = np.array(sorted(set(edges.tolist())))
    if len(cuts) == BINS + 1:  # ten proper deciles: bins (-inf, c1), [c1, c2), ..., [c9, inf)
        e = np.bincount(np.digitize(ref_sorted, cuts[1:-1]), minlength=BINS)
        a = np.bincount(np.digitize(cur, cuts[1:-1]), minlength=BINS)
        return raw_psi_shares(e.astype(float), a.astype(float))
    if 1 + int(np.count_nonzero(np.diff(ref_sorted))) <= MAX_DISCRETE:
        ref_counts = pd.Series(ref_sorted).value_counts()
        e = ref_counts.to_numpy(dtype=float)
        a = pd.Series(cur).value_counts().reindex(ref_counts.index, fill_value=0).to_numpy(dtype=float)
        unseen = len(cur) - a.sum()
        return raw_psi_shares(np.append(e, 0.0), np.append(a, unseen)) if unseen else raw_psi_shares(e, a)

    # Tied edges: a bin on each cut and one between (and outside) consecutive cuts; empty bins dropped.
    def bins_of(x: np.ndarray) -> np.ndarray:
        idx = np.digitize(x, cuts)  # cuts[idx-1] <= x < cuts[idx]
        return np.where(np.isin(x, cuts), 2 * idx - 1, 2 * idx)

    e = np.bincount(bins_of(ref_sorted), minlength=2 * len(cuts) + 1)
    a = np.bincount(bins_of(cur), minlength=2 * len(cuts) + 1)
    keep = (e + a) > 0
    return raw_psi_shares(e[keep].astype(float), a[keep].astype(float))


def raw_homogeneity(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Pearson chi-squared on the 2 x k table, by hand: expected = row total x column total / N."""
    table = np.vstack([ref_counts, cur_counts])
    table = table[:, table.sum(axis=0) > 0]
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return statistic, float(stats.chi2.sf(statistic, table.shape[1] - 1))


def raw_check(ref: ReferenceStats, current: pd.DataFrame, spec: MonitoringSpec) -> dict[str, dict[str, Any]]:
    """The drift statistics, straight from NumPy / SciPy: {feature: {statistic: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for col, ref_values in ref.numeric.items():
        values = current[col].to_numpy(dtype=float)
        nan = np.isnan(values)
        cur = values[~nan]
        ks = stats.ks_2samp(ref_values, cur)
        out[col] = {
            "psi": raw_psi(ref_values, cur),
            "statistic": float(ks.statistic),
            "pvalue": float(ks.pvalue),
            "wasserstein": float(stats.wasserstein_distance(ref_values, cur)),
            "missing_current": float(nan.mean()),
        }
    for col, ref_freq in ref.categorical.items():
        codes, uniques = pd.factorize(current[col].to_numpy(dtype=object))  # missing → -1
        counts_all = np.bincount(codes[codes >= 0], minlength=len(uniques))
        counts = dict(zip(uniques, counts_all.tolist(), strict=True))
        n = int(counts_all.sum())
        cats = sorted(set(ref_freq) | set(counts))
        # The reference shares were counted on the non-null rows of a sample of at most
        # ``reference_sample`` rows: back to counts on that many rows.
        ref_rows = min(ref.rows, spec.reference_sample) * (1 - ref.missing[col])
        ref_counts = np.array([ref_freq.get(c, 0.0) for c in cats]) * ref_rows
        observed = np.array([counts.get(c, 0) for c in cats], dtype=float)
        statistic, pvalue = raw_homogeneity(ref_counts, observed)
        new = tuple(c for c in cats if c not in ref_freq and counts.get(c, 0) > 0)
        out[col] = {
            "psi": raw_psi_shares(ref_counts, observed),
            "statistic": statistic,
            "pvalue": pvalue,
            "tvd": float(0.5 * np.abs(ref_counts / ref_counts.sum() - observed / n).sum()),
            "new_categories": new,
            "new_category_share": float(sum(counts[c] for c in new) / n) if n else 0.0,
            "missing_current": float((codes < 0).mean()),
        }
    return out


def compare(mine: list, raw: dict[str, dict[str, Any]]) -> list[str]:
    """Differences between feature_drift's results and the raw numbers (empty: identical)."""
    bad = []
    if {d.feature for d in mine} != set(raw):
        bad.append(f"features {sorted(d.feature for d in mine)} vs {sorted(raw)}")
    for d in mine:
        for key, want in raw.get(d.feature, {}).items():
            got = getattr(d, key)
            if isinstance(want, tuple):
                ok = tuple(got) == want
            else:
                ok = got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
            if not ok:
                bad.append(f"{d.feature}.{key}: mlcycle {got!r} vs raw {want!r}")
    return bad


# ------------------------------------------------------------------------------------------- timing
def best_of(repeat: int, *funcs: Callable[[], object]) -> list[float]:
    """Best wall time of each function over ``repeat`` alternating rounds (order swapped each round)."""
    times: list[list[float]] = [[] for _ in funcs]
    for r in range(repeat):
        order = range(len(funcs)) if r % 2 == 0 else reversed(range(len(funcs)))
        for i in order:
            t = time.perf_counter()
            funcs[i]()
            times[i].append(time.perf_counter() - t)
    return [min(t) for t in times]


def print_table(
    title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]], widths: tuple[int, ...], align: str = ""
) -> None:
    """``align``: one of < or > per column; by default the first column left, the others right."""
    align = align or "<" + ">" * (len(widths) - 1)

    def cells(values: tuple[Any, ...]) -> str:
        return " | ".join(f"{v:{a}{w}}" for v, w, a in zip(values, widths, align, strict=True))

    print(title)
    print(cells(header))
    print("-" * len(cells(header)))
    for row in rows:
        print(cells(row))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def profile(func: Callable[[], object], lines: int = 18) -> str:
    prof = cProfile.Profile()
    prof.enable()
    func()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(lines)
    return buf.getvalue()


def evidently_sizes(spec: str, rows: int, reference_rows: int) -> list[int]:
    sizes = []
    for part in spec.split(","):
        part = part.strip().lower()
        if part:
            sizes.append(max(rows, reference_rows) if part == "full" else int(part))
    return list(dict.fromkeys(sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the current window")
    parser.add_argument("--features", type=int, default=20, help="features (3/4 numeric, 1/4 categorical)")
    parser.add_argument("--reference-rows", type=int, default=200_000, help="rows in the reference window")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side (best is reported)")
    parser.add_argument("--evidently-rows", default="20000,200000,full",
                        help="Evidently report sample sizes per side, comma-separated; 'full' = all rows")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="print a cProfile of feature_drift")
    args = parser.parse_args()
    total_started = time.perf_counter()
    spec = MonitoringSpec()

    t = time.perf_counter()
    data = generate(args.rows, args.reference_rows, args.features)
    shifted = ", ".join(f"{k} ({v})" for k, v in data.shifted.items())
    print(f"setup: reference {len(data.reference):,} rows, current {len(data.current):,} rows x "
          f"{len(data.numeric)} numeric + {len(data.categorical)} categorical features, generated in "
          f"{time.perf_counter() - t:.1f}s; shifted: {shifted}")  # fmt: skip

    t = time.perf_counter()
    ref = reference_stats(data.reference, data.numeric, data.categorical, sample=spec.reference_sample)
    ref_s = time.perf_counter() - t
    print(f"reference_stats (once per champion, cached; not part of a check): {ref_s:.2f}s "
          f"on {len(data.reference):,} rows")  # fmt: skip

    mine = feature_drift(ref, data.current, spec)
    raw = raw_check(ref, data.current, spec)
    mismatch = compare(mine, raw)
    flagged = sorted(d.feature for d in mine if d.drifted)
    print(f"check: {len(mine)} features, mlcycle and raw {'identical (rel 1e-9)' if not mismatch else 'DIFFER'}; "
          f"mlcycle flags {flagged}")  # fmt: skip
    for line in mismatch[:20]:
        print(f"  {line}")
    assert not mismatch, f"{len(mismatch)} statistics differ"
    assert set(flagged) == set(data.shifted), (flagged, sorted(data.shifted))

    mine_s, raw_s = best_of(args.repeat, lambda: feature_drift(ref, data.current, spec),
                            lambda: raw_check(ref, data.current, spec))  # fmt: skip
    ratio = mine_s / raw_s
    n = len(data.current)
    check_rows = [
        ("mlcycle.monitoring.feature_drift(reference_stats, current, spec)", f"{mine_s:.3f}", f"{n / mine_s:,.0f}",
         f"{ratio:.2f}"),
        ("raw NumPy/SciPy: same statistics, no verdicts", f"{raw_s:.3f}", f"{n / raw_s:,.0f}", "1.00"),
        ("reference_stats (cached per champion, for scale)", f"{ref_s:.3f}", "", ""),
    ]  # fmt: skip
    print()
    title = f"drift check on {n:,} current rows x {len(mine)} features (best of {args.repeat}, alternating)"
    print_table(title, ("path", "best s", "rows/s", "ratio"), check_rows, (66, 8, 12, 6))
    if args.profile or ratio > TARGET_RATIO:
        print()
        print("cProfile of feature_drift (ratio above target)" if ratio > TARGET_RATIO else "cProfile of feature_drift")
        print(profile(lambda: feature_drift(ref, data.current, spec)))

    print()
    full = max(len(data.current), len(data.reference))
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-drift-") as tmp:
        for size in evidently_sizes(args.evidently_rows, len(data.current), len(data.reference)):
            label = "all rows" if size >= full else f"sample of {size:,} per side"
            print(f"Evidently report ({label}) ...", flush=True)
            files = evidently_report(data.reference, data.current, data.numeric, data.categorical,
                                     Path(tmp) / str(size), max_rows=size, title="bench")  # fmt: skip
            rows_out.append((label, f"{files.rows_reference:,}", f"{files.rows_current:,}", f"{files.seconds:.1f}",
                             f"{files.seconds / mine_s:.0f}x", f"{files.html.stat().st_size / 1e6:.1f}",
                             ",".join(files.drifted_columns)))  # fmt: skip
    print_table(
        "Evidently 0.7 report (DataDriftPreset; sampling, run, HTML + JSON written), one run each",
        ("Evidently run on", "ref rows", "cur rows", "seconds", "x check", "HTML MB", "drifted (Evidently)"),
        rows_out,
        (26, 9, 9, 7, 8, 7, 40),
        "<>>>>><",
    )
    print("'x check': Evidently's time as a multiple of the mlcycle check on every current row. Its drifted columns")
    print("come from its own tests (Wasserstein / Jensen-Shannon above 1000 rows, threshold 0.1; missing values are")
    print("not a drift to it), not from mlcycle's verdicts: the alerts come from the mlcycle check.")
    print(f"total runtime {time.perf_counter() - total_started:.0f}s")
    print()
    print(f"RESULT drift_check_ratio {ratio:.2f} x target {TARGET_RATIO} {verdict(ratio <= TARGET_RATIO)}")
    if ratio > TARGET_RATIO:
        sys.exit(1)


if __name__ == "__main__":
    main()
