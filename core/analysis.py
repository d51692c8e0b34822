"""Turning run folders into tables and curves for comparison. No UI code: pages call these.

The decision view (``decision_table``) answers "which strategy should I use?" with what the runs can
support: per group of runs that differ only by seed, the mean test accuracy with a 95% interval
(core/stats.py), its difference from the best group with a verdict, and what each group cost.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable

import numpy as np
import pandas as pd

from core import stats
from core.config import EVALS_PER_RUN, group_key_of
from core.records import Progress, RunState, RunSummary
from core.store import RunRecord, RunStore

MAX_POINTS_PER_CURVE = 400
# Config keys that change how a run is kept or watched, not what it learns: named last in group labels.
BOOKKEEPING_KEYS = {
    "checkpoint_every_steps",
    "log_every_steps",
    "eval_every_steps",
    "eval_batch_size",
    "device",
    "separate_of",
    "cache_frozen_backbone",
}
NOISE_THRESHOLD = 0.01  # one accuracy point: a smaller difference does not change a decision


def runs_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run: identity, state, config keys people filter on, and headline results.

    ``damaged``: why a run folder could not be read (missing for a sound one); its other columns hold
    what could be read."""
    rows = []
    for r in records:
        cfg, status, summary, progress = r.config, r.status, r.summary or RunSummary(), r.progress
        row = {
            "id": r.id,
            "name": cfg.get("name") or r.id,
            "state": r.state.value,
            "damaged": r.damaged,
            "strategy": cfg.get("strategy"),
            "freeze_layers": cfg.get("freeze_layers"),
            "backbone": cfg.get("backbone"),
            "seed": cfg.get("seed"),
            "sweep": cfg.get("sweep_id"),
            "tags": ", ".join(r.meta.tags),
            "notes": r.meta.notes,
            "created": status.created_at,
            "progress": progress.fraction
            if progress.fraction is not None
            else (1.0 if r.state == RunState.COMPLETED else 0.0),
            "eta_seconds": progress.eta_seconds,
            "trainable_params": _first_known(summary.trainable_params, status.trainable_params),
            "total_params": _first_known(summary.total_params, status.total_params),
            "train_seconds": summary.train_seconds,
            "tokens_per_second": summary.tokens_per_second,
            "error": status.error,
            "group": group_key_of(cfg),
        }
        for task, t in summary.tasks.items():
            row[f"{task} test acc"] = t.test_accuracy
            row[f"{task} test F1"] = t.test_macro_f1
            row[f"{task} best val acc"] = t.best_val_accuracy
            row[f"{task} last val acc"] = t.val_accuracy
            row[f"{task} val acc change"] = t.val_accuracy_change
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:  # one conversion for the column: per row it costs most of the table's time
        df["created"] = pd.to_datetime(df["created"], unit="s", errors="coerce")
    return df


def _first_known(*values):
    return next((v for v in values if v is not None), None)


def load_curves(store: RunStore, run_ids: list[str], kind: str = "eval") -> pd.DataFrame:
    """Long table of metric records of the given kind for the chosen runs only (lazy: one file per run)."""
    frames = []
    for run_id in run_ids:
        records = [r for r in store.read_metrics(run_id) if r.get("kind") == kind]
        if not records:
            continue
        df = pd.DataFrame(records)
        df["run"] = run_id
        frames.append(downsample(df))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def downsample(df: pd.DataFrame, limit: int = MAX_POINTS_PER_CURVE) -> pd.DataFrame:
    """Keep at most ``limit`` points per task, always keeping the first and last."""
    if "task" not in df or len(df) <= limit:
        return df
    parts = []
    for _, part in df.groupby("task", sort=False):
        if len(part) > limit:
            keep = np.unique(np.linspace(0, len(part) - 1, limit).round().astype(int))
            part = part.iloc[keep]
        parts.append(part)
    return pd.concat(parts)


