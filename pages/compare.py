"""Compare: curves (smoothed, grouped over seeds), results, cost against accuracy, config diff, per class."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.analysis import config_diff, ema, load_curves, pareto_front, results_table, runs_table, separate_models_table
from pages.common import get_store, guarded

PALETTE = px.colors.qualitative.D3
X_AXES = {"step": "step", "epoch": "epoch", "wall time (s)": "wall_seconds"}


def choose_runs_ui(df: pd.DataFrame) -> list[str]:
    c1, c2, c3 = st.columns(3)
    sweeps = sorted(df["sweep"].dropna().unique(), reverse=True)
    sweep = c1.selectbox("Sweep", ["(all runs)", *sweeps], index=1 if sweeps else 0)
    if sweep != "(all runs)":
        df = df[df["sweep"] == sweep]
    strategies = c2.multiselect("Strategies", sorted(df["strategy"].dropna().unique()), placeholder="all strategies")
    if strategies:
        df = df[df["strategy"].isin(strategies)]
    states = c3.multiselect("States", ["completed", "running", "stopped", "failed"], default=["completed", "running"])
    if states:
        df = df[df["state"].isin(states)]
    names = dict(zip(df["id"], df["name"]))
    default = df["id"].tolist()[:16]
    return st.multiselect(f"Runs ({len(df)} match)", df["id"].tolist(), default=default,
                          format_func=lambda i: names.get(i, i))


def unique_labels(run_ids: list[str], meta: pd.DataFrame) -> dict[str, str]:
    """Run names for legends and columns; a name shared by several runs gets its id appended."""
    names = {r: meta.loc[r, "name"] for r in run_ids if r in meta.index}
    counts = pd.Series(list(names.values())).value_counts()
    return {r: n if counts[n] == 1 else f"{n} ({r})" for r, n in names.items()}


def _color_map(keys: list[str]) -> dict[str, str]:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def curves_ui(run_ids: list[str], table: pd.DataFrame, curves: pd.DataFrame) -> None:
    if curves.empty:
        st.info("No evaluation points yet: runs log validation metrics every few steps.")
        return
    c1, c2, c3, c4 = st.columns(4)
    metric = c1.selectbox("Metric", ["accuracy", "macro_f1", "loss"])
    x_label = c2.selectbox("x-axis", list(X_AXES))
    smoothing = c3.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, help="Exponential moving average, bias-corrected.")
    grouped = c4.toggle("Mean over seeds", value=table["group"].duplicated().any(),
                        help="Runs with the same config but another seed become one line with a min-max band.")
    x = X_AXES[x_label]
    meta = table.set_index("id")
    labels = unique_labels(run_ids, meta)
    if grouped:  # runs whose config differs only by seed form one line
        group_label = {}
        for r in run_ids:
            group_label.setdefault(meta.loc[r, "group"], labels[r].rsplit("-s", 1)[0])
        clashes = {v for v in group_label.values() if list(group_label.values()).count(v) > 1}
        for g, label in group_label.items():
            if label in clashes:
                group_label[g] = f"{label} [config {hashlib.sha1(g.encode()).hexdigest()[:6]}]"
        key_of = lambda r: group_label[meta.loc[r, "group"]]  # noqa: E731
    else:
        key_of = labels.__getitem__
    keys = list(dict.fromkeys(key_of(r) for r in run_ids if r in meta.index))
    colors = _color_map(keys)
    for task in sorted(curves["task"].unique()):
        fig = go.Figure()
        tc = curves[curves["task"] == task]
        for key in keys:
            members = [r for r in run_ids if r in meta.index and key_of(r) == key]
            series = [tc[tc["run"] == r].sort_values(x) for r in members]
            series = [s for s in series if not s.empty]
            if not series:
                continue
            color = colors[key]
            if grouped and len(series) > 1:
                grid = np.unique(np.concatenate([s[x].to_numpy() for s in series]))
                stack = np.vstack([np.interp(grid, s[x], ema(s[metric].to_numpy(), smoothing)) for s in series])
                fig.add_scatter(x=np.r_[grid, grid[::-1]], y=np.r_[stack.max(0), stack.min(0)[::-1]], fill="toself",
                                fillcolor=color, opacity=0.15, line=dict(width=0), hoverinfo="skip", showlegend=False)
                fig.add_scatter(x=grid, y=stack.mean(0), name=f"{key} (mean of {len(series)})", line=dict(color=color))
            else:
                for s in series:
                    fig.add_scatter(x=s[x], y=s[metric], line=dict(color=color, width=1), opacity=0.25,
                                    hoverinfo="skip", showlegend=False)
                    fig.add_scatter(x=s[x], y=ema(s[metric].to_numpy(), smoothing), name=key, line=dict(color=color))
        fig.update_layout(title=f"{task}: validation {metric}", height=340, margin=dict(l=0, r=0, t=40, b=0),
                          xaxis_title=x_label, legend=dict(font=dict(size=11)))
        st.plotly_chart(fig, width="stretch")


def results_ui(run_ids: list[str], records: dict, curves: pd.DataFrame) -> pd.DataFrame:
    table = results_table(get_store(), run_ids, records, curves)
    st.dataframe(table.drop(columns=["id"]), hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in table.columns
                                if " val " in c or " test " in c})
    st.download_button("Download as CSV", table.to_csv(index=False).encode(), "freezelab-results.csv", "text/csv")
    return table


def cost_ui(table: pd.DataFrame) -> None:
    tasks = sorted({c.split(" test accuracy")[0] for c in table.columns if c.endswith(" test accuracy")})
    if not tasks:
        st.info("Test results appear when runs complete.")
        return
    task = st.selectbox("Task", tasks, key="cost_task")
    y = f"{task} test accuracy"
    for cost, log_x in (("train_seconds", False), ("trainable_params", True)):
        df = table.dropna(subset=[cost, y]).copy()
        if df.empty:
            continue
        df["Pareto front"] = pareto_front(df, cost, y)
        fig = px.scatter(df, x=cost, y=y, color="strategy", symbol="Pareto front", hover_name="run", log_x=log_x,
                         symbol_map={True: "star", False: "circle"})
        front = df[df["Pareto front"]].sort_values(cost)
        fig.add_scatter(x=front[cost], y=front[y], mode="lines", line=dict(color="#94a3b8", dash="dot"),
                        name="Pareto front", hoverinfo="skip")
        fig.update_traces(marker=dict(size=11))
        fig.update_layout(height=360, margin=dict(l=0, r=0, t=30, b=0),
                          title=f"{y} against {cost.replace('_', ' ')}")
        st.plotly_chart(fig, width="stretch")


def per_class_ui(run_ids: list[str], records: dict, names: dict) -> None:
    done = [r for r in run_ids if (records[r].summary or {}).get("tasks")]
    if not done:
        st.info("Per-class results appear when runs complete.")
        return
    run_id = st.selectbox("Run", done, format_func=lambda r: names.get(r, r))
    tasks = records[run_id].summary["tasks"]
    cols = st.columns(len(tasks))
    for col, (task, t) in zip(cols, tasks.items()):
        if "confusion_matrix" not in t:
            col.info(f"{task}: no test results (the run did not complete).")
            continue
        labels = t["label_names"]
        fig = px.imshow(np.array(t["confusion_matrix"]), x=labels, y=labels, text_auto=True, color_continuous_scale="Blues",
                        labels=dict(x="predicted", y="true", color="count"), title=f"{task}: confusion matrix")
        fig.update_layout(height=360, margin=dict(l=0, r=0, t=40, b=0), coloraxis_showscale=False)
        col.plotly_chart(fig, width="stretch")
        f1 = pd.DataFrame({"class": labels, "F1": [t["per_class"][c]["f1"] for c in labels]})
        col.plotly_chart(px.bar(f1, x="class", y="F1", range_y=[0, 1], height=240, title=f"{task}: F1 per class"),
                         width="stretch")


@guarded
def page() -> None:
    st.title("Compare runs")
    store = get_store()
    records = {r.id: r for r in store.list_runs()}
    if not records:
        st.info("Nothing to compare yet. Launch a sweep of strategies on **Launch**; its runs appear here.")
        return
    table = runs_table(list(records.values()))
    run_ids = choose_runs_ui(table)
    if not run_ids:
        st.info("Choose runs above (filters narrow the list).")
        return
    names = dict(zip(table["id"], table["name"]))
    tabs = st.tabs(["Curves", "Results", "Cost vs accuracy", "Config diff", "Per class", "Multi-task vs separate"])
    curves = load_curves(store, run_ids)  # read once: the metrics files of the chosen runs only
    with tabs[0]:
        curves_ui(run_ids, table[table["id"].isin(run_ids)], curves)
    with tabs[1]:
        results = results_ui(run_ids, records, curves)
    with tabs[2]:
        cost_ui(results)
    with tabs[3]:
        labels = unique_labels(run_ids, table.set_index("id"))
        diff = config_diff({labels[r]: records[r].config for r in run_ids})
        if diff.empty:
            st.info("These runs share every config key.")
        else:
            st.caption("Only the keys that differ between the chosen runs.")
            st.dataframe(diff, width="stretch")
    with tabs[4]:
        per_class_ui(run_ids, records, names)
    with tabs[5]:
        separate = separate_models_table([records[r] for r in run_ids])
        if separate.empty:
            st.info("Launch a sweep with \"Also train each task alone\" to weigh one multi-task model against two "
                    "single-task ones. `python -m core separate-report` adds prediction latency.")
        else:
            st.dataframe(separate.drop(columns=["multi_task_run", "single_task_runs"]), hide_index=True, width="stretch")


page()
