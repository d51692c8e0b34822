"""Study values: a study's runs read into one long table of per-run metric values. Pure reads: no training, no UI.

Owns the study metrics (``MetricSpec``, ``SPECS``: how each kind of metric is named, scaled and worded), the
number formatting shared by core/findings.py, core/answers.py, core/report.py and the findings page (``fmt_*``,
``points_text``), and the reading of runs (``collect``; ``collect_runs`` for core/findings.py, which does the
statistics).

The rules for the values, in one place:

* Every completed run of a design's cells gives its summary's costs and per-task accuracies under study metric
  names ("test_accuracy:a", "train_seconds", ...); ``train_val_gap`` is train minus final validation accuracy.
* **time_to_val / steps_to_val**: the wall seconds / step of a run's first validation evaluation whose accuracy
  reaches LEVEL = 0.95 x the mean final validation accuracy (the last evaluation, ``summary.val_accuracy``) of
  the reference cell of the run's group, for that task. A run that never reaches LEVEL has no value (listed in
  ``never_reached``).
* **drift:a**: the run's task-A test accuracy minus that of the run named by its config's ``init_from``.
* Runs that are missing, damaged or not completed are left out and counted per design.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core import stats
from core.records import RunState
from core.store import RunRecord, RunStore
from core.studies import Cell, Design, Study

LEVEL_FRACTION = 0.95  # time_to_val: the level is this share of the reference cell's final validation accuracy

COLUMNS = ["design", "cell", "group", "series", "x", "seed", "run_id", "state", "metric", "value"]
SUMMARY_COSTS = ("train_seconds", "wall_seconds", "tokens_per_second", "total_params", "trainable_params")


# -- metrics ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    """How one kind of metric is compared and put into words."""

    base: str
    scale: str  # "difference" | "ratio"
    unit: str  # points | seconds | steps | tokens/s | parameters | share
    label: str  # "{task}" is replaced by the task's name
    template: str  # difference: "{verb} {size} of {label}"; ratio: "trains {x} {word}"
    words: tuple[str, str]  # difference: (estimate >= 0, < 0) verbs; ratio: (ratio >= 1, < 1) words
    higher_is_better: bool = True
    cell_over_reference: bool = True  # ratio orientation: cell / reference, else reference / cell
    bootstrap: bool = False  # one seed: paired bootstrap over test predictions
    same: str = ""  # the phrase for a ratio of exactly 1 (deterministic counts)


SPECS: dict[str, MetricSpec] = {
    s.base: s
    for s in (
        MetricSpec("test_accuracy", "difference", "points", "{task} test accuracy", "{verb} {size} of {label}",
                   ("gains", "loses"), bootstrap=True),
        MetricSpec("test_macro_f1", "difference", "points", "{task} test macro-F1", "{verb} {size} of {label}",
                   ("gains", "loses")),
        MetricSpec("test_balanced_accuracy", "difference", "points", "{task} test balanced accuracy",
                   "{verb} {size} of {label}", ("gains", "loses")),
        MetricSpec("train_val_gap", "difference", "points", "{task} train-validation gap",
                   "{verb} the {label} by {size}", ("widens", "narrows"), higher_is_better=False),
        MetricSpec("drift", "difference", "points", "{task} drift (test accuracy change from its source run)",
                   "{verb} the {label} by {size}", ("raises", "lowers"), bootstrap=True),
        MetricSpec("train_seconds", "ratio", "seconds", "training time", "trains {x} {word}", ("faster", "slower"),
                   cell_over_reference=False),
        MetricSpec("wall_seconds", "ratio", "seconds", "wall time", "runs end to end {x} {word}",
                   ("faster", "slower"), cell_over_reference=False),
        MetricSpec("time_to_val", "ratio", "seconds", "time to the {task} validation level",
                   "reaches the {task} validation level {x} {word}", ("sooner", "later"), cell_over_reference=False),
        MetricSpec("steps_to_val", "ratio", "steps", "steps to the {task} validation level",
                   "reaches the {task} validation level in {x} {word} steps", ("fewer", "more"),
                   cell_over_reference=False),
        MetricSpec("tokens_per_second", "ratio", "tokens/s", "throughput", "processes {x} {word} tokens per second",
                   ("more", "fewer")),
        MetricSpec("total_params", "ratio", "parameters", "total parameters", "has {x} {word} parameters",
                   ("fewer", "more"), cell_over_reference=False, same="has as many parameters"),
        MetricSpec("trainable_params", "ratio", "parameters", "trainable parameters",
                   "trains {x} {word} parameters", ("fewer", "more"), cell_over_reference=False,
                   same="trains as many parameters"),
        MetricSpec("share_kept", "ratio", "share", "share of the reference's {task} test accuracy",
                   "keeps {x} of {reference}'s {task} test accuracy", ("", "")),
        MetricSpec("val_accuracy", "difference", "points", "{task} final validation accuracy",
                   "{verb} {size} of {label}", ("gains", "loses")),
    )
}  # fmt: skip


def split_metric(metric: str) -> tuple[str, str | None]:
    """ "test_accuracy:a" -> ("test_accuracy", "a"); "train_seconds" -> ("train_seconds", None)."""
    base, _, letter = metric.partition(":")
    return base, (letter or None)


def spec_of(metric: str) -> MetricSpec:
    base, _ = split_metric(metric)
    if base not in SPECS:
        raise KeyError(f"unknown study metric {metric!r}; known: {', '.join(SPECS)}")
    return SPECS[base]


def task_names(study: Study) -> dict[str, str]:
    """Task letter -> task name of the study's base config ("a" is the first task)."""
    tasks = study.base_config.get("tasks") or []
    return {letter: t["name"] for letter, t in zip("ab", tasks)}