def ema(values: list[float] | np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average with bias correction (no pull toward the first value)."""
    out = np.empty(len(values))
    acc, norm = 0.0, 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = acc / norm if norm else v
    return out


def flatten_config(cfg: dict) -> dict:
    """Nested config to readable keys: tasks become ``task A.dataset`` etc."""
    flat = {}
    for key, value in cfg.items():
        if key == "tasks":
            for i, task in enumerate(value):
                for k, v in task.items():
                    flat[f"task {'AB'[i] if i < 2 else i}.{k}"] = v
        elif isinstance(value, list):
            flat[key] = ", ".join(map(str, value))
        else:
            flat[key] = value
    return flat


def config_diff(configs: dict[str, dict]) -> pd.DataFrame:
    """Rows: the config keys whose values differ between runs; columns: runs."""
    flat = {run: flatten_config(cfg) for run, cfg in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flat.values()}) > 1]
    return pd.DataFrame({run: [f.get(k) for k in differing] for run, f in flat.items()}, index=differing).astype(str)


def results_table(
    store: RunStore, run_ids: list[str], records: dict[str, RunRecord], curves: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per chosen run: test metrics first, then what it is and what it cost, then validation details.

    ``curves``: the runs' eval records if the caller already loaded them (``load_curves``). Columns come
    in the order people read them; ``RESULT_COLUMNS`` names those a results view shows by default."""
    curves = load_curves(store, run_ids) if curves is None else curves
    rows = []
    for run_id in run_ids:
        rec = records[run_id]
        summary = rec.summary or RunSummary()
        row = {
            "run": rec.config.get("name") or run_id,
            "id": run_id,
            "strategy": group_label(rec.config),
            "state": rec.state.value,
            "wall time (s)": summary.wall_seconds,
            "training time (s)": summary.train_seconds,
            "trainable params": _first_known(summary.trainable_params, rec.status.trainable_params),
            "seed": rec.config.get("seed"),
            "tokens/s": summary.tokens_per_second,
        }
        if rec.damaged:  # the column appears only when a chosen run folder is damaged
            row["damaged"] = rec.damaged
        for task, t in summary.tasks.items():
            row[f"{task} test accuracy"] = t.test_accuracy
            row[f"{task} test F1"] = t.test_macro_f1
        run_curves = curves[curves["run"] == run_id] if not curves.empty else curves
        for task in sorted(set(run_curves["task"])) if not run_curves.empty else []:
            tc = run_curves[run_curves["task"] == task].sort_values("step")
            for metric in ("accuracy", "macro_f1", "loss"):
                if metric not in tc:
                    continue
                best = tc[metric].min() if metric == "loss" else tc[metric].max()
                row[f"{task} val {metric} best"] = best
                row[f"{task} val {metric} last"] = tc[metric].iloc[-1]
        for task, t in summary.tasks.items():
            # Start-to-end change of validation accuracy; for a frozen head, the backbone's drift.
            row[f"{task} val accuracy change"] = t.val_accuracy_change
            row[f"{task} head"] = "frozen" if t.head_frozen else ("trained" if t.trained else "not trained")
        rows.append(row)
    table = pd.DataFrame(rows)
    return table[[c for c in result_column_order(table.columns) if c in table]] if rows else table


RESULT_COLUMNS = ("strategy", "state", "wall time (s)", "training time (s)", "trainable params", "damaged")


def result_column_order(columns: Iterable[str]) -> list[str]:
    """run, the test metrics, ``RESULT_COLUMNS``, then everything else in its first order."""
    columns = list(columns)
    tests = [c for c in columns if c.endswith(" test accuracy")] + [c for c in columns if c.endswith(" test F1")]
    first = ["run", "id", *tests, *(c for c in RESULT_COLUMNS if c in columns)]
    return first + [c for c in columns if c not in first]


def default_result_columns(table: pd.DataFrame) -> list[str]:
    """What a results view shows before anyone asks for more: the run, its test metrics, cost and state."""
    return [c for c in result_column_order(table.columns) if c in RESULT_COLUMNS or c == "run" or " test " in c]


def separate_models_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per multi-task run that has single-task partners: accuracy per task, size, time, side by side."""
    linked: dict[str, list[RunRecord]] = {}
    for r in records:
        key = r.config.get("separate_of")
        if key and r.state == RunState.COMPLETED:
            linked.setdefault(key, []).append(r)
    rows = []
    for key, members in linked.items():
        multi = [r for r in members if len(r.config.get("tasks", [])) > 1]
        singles = {r.config["tasks"][0]["name"]: r for r in members if len(r.config.get("tasks", [])) == 1}
        if not multi or not singles:
            continue
        m = multi[0]
        m_summary = m.summary or RunSummary()
        alone = {task: r.summary or RunSummary() for task, r in singles.items()}
        row = {
            "comparison": key.split(":", 1)[-1],
            "strategy": m.config.get("strategy"),
            "multi_task_run": m.id,
            "single_task_runs": ", ".join(r.id for r in singles.values()),
        }
        for task, single in alone.items():
            row[f"{task} acc (multi-task)"] = m_summary.test_accuracy(task)
            row[f"{task} acc (alone)"] = single.test_accuracy(task)
        row["params to serve (multi-task)"] = m_summary.total_params
        row["params to serve (separate)"] = sum(s.total_params or 0 for s in alone.values())
        row["train s (multi-task)"] = m_summary.train_seconds
        row["train s (separate)"] = sum(s.train_seconds or 0 for s in alone.values())
        rows.append(row)
    return pd.DataFrame(rows)


# -- groups of runs that differ only by seed ----------------------------------------------------------
def group_label(config: dict) -> str:
    """A group's name as people say it: the strategy, with its freeze depth when it has one."""
    strategy = config.get("strategy") or "?"
    k = config.get("freeze_layers")
    return f"{strategy} k={k}" if k is not None else strategy


def group_labels(configs: dict[str, dict]) -> dict[str, str]:
    """Group key -> label for the groups of ``configs`` (run id -> config). Groups that would share a label
    (the same strategy with another learning rate...) get the config values that tell them apart."""
    by_key = {group_key_of(cfg): cfg for cfg in configs.values()}
    labels = {key: group_label(cfg) for key, cfg in by_key.items()}
    for label in {v for v in labels.values() if list(labels.values()).count(v) > 1}:
        keys = [k for k, v in labels.items() if v == label]
        flat = {k: flatten_config(json.loads(k)) for k in keys}
        differing = sorted(
            (
                name
                for name in {n for f in flat.values() for n in f}
                if len({json.dumps(f.get(name), default=str) for f in flat.values()}) > 1
            ),
            key=lambda name: (name in BOOKKEEPING_KEYS, name),  # what changes results first
        )
        for key in keys:
            extra = ", ".join(f"{name}={flat[key].get(name)}" for name in differing[:2])
            labels[key] = f"{label} ({extra})"
    return labels


# -- the decision view --------------------------------------------------------------------------------
DECISION_COLUMNS = (
    "strategy",
    "task",
    "seeds",
    "test accuracy",
    "95% low",
    "95% high",
    "interval",
    "test set ±",
    "vs best",
    "vs best low",
    "vs best high",
    "verdict",
    "why",
    "wall time (s)",
    "wall low",
    "wall high",
    "training time (s)",
    "trainable params",
    "strategy id",
    "runs",
)


def _per_seed(runs: list[RunRecord], value) -> dict[int, float]:
    """Seed -> the mean of ``value(run)`` over the runs of that seed (None values skipped)."""
    by_seed: dict[int, list[float]] = {}
    for i, r in enumerate(runs):
        v = value(r)
        if v is not None:
            by_seed.setdefault(r.config.get("seed", -1 - i), []).append(float(v))
    return {seed: float(np.mean(vs)) for seed, vs in by_seed.items()}


def _correct(store: RunStore, run: RunRecord, task: str) -> np.ndarray | None:
    """1/0 per test example of a run's task, from its saved test predictions (None when it has none)."""
    saved = store.read_test_predictions(run.id).get(task)
    if not isinstance(saved, dict):
        return None
    labels, predictions = saved.get("labels"), saved.get("predictions")
    if not labels or not isinstance(predictions, list) or len(labels) != len(predictions):
        return None
    return (np.asarray(labels) == np.asarray(predictions)).astype(float)


def test_set_size(store: RunStore, runs: list[RunRecord], task: str) -> int | None:
    """The fewest test examples any of the runs scored ``task`` on (summary n_test, else saved predictions)."""
    sizes = []
    for r in runs:
        n = r.summary.tasks[task].n_test if task in r.summary.tasks else None
        if not n:
            correct = _correct(store, r, task)
            n = len(correct) if correct is not None else None
        if n:
            sizes.append(int(n))
    return min(sizes) if sizes else None


def accuracy_interval(store: RunStore, runs: list[RunRecord], task: str) -> stats.Interval:
    """Mean test accuracy of a group with a 95% interval, never narrower than its test set resolves and inside
    [0, 1]: with two or more seeds, a t interval over seeds widened to the binomial interval of the mean on the
    test set (core.stats.accuracy_mean_interval: seeds share one test set, so seeds that agree exactly are not a
    precise measurement); with one seed, a bootstrap over its test predictions (it covers test-set sampling;
    all right or all wrong gives it zero width, and then the binomial interval stands in), else the binomial
    interval."""
    per_seed = _per_seed(runs, lambda r: r.summary.test_accuracy(task))
    n = test_set_size(store, runs, task)
    if len(per_seed) >= 2:
        return stats.accuracy_mean_interval(list(per_seed.values()), n)
    run = runs[0]
    correct = _correct(store, run, task)
    p = next(iter(per_seed.values()))
    if correct is not None:
        boot = stats.bootstrap_mean(correct)
        return boot if boot.low != boot.high else stats.binomial_interval(boot.estimate, len(correct))
    if not n:
        return stats.Interval(p, None, None, 1, "1 seed: no interval")
    return stats.binomial_interval(p, n)


def compare_groups(
    store: RunStore, runs: list[RunRecord], reference: list[RunRecord], task: str, a: stats.Interval, b: stats.Interval
) -> stats.Comparison:
    """Accuracy of ``runs`` minus that of ``reference`` with a 95% interval: paired by seed when both share two or
    more seeds; a paired bootstrap over the same test examples for one seed each; either widened to what the two
    test sets resolve (core.stats.with_test_floor, the study rule); else the two intervals (each already at least
    as wide as its test set resolves) combined as independent (sqrt of the summed squared half-widths)."""
    acc_a = _per_seed(runs, lambda r: r.summary.test_accuracy(task))
    acc_b = _per_seed(reference, lambda r: r.summary.test_accuracy(task))
    n_a, n_b = test_set_size(store, runs, task), test_set_size(store, reference, task)

    def floored(c: stats.Comparison) -> stats.Comparison:
        return stats.with_test_floor(c, (a.estimate, n_a), (b.estimate, n_b)) if n_a and n_b else c

    common = set(acc_a) & set(acc_b)
    if len(common) >= 2:
        c = stats.paired_difference(acc_a, acc_b)
        pa, pb = (float(np.mean([acc[s] for s in common])) for acc in (acc_a, acc_b))
        return stats.with_test_floor(c, (pa, n_a), (pb, n_b)) if n_a and n_b else c
    if len(runs) == len(reference) == 1:
        ca, cb = _correct(store, runs[0], task), _correct(store, reference[0], task)
        if ca is not None and cb is not None and len(ca) == len(cb):
            return floored(stats.bootstrap_accuracy_difference(ca, cb))
    diff = a.estimate - b.estimate
    if a.half_width is None or b.half_width is None:
        return stats.Comparison(diff, None, None, min(a.n, b.n), "no interval")
    half = math.hypot(a.half_width, b.half_width)
    return stats.Comparison(diff, diff - half, diff + half, min(a.n, b.n), "independent intervals combined")


def test_set_resolution(runs: list[RunRecord], task: str) -> float | None:
    """Half-width of the 95% binomial interval of the group's mean accuracy on its test set: how precisely that
    many test sentences pin an accuracy, whatever the number of seeds (None when the size is unknown). The same
    formula (core.stats.test_set_half_width) that floors every accuracy interval here and in studies."""
    sizes = [r.summary.tasks[task].n_test for r in runs if r.summary.tasks[task].n_test]
    if not sizes:
        return None
    p = float(np.mean([r.summary.test_accuracy(task) for r in runs]))
    return stats.test_set_half_width(p, min(sizes))


def noise_flag(
    comparison: stats.Comparison, threshold: float = NOISE_THRESHOLD, resolution: float | None = None
) -> str:
    """Against the best group: "worse" only when the whole interval lies below -threshold and the difference is
    larger than the test sets can resolve (``resolution``: the two binomial half-widths combined; compare_groups
    already widens its interval to that, so this is a second guard for comparisons built elsewhere); else
    "within noise" (the data cannot rank the two); "no interval" without one."""
    if comparison.low is None or comparison.high is None:
        return "no interval"
    if comparison.high >= -threshold or (resolution is not None and -comparison.estimate <= resolution):
        return "within noise"
    return "worse"


def decision_table(store: RunStore, records: list[RunRecord], threshold: float = NOISE_THRESHOLD) -> pd.DataFrame:
    """One row per (group of runs differing only by seed, task) over the completed runs with test metrics.

    Columns: ``DECISION_COLUMNS``. "vs best" is the difference to the group with the best mean (paired by seed
    where possible, see ``compare_groups``) and "verdict" its plain reading (``noise_flag``); "why" is the
    sentence core.stats.verdict writes. Wall time is the whole run (data, caches, evaluation); training time
    counts training steps only."""
    done = [r for r in records if r.state == RunState.COMPLETED and r.summary and r.summary.tasks]
    labels = group_labels({r.id: r.config for r in done})
    tasks = list(dict.fromkeys(t for r in done for t in r.summary.tasks))
    rows = []
    for task in tasks:
        groups: dict[str, list[RunRecord]] = {}
        for r in done:
            if r.summary.test_accuracy(task) is not None:
                groups.setdefault(group_key_of(r.config), []).append(r)
        intervals = {key: accuracy_interval(store, runs, task) for key, runs in groups.items()}
        if not intervals:
            continue
        best = max(intervals, key=lambda k: intervals[k].estimate)
        for key, runs in sorted(groups.items(), key=lambda kv: -intervals[kv[0]].estimate):
            acc = intervals[key]
            walls = list(_per_seed(runs, lambda r: r.summary.wall_seconds).values())
            wall = stats.mean_interval(walls) if walls else None
            trains = list(_per_seed(runs, lambda r: r.summary.train_seconds).values())
            row = {
                "strategy": labels[key],
                "task": task,
                "seeds": len({r.config.get("seed") for r in runs}),
                "test accuracy": acc.estimate,
                "95% low": acc.low,
                "95% high": acc.high,
                "interval": acc.method,
                "test set ±": test_set_resolution(runs, task),
                "vs best": None,
                "vs best low": None,
                "vs best high": None,
                "verdict": "best",
                "why": f"the best mean test accuracy on {task}",
                "wall time (s)": wall.estimate if wall else None,
                "wall low": wall.low if wall else None,
                "wall high": wall.high if wall else None,
                "training time (s)": float(np.mean(trains)) if trains else None,
                "trainable params": next(
                    (r.summary.trainable_params for r in runs if r.summary.trainable_params), None
                ),
                "strategy id": runs[0].config.get("strategy"),
                "runs": ", ".join(r.id for r in runs),
            }
            if key != best:
                c = compare_groups(store, runs, groups[best], task, acc, intervals[best])
                # The sentence says when the test sets, not the seeds, limit the interval (core.stats.floor_text).
                why = stats.verdict(c, threshold, what=labels[key], against=labels[best]).sentence
                a, b = row["test set ±"], test_set_resolution(groups[best], task)
                resolution = math.hypot(a, b) if a is not None and b is not None else None
                row.update({"vs best": c.estimate, "vs best low": c.low, "vs best high": c.high, "why": why})
                row["verdict"] = noise_flag(c, threshold, resolution)
            rows.append(row)
    table = pd.DataFrame(rows, columns=list(DECISION_COLUMNS))
    numeric = ["95% low", "95% high", "vs best", "vs best low", "vs best high", "test set ±", "wall time (s)"]
    return table.astype({c: float for c in numeric + ["wall low", "wall high", "training time (s)"]})


# -- time left ----------------------------------------------------------------------------------------
def _positions(records: list[dict], kind: str) -> list[tuple[int, float]]:
    """(step, wall seconds) of the records of one kind, one per step (tasks share the position)."""
    seen: dict[int, float] = {}
    for r in records:
        if r.get("kind") == kind and isinstance(r.get("step"), int) and isinstance(r.get("wall_seconds"), int | float):
            seen.setdefault(r["step"], float(r["wall_seconds"]))
    return sorted(seen.items())


def seconds_per_step(records: list[dict]) -> float | None:
    """Median wall seconds per training step between two training records with no evaluation in between."""
    train, evals = _positions(records, "train"), [s for s, _ in _positions(records, "eval")]
    rates = [
        (w2 - w1) / (s2 - s1)
        for (s1, w1), (s2, w2) in zip(train, train[1:])
        if s2 > s1 and not any(s1 <= e < s2 for e in evals)
    ]
    return statistics.median(rates) if rates else None


def evaluation_seconds(records: list[dict], step_seconds: float | None = None) -> float | None:
    """Median seconds one evaluation (every task's validation split) took, from the metrics records alone.

    An eval record's clock is read when the evaluation starts; the next training record's clock, less the
    training steps between the two, is when it ended. None until one evaluation has been followed by training."""
    step_seconds = step_seconds if step_seconds is not None else seconds_per_step(records)
    if step_seconds is None:
        return None
    train = _positions(records, "train")
    durations = []
    for step, wall in _positions(records, "eval"):
        after = next(((s, w) for s, w in train if s > step), None)
        if after is not None:
            durations.append(max(0.0, after[1] - wall - (after[0] - step) * step_seconds))
    return statistics.median(durations) if durations else None


def remaining_seconds(progress: Progress, records: list[dict], eval_every: int | None = None) -> float | None:
    """Time left for a training run: its remaining steps (``progress.eta_seconds``) plus the evaluations still to
    come (periodic ones, the final one and the test split), each as long as the ones measured so far.

    ``eval_every``: the run's evaluation interval when known (else read from the eval records' steps). Without
    any measured evaluation this is the training time alone; None before the first steps are timed."""
    if progress.eta_seconds is None:
        return None
    total, step = progress.total_steps or 0, progress.step
    rate = progress.eta_seconds / (total - step) if total > step else None
    duration = evaluation_seconds(records, rate)
    if duration is None:
        return float(progress.eta_seconds)
    eval_steps = [s for s, _ in _positions(records, "eval")]
    gaps = [b - a for a, b in zip(eval_steps, eval_steps[1:]) if b > a]
    every = eval_every or (int(statistics.median(gaps)) if gaps else max(1, total // EVALS_PER_RUN))
    periodic = len([s for s in range(every * (step // every + 1), total, every)])
    return float(progress.eta_seconds) + (periodic + 2) * duration
