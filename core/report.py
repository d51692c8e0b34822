"""A study's findings written down: a self-contained markdown report with PNG charts, and the same charts as
plotly figures for the dashboard. Reads findings (core/findings.py; numbers formatted by core/study_values.py); trains nothing; no streamlit.

Both renderers draw one chart description (``chart_spec``), so the PNG and the dashboard show the same thing.
Axis rule: an accuracy axis (test accuracy, macro-F1, share kept) never magnifies noise: bars grow from chance
level (1 / number of classes; 0 for macro-F1), other accuracy axes span at least 10 points; axes of points
differences (gap, drift) include 0 and span at least 10 points; cost axes start at 0 (log scale when the values
span more than 30x).
"""

from __future__ import annotations

import math
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import stats
from core.findings import DesignFindings, StudyFindings, seeds_to_settle
from core.records import RunState
from core.store import RunStore
from core.studies import Study
from core.study_values import SPECS, fmt_interval, fmt_seconds, metric_label, points_text, split_metric

MIN_SPAN = 10.0  # points: the narrowest accuracy axis
LOG_SPREAD = 30.0  # cost axes go logarithmic beyond this max / min
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
STATUS_MARK = {"better": "better", "worse": "worse", "equivalent": "equivalent", "unsettled": "unsettled"}


# -- chart description ----------------------------------------------------------------------------
@dataclass
class Trace:
    """One series. kind: "line" (x/y with an interval band), "bar" (categories), "point" (pareto, x and y
    error bars), "front" (pareto front line), "hline" (a reference level with its band)."""

    name: str
    kind: str
    x: list
    y: list[float]
    lo: list[float | None] | None = None
    hi: list[float | None] | None = None
    x_lo: list[float | None] | None = None
    x_hi: list[float | None] | None = None
    labels: list[str] | None = None
    color: str = PALETTE[0]
    base: float = 0.0  # bars grow from here


@dataclass
class Panel:
    title: str
    x_label: str
    y_label: str
    traces: list[Trace] = field(default_factory=list)
    y_range: tuple[float, float] | None = None
    x_range: tuple[float, float] | None = None
    x_log: bool = False
    y_log: bool = False
    categorical: bool = False
    accuracy_axis: bool = False  # the axis rule applied (tests check it)


@dataclass
class ChartSpec:
    design: str
    title: str
    panels: list[Panel]


def _kind(metric: str) -> str:
    base, _ = split_metric(metric)
    if base in ("test_accuracy", "test_macro_f1", "test_balanced_accuracy", "val_accuracy"):
        return "accuracy"
    if base == "share_kept":
        return "share"
    if base in ("train_val_gap", "drift"):
        return "points_diff"
    return "cost"


def _display(metric: str, v: float | None) -> float | None:
    """Values as shown on an axis: accuracies and shares in percent, points differences in points."""
    if v is None:
        return None
    return v * 100 if _kind(metric) in ("accuracy", "share", "points_diff") else v


def _y_unit(metric: str) -> str:
    kind = _kind(metric)
    if kind in ("accuracy", "share"):
        return "%"
    if kind == "points_diff":
        return "points"
    unit = SPECS[split_metric(metric)[0]].unit
    return {"seconds": "s"}.get(unit, unit)


def _span_range(lows: list[float], highs: list[float], min_span: float, floor: float, ceil: float, zero: bool):
    lo, hi = min(lows), max(highs)
    if zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    if lo < floor:
        lo, hi = floor, max(hi + (floor - lo), floor + min_span)
    if hi > ceil:
        lo, hi = min(lo - (hi - ceil), ceil - min_span), ceil
    return max(lo, floor), min(hi, ceil)


