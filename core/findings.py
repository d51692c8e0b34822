"""Findings: a study's values turned into intervals, verdicts and recommendations. Pure reads: no training, no UI.

``analyse`` answers each design's question from the values core/study_values.py reads (its plain-words answer
is written by core/answers.py); ``seeds_to_settle`` says how many seeds the unsettled answers need.
core/report.py writes them down.

The rules, in one place (how runs become values, time_to_val and drift included: core/study_values.py):

* **Cells** are compared within their group against the group's reference cell, paired by seed (``core.stats``).
  A cell's mean gets a 95% Student-t interval over its seeds.
* **Differences** (cell - reference) for accuracy, macro-F1, train-validation gap and drift, in points; the
  threshold that matters is ``study.threshold`` (0.01 = 1 point). A smaller gap is better; a higher drift
  (test accuracy after minus before) is better.
* **Ratios** for costs, oriented so that above 1 is the good direction and the sentence reads naturally:
  times and steps are reference / cell ("trains 3.9x [3.6, 4.2] faster"; below 1 the sentence says "slower"
  with the inverted interval), parameters are reference / cell ("has 2.0x fewer parameters"), throughput is
  cell / reference ("processes 1.5x more tokens per second"). Their threshold is relative: ``ratio_threshold``
  (default 0.05: the band [1/1.05, 1.05]). ``share_kept`` is cell / reference test accuracy ("keeps 93.0%
  [90.1%, 95.9%] of full_finetune's topic test accuracy"), with ``study.threshold`` as its relative band.
* **Holm** runs within each question (a design's comparisons over its cells and metrics; ``share_kept`` is not a
  test of its own: it restates the accuracy comparison of the same cell and takes that comparison's adjusted p). A
  "better" or "worse" verdict needs the interval beyond the threshold (``core.stats.verdict``) *and* a
  Holm-adjusted p <= ``alpha`` (0.05); an interval that clears the band with an adjusted p above alpha is
  downgraded to "unsettled" and its sentence says so. "Equivalent" is not downgraded (it rests on the interval
  lying inside the band, which a p-value against zero does not test).
* **One seed**: accuracy comparisons (and drift, when both runs start from the same source run) use a paired
  bootstrap over the test examples with McNemar's test (``core.stats.bootstrap_accuracy_difference``), and the
  sentence says so; it covers test-set sampling, not seed-to-seed noise. Other one-seed comparisons have no
  interval and stay unsettled.
* **Test-set floor**: every seed is scored on the same test sentences, so a test-accuracy interval (a cell's mean,
  a difference, a share kept, one-seed bootstraps included) is widened to at least what the test sets resolve
  (``core.stats.with_test_floor`` / ``accuracy_mean_interval``, the rule Compare uses) and kept inside [0, 1]; when
  that floor alone keeps a comparison unsettled, the sentence says only a larger test set can settle it.
* **Recommendation** per task (and group): among the cells whose test accuracy is not "worse" than the most
  accurate cell's, the one with the least mean train_seconds, then the fewest trainable parameters. "Worse" here
  is the plain interval verdict, without Holm: Holm protects claims that two cells differ, and would make the
  recommendation *more* willing to pick a cell whose interval already lies wholly below the best by more than
  the threshold.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core import stats
from core.store import RunRecord, RunStore
from core.studies import Cell, Design, Study
from core.study_values import (
    SPECS,
    MetricSpec,
    collect_runs,
    fmt_interval,
    fmt_points,
    fmt_sig2,
    fmt_value,
    metric_label,
    points_text,
    spec_of,
    split_metric,
    task_names,
)

ALPHA = 0.05  # family-wise error rate for Holm
RATIO_THRESHOLD = 0.05  # relative band for cost ratios (times, steps, throughput, parameters)
MIN_SEEDS = 3  # what a one-seed comparison needs before any interval over seeds exists
NO_RECOMMENDATION = {"head_drift": "its cells are one run and its continuations, not alternatives"}


# -- findings -------------------------------------------------------------------------------------
@dataclass
class CellStat:
    """One cell's mean of one metric over seeds, with its 95% interval."""

    design: str
    cell: str
    group: str
    series: str
    x: float | None
    reference: bool
    metric: str
    interval: stats.Interval
    values: dict[int, float]


