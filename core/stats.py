"""Intervals and verdicts for FreezeLab studies.

A study asks questions like "does freezing the backbone lose accuracy?". A difference of two means from a handful
of seeds says little on its own, so every answer here comes with an interval, and a verdict is only "better" or
"worse" when the whole interval clears a practical threshold. Accuracies are measured on a finite test set that every
seed shares, so an accuracy interval is never narrower than that test set can resolve (``with_test_floor``,
``accuracy_mean_interval``) and is kept inside [0, 1] (``clamp_interval``). Pure numpy + scipy.stats: no torch, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats

MAX_SEEDS = 50  # beyond this, "more seeds" is not a realistic answer for a fine-tuning study
SMALL_TEST_SET = 100  # fewer test examples pin an accuracy to about ±10 points or worse: flagged as small


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
    # Set by with_test_floor: the half-width the test sets alone leave (difference scale, or log scale for a
    # ratio), the fewest test examples behind it, and whether it widened the interval.
    test_floor: float = 0.0
    n_test: int | None = None
    widened: bool = False


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


def _z(confidence: float) -> float:
    return float(stats.norm.ppf((1 + confidence) / 2))


def test_set_half_width(p: float, n: int, confidence: float = 0.95) -> float:
    """Half-width of the binomial (Wald) interval of an accuracy p measured on n test examples: z * sqrt(p(1-p)/n),
    about ±3.5 points at n=500 and ±12.6 at n=60 (p = 0.5). At p = 0 or 1 that formula gives 0, as if n sentences
    could prove perfection, so p is held half an example inside [0, 1]; a real accuracy strictly inside (a multiple
    of 1/n) is unchanged."""
    if n <= 0:
        raise ValueError(f"need n > 0 test examples, got {n}")
    q = min(max(p, 0.5 / n), 1 - 0.5 / n)
    return _z(confidence) * accuracy_standard_error(q, n)


def difference_half_width(
    a: tuple[float, int], b: tuple[float, int], confidence: float = 0.95, scale: str = "difference"
) -> float:
    """What test sets of n_a and n_b examples can resolve between accuracies p_a and p_b ((p, n) pairs): the
    half-widths of test_set_half_width combined as independent, sqrt(h_a^2 + h_b^2) - the "test set ±" Compare
    shows. On shared test sentences the paired (McNemar) error is smaller by how often the two models agree, but
    that agreement can be total on this sample (identical predictions) without saying anything about the next
    one: this is the test sets' resolution, used as a floor, not an estimate. scale "ratio": the same on the log
    scale of p_a / p_b (delta method: sqrt(h_a^2 / p_a^2 + h_b^2 / p_b^2), p held as in test_set_half_width)."""
    parts = []
    for p, n in (a, b):
        h = test_set_half_width(p, n, confidence)
        parts.append(h / min(max(p, 0.5 / n), 1 - 0.5 / n) if scale == "ratio" else h)
    return math.hypot(*parts)


def _widen(estimate: float, low: float, high: float, floor: float) -> tuple[float, float, bool]:
    lo, hi = min(low, estimate - floor), max(high, estimate + floor)
    return lo, hi, (lo, hi) != (low, high)


def with_test_floor(
    c: Comparison, a: tuple[float, int], b: tuple[float, int], bounds: tuple[float, float] = (-1.0, 1.0)
) -> Comparison:
    """An accuracy comparison (treatment a, reference b, as (mean accuracy, test examples)) widened so that it is
    never narrower than the test sets can resolve: [min(low, d - f), max(high, d + f)], with f =
    difference_half_width (on the log scale for a ratio).

    Why: every seed is scored on the same test sentences, so a t interval over seeds sees training noise but not
    the sampling error of the test set the seeds share; two seeds whose per-seed differences agree exactly give a
    zero-width interval, on 60 sentences as on 60,000. A floor rather than a sum: the seed spread (and a bootstrap
    over test examples) already holds part of the test-set noise, and the floor is already conservative. The
    p-value becomes max(p, 2 * (1 - Phi(|d| / (f / z)))) so that Holm cannot call significant a difference the
    test sets cannot resolve. Differences are cut to ``bounds``; a comparison without an interval (one seed, no
    predictions) only records the floor."""
    floor = difference_half_width(a, b, c.confidence, c.scale)
    n_test = min(a[1], b[1])
    if c.low is None or c.high is None:
        return replace(c, test_floor=floor, n_test=n_test)
    to, back = (math.log, math.exp) if c.scale == "ratio" else (float, float)
    d = to(c.estimate)
    low, high, widened = _widen(d, to(c.low), to(c.high), floor)
    low, high = back(low), back(high)
    if c.scale != "ratio":
        low, high = max(bounds[0], low), min(bounds[1], high)
    p = c.p_value
    if p is not None and floor > 0:
        p = max(p, float(2 * stats.norm.sf(abs(d) / (floor / _z(c.confidence)))))
    method = c.method + (f", widened to what {n_test:,} test examples resolve" if widened else "")
    return replace(c, low=low, high=high, p_value=p, method=method, test_floor=floor, n_test=n_test, widened=widened)


def clamp_interval(iv: Interval, low: float = 0.0, high: float = 1.0) -> Interval:
    """An interval of a bounded quantity cut at its bounds: with 2-3 seeds a t interval on an accuracy reaches past
    0 and 1 ("51.7% [-54.2, 157.6]"). The one place studies and Compare clamp accuracy-like intervals."""
    if iv.low is None or iv.high is None:
        return iv
    return replace(iv, low=min(max(iv.low, low), high), high=max(min(iv.high, high), low))


def binomial_interval(p: float, n: int, confidence: float = 0.95) -> Interval:
    """One accuracy p on n test examples: p ± test_set_half_width, clamped to [0, 1]."""
    half = test_set_half_width(p, n, confidence)
    return clamp_interval(Interval(p, p - half, p + half, 1, f"binomial standard error (n={n})", confidence))


def accuracy_mean_interval(
    values: Sequence[float] | np.ndarray, n_test: int | None, confidence: float = 0.95
) -> Interval:
    """Mean test accuracy over seeds: the t interval of mean_interval, widened to at least mean ±
    test_set_half_width(mean, n_test) (the seeds share one test set, see with_test_floor) and clamped to [0, 1].
    Two seeds at 0.525 and 0.525 on 40 sentences give 0.525 [0.37, 0.68], not [0.525, 0.525]. One seed: no
    interval, as mean_interval; n_test None (size unknown): the t interval, clamped."""
    iv = mean_interval(values, confidence)
    if iv.low is None or iv.high is None or not n_test:
        return clamp_interval(iv)
    low, high, widened = _widen(iv.estimate, iv.low, iv.high, test_set_half_width(iv.estimate, n_test, confidence))
    method = iv.method + (f", widened to what {n_test:,} test examples resolve" if widened else "")
    return clamp_interval(replace(iv, low=low, high=high, method=method))


def floor_text(c: Comparison) -> str:
    """The sentence a comparison widened by with_test_floor ends with ("" when the floor did not bind)."""
    if not c.widened or c.n_test is None:
        return ""
    ratio = c.scale == "ratio"
    size = f"±{math.expm1(c.test_floor) * 100:.0f}%" if ratio else f"±{c.test_floor * 100:.1f} points"
    d = math.log(c.estimate) if ratio else c.estimate
    if abs(d) <= c.test_floor:
        return f" The difference is within what the test sets resolve ({size} on {c.n_test:,} test sentences)."
    return f" {c.n_test:,} test sentences resolve it only to {size}."


def floor_blocks(c: Comparison, band: float) -> bool:
    """True when the test-set floor alone keeps the comparison unsettled, however many seeds: only a larger test
    set can settle it. ``band`` on the comparison's own working scale (log for ratios)."""
    if c.test_floor <= 0:
        return False
    d = math.log(c.estimate) if c.scale == "ratio" else c.estimate
    return _band_status(d - c.test_floor, d + c.test_floor, band) == "unsettled"


