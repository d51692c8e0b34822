"""Turning run folders into tables and curves for comparison. No UI code: pages call these."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from core.config import group_key_of
from core.store import RunRecord, RunStore

MAX_POINTS_PER_CURVE = 400


def runs_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run: identity, state, config keys people filter on, and headline results."""
    rows = []
    for r in records:
        cfg, status, summary = r.config, r.status, r.summary or {}
        progress = status.get("progress") or {}
        total = progress.get("total_steps") or 0
        row = {
            "id": r.id, "name": cfg.get("name") or r.id, "state": r.state, "strategy": cfg.get("strategy"),
            "freeze_layers": cfg.get("freeze_layers"), "backbone": cfg.get("backbone"), "seed": cfg.get("seed"),
            "sweep": cfg.get("sweep_id"), "tags": ", ".join(r.meta.get("tags", [])), "notes": r.meta.get("notes", ""),
            "created": pd.to_datetime(status.get("created_at"), unit="s", errors="coerce"),
            "progress": (progress.get("step", 0) / total) if total else (1.0 if r.state == "completed" else 0.0),
            "eta_seconds": progress.get("eta_seconds"),
            "trainable_params": summary.get("trainable_params", status.get("trainable_params")),
            "total_params": summary.get("total_params", status.get("total_params")),
            "train_seconds": summary.get("train_seconds"),
            "tokens_per_second": summary.get("tokens_per_second"),
            "error": status.get("error"),
            "group": group_key_of(cfg),
        }
        for task, t in (summary.get("tasks") or {}).items():
            row[f"{task} test acc"] = t.get("test_accuracy")
            row[f"{task} test F1"] = t.get("test_macro_f1")
            row[f"{task} best val acc"] = t.get("best_val_accuracy")
            row[f"{task} last val acc"] = t.get("val_accuracy")
            row[f"{task} val acc change"] = t.get("val_accuracy_change")
        rows.append(row)
    return pd.DataFrame(rows)


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


def pareto_front(df: pd.DataFrame, cost: str, gain: str) -> pd.Series:
    """True for rows no other row beats: lower-or-equal cost and higher-or-equal gain, one strictly."""
    values = df[[cost, gain]].to_numpy(dtype=float)
    flags = []
    for c, g in values:
        dominated = np.any((values[:, 0] <= c) & (values[:, 1] >= g) & ((values[:, 0] < c) | (values[:, 1] > g)))
        flags.append(not dominated and not np.isnan(c) and not np.isnan(g))
    return pd.Series(flags, index=df.index)


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


def results_table(store: RunStore, run_ids: list[str], records: dict[str, RunRecord],
                  curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """Best and last validation metrics, test metrics and cost per run, for the chosen runs.

    ``curves``: the runs' eval records if the caller already loaded them (``load_curves``)."""
    curves = load_curves(store, run_ids) if curves is None else curves
    rows = []
    for run_id in run_ids:
        rec = records[run_id]
        summary = rec.summary or {}
        row = {"run": rec.config.get("name") or run_id, "id": run_id, "strategy": rec.config.get("strategy"),
               "state": rec.state, "trainable_params": summary.get("trainable_params"),
               "train_seconds": summary.get("train_seconds"), "tokens_per_second": summary.get("tokens_per_second")}
        run_curves = curves[curves["run"] == run_id] if not curves.empty else curves
        for task in sorted(set(run_curves["task"])) if not run_curves.empty else []:
            tc = run_curves[run_curves["task"] == task].sort_values("step")
            for metric in ("accuracy", "macro_f1", "loss"):
                best = tc[metric].min() if metric == "loss" else tc[metric].max()
                row[f"{task} val {metric} best"] = best
                row[f"{task} val {metric} last"] = tc[metric].iloc[-1]
        for task, t in (summary.get("tasks") or {}).items():
            row[f"{task} test accuracy"] = t.get("test_accuracy")
            row[f"{task} test macro_f1"] = t.get("test_macro_f1")
            # Start-to-end change of validation accuracy; for a frozen head, the backbone's drift.
            row[f"{task} val accuracy change"] = t.get("val_accuracy_change")
            row[f"{task} head"] = "frozen" if t.get("head_frozen") else ("trained" if t.get("trained") else "not trained")
        rows.append(row)
    return pd.DataFrame(rows)


def separate_models_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per multi-task run that has single-task partners: accuracy per task, size, time, side by side."""
    linked: dict[str, list[RunRecord]] = {}
    for r in records:
        key = r.config.get("separate_of")
        if key and r.state == "completed":
            linked.setdefault(key, []).append(r)
    rows = []
    for key, members in linked.items():
        multi = [r for r in members if len(r.config.get("tasks", [])) > 1]
        singles = {r.config["tasks"][0]["name"]: r for r in members if len(r.config.get("tasks", [])) == 1}
        if not multi or not singles:
            continue
        m = multi[0]
        row = {"comparison": key.split(":", 1)[-1], "strategy": m.config.get("strategy"), "multi_task_run": m.id,
               "single_task_runs": ", ".join(r.id for r in singles.values())}
        for task, single in singles.items():
            row[f"{task} acc (multi-task)"] = (m.summary or {}).get("tasks", {}).get(task, {}).get("test_accuracy")
            row[f"{task} acc (alone)"] = (single.summary or {}).get("tasks", {}).get(task, {}).get("test_accuracy")
        row["params to serve (multi-task)"] = (m.summary or {}).get("total_params")
        row["params to serve (separate)"] = sum((r.summary or {}).get("total_params") or 0 for r in singles.values())
        row["train s (multi-task)"] = (m.summary or {}).get("train_seconds")
        row["train s (separate)"] = sum((r.summary or {}).get("train_seconds") or 0 for r in singles.values())
        rows.append(row)
    return pd.DataFrame(rows)