def _apply_axis_rule(panel: Panel, metric: str, chance: float | None) -> None:
    lows = [v for t in panel.traces for v in ((t.lo or []) + t.y) if v is not None]
    highs = [v for t in panel.traces for v in ((t.hi or []) + t.y) if v is not None]
    if not lows:
        return
    kind = _kind(metric)
    if kind == "accuracy" and panel.categorical:
        base = 100 * chance if chance is not None and split_metric(metric)[0] != "test_macro_f1" else 0.0
        base = min(base, min(lows))
        top = min(100.0, max(max(highs) + 0.08 * (max(highs) - base), base + MIN_SPAN))
        panel.y_range = (base, top)
        for t in panel.traces:
            t.base = base
        panel.accuracy_axis = True
    elif kind in ("accuracy", "share"):
        ceil = 100.0 if kind == "accuracy" else max(110.0, max(highs) + 5)
        panel.y_range = _span_range(lows, highs, MIN_SPAN, 0.0, ceil, zero=False)
        panel.accuracy_axis = True
    elif kind == "points_diff":
        panel.y_range = _span_range(lows, highs, MIN_SPAN, -100.0, 100.0, zero=True)
        panel.accuracy_axis = True
    else:
        positive = [v for v in lows if v > 0]
        if positive and max(highs) / min(positive) > LOG_SPREAD:
            panel.y_log = True
        else:
            panel.y_range = (0.0, max(highs) * 1.08 if max(highs) > 0 else 1.0)


def _interval_lists(stats_list, metric):
    ys = [_display(metric, s.interval.estimate) for s in stats_list]
    lo = [_display(metric, s.interval.low) for s in stats_list]
    hi = [_display(metric, s.interval.high) for s in stats_list]
    return ys, lo, hi


def _chart_metrics(d: DesignFindings) -> list[str]:
    have = {s.metric for s in d.cells}
    return [m for m in d.design.metrics if m in have]


def _ylabel(metric: str, tasks: dict[str, str]) -> str:
    unit = _y_unit(metric)
    return metric_label(metric, tasks) if unit == "parameters" else f"{metric_label(metric, tasks)} ({unit})"


def _bars(d: DesignFindings, findings: StudyFindings) -> list[Panel]:
    panels = []
    for metric in _chart_metrics(d):
        cells = [s for s in d.cells if s.metric == metric]
        ys, lo, hi = _interval_lists(cells, metric)
        panel = Panel(metric_label(metric, findings.tasks), "", _ylabel(metric, findings.tasks), categorical=True)
        panel.traces.append(Trace(metric, "bar", [s.cell for s in cells], ys, lo, hi))
        _apply_axis_rule(panel, metric, findings.chance.get(split_metric(metric)[1] or ""))
        panels.append(panel)
    return panels


def _curves(d: DesignFindings, findings: StudyFindings) -> list[Panel]:
    panels = []
    series_names = list(dict.fromkeys(c.series or c.label for c in d.design.cells))
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series_names)}
    xs_all = [c.x for c in d.design.cells if c.x is not None and c.x >= 0]
    x_log = bool(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10
    x_label = "training examples per task" if d.design.id == "overfitting" else "x"
    if d.design.id == "freeze_depth":
        x_label = "frozen bottom layers k"
    for metric in _chart_metrics(d):
        panel = Panel(metric_label(metric, findings.tasks), x_label, _ylabel(metric, findings.tasks), x_log=x_log)
        lines = {name: [] for name in series_names}
        for s in d.cells:
            if s.metric == metric and s.x is not None:
                lines[s.series or s.cell].append(s)
        multi = [name for name, pts in lines.items() if len(pts) > 1]
        x_min, x_max = (min(xs_all), max(xs_all)) if xs_all else (0, 1)
        for name, pts in lines.items():
            if not pts:
                continue
            pts.sort(key=lambda s: s.x)
            ys, lo, hi = _interval_lists(pts, metric)
            if len(pts) == 1 and multi:  # a single-level reference (full fine-tuning in freeze_depth): a level
                panel.traces.append(Trace(name, "hline", [x_min, x_max], ys * 2, lo * 2, hi * 2, color=colors[name]))
            else:
                panel.traces.append(Trace(name, "line", [s.x for s in pts], ys, lo, hi, color=colors[name]))
        if not panel.traces:
            continue
        if split_metric(metric)[0] == "share_kept":
            panel.traces.append(Trace("Lee et al. 90%", "hline", [x_min, x_max], [90.0, 90.0], color="#444444"))
        _apply_axis_rule(panel, metric, findings.chance.get(split_metric(metric)[1] or ""))
        panels.append(panel)
    return panels


def _pareto_front(points: list[tuple[float, float, int]]) -> list[int]:
    """Indices of the points no other point beats (lower or equal cost, higher or equal accuracy)."""
    front = []
    for c, a, i in points:
        if not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for c2, a2, _ in points):
            front.append(i)
    return sorted(front, key=lambda i: next(c for c, _, j in points if j == i))