def seeds_needed(
    differences: Sequence[float],
    threshold: float,
    confidence: float = 0.95,
    max_seeds: int = MAX_SEEDS,
    floor: float = 0.0,
) -> int | None:
    """Smallest total number of seeds n at which the paired t-interval is expected to settle, assuming the mean
    and standard deviation of the observed per-seed differences stay as they are.

    "Settled" means the interval mean +/- t_{n-1} * sd / sqrt(n) either lies entirely outside the band
    [-threshold, +threshold] (strictly beyond it: better/worse) or entirely inside it (equivalent) - the same rule
    verdict() uses. Returns the current n if already settled, and None when fewer than 2 differences are given
    (no spread to extrapolate from) or when it does not settle within max_seeds (e.g. |mean| sits on the
    threshold). ``floor``: the half-width no number of seeds goes below (with_test_floor's test-set floor)."""
    arr = _finite_array(differences, "seeds_needed")
    if arr.size < 2:
        return None
    mean, sd = float(arr.mean()), float(arr.std(ddof=1))
    for n in range(arr.size, max_seeds + 1):
        half = max(_t_half_width(sd, n, confidence), floor)
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
    one that does not. An accuracy comparison widened by with_test_floor is judged on the widened interval (an
    "equivalent" needs the test-set noise inside the band too), and its sentence says when only a larger test set
    could settle it. unit "points" shows values x100 (for metrics in [0, 1]); any other unit is shown as is.
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
    needed = (
        seeds_needed([sign * d for d in c.differences], band, c.confidence, floor=c.test_floor)
        if len(c.differences) >= 2
        else None
    )

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
    sentence = f"{claim}: {reason}." + floor_text(c) + settle_text(status, c, floor_blocks(c, band), needed)
    return Verdict(status, sentence, needed, c, threshold)


def settle_text(status: str, c: Comparison, blocked: bool, needed: int | None) -> str:
    """What would settle an unsettled comparison, as the end of its sentence ("" when nothing is to be said)."""
    if status != "unsettled":
        return ""
    if blocked:
        return " More seeds cannot settle it; only a larger test set can."
    if len(c.differences) < 2:
        return ""
    if needed is None:
        return f" More than {MAX_SEEDS} seeds would be needed to settle it."
    return f" About {needed} seeds would settle it." if needed > c.n else ""