@dataclass
class ComparisonResult:
    """A cell against its group's reference for one metric: the interval, the verdict and its words."""

    design: str
    group: str
    cell: str
    reference: str
    metric: str
    label: str  # the metric in words ("topic test accuracy")
    comparison: stats.Comparison
    raw: stats.Verdict  # core.stats.verdict as it comes (interval against the threshold only)
    verdict: stats.Verdict  # the final one: Holm applied, sentence rewritten
    p_adjusted: float | None = None
    downgraded: bool = False  # the interval cleared the band but the Holm-adjusted p did not
    derived: bool = False  # share_kept: restates an accuracy comparison, not a test of its own
    bootstrap: bool = False
    phrase: str = ""  # without subject: "trains 3.9x [3.6, 4.2] faster"
    tag: str = ""  # "better", "within noise", ...
    family_size: int = 0

    @property
    def status(self) -> str:
        return self.verdict.status

    @property
    def sentence(self) -> str:
        return self.verdict.sentence


@dataclass
class Recommendation:
    design: str
    group: str
    task: str
    cell: str
    best: str
    sentence: str
    accuracy: stats.Interval
    best_accuracy: stats.Interval
    against_best: ComparisonResult | None  # None when the pick is the best cell
    speedup: stats.Comparison | None  # best's train_seconds / pick's
    trainable_params: tuple[float | None, float | None]  # (pick, best), means over seeds
    candidates: dict[str, str] = field(default_factory=dict)  # cell -> status against the best


@dataclass
class DesignFindings:
    design: Design
    answer: str
    cells: list[CellStat]
    comparisons: list[ComparisonResult]
    recommendations: list[Recommendation]
    left_out: dict[str, int]
    left_out_runs: list[dict[str, Any]]
    never_reached: list[dict[str, Any]]
    levels: dict[tuple[str, str], float]  # (group, task letter) -> LEVEL
    n_seeds: int = 0  # most seeds any cell has
    lee: dict[str, str] = field(default_factory=dict)  # freeze_depth: task -> reproduced|refuted|unsettled

    def stat(self, cell: str, metric: str) -> CellStat | None:
        return next((s for s in self.cells if s.cell == cell and s.metric == metric), None)

    def comparison(self, cell: str, metric: str) -> ComparisonResult | None:
        return next((c for c in self.comparisons if c.cell == cell and c.metric == metric), None)

    def means_frame(self) -> pd.DataFrame:
        """One row per (cell, metric): mean, low, high, n, method."""
        return pd.DataFrame(
            [
                {"cell": s.cell, "group": s.group, "series": s.series, "x": s.x, "reference": s.reference,
                 "metric": s.metric, "mean": s.interval.estimate, "low": s.interval.low, "high": s.interval.high,
                 "n": s.interval.n, "method": s.interval.method}
                for s in self.cells
            ]
        )  # fmt: skip


@dataclass
class StudyFindings:
    study: Study
    tasks: dict[str, str]
    designs: dict[str, DesignFindings]
    table: pd.DataFrame
    threshold: float
    ratio_threshold: float
    alpha: float
    n_tests: int  # comparisons in the Holm family
    chance: dict[str, float]
    records: dict[str, RunRecord]

    @property
    def comparisons(self) -> list[ComparisonResult]:
        return [c for d in self.designs.values() for c in d.comparisons]

    def comparisons_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"design": c.design, "group": c.group, "cell": c.cell, "reference": c.reference, "metric": c.metric,
                 "estimate": c.comparison.estimate, "low": c.comparison.low, "high": c.comparison.high,
                 "scale": c.comparison.scale, "method": c.comparison.method, "p": c.comparison.p_value,
                 "p_holm": c.p_adjusted, "status": c.status, "sentence": c.sentence}
                for c in self.comparisons
            ]
        )  # fmt: skip