def metric_label(metric: str, tasks: dict[str, str]) -> str:
    base, letter = split_metric(metric)
    return SPECS[base].label.replace("{task}", tasks.get(letter, letter or "")) if base in SPECS else metric


# -- number formatting (shared with core/report.py) -----------------------------------------------
def fmt_sig2(x: float) -> str:
    """Two significant digits, never an exponent, thousands separated: 3.9, 0.55, 1.0, 12, 1,234."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    x = float(f"{x:.2g}")
    decimals = max(0, 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def fmt_value(metric: str, v: float | None) -> str:
    """One number in its metric's own units: points with 1 decimal, seconds, counts with separators."""
    if v is None or not math.isfinite(v):
        return "n/a"
    unit = spec_of(metric).unit if split_metric(metric)[0] in SPECS else ""
    if unit == "points":
        return fmt_points(v)
    if unit == "share":
        return f"{v * 100:.1f}%"
    if unit in ("seconds", "tokens/s"):
        return f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}"
    if unit in ("parameters", "steps"):
        return f"{v:,.0f}"
    return f"{v:,.3g}"


def fmt_interval(metric: str, iv: stats.Interval | None, unit: str = "") -> str:
    """ "85.3 [84.1, 86.5]" or "85.3 (1 seed)"; ``unit`` follows the estimate ("85.3% [84.1, 86.5]")."""
    if iv is None:
        return "n/a"
    main = fmt_value(metric, iv.estimate) + unit
    if iv.low is None or iv.high is None:
        return f"{main} (1 seed)" if iv.n == 1 else main
    if iv.low == iv.high:
        return main
    return f"{main} [{fmt_value(metric, iv.low)}, {fmt_value(metric, iv.high)}]"


def fmt_points(v: float) -> str:
    """A fraction in points with 1 decimal, never "-0.0"."""
    text = f"{v * 100:.1f}"
    return "0.0" if text == "-0.0" else text


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 60 else f"{seconds:.1f} s"


def points_text(v: float) -> str:
    """0.01 -> "1 point", 0.005 -> "0.5 points"."""
    return f"{v * 100:g} point" + ("" if v * 100 == 1 else "s")


