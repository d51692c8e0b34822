"""Intervals and verdicts for FreezeLab studies.

A study asks questions like "does freezing the backbone lose accuracy?". A difference of two means from a handful
of seeds says little on its own, so every answer here comes with an interval, and a verdict is only "better" or
"worse" when the whole interval clears a practical threshold. Pure numpy + scipy.stats: no torch, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

MAX_SEEDS = 50  # beyond this, "more seeds" is not a realistic answer for a fine-tuning study


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval; low/high are None when the data cannot give one (n=1)."""

    estimate: float
    low: float | None
    high: float | None
    n: int
    method: str
    confidence: float = 0.95

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def contains(self, x: float) -> bool:
        """False when there is no interval: one seed proves nothing about where the truth lies."""
        return self.low is not None and self.high is not None and self.low <= x <= self.high


@dataclass(frozen=True)
class Comparison(Interval):
    """Treatment against reference. scale "difference": estimate = treatment - reference; scale "ratio":
    estimate = treatment / reference (geometric mean over seeds). `differences` keeps the per-seed paired
    differences (log ratios for scale "ratio") so seeds_needed can extrapolate from their spread. n counts seeds,
    except for bootstrap comparisons, where it counts test examples (the method string says which)."""

    p_value: float | None = None
    scale: str = "difference"
    differences: tuple[float, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """The answer a study shows: a status to filter and colour by, and a sentence a person can read as is."""

    status: str  # "better" | "worse" | "equivalent" | "unsettled"
    sentence: str
    seeds_needed: int | None
    comparison: Comparison = field(repr=False)
    threshold: float = 0.01


def _finite_array(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{what}: no values")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: values must be finite, got {arr.tolist()}")
    return arr


def _t_half_width(sd: float, n: int, confidence: float) -> float:
    """Half-width of the Student-t interval for a mean of n values with sample standard deviation sd."""
    return float(stats.t.ppf((1 + confidence) / 2, df=n - 1)) * sd / math.sqrt(n)


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def mean_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean over seeds with a Student-t interval: with 3-5 seeds the normal approximation is far too narrow."""
    arr = _finite_array(values, "mean_interval")
    n, mean = arr.size, float(arr.mean())
    if n == 1:
        return Interval(mean, None, None, 1, "1 seed: no interval", confidence)
    half = _t_half_width(float(arr.std(ddof=1)), n, confidence)
    return Interval(mean, mean - half, mean + half, n, f"t over {_seeds(n)}", confidence)


def _paired(
    treatment: Mapping[Any, float],
    reference: Mapping[Any, float],
    transform: Callable[[float], float],
    label: str,
    confidence: float,
) -> Comparison:
    common = sorted(set(treatment) & set(reference), key=repr)
    if not common:
        raise ValueError("no seed is present in both treatment and reference")
    t = _finite_array([transform(treatment[s]) for s in common], "treatment")
    r = _finite_array([transform(reference[s]) for s in common], "reference")
    diffs = t - r
    n, mean = diffs.size, float(diffs.mean())
    if n == 1:
        return Comparison(mean, None, None, 1, "1 seed: no interval", confidence, None, label, (mean,))
    if np.ptp(diffs) <= 1e-12 * max(1.0, float(np.abs(t).max()), float(np.abs(r).max())):
        # The same difference on every seed (up to float rounding), e.g. deterministic runs: ttest_rel gives nan or
        # rounding noise, while the limit is exact: a zero-width interval, p = 0 (or 1 when there is no difference).
        low = high = mean
        p = 1.0 if mean == 0 else 0.0
    else:
        res = stats.ttest_rel(t, r)
        ci = res.confidence_interval(confidence_level=confidence)
        low, high, p = float(ci.low), float(ci.high), float(res.pvalue)
    method = f"paired t over {_seeds(n)}" + (" (log ratios)" if label == "ratio" else "")
    return Comparison(mean, low, high, n, method, confidence, p, label, tuple(float(d) for d in diffs))


def paired_difference(
    treatment: Mapping[Any, float], reference: Mapping[Any, float], confidence: float = 0.95
) -> Comparison:
    """Treatment - reference paired by seed (seeds missing from either side are dropped). Pairing removes the
    seed-to-seed variation both arms share (same data order, same head init), which is usually most of it."""
    return _paired(treatment, reference, float, "difference", confidence)


def ratio_interval(
    treatment: Mapping[Any, float], reference: Mapping[Any, float], confidence: float = 0.95
) -> Comparison:
    """treatment / reference paired by seed, for costs ("trains 3.9x faster"): a paired t-interval on log ratios,
    exponentiated, because ratios are multiplicative and skewed while their logs are roughly symmetric."""

    def log(v: float) -> float:
        if not v > 0:
            raise ValueError(f"ratio_interval needs positive values, got {v}")
        return math.log(v)

    c = _paired(treatment, reference, log, "ratio", confidence)
    low = None if c.low is None else math.exp(c.low)
    high = None if c.high is None else math.exp(c.high)
    return Comparison(math.exp(c.estimate), low, high, c.n, c.method, confidence, c.p_value, "ratio", c.differences)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in input order. A study asks several questions at once; Holm keeps the
    chance of any false "significant" below alpha without Bonferroni's waste. None (untestable) stays None and
    does not count towards m."""
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    for p, _ in present:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-value out of [0, 1]: {p}")
    m = len(present)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present, key=lambda pi: pi[0])):
        running = max(running, min(1.0, (m - rank) * p))  # step-down, kept monotone in the sorted order
        out[i] = running
    return out


