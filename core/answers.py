"""Answers: a design's findings put into the plain words that answer its question. No reads, no statistics, no UI.

``answer`` writes one design's answer from its ``DesignFindings`` (core/findings.py, which calls it at the end of
``analyse``): the generic cell-against-reference lines, and the special answers of the overfitting (where the
accuracy curves cross along the data size), freeze_depth and head_drift questions. The freeze_depth answer also
judges Lee et al. (2019) (about LEE_SHARE of full fine-tuning quality with only the top quarter of layers
training: reproduced, refuted or unsettled on the whole interval of the share kept) and records that verdict in
``DesignFindings.lee``.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from core import stats
from core.findings import ComparisonResult, DesignFindings, groups_of, ratio_text, reference_of
from core.study_values import LEVEL_FRACTION, fmt_interval, metric_label

LEE_SHARE = 0.90  # Lee et al. (2019): about 90% of full fine-tuning quality with only the top quarter training


def answer(df: DesignFindings, tasks: dict[str, str], threshold: float, alpha: float) -> str:
    if not df.cells:
        return "No completed runs yet: nothing to answer."
    special = {"overfitting": _answer_overfitting, "freeze_depth": _answer_freeze_depth, "head_drift": _answer_drift}
    parts = []
    fn = special.get(df.design.id)
    if fn is not None:
        parts.append(fn(df, tasks))
    else:
        parts.append(_answer_generic(df))
    if df.never_reached:
        by_cell: dict[tuple[str, str], int] = defaultdict(int)
        for r in df.never_reached:
            by_cell[(r["cell"], r["metric"])] += 1
        parts.append(
            "Never reached the validation level ("
            + f"{LEVEL_FRACTION:.0%} of the reference's final validation accuracy): "
            + "; ".join(
                f"{cell} ({metric_label(m, tasks)}, {n} run{'s' if n > 1 else ''})" for (cell, m), n in by_cell.items()
            )
            + "."
        )
    if df.n_seeds == 1:
        parts.append(
            "With one seed per cell, accuracy comparisons rest on a bootstrap over test examples (test-set noise "
            "only); run at least 3 seeds for intervals over training noise."
        )
    return " ".join(p for p in parts if p)


def _cell_line(df: DesignFindings, cell: str, reference: str, metrics: list[str] | None = None) -> str:
    comps = [c for c in df.comparisons if c.cell == cell and not c.derived and (metrics is None or c.metric in metrics)]
    if not comps:
        return ""
    return f"{cell} against {reference}: " + "; ".join(f"{c.phrase} ({c.tag})" for c in comps) + "."


def _answer_generic(df: DesignFindings) -> str:
    lines = []
    for group in groups_of(df.design):
        ref = reference_of(df.design, group)
        if ref is None:
            continue
        group_lines = [
            _cell_line(df, c.label, ref.label) for c in df.design.cells if c.group == group and not c.reference
        ]
        group_lines = [g for g in group_lines if g]
        if group_lines and group:
            group_lines[0] = f"With {group}: " + group_lines[0]
        lines.extend(group_lines)
    return (
        " ".join(lines)
        if lines
        else "No comparison could be made yet: a comparison needs completed runs of the reference cell and of "
        "another cell with the same seeds."
    )


def _answer_overfitting(df: DesignFindings, tasks: dict[str, str]) -> str:
    lines = []
    for group in groups_of(df.design):
        ref = reference_of(df.design, group)
        cells = [c for c in df.design.cells if c.group == group]
        for letter, task in tasks.items():
            metric = f"train_val_gap:{letter}"
            gaps = [(c.series or c.label, df.stat(c.label, metric)) for c in cells]
            gaps = [(label, s) for label, s in gaps if s is not None]
            if not gaps:
                continue
            text = f"{group or 'all'}, {task} train-validation gap: " + ", ".join(
                f"{label} {fmt_interval(metric, s.interval)}" for label, s in gaps
            )
            changes = [c for c in df.comparisons if c.group == group and c.metric == metric]
            if changes and ref is not None:
                name = {c.label: c.series or c.label for c in cells}
                text += (
                    " points; against "
                    + name[ref.label]
                    + ": "
                    + ", ".join(f"{name[c.cell]} {c.phrase} ({c.tag})" for c in changes)
                )
            else:
                text += " points"
            lines.append(text + ".")
    # where the accuracy curves cross
    ref_series = {c.series for c in df.design.cells if c.reference}
    for letter, task in tasks.items():
        metric = f"test_accuracy:{letter}"
        for series in dict.fromkeys(c.series for c in df.design.cells if c.series not in ref_series):
            points = sorted(
                (
                    (df.design.cell(c.cell).x, c)
                    for c in df.comparisons
                    if c.metric == metric and df.design.cell(c.cell).series == series
                ),
                key=lambda p: p[0] if p[0] is not None else 0,
            )
            if not points:
                continue
            lines.append(f"{task} test accuracy, {series} against {'/'.join(sorted(ref_series))}: " + _crossing(points))
    return " ".join(lines)


def _x_text(x: float | None) -> str:
    return "n/a" if x is None else f"n={x:,.0f}"


def _crossing(points: list[tuple[float | None, ComparisonResult]]) -> str:
    """Where a series' accuracy crosses the reference's along x: only settled better/worse verdicts count."""
    desc = ", ".join(f"{c.tag} at {_x_text(x)}" for x, c in points)
    settled = [(x, c.status) for x, c in points if c.status in ("better", "worse")]
    for (x1, s1), (x2, s2) in zip(settled, settled[1:]):
        if s1 != s2:
            return f"{desc}: the curves cross between {_x_text(x1)} and {_x_text(x2)} ({s1} below, {s2} above)."
    signs = [np.sign(c.comparison.estimate) for _, c in points if c.comparison.estimate != 0]
    if len(set(signs)) > 1:
        return f"{desc}: the estimates change sign, but no crossing within noise."
    side = "above" if signs and signs[0] > 0 else "below"
    return f"{desc}: no crossing within noise (the estimates stay {side} at every size)."


def _answer_freeze_depth(df: DesignFindings, tasks: dict[str, str]) -> str:
    lines = []
    ks = sorted({c.x for c in df.design.cells if c.x is not None and c.x >= 0})
    n_layers = int(max(ks)) if ks else 0
    k_quarter = n_layers - math.ceil(n_layers / 4) if n_layers else None
    ref = reference_of(df.design, "")
    ref_label = ref.label if ref else "the reference"
    for letter, task in tasks.items():
        metric = f"share_kept:{letter}"
        shares = [(df.design.cell(c.cell).x, c) for c in df.comparisons if c.metric == metric]
        shares = sorted([(x, c) for x, c in shares if x is not None], key=lambda p: p[0])
        if not shares:
            continue
        lines.append(
            f"Share of {ref_label}'s {task} test accuracy kept: "
            + ", ".join(f"k={x:g} {ratio_text(c.comparison, percent=True)[0]}" for x, c in shares)
            + "."
        )
        at = next((c for x, c in shares if x == k_quarter), None)
        if at is None:
            continue
        lo, hi = at.comparison.low, at.comparison.high
        if lo is None:
            status = "unsettled"
            why = "one seed and no interval"
        elif lo >= LEE_SHARE:
            status, why = "reproduced", f"the whole interval is at or above {LEE_SHARE:.0%}"
        elif hi < LEE_SHARE:
            status, why = "refuted", f"the whole interval is below {LEE_SHARE:.0%}"
        else:
            status, why = "unsettled", f"the interval straddles {LEE_SHARE:.0%}"
        df.lee[task] = status
        trained = n_layers - k_quarter
        lines.append(
            f"Lee et al. (2019) report about {LEE_SHARE:.0%} of full fine-tuning quality with only the top quarter "
            f"of layers training; here that is k={k_quarter} ({trained} of {n_layers} layers train), which keeps "
            f"{ratio_text(at.comparison, percent=True)[0]} on {task}: {status} ({why})."
        )
    cost = [c for c in df.comparisons if c.metric == "train_seconds"]
    if cost:
        lines.append(
            "Training time against "
            + ref_label
            + ": "
            + ", ".join(f"{c.cell} {c.phrase} ({c.tag})" for c in cost)
            + "."
        )
    return " ".join(lines)


def _answer_drift(df: DesignFindings, tasks: dict[str, str]) -> str:
    lines = []
    task = tasks.get("a", "task A")
    for cell in df.design.cells:
        s = df.stat(cell.label, "drift:a")
        if s is not None:
            lines.append(
                f"{cell.label}: {task} test accuracy changes by {_signed_points(s.interval)} points from its "
                "source run."
            )
    ref = reference_of(df.design, "")
    for cell in df.design.cells:
        if cell.reference or ref is None:
            continue
        line = _cell_line(df, cell.label, ref.label)
        if line:
            lines.append(line)
    return " ".join(lines)


def _signed_points(iv: stats.Interval) -> str:
    text = f"{iv.estimate * 100:+.1f}"
    if iv.low is not None and iv.high is not None and iv.low != iv.high:
        text += f" [{iv.low * 100:+.1f}, {iv.high * 100:+.1f}]"
    return text