# -- comparisons ----------------------------------------------------------------------------------
def _correct(store: RunStore, run_id: str, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(1.0 where the run's test prediction is right, the test labels), or None without stored predictions."""
    preds = store.read_test_predictions(run_id).get(task) or {}
    labels, predicted = preds.get("labels"), preds.get("predictions")
    if not labels or predicted is None or len(labels) != len(predicted):
        return None
    return (np.asarray(labels) == np.asarray(predicted)).astype(float), np.asarray(labels)


def _bootstrap(store: RunStore, cell_run: str, ref_run: str, task: str) -> stats.Comparison | None:
    a, b = _correct(store, cell_run, task), _correct(store, ref_run, task)
    if a is None or b is None or len(a[1]) != len(b[1]) or not np.array_equal(a[1], b[1]):
        return None  # not the same test examples: nothing to pair
    return stats.bootstrap_accuracy_difference(a[0], b[0])


def _n_test(store: RunStore, records: dict[str, RunRecord], run_ids: list[str], task: str) -> int | None:
    """The fewest test examples any of these runs scored ``task`` on (summary n_test, else its stored
    predictions); None when no run says."""
    sizes = []
    for run_id in run_ids:
        rec = records.get(run_id)
        t = rec.summary.tasks.get(task) if rec is not None and rec.summary else None
        n = t.n_test if t is not None else None
        if not n:
            got = _correct(store, run_id, task)
            n = len(got[1]) if got is not None else None
        if n:
            sizes.append(int(n))
    return min(sizes) if sizes else None


def _accuracy_interval(
    store: RunStore, records: dict[str, RunRecord], vals: dict[int, float], runs: dict[int, str], task: str | None
) -> stats.Interval:
    """A cell's mean test accuracy: t over seeds, never narrower than its test set resolves, inside [0, 1]."""
    n = _n_test(store, records, [runs[s] for s in vals if s in runs], task) if task else None
    return stats.accuracy_mean_interval([vals[s] for s in sorted(vals)], n)


def _test_floor(
    store: RunStore,
    comp: stats.Comparison,
    cell_vals: dict[int, float],
    ref_vals: dict[int, float],
    cell_runs: dict[int, str],
    ref_runs: dict[int, str],
    task: str | None,
    records: dict[str, RunRecord],
) -> stats.Comparison:
    """An accuracy comparison (difference, or share kept as a ratio) widened to what the test sets resolve
    (core.stats.with_test_floor), from the mean accuracies over the seeds both cells share; as is when no run
    says how many test examples it had."""
    common = sorted(set(cell_vals) & set(ref_vals))
    if not task or not common:
        return comp
    n_cell = _n_test(store, records, [cell_runs[s] for s in common if s in cell_runs], task)
    n_ref = _n_test(store, records, [ref_runs[s] for s in common if s in ref_runs], task)
    if not n_cell or not n_ref:
        return comp
    p_cell = float(np.mean([cell_vals[s] for s in common]))
    p_ref = float(np.mean([ref_vals[s] for s in common]))
    return stats.with_test_floor(comp, (p_cell, n_cell), (p_ref, n_ref))


def _oriented_ratio(spec: MetricSpec, cell: dict[int, float], ref: dict[int, float]) -> stats.Comparison | None:
    common = [s for s in set(cell) & set(ref) if cell[s] > 0 and ref[s] > 0]
    if not common:
        return None
    c, r = {s: cell[s] for s in common}, {s: ref[s] for s in common}
    return stats.ratio_interval(c, r) if spec.cell_over_reference else stats.ratio_interval(r, c)


def _null(c: stats.Comparison) -> float:
    return 1.0 if c.scale == "ratio" else 0.0


def _band_text(spec: MetricSpec, threshold: float) -> str:
    return f"{threshold * 100:g}%" if spec.scale == "ratio" else points_text(threshold)


def _size_text(c: stats.Comparison) -> str:
    """Magnitude of a difference in points with its interval oriented the same way: "0.8 [-0.4, 2.0] points"."""
    up = c.estimate >= 0
    text = fmt_points(abs(c.estimate))
    if c.low is not None and c.high is not None and c.low != c.high:
        lo, hi = (c.low, c.high) if up else (-c.high, -c.low)
        text += f" [{fmt_points(lo)}, {fmt_points(hi)}]"
    return text + " points"


def ratio_text(c: stats.Comparison, percent: bool = False) -> tuple[str, bool]:
    """ "3.9x [3.6, 4.2]" (inverted when below 1, so the sentence can say "slower"); (text, at least 1)."""
    up = c.estimate >= 1 or percent
    est, lo, hi = (
        (c.estimate, c.low, c.high) if up else (1 / c.estimate, *(1 / v if v else None for v in (c.high, c.low)))
    )
    if percent:
        f = lambda v: fmt_value("share_kept:a", v)  # noqa: E731
        text = f(est) + (f" [{f(lo)}, {f(hi)}]" if lo is not None and lo != hi else "")
    else:
        text = f"{fmt_sig2(est)}x" + (f" [{fmt_sig2(lo)}, {fmt_sig2(hi)}]" if lo is not None and lo != hi else "")
    return text, up


def _phrase(spec: MetricSpec, metric: str, c: stats.Comparison, tasks: dict[str, str], reference: str) -> str:
    task = tasks.get(split_metric(metric)[1] or "", "")
    label = spec.label.replace("{task}", task)
    if spec.scale == "difference":
        verb = spec.words[0] if c.estimate >= 0 else spec.words[1]
        return spec.template.format(verb=verb, size=_size_text(c), label=label)
    if spec.same and c.estimate == 1.0 and c.low == c.high == 1.0:
        return spec.same
    text, up = ratio_text(c, percent=spec.base == "share_kept")
    word = spec.words[0] if up else spec.words[1]
    return spec.template.format(x=text, word=word, task=task, reference=reference).replace("  ", " ")


def _tag(status: str, c: stats.Comparison, downgraded: bool, band: str) -> str:
    if downgraded:
        return "not significant after Holm"
    if status == "equivalent":
        return f"equivalent within ±{band}"
    if status in ("better", "worse"):
        return status
    if c.low is None:
        return "1 seed, no interval"
    if c.contains(_null(c)):
        return "within noise"
    return "real, but maybe under the threshold"


def _reason(result: ComparisonResult, band: str, alpha: float) -> str:
    c, status = result.comparison, result.verdict.status
    if result.downgraded:
        return (
            f"the interval clears the threshold of {band}, but not after Holm correction over "
            f"{result.family_size} comparisons (adjusted p = {result.p_adjusted:.2g} > {alpha:g}) (unsettled)"
        )
    if c.low is None:
        return f"{c.n} seed, no interval (unsettled)" if c.n == 1 else "no interval (unsettled)"
    if status in ("better", "worse"):
        return f"{status}, the whole interval is beyond the threshold of {band} ({status})"
    if status == "equivalent":
        return f"the same within ±{band} (equivalent)"
    if c.contains(_null(c)):
        return "within noise (unsettled)"
    return f"a real difference, but it may be under the threshold of {band} (unsettled)"


def _seeds_for(c: stats.Comparison, spec: MetricSpec, threshold: float, confidence: float) -> int | None:
    if len(c.differences) < 2:
        return None
    band = math.log1p(threshold) if c.scale == "ratio" else threshold
    sign = 1.0 if (c.scale == "ratio" or spec.higher_is_better) else -1.0
    return stats.seeds_needed([sign * d for d in c.differences], band, confidence, floor=c.test_floor)


def _compare(
    store: RunStore,
    spec: MetricSpec,
    cell_vals: dict[int, float],
    ref_vals: dict[int, float],
    cell_runs: dict[int, str],
    ref_runs: dict[int, str],
    task: str | None,
    records: dict[str, RunRecord],
) -> tuple[stats.Comparison, bool] | None:
    """The comparison for one metric, and whether it is a one-seed bootstrap."""
    common = sorted(set(cell_vals) & set(ref_vals))
    if not common:
        return None
    if len(common) == 1 and spec.bootstrap and task:
        seed = common[0]
        cr, rr = cell_runs.get(seed), ref_runs.get(seed)
        same_start = spec.base != "drift" or (
            cr in records
            and rr in records
            and records[cr].config.get("init_from") == records[rr].config.get("init_from")
        )
        if cr and rr and same_start:
            boot = _bootstrap(store, cr, rr, task)
            if boot is not None:
                if spec.base == "test_accuracy":
                    boot = _test_floor(store, boot, cell_vals, ref_vals, cell_runs, ref_runs, task, records)
                return boot, True
    if spec.scale == "difference":
        comp = stats.paired_difference({s: cell_vals[s] for s in common}, {s: ref_vals[s] for s in common})
        if spec.base == "test_accuracy":
            comp = _test_floor(store, comp, cell_vals, ref_vals, cell_runs, ref_runs, task, records)
        return comp, False
    ratio = _oriented_ratio(spec, cell_vals, ref_vals)
    return (ratio, False) if ratio is not None else None


def _share_from_bootstrap(boot: stats.Comparison, ref_acc: float, cell_acc: float) -> stats.Comparison | None:
    """A one-seed share kept from the bootstrap difference, the reference accuracy held fixed; None when the
    reference got nothing right (no share of nothing). A share is positive and read on the log scale: it is held
    at least half a test sentence's worth above 0 (a bound 1 + difference / reference can reach 0 or below)."""
    if ref_acc <= 0:
        return None
    tiny = 0.5 / max(boot.n, 1) / ref_acc

    def share(difference: float | None) -> float | None:
        return None if difference is None else max(tiny, 1 + difference / ref_acc)

    method = boot.method + "; share = 1 + difference / reference accuracy"
    estimate = max(tiny, cell_acc / ref_acc)
    return stats.Comparison(
        estimate, share(boot.low), share(boot.high), boot.n, method, boot.confidence, boot.p_value, "ratio"
    )


def _finish(result: ComparisonResult, spec: MetricSpec, threshold: float, alpha: float, what: str) -> None:
    """Apply the Holm rule and write the final verdict and sentence."""
    raw, c = result.raw, result.comparison
    status = raw.status
    if status in ("better", "worse") and (result.p_adjusted is None or result.p_adjusted > alpha):
        status, result.downgraded = "unsettled", True  # share_kept: p_adjusted is its accuracy comparison's
    band = _band_text(spec, threshold)
    needed = raw.seeds_needed
    if result.downgraded:
        multiplier = max(1.0, (result.p_adjusted or 1.0) / c.p_value) if c.p_value else float(result.family_size)
        needed = _seeds_for(c, spec, threshold, 1 - alpha / multiplier)
    blocked = stats.floor_blocks(c, math.log1p(threshold) if c.scale == "ratio" else threshold)
    if blocked:
        needed = None
    result.verdict = dataclasses.replace(raw, status=status, seeds_needed=needed)
    result.tag = _tag(status, c, result.downgraded, band) + ("; 1-seed bootstrap" if result.bootstrap else "")
    if spec.scale == "difference":
        claim = f"{what} {result.phrase} against {result.reference}"
    elif spec.base == "share_kept":
        claim = f"{what} {result.phrase}"
    else:
        claim = f"{what} {result.phrase} than {result.reference}"
    sentence = f"{claim}: {_reason(result, band, alpha)}." + stats.floor_text(c)
    if result.bootstrap:
        sentence += (
            f" (1 seed: paired bootstrap over {c.n:,} test examples with McNemar's test; it covers test-set "
            "sampling, not seed-to-seed noise.)"
        )
    sentence += stats.settle_text(status, c, blocked, needed)
    result.verdict = dataclasses.replace(result.verdict, sentence=sentence)


# -- analyse --------------------------------------------------------------------------------------
def analyse(
    store: RunStore, study: Study, *, ratio_threshold: float = RATIO_THRESHOLD, alpha: float = ALPHA
) -> StudyFindings:
    """Means with intervals, paired comparisons with Holm-checked verdicts, plain answers and recommendations
    for every design of ``study`` (see the module docstring for the rules)."""
    from core.answers import answer  # not at module level: core.answers imports this module

    designs = study.design_objects()
    col = collect_runs(store, study, designs)
    tasks = task_names(study)
    table = col.table
    threshold = study.threshold

    values: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    runs: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    for row in table.itertuples(index=False):
        values[(row.design, row.cell, row.metric)][int(row.seed)] = float(row.value)
        runs[(row.design, row.cell)][int(row.seed)] = row.run_id

    per_design: dict[str, tuple[list[CellStat], list[ComparisonResult]]] = {}
    family: list[ComparisonResult] = []
    for design in designs:
        cell_stats: list[CellStat] = []
        metrics_here = sorted({m for (d, _, m) in values if d == design.id}, key=_metric_order(design))
        for cell in design.cells:
            for metric in metrics_here:
                v = values.get((design.id, cell.label, metric))
                if v:
                    iv = _cell_interval(store, col.records, metric, v, runs[(design.id, cell.label)], tasks)
                    cell_stats.append(
                        CellStat(design.id, cell.label, cell.group, cell.series, cell.x, cell.reference, metric, iv, v)
                    )
        comparisons: list[ComparisonResult] = []
        for cell in design.cells:
            ref = reference_of(design, cell.group)
            if cell.reference or ref is None:
                continue
            for metric in design.metrics:
                spec = spec_of(metric)
                letter = split_metric(metric)[1]
                if letter is not None and letter not in tasks:
                    continue
                source_metric = f"test_accuracy:{letter}" if spec.base == "share_kept" else metric
                cell_vals = values.get((design.id, cell.label, source_metric), {})
                ref_vals = values.get((design.id, ref.label, source_metric), {})
                use_spec = SPECS["test_accuracy"] if spec.base == "share_kept" else spec
                got = _compare(
                    store, use_spec, cell_vals, ref_vals, runs[(design.id, cell.label)],
                    runs[(design.id, ref.label)], tasks.get(letter or ""), col.records,
                )  # fmt: skip
                if got is None:
                    continue
                comp, boot = got
                derived = spec.base == "share_kept"
                if derived:
                    if boot:
                        seed = min(set(cell_vals) & set(ref_vals))
                        comp = _share_from_bootstrap(comp, ref_vals[seed], cell_vals[seed])
                        if comp is None:
                            continue
                    else:
                        comp = _oriented_ratio(spec, cell_vals, ref_vals)
                        if comp is None:
                            continue
                    comp = _test_floor(
                        store, comp, cell_vals, ref_vals, runs[(design.id, cell.label)],
                        runs[(design.id, ref.label)], tasks.get(letter or ""), col.records,
                    )  # fmt: skip
                th = threshold if spec.scale == "difference" or spec.base == "share_kept" else ratio_threshold
                label = metric_label(metric, tasks)
                higher = spec.higher_is_better if spec.scale == "difference" else True
                raw = stats.verdict(comp, th, higher, label, cell.label, ref.label, "points")
                result = ComparisonResult(
                    design.id, cell.group, cell.label, ref.label, metric, label, comp, raw, raw,
                    derived=derived, bootstrap=boot, phrase=_phrase(spec, metric, comp, tasks, ref.label),
                )  # fmt: skip
                comparisons.append(result)
                if not derived:
                    family.append(result)
        per_design[design.id] = (cell_stats, comparisons)

    # Holm within each question: a question's verdicts are one family (its comparisons over cells and metrics).
    # One family over every question of an "all questions" study would make a 3-seed study unable to settle
    # anything, and the questions are read (and acted on) separately.
    n_tests = 0
    for design in designs:
        members = [r for r in family if r.design == design.id]
        adjusted = stats.holm([r.comparison.p_value for r in members])
        size = sum(p is not None for p in adjusted)
        n_tests += size
        for r, p in zip(members, adjusted, strict=True):
            r.p_adjusted, r.family_size = p, size
    for design in designs:
        _, comparisons = per_design[design.id]
        for r in comparisons:
            spec = spec_of(r.metric)
            if r.derived:
                letter = split_metric(r.metric)[1]
                parent = next(
                    (p for p in comparisons if p.cell == r.cell and p.metric == f"test_accuracy:{letter}"), None
                )
                if parent is not None:
                    r.p_adjusted, r.family_size = parent.p_adjusted, parent.family_size
                else:
                    r.p_adjusted = stats.holm([r.comparison.p_value])[0]
                    r.family_size = 1
            th = threshold if spec.scale == "difference" or spec.base == "share_kept" else ratio_threshold
            _finish(r, spec, th, alpha, r.cell)

    out: dict[str, DesignFindings] = {}
    for design in designs:
        cell_stats, comparisons = per_design[design.id]
        for r in comparisons:  # share kept joins the means table, from its ratio comparison
            if r.derived:
                cell = design.cell(r.cell)
                cell_stats.append(
                    CellStat(design.id, r.cell, cell.group, cell.series, cell.x, False, r.metric, r.comparison, {})
                )
        for metric in [m for m in design.metrics if split_metric(m)[0] == "share_kept"]:
            for cell in design.cells:
                acc = values.get((design.id, cell.label, f"test_accuracy:{split_metric(metric)[1]}"))
                if cell.reference and acc:
                    iv = stats.Interval(1.0, 1.0, 1.0, len(acc), "reference")
                    cell_stats.append(
                        CellStat(design.id, cell.label, cell.group, cell.series, cell.x, True, metric, iv, {})
                    )
        order = {c.label: i for i, c in enumerate(design.cells)}
        cell_stats.sort(key=lambda s: order[s.cell])
        df = DesignFindings(
            design=design,
            answer="",
            cells=cell_stats,
            comparisons=comparisons,
            recommendations=[],
            left_out=col.left_out.get(design.id, {}),
            left_out_runs=[r for r in col.left_out_runs if r["design"] == design.id],
            never_reached=[r for r in col.never_reached if r["design"] == design.id],
            levels={(g, letter): v for (d, g, letter), v in col.levels.items() if d == design.id},
            n_seeds=max(
                (s.interval.n for s in cell_stats if s.interval.method.startswith(("t over", "1 seed"))), default=0
            ),
        )
        if design.id not in NO_RECOMMENDATION:
            df.recommendations = _recommend(store, design, values, runs, tasks, col.records, threshold, alpha)
        df.answer = answer(df, tasks, threshold, alpha)
        out[design.id] = df
    return StudyFindings(study, tasks, out, table, threshold, ratio_threshold, alpha, n_tests, col.chance, col.records)


UNIT_RANGE = {"test_macro_f1", "test_balanced_accuracy", "val_accuracy"}  # in [0, 1], no test-set floor here
SIGNED_RANGE = {"train_val_gap", "drift"}  # differences of two accuracies: in [-1, 1]


def _cell_interval(
    store: RunStore,
    records: dict[str, RunRecord],
    metric: str,
    vals: dict[int, float],
    runs: dict[int, str],
    tasks: dict[str, str],
) -> stats.Interval:
    """A cell's mean of one metric over seeds with its 95% interval; test accuracy with its test-set floor, and
    accuracy-like metrics kept inside the range they can take."""
    base, letter = split_metric(metric)
    if base == "test_accuracy":
        return _accuracy_interval(store, records, vals, runs, tasks.get(letter or ""))
    iv = stats.mean_interval([vals[s] for s in sorted(vals)])
    if base in UNIT_RANGE:
        return stats.clamp_interval(iv)
    return stats.clamp_interval(iv, -1.0, 1.0) if base in SIGNED_RANGE else iv


def _metric_order(design: Design):
    order = {m: i for i, m in enumerate(design.metrics)}
    return lambda m: (order.get(m, len(order)), m)


def reference_of(design: Design, group: str) -> Cell | None:
    return next((c for c in design.cells if c.group == group and c.reference), None)


def groups_of(design: Design) -> list[str]:
    return list(dict.fromkeys(c.group for c in design.cells))


# -- recommendation -------------------------------------------------------------------------------
def _mean(v: dict[int, float] | None) -> float:
    return float(np.mean(list(v.values()))) if v else math.inf


def _recommend(
    store: RunStore,
    design: Design,
    values: dict[tuple[str, str, str], dict[int, float]],
    runs: dict[tuple[str, str], dict[int, str]],
    tasks: dict[str, str],
    records: dict[str, RunRecord],
    threshold: float,
    alpha: float,
) -> list[Recommendation]:
    out = []
    acc_spec = SPECS["test_accuracy"]
    for group in groups_of(design):
        cells = [c for c in design.cells if c.group == group]
        for letter, task in tasks.items():
            metric = f"test_accuracy:{letter}"
            have = [c for c in cells if values.get((design.id, c.label, metric))]
            if len(have) < 2:  # nothing to recommend against
                continue
            best = max(have, key=lambda c: _mean(values[(design.id, c.label, metric)]))
            best_vals = values[(design.id, best.label, metric)]
            results: dict[str, ComparisonResult] = {}
            for c in have:
                if c is best:
                    continue
                got = _compare(
                    store, acc_spec, values[(design.id, c.label, metric)], best_vals, runs[(design.id, c.label)],
                    runs[(design.id, best.label)], task, records,
                )  # fmt: skip
                if got is None:
                    continue
                comp, boot = got
                label = metric_label(metric, tasks)
                raw = stats.verdict(comp, threshold, True, label, c.label, best.label, "points")
                results[c.label] = ComparisonResult(
                    design.id, group, c.label, best.label, metric, label, comp, raw, raw, bootstrap=boot,
                    phrase=_phrase(acc_spec, metric, comp, tasks, best.label),
                )  # fmt: skip
            for r in results.values():  # no Holm here: the pick must not be a cell the data already show worse
                r.p_adjusted, r.family_size = r.comparison.p_value, 1
                _finish(r, acc_spec, threshold, alpha, r.cell)
            eligible = [best] + [c for c in have if c.label in results and results[c.label].status != "worse"]

            def cost(c: Cell) -> tuple[float, float]:
                return (
                    _mean(values.get((design.id, c.label, "train_seconds"))),
                    _mean(values.get((design.id, c.label, "trainable_params"))),
                )

            pick = min(eligible, key=cost)
            speed = None
            if pick is not best:
                speed = _oriented_ratio(
                    SPECS["train_seconds"],
                    values.get((design.id, pick.label, "train_seconds"), {}),
                    values.get((design.id, best.label, "train_seconds"), {}),
                )
            params = (
                _finite_or_none(_mean(values.get((design.id, pick.label, "trainable_params")))),
                _finite_or_none(_mean(values.get((design.id, best.label, "trainable_params")))),
            )
            acc = _accuracy_interval(
                store, records, values[(design.id, pick.label, metric)], runs[(design.id, pick.label)], task
            )
            best_acc = _accuracy_interval(store, records, best_vals, runs[(design.id, best.label)], task)
            rec = Recommendation(
                design.id, group, task, pick.label, best.label, "", acc, best_acc, results.get(pick.label), speed,
                params, {k: r.status for k, r in results.items()},
            )  # fmt: skip
            rec.sentence = _recommendation_sentence(
                rec, metric, cheapest=min(have, key=cost).label, threshold=threshold
            )
            out.append(rec)
    return out


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _recommendation_sentence(rec: Recommendation, metric: str, cheapest: str, threshold: float) -> str:
    where = f" ({rec.group})" if rec.group else ""
    acc = fmt_interval(metric, rec.accuracy, "%")
    if rec.cell == rec.best:
        if cheapest == rec.cell:
            return f"For {rec.task}{where}: {rec.cell}: the most accurate ({acc}) and the cheapest."
        return (
            f"For {rec.task}{where}: {rec.cell}: the most accurate ({acc}); every cheaper cell is worse "
            f"(its whole interval more than {points_text(threshold)} below)."
        )
    b = rec.against_best
    against = f"{b.phrase}: {b.tag}" if b else "not compared"
    text = (
        f"For {rec.task}{where}: {rec.cell}. Its test accuracy {acc} is not statistically worse than the best "
        f"cell's, {rec.best} ({fmt_interval(metric, rec.best_accuracy, '%')}; it {against})"
    )
    savings = []
    if rec.speedup is not None:
        ratio, up = ratio_text(rec.speedup)
        noise = " (1 seed)" if rec.speedup.low is None else (" (within noise)" if rec.speedup.contains(1.0) else "")
        savings.append(f"trains {ratio} {'faster' if up else 'slower'}{noise}")
    pick_p, best_p = rec.trainable_params
    if pick_p is not None and best_p is not None and pick_p != best_p:
        fewer = f" ({fmt_sig2(best_p / pick_p)}x fewer)" if pick_p > 0 and best_p > pick_p else ""
        savings.append(f"trains {pick_p:,.0f} instead of {best_p:,.0f} parameters{fewer}")
    return text + (", and it " + " and ".join(savings) if savings else "") + "."


# -- seeds ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedsAdvice:
    """What more seeds would settle: per unsettled comparison, and the most any of a design's needs."""

    design: str
    comparisons: list[tuple[str, str, str, int | None]]  # (group, cell, metric, seeds needed; None: > MAX_SEEDS)
    max_seeds: int | None  # the seeds to queue in total for every settleable comparison; None: nothing to queue
    unreachable: int  # unsettled comparisons that would not settle within core.stats.MAX_SEEDS seeds


def seeds_to_settle(findings: StudyFindings) -> dict[str, SeedsAdvice]:
    """For every design with unsettled comparisons: the seeds each needs (extrapolated from the spread of its
    per-seed differences, core.stats.seeds_needed; a Holm-downgraded one at the Holm-corrected confidence), and
    the most over the design, for a "queue more seeds" button. A one-seed comparison has no spread to extrapolate
    from: it needs at least MIN_SEEDS (3)."""
    out = {}
    for design_id, d in findings.designs.items():
        rows = []
        for c in d.comparisons:
            if c.status != "unsettled" or c.derived:
                continue
            n_seeds = len(c.comparison.differences) if c.comparison.differences else 1
            band = math.log1p(findings.ratio_threshold) if c.comparison.scale == "ratio" else findings.threshold
            if stats.floor_blocks(c.comparison, band):
                needed: int | None = None  # only a larger test set settles it
            elif c.bootstrap or n_seeds < 2:
                needed = MIN_SEEDS
            else:
                needed = c.verdict.seeds_needed
            rows.append((c.group, c.cell, c.metric, needed))
        if not rows:
            continue
        known = [n for *_, n in rows if n is not None]
        out[design_id] = SeedsAdvice(
            design_id, rows, max(known) if known else None, sum(1 for *_, n in rows if n is None)
        )
    return out