def _correct_array(correct: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = _finite_array(correct, what)
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{what}: expected 0/1 per test example")
    return arr


def _bootstrap(
    data: tuple[np.ndarray, ...], statistic: Callable, paired: bool, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    res = stats.bootstrap(
        data,
        statistic,
        n_resamples=n_resamples,
        paired=paired,
        vectorized=True,
        confidence_level=confidence,
        method="BCa",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_mean(
    correct: Sequence[float] | np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> Interval:
    """One run's accuracy with a BCa bootstrap interval over test examples: the only spread one seed offers
    (it covers test-set sampling, not training noise)."""
    arr = _correct_array(correct, "bootstrap_mean")
    mean, n = float(arr.mean()), arr.size
    method = f"bootstrap over {n} test examples"
    if np.ptp(arr) == 0:  # all right or all wrong: every resample is identical
        return Interval(mean, mean, mean, n, method, confidence)
    low, high = _bootstrap((arr,), lambda x, axis: x.mean(axis=axis), False, confidence, n_resamples, seed)
    return Interval(mean, low, high, n, method, confidence)


def bootstrap_accuracy_difference(
    correct_a: Sequence[float] | np.ndarray,
    correct_b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """accuracy(a) - accuracy(b) from a single seed each, evaluated on the same test examples: a paired BCa
    bootstrap over examples. The p-value is the exact McNemar test (binomial on the discordant examples), the
    standard paired test for 0/1 outcomes. It says nothing about seed-to-seed noise: prefer paired_difference."""
    a, b = _correct_array(correct_a, "correct_a"), _correct_array(correct_b, "correct_b")
    if a.size != b.size:
        raise ValueError(f"correct_a and correct_b differ in length: {a.size} vs {b.size}")
    n, diff = a.size, float(a.mean() - b.mean())
    method = f"bootstrap over {n} test examples (1 seed)"
    a_only, b_only = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    p = 1.0 if a_only + b_only == 0 else float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    if np.ptp(a - b) == 0:  # every example moved the same way (usually: none moved)
        return Comparison(diff, diff, diff, n, method, confidence, p)
    low, high = _bootstrap(
        (a, b), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis), True, confidence, n_resamples, seed
    )
    return Comparison(diff, low, high, n, method, confidence, p)


def accuracy_standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n examples: the floor on how precisely a test set of
    that size can rank two models, whatever the number of seeds."""
    if n <= 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need 0 <= p <= 1 and n > 0, got p={p}, n={n}")
    return math.sqrt(p * (1 - p) / n)


def seeds_needed(
    differences: Sequence[float], threshold: float, confidence: float = 0.95, max_seeds: int = MAX_SEEDS
) -> int | None:
    """Smallest total number of seeds n at which the paired t-interval is expected to settle, assuming the mean
    and standard deviation of the observed per-seed differences stay as they are.

    "Settled" means the interval mean +/- t_{n-1} * sd / sqrt(n) either lies entirely outside the band
    [-threshold, +threshold] (strictly beyond it: better/worse) or entirely inside it (equivalent) - the same rule
    verdict() uses. Returns the current n if already settled, and None when fewer than 2 differences are given
    (no spread to extrapolate from) or when it does not settle within max_seeds (e.g. |mean| sits on the
    threshold)."""
    arr = _finite_array(differences, "seeds_needed")
    if arr.size < 2:
        return None
    mean, sd = float(arr.mean()), float(arr.std(ddof=1))
    for n in range(arr.size, max_seeds + 1):
        half = _t_half_width(sd, n, confidence)
        if _band_status(mean - half, mean + half, threshold) != "unsettled":
            return n
    return None


def _band_status(low: float, high: float, threshold: float) -> str:
    """Where [low, high] sits against the band [-threshold, threshold], in "higher is better" orientation."""
    if low > threshold:
        return "better"
    if high < -threshold:
        return "worse"
    if -threshold <= low and high <= threshold:
        return "equivalent"
    return "unsettled"


def verdict(
    comparison: Comparison,
    threshold: float = 0.01,
    higher_is_better: bool = True,
    metric: str = "accuracy",
    what: str = "freeze_lower k=4",
    against: str = "full_finetune",
    unit: str = "points",
) -> Verdict:
    """Turn a comparison into one of better / worse / equivalent / unsettled and a plain English sentence.

    threshold is the smallest difference that matters, in the metric's own units (0.01 = 1 accuracy point); for a
    ratio comparison it is relative (0.05 = 5%, band [1/1.05, 1.05]). "better"/"worse" need the whole interval
    strictly beyond the band, "equivalent" needs it inside; everything else - including an interval that excludes
    zero but reaches into the band - is "unsettled", because it cannot yet tell a difference that matters from
    one that does not. unit "points" shows values x100 (for metrics in [0, 1]); any other unit is shown as is.
    """
    c, ratio = comparison, comparison.scale == "ratio"
    if threshold < 0:
        raise ValueError("threshold must be >= 0")
    to_log = math.log if ratio else (lambda v: v)
    band = math.log1p(threshold) if ratio else threshold
    sign = 1.0 if higher_is_better else -1.0
    if c.low is None or c.high is None:
        status = "unsettled"
    else:
        low, high = sorted((sign * to_log(c.low), sign * to_log(c.high)))
        status = _band_status(low, high, band)
    needed = seeds_needed([sign * d for d in c.differences], band, c.confidence) if len(c.differences) >= 2 else None

    interval_text = ""
    if ratio:
        if c.low is not None:
            interval_text = f" [{c.low:.2f}, {c.high:.2f}]"
        claim = f"{what} has {c.estimate:.2f}x{interval_text} the {metric} of {against}"
        band_text = f"{threshold * 100:g}%"
    else:
        scale = 100.0 if unit == "points" else 1.0
        fmt = (lambda v: f"{v * scale:.1f}") if unit == "points" else (lambda v: f"{v:.3g}")
        suffix = " points" if unit == "points" else (f" {unit}" if unit else "")
        up = c.estimate >= 0
        # Report the magnitude, with the interval oriented the same way ("loses 0.8 [-0.4, 2.0]").
        if c.low is not None:
            lo, hi = (c.low, c.high) if up else (-c.high, -c.low)
            interval_text = f" [{fmt(lo)}, {fmt(hi)}]"
        size = f"{fmt(abs(c.estimate))}{suffix}{interval_text}"
        if higher_is_better:
            claim = f"{what} {'gains' if up else 'loses'} {size} of {metric} against {against}"
        else:
            claim = f"{what} {'raises' if up else 'lowers'} {metric} by {size} against {against}"
        band_text = f"{fmt(threshold)}{suffix}"

    if c.low is None:
        reason = f"{_seeds(c.n)}, no interval (unsettled)"
    elif status == "better":
        reason = f"better, the whole interval is beyond the threshold of {band_text} (better)"
    elif status == "worse":
        reason = f"worse, the whole interval is beyond the threshold of {band_text} (worse)"
    elif status == "equivalent":
        reason = f"the same within ±{band_text} (equivalent)"
    elif c.contains(1.0 if ratio else 0.0):
        reason = "within noise (unsettled)"
    else:
        reason = f"a real difference, but it may be under the threshold of {band_text} (unsettled)"
    sentence = f"{claim}: {reason}."
    if status == "unsettled" and len(c.differences) >= 2:
        if needed is None:
            sentence += f" More than {MAX_SEEDS} seeds would be needed to settle it."
        elif needed > c.n:
            sentence += f" About {needed} seeds would settle it."
    return Verdict(status, sentence, needed, c, threshold)