def _pareto(d: DesignFindings, findings: StudyFindings) -> list[Panel]:
    cost_metric = "train_seconds" if any(s.metric == "train_seconds" for s in d.cells) else "wall_seconds"
    panels = []
    acc_metrics = [m for m in _chart_metrics(d) if split_metric(m)[0] == "test_accuracy"]
    for metric in acc_metrics:
        panel = Panel(
            f"{metric_label(metric, findings.tasks)} against cost",
            f"{cost_metric.replace('_', ' ')} (s)",
            _ylabel(metric, findings.tasks),
        )
        pts = []
        for i, cell in enumerate(d.design.cells):
            acc, cost = d.stat(cell.label, metric), d.stat(cell.label, cost_metric)
            if acc is None or cost is None:
                continue
            pts.append((cell.label, acc, cost, PALETTE[i % len(PALETTE)]))
        if not pts:
            continue
        for label, acc, cost, color in pts:
            panel.traces.append(
                Trace(
                    label, "point", [cost.interval.estimate], [_display(metric, acc.interval.estimate)],
                    [_display(metric, acc.interval.low)], [_display(metric, acc.interval.high)],
                    [cost.interval.low], [cost.interval.high], labels=[label], color=color,
                )
            )  # fmt: skip
        front = _pareto_front([(c.interval.estimate, a.interval.estimate, i) for i, (_, a, c, _) in enumerate(pts)])
        if len(front) > 1:
            panel.traces.append(
                Trace(
                    "Pareto front", "front", [pts[i][2].interval.estimate for i in front],
                    [_display(metric, pts[i][1].interval.estimate) for i in front], color="#444444",
                )
            )  # fmt: skip
        costs = [c.interval.estimate for _, _, c, _ in pts if c.interval.estimate > 0]
        panel.x_log = bool(costs) and max(costs) / min(costs) > LOG_SPREAD
        if not panel.x_log:
            highs = [c.interval.high if c.interval.high is not None else c.interval.estimate for _, _, c, _ in pts]
            panel.x_range = (0.0, max(highs) * 1.1 if max(highs) > 0 else 1.0)
        _apply_axis_rule(panel, metric, findings.chance.get(split_metric(metric)[1] or ""))
        panels.append(panel)
    others = [m for m in _chart_metrics(d) if split_metric(m)[0] != "test_accuracy" and m != cost_metric]
    if others:
        sub = DesignFindings(**{**d.__dict__, "cells": [s for s in d.cells if s.metric in others]})
        panels.extend(_bars(sub, findings))
    return panels


def chart_spec(d: DesignFindings, findings: StudyFindings) -> ChartSpec:
    """What a design's chart shows, independent of the drawing library."""
    if d.design.chart == "pareto":
        panels = _pareto(d, findings)
    elif d.design.chart == "curve_by_x" and any(c.x is not None for c in d.design.cells):
        panels = _curves(d, findings)
    else:
        panels = _bars(d, findings)
    return ChartSpec(d.design.id, d.design.title, panels)


# -- matplotlib -----------------------------------------------------------------------------------
def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3) if n != 4 else 2
    return math.ceil(n / cols), cols


def _err(y: list, lo: list | None, hi: list | None):
    if lo is None or hi is None:
        return None
    return [
        [max(0.0, yv - lv) if lv is not None else 0.0 for yv, lv in zip(y, lo)],
        [max(0.0, hv - yv) if hv is not None else 0.0 for yv, hv in zip(y, hi)],
    ]