# -- collect -------------------------------------------------------------------------------------
@dataclass
class Collected:
    """``collect``'s table and what it left out."""

    table: pd.DataFrame
    left_out: dict[str, dict[str, int]]  # design -> {"missing"|"damaged"|"unfinished": count}
    left_out_runs: list[dict[str, Any]]  # {design, cell, seed, run_id, reason}
    levels: dict[tuple[str, str, str], float]  # (design, group, task letter) -> LEVEL for time_to_val
    never_reached: list[dict[str, Any]]  # {design, cell, seed, run_id, metric, level}
    chance: dict[str, float]  # task letter -> 1 / number of classes
    records: dict[str, RunRecord]  # run id -> record, every run read (sources of drift included)


def _all_seeds(study: Study) -> list[int]:
    return sorted({*study.seeds, *(r["seed"] for r in study.runs if r.get("seed") is not None)})


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _run_values(record: RunRecord, tasks: dict[str, str]) -> dict[str, float]:
    """Every per-run metric a summary holds, under study metric names."""
    s = record.summary
    out: dict[str, float] = {}
    for key in SUMMARY_COSTS:
        v = getattr(s, key)
        if _finite(v):
            out[key] = float(v)
    for letter, name in tasks.items():
        t = s.tasks.get(name)
        if t is None:
            continue
        for key in ("test_accuracy", "test_macro_f1", "test_balanced_accuracy", "val_accuracy"):
            v = getattr(t, key)
            if _finite(v):
                out[f"{key}:{letter}"] = float(v)
        if _finite(t.train_accuracy) and _finite(t.val_accuracy):
            out[f"train_val_gap:{letter}"] = float(t.train_accuracy) - float(t.val_accuracy)
    return out


def _first_reaching(evals: list[dict], task: str, level: float) -> dict | None | bool:
    """The first validation eval of ``task`` at or above ``level``; None if none is; False without a curve."""
    curve = [
        r
        for r in evals
        if r.get("kind") == "eval" and r.get("split", "validation") == "validation" and r.get("task") == task
    ]
    if not curve:
        return False
    for r in sorted(curve, key=lambda r: r.get("step", 0)):
        if _finite(r.get("accuracy")) and r["accuracy"] >= level - 1e-12:
            return r
    return None