def render_png(spec: ChartSpec, path: Path) -> Path | None:
    """Draw ``spec`` with matplotlib (Agg) into ``path``; None when there is nothing to draw."""
    if not spec.panels:
        return None
    # The object-oriented API with the Agg canvas, never pyplot: no global backend or figure state, so the
    # dashboard may write a report from any thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    rows, cols = _grid(len(spec.panels))
    fig = Figure(figsize=(5.4 * cols, 4.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    thousands = FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 1e6 else f"{v:,g}")
    for ax, panel in zip(axes.flat, spec.panels):
        for t in panel.traces:
            if t.kind == "bar":
                pos = list(range(len(t.x)))
                heights = [y - t.base for y in t.y]
                ax.bar(pos, heights, bottom=t.base, color=t.color, alpha=0.8, yerr=_err(t.y, t.lo, t.hi), capsize=4)
                ax.set_xticks(pos, ["\n".join(textwrap.wrap(str(x), 16)) for x in t.x], fontsize=8)
            elif t.kind == "line":
                ax.plot(t.x, t.y, marker="o", color=t.color, label=t.name)
                if t.lo and all(v is not None for v in t.lo + t.hi):
                    ax.fill_between(t.x, t.lo, t.hi, color=t.color, alpha=0.18, linewidth=0)
            elif t.kind == "hline":
                ax.plot(t.x, t.y, linestyle="--", color=t.color, label=t.name)
                if t.lo and all(v is not None for v in t.lo + t.hi):
                    ax.fill_between(t.x, t.lo, t.hi, color=t.color, alpha=0.12, linewidth=0)
            elif t.kind == "point":
                ax.errorbar(
                    t.x, t.y, yerr=_err(t.y, t.lo, t.hi), xerr=_err(t.x, t.x_lo, t.x_hi), fmt="o", color=t.color,
                    capsize=4, label=t.name,
                )  # fmt: skip
                for x, y, label in zip(t.x, t.y, t.labels or []):
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
            elif t.kind == "front":
                ax.plot(t.x, t.y, linestyle=":", color=t.color, label=t.name)
        if panel.x_log:
            ax.set_xscale("log")
        if panel.y_log:
            ax.set_yscale("log")
        if panel.y_range:
            ax.set_ylim(*panel.y_range)
        if panel.x_range:
            ax.set_xlim(*panel.x_range)
        if not panel.categorical:
            ax.xaxis.set_major_formatter(thousands)
        if not panel.y_log:
            ax.yaxis.set_major_formatter(thousands)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.x_label, fontsize=9)
        ax.set_ylabel(panel.y_label, fontsize=9)
        ax.grid(alpha=0.3)
        if any(t.kind in ("line", "hline", "point", "front") for t in panel.traces):
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(spec.panels) :]:
        ax.axis("off")
    fig.suptitle(spec.title + " (95% intervals)", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# -- plotly ---------------------------------------------------------------------------------------
def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def render_plotly(spec: ChartSpec):
    """The same chart as a plotly Figure (one subplot per panel)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not spec.panels:
        return go.Figure(layout={"title": spec.title + ": no completed runs yet"})
    rows, cols = _grid(len(spec.panels))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p.title for p in spec.panels])
    for i, panel in enumerate(spec.panels):
        row, col = i // cols + 1, i % cols + 1
        for t in panel.traces:
            err = _err(t.y, t.lo, t.hi)
            err_y = dict(type="data", symmetric=False, array=err[1], arrayminus=err[0]) if err else None
            if t.kind == "bar":
                fig.add_trace(
                    go.Bar(x=t.x, y=[y - t.base for y in t.y], base=t.base, error_y=err_y, marker_color=t.color,
                           name=t.name, showlegend=False),
                    row=row, col=col,
                )  # fmt: skip
            elif t.kind in ("line", "hline"):
                if t.lo and all(v is not None for v in t.lo + t.hi):
                    fig.add_trace(
                        go.Scatter(x=list(t.x) + list(t.x)[::-1], y=list(t.hi) + list(t.lo)[::-1], fill="toself",
                                   fillcolor=_rgba(t.color, 0.18), line={"width": 0}, hoverinfo="skip",
                                   showlegend=False),
                        row=row, col=col,
                    )  # fmt: skip
                fig.add_trace(
                    go.Scatter(x=t.x, y=t.y, mode="lines" if t.kind == "hline" else "lines+markers", name=t.name,
                               line={"color": t.color, "dash": "dash" if t.kind == "hline" else "solid"},
                               legendgroup=t.name, showlegend=i == 0),
                    row=row, col=col,
                )  # fmt: skip
            elif t.kind == "point":
                xerr = _err(t.x, t.x_lo, t.x_hi)
                err_x = dict(type="data", symmetric=False, array=xerr[1], arrayminus=xerr[0]) if xerr else None
                fig.add_trace(
                    go.Scatter(x=t.x, y=t.y, mode="markers+text", text=t.labels, textposition="top right",
                               error_y=err_y, error_x=err_x, marker={"color": t.color, "size": 9}, name=t.name,
                               showlegend=False),
                    row=row, col=col,
                )  # fmt: skip
            elif t.kind == "front":
                fig.add_trace(
                    go.Scatter(x=t.x, y=t.y, mode="lines", line={"color": t.color, "dash": "dot"}, name=t.name,
                               showlegend=i == 0),
                    row=row, col=col,
                )  # fmt: skip
        fig.update_xaxes(
            title_text=panel.x_label, type="log" if panel.x_log else None,
            range=list(panel.x_range) if panel.x_range else None, row=row, col=col,
        )  # fmt: skip
        fig.update_yaxes(
            title_text=panel.y_label, type="log" if panel.y_log else None, range=list(panel.y_range) if panel.y_range
            else None, tickformat=",", row=row, col=col,
        )  # fmt: skip
    fig.update_layout(title=spec.title + " (95% intervals)", height=360 * rows, margin={"t": 80})
    return fig


def figures(findings: StudyFindings) -> dict:
    """design id -> plotly Figure, the same content as the report's PNG charts."""
    return {design_id: render_plotly(chart_spec(d, findings)) for design_id, d in findings.designs.items()}


# -- markdown -------------------------------------------------------------------------------------
def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _study_times(store: RunStore, study: Study) -> tuple[float, float | None, int]:
    """(sum of the runs' wall_seconds, span from the first run created to the last finished, runs counted)."""
    total, starts, ends, n = 0.0, [], [], 0
    for run_id in study.run_ids():
        if not store.exists(run_id):
            continue
        rec = store.record(run_id)
        if rec.summary is not None and rec.summary.wall_seconds:
            total += rec.summary.wall_seconds
            n += 1
        if rec.status.created_at:
            starts.append(rec.status.created_at)
        if rec.status.finished_at and rec.state != RunState.RUNNING:
            ends.append(rec.status.finished_at)
    span = max(ends) - min(starts) if starts and ends and max(ends) >= min(starts) else None
    return total, span, n


def _settings(store: RunStore, study: Study, findings: StudyFindings) -> list[str]:
    base = study.base_config
    data = ", ".join(
        f"{t['name']} = {t['dataset']}" + (f" (at most {t['max_train_examples']:,} training examples)"
                                           if t.get("max_train_examples") else "")
        for t in base.get("tasks", [])
    )  # fmt: skip
    total, span, n_timed = _study_times(store, study)
    completed = sum(1 for r in findings.records.values() if r.state == RunState.COMPLETED)
    left = {}
    for d in findings.designs.values():
        for k, v in d.left_out.items():
            left[k] = left.get(k, 0) + v
    left_text = ", ".join(f"{v} {k}" for k, v in sorted(left.items())) or "none"
    rows = [
        ("data", f"{data}; the designs set their own training sizes (see each question)"),
        ("backbone", str(base.get("backbone"))),
        ("seeds", f"{', '.join(map(str, study.seeds))} ({len(study.seeds)})"),
        ("threshold", f"{points_text(study.threshold)} for accuracy, macro-F1, gaps and drift; "
                      f"{findings.ratio_threshold * 100:g}% for cost ratios"),  # fmt: skip
        ("intervals", "95% Student-t over seeds; comparisons paired by seed (cost ratios on the log scale); test "
                      "accuracies never narrower than their test set resolves, and inside 0-100%"),
        ("test sets", _test_sets_text(findings)),
        ("multiple comparisons", _holm_text(findings)),
        ("runs", f"{completed} completed runs read; left out of the analysis: {left_text}"),
        ("compute", f"{fmt_seconds(total)} of run wall time in total ({n_timed} runs); "
                    f"{fmt_seconds(span)} from the first run created to the last finished"),
    ]  # fmt: skip
    return ["| setting | value |", "| --- | --- |", *(f"| {k} | {_md_escape(v)} |" for k, v in rows)]


def _test_sets_text(findings: StudyFindings) -> str:
    """The fewest test sentences per task and what they resolve: the floor under every accuracy interval
    (core.stats.test_set_half_width; for a difference, two of them combined). Small test sets are flagged."""
    parts = []
    for task in findings.tasks.values():
        runs = [r for r in findings.records.values() if r.state == RunState.COMPLETED and r.summary]
        sizes = [r.summary.tasks[task].n_test for r in runs if task in r.summary.tasks and r.summary.tasks[task].n_test]
        accs = [r.summary.test_accuracy(task) for r in runs if r.summary.test_accuracy(task) is not None]
        if not sizes or not accs:
            continue
        n, p = min(sizes), float(sum(accs) / len(accs))
        one = stats.test_set_half_width(p, n)
        two = stats.difference_half_width((p, n), (p, n))
        small = (
            " (a small test set: no number of seeds settles a smaller difference)" if n < stats.SMALL_TEST_SET else ""
        )
        parts.append(
            f"{task}: {n:,} sentences, an accuracy ±{one * 100:.1f} points, a difference ±{two * 100:.1f}{small}"
        )
    return "; ".join(parts) or "sizes unknown"


def _holm_text(findings: StudyFindings) -> str:
    """Holm runs within each question (core/findings.py): say so, with the families' sizes and their bounds."""
    sizes = sorted(
        {d.design.id: max((c.family_size for c in d.comparisons if not c.derived), default=0)
         for d in findings.designs.values()}.values()
    )  # fmt: skip
    sizes = [m for m in sizes if m > 0]
    alpha = findings.alpha
    if not sizes:
        return f"Holm within each question, alpha {alpha:g}: no comparison has a p-value yet"
    if len(sizes) == 1:
        families = f"{sizes[0]} comparisons in one family"
        bound = f"the smallest p must be below {alpha / sizes[0]:.2g}"
    else:
        families = f"{sum(sizes)} comparisons in {len(sizes)} families of {sizes[0]}-{sizes[-1]}"
        bound = (
            f"the smallest p of a family of m must be below alpha/m: {alpha / sizes[-1]:.2g} in the largest "
            f"family, {alpha / sizes[0]:.2g} in the smallest"
        )
    return (
        f"Holm within each question ({families}), alpha {alpha:g}: a better/worse interval whose adjusted p is "
        f"above alpha counts as unsettled ({bound}; few seeds rarely get there)"
    )


def _table_header(metric: str, tasks: dict[str, str]) -> str:
    unit = _y_unit(metric)
    if _kind(metric) == "share" or unit == "parameters":
        return metric_label(metric, tasks)  # the values carry their own % sign, or are plain counts
    return f"{metric_label(metric, tasks)} ({unit})"


def _means_table(d: DesignFindings, findings: StudyFindings) -> list[str]:
    metrics = [m for m in d.design.metrics if any(s.metric == m for s in d.cells)]
    if not metrics:
        return []
    head = ["cell", *(_table_header(m, findings.tasks) for m in metrics), "seeds"]
    lines = ["| " + " | ".join(_md_escape(h) for h in head) + " |", "|" + " --- |" * len(head)]
    for cell in d.design.cells:
        row_stats = {s.metric: s for s in d.cells if s.cell == cell.label}
        if not row_stats:
            continue
        ns = [s.interval.n for m, s in row_stats.items() if m in metrics and not split_metric(m)[0] == "share_kept"]
        values = []
        for m in metrics:
            s = row_stats.get(m)
            values.append(fmt_interval(m, s.interval) if s else "")
        label = cell.label + (" (reference)" if cell.reference else "")
        lines.append("| " + " | ".join(_md_escape(v) for v in [label, *values, str(max(ns) if ns else "")]) + " |")
    return lines


def _status_word(status: str) -> str:
    return f"**{STATUS_MARK.get(status, status)}**"


def write_report(
    store: RunStore, study: Study, findings: StudyFindings, out_dir: Path | str | None = None, fmt: str = "md"
) -> Path:
    """Write ``report.md`` and one PNG chart per design into ``out_dir`` (default: the study's report folder);
    links are relative, so the folder can be moved or attached as a whole. Returns the markdown file's path."""
    if fmt != "md":
        raise ValueError(f"report format {fmt!r} is not supported; use 'md'.")
    out = Path(out_dir) if out_dir is not None else store.study_report_dir(study.id)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Study report: {study.name or study.id}",
        "",
        f"Study `{study.id}`, created {time.strftime('%Y-%m-%d %H:%M', time.localtime(study.created_at or 0))}; "
        f"report written {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "## Settings",
        "",
        *_settings(store, study, findings),
        "",
        "How to read it: every number is a mean over seeds with its 95% interval in brackets. A verdict is "
        "*better* or *worse* only when the whole interval is beyond the threshold and the difference survives the "
        "Holm correction; *equivalent* when the interval lies inside the threshold; otherwise *unsettled* "
        '("within noise" when the interval includes no difference). The interval of a test accuracy is never narrower '
        "than its test set can resolve (see test sets above), however well the seeds agree. Accuracies are in "
        "percent, differences in points (1 point = 1% accuracy).",
        "",
    ]
    advice = seeds_to_settle(findings)
    for number, (design_id, d) in enumerate(findings.designs.items(), start=1):
        lines += [f"## {number}. {d.design.question} ({design_id})", "", f"*{d.design.title}.*", ""]
        lines += [f"**Answer.** {d.answer}", ""]
        if d.recommendations:
            lines += ["**Recommendation.**", ""] + [f"- {r.sentence}" for r in d.recommendations] + [""]
        verdicts = [c for c in d.comparisons if not c.derived]
        if verdicts:
            lines += ["**Verdicts.**", ""]
            lines += [f"- {_status_word(c.status)}: {c.sentence}" for c in verdicts]
            lines.append("")
        table = _means_table(d, findings)
        if table:
            lines += table + [""]
        png = render_png(chart_spec(d, findings), out / f"{design_id}.png")
        if png is not None:
            lines += [f"![{d.design.title}]({png.name})", ""]
        notes = []
        if d.design.note:
            notes.append(d.design.note)
        if d.levels:
            notes.append(
                "Validation level for time/steps to the level: "
                + ", ".join(
                    f"{findings.tasks.get(letter, letter)}{f' ({g})' if g else ''} {lvl * 100:.1f}%"
                    for (g, letter), lvl in d.levels.items()
                )
                + " (95% of the reference cell's mean final validation accuracy)."
            )
        if d.left_out:
            notes.append(
                "Left out: " + ", ".join(f"{v} {k}" for k, v in sorted(d.left_out.items())) + " run(s) of this design."
            )
        if design_id in advice:
            a = advice[design_id]
            if a.max_seeds:
                notes.append(f"To settle its unsettled comparisons: about {a.max_seeds} seeds in total.")
            if a.unreachable:
                notes.append(
                    f"{a.unreachable} unsettled comparison(s) would not settle with more seeds: they need a larger "
                    f"test set or more than {stats.MAX_SEEDS} seeds."
                )
        for note in notes:
            lines += [f"*{_md_escape(note)}*", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


__all__ = ["ChartSpec", "Panel", "Trace", "chart_spec", "figures", "render_plotly", "render_png", "write_report"]