def collect_runs(store: RunStore, study: Study, designs: list[Design]) -> Collected:
    """Every completed run of ``designs`` read into values, with what was left out (what ``analyse`` reads)."""
    tasks = task_names(study)
    seeds = _all_seeds(study)
    records: dict[str, RunRecord | None] = {}

    def record(run_id: str) -> RunRecord | None:
        if run_id not in records:
            records[run_id] = store.record(run_id) if store.exists(run_id) else None
        return records[run_id]

    rows: list[dict[str, Any]] = []
    left_out: dict[str, dict[str, int]] = {}
    left_out_runs: list[dict[str, Any]] = []
    levels: dict[tuple[str, str, str], float] = {}
    never: list[dict[str, Any]] = []
    chance: dict[str, float] = {}
    metrics_cache: dict[str, list[dict]] = {}

    for design in designs:
        counts = left_out.setdefault(design.id, {})
        included: list[tuple[Cell, int, RunRecord, dict[str, float]]] = []
        for cell in design.cells:
            for seed in seeds:
                run_id = study.run_of(design.id, cell.label, seed)
                rec = record(run_id) if run_id else None
                if rec is None:
                    reason = "missing"
                elif rec.damaged:
                    reason = "damaged"
                elif rec.state != RunState.COMPLETED or rec.summary is None:
                    reason = "unfinished"
                else:
                    reason = None
                if reason:
                    if run_id is None and seed not in study.seeds:
                        continue  # a seed another design queued: not planned for this one
                    counts[reason] = counts.get(reason, 0) + 1
                    left_out_runs.append(
                        {"design": design.id, "cell": cell.label, "seed": seed, "run_id": run_id, "reason": reason}
                    )
                    continue
                values = _run_values(rec, tasks)
                for letter, name in tasks.items():
                    t = rec.summary.tasks.get(name)
                    if t and t.label_names and letter not in chance:
                        chance[letter] = 1.0 / len(t.label_names)
                included.append((cell, seed, rec, values))

        wanted = set(design.metrics)
        # drift: this run's task test accuracy minus its init_from source run's
        for metric in [m for m in wanted if split_metric(m)[0] == "drift"]:
            letter = split_metric(metric)[1]
            for _cell, _seed, rec, values in included:
                source_id = rec.config.get("init_from")
                source = record(source_id) if source_id else None
                if (
                    source is None
                    or source.damaged
                    or source.summary is None
                    or f"test_accuracy:{letter}" not in values
                ):
                    continue
                before = source.summary.test_accuracy(tasks.get(letter, ""))
                if _finite(before):
                    values[metric] = values[f"test_accuracy:{letter}"] - float(before)

        # time_to_val / steps_to_val against the level of the group's reference cell
        for metric in sorted(m for m in wanted if split_metric(m)[0] in ("time_to_val", "steps_to_val")):
            base, letter = split_metric(metric)
            if letter not in tasks:
                continue
            for group in dict.fromkeys(c.group for c in design.cells):
                ref = next((c for c in design.cells if c.group == group and c.reference), None)
                finals = [
                    v[f"val_accuracy:{letter}"] for c, _, _, v in included if c is ref and f"val_accuracy:{letter}" in v
                ]
                if ref is None or not finals:
                    continue
                level = LEVEL_FRACTION * float(np.mean(finals))
                levels[(design.id, group, letter)] = level
                for cell, seed, rec, values in included:
                    if cell.group != group:
                        continue
                    if rec.id not in metrics_cache:
                        metrics_cache[rec.id] = store.read_metrics(rec.id)
                    hit = _first_reaching(metrics_cache[rec.id], tasks[letter], level)
                    key = "wall_seconds" if base == "time_to_val" else "step"
                    if hit is False:
                        continue  # no validation curve for this task (a run that logged none): nothing to time
                    if hit is not None and _finite(hit.get(key)):
                        values[metric] = float(hit[key])
                    else:
                        never.append(
                            {"design": design.id, "cell": cell.label, "seed": seed, "run_id": rec.id,
                             "metric": metric, "level": level}
                        )  # fmt: skip

        keep = (wanted - {m for m in wanted if split_metric(m)[0] == "share_kept"}) | {
            "train_seconds",
            "trainable_params",
            *(f"test_accuracy:{letter}" for letter in tasks),
            *(f"val_accuracy:{letter}" for letter in tasks),
        }
        for cell, seed, rec, values in included:
            for metric, value in values.items():
                if metric in keep:
                    rows.append(
                        {"design": design.id, "cell": cell.label, "group": cell.group, "series": cell.series,
                         "x": cell.x, "seed": seed, "run_id": rec.id, "state": rec.state.value, "metric": metric,
                         "value": value}
                    )  # fmt: skip

    table = pd.DataFrame(rows, columns=COLUMNS)
    table["x"] = pd.to_numeric(table["x"], errors="coerce")
    table["value"] = table["value"].astype(float)
    return Collected(
        table, left_out, left_out_runs, levels, never, chance, {k: v for k, v in records.items() if v is not None}
    )


def collect(store: RunStore, study: Study) -> pd.DataFrame:
    """Long table of the study's completed runs: design, cell, group, series, x, seed, run_id, state, metric, value.

    ``table.attrs``: "left_out" (design -> {missing|damaged|unfinished: count}), "left_out_runs", "levels"
    ({"design/group/letter": LEVEL}) and "never_reached" (runs that never reached LEVEL)."""
    col = collect_runs(store, study, study.design_objects())
    table = col.table
    table.attrs = {
        "left_out": col.left_out,
        "left_out_runs": col.left_out_runs,
        "levels": {"/".join(k): v for k, v in col.levels.items()},
        "never_reached": col.never_reached,
    }
    return table
