"""Compare: a decision view first (what the runs can and cannot tell apart), then curves, results and config,
and for uneven data (the Imbalance tab) per-class recall over training, the curriculum and the loss weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.analysis import (
    config_diff,
    decision_table,
    default_result_columns,
    ema,
    group_label,
    group_labels,
    load_curves,
    results_table,
    runs_table,
    separate_models_table,
)
from core.config import group_key_of
from core.records import RunState
from pages.common import (
    from_url,
    get_store,
    guarded,
    progress_text,
    split_list,
    strategy_color,
    to_url,
)

TABS = ["Decision", "Curves", "Results", "Config diff", "Per class", "Imbalance", "Multi-task vs separate"]
X_AXES = {"step": "step", "epoch": "epoch", "wall time (s)": "wall_seconds"}
METRICS = ["accuracy", "macro_f1", "loss"]
STATE_CHOICES = [s.value for s in (RunState.COMPLETED, RunState.RUNNING, RunState.STOPPED, RunState.FAILED)]
DEFAULT_STATES = [RunState.COMPLETED.value, RunState.RUNNING.value]
ALL_RUNS = "(all runs)"
MAX_DEFAULT_RUNS = 16
LIVE_REFRESH_SECONDS = 3
SMOOTH_MIN_POINTS = 20  # below this many points a smoothed curve is mostly the smoothing
MIN_ACCURACY_SPAN = 0.10  # an accuracy axis spans at least 10 points: a 1-point gap must not look like a cliff
GONE = "cmp_gone"  # names of chosen runs deleted from disk since the page last drew them
NAMES = "cmp_names"  # the chosen runs' names, to name one after it is deleted
ANNOUNCED = "cmp_announced"  # deleted runs already named in a notice
WALL_HELP = (
    "Wall time: the whole run, from its start to its end (loading data, caching frozen layers, training, "
    "evaluating). Training time: training steps only."
)


def unique_names(names: dict[str, str]) -> dict[str, str]:
    """Run id -> a name no other run shows (a widget tells options apart by what it shows)."""
    shown = list(names.values())
    return {i: n if shown.count(n) == 1 else f"{n} ({i})" for i, n in names.items()}


def choose_runs_ui(df: pd.DataFrame) -> list[str]:
    """Filters and the run selection; all of it lives in the URL, so a view can be shared as a link."""
    stored = set(df["id"])
    c1, c2, c3 = st.columns(3)
    sweeps = [ALL_RUNS, *sorted(df["sweep"].dropna().unique(), reverse=True)]
    from_url("cmp_sweep", "sweep", sweeps[min(1, len(sweeps) - 1)], clean=lambda v: v if v in sweeps else None)
    sweep = c1.selectbox("Sweep", sweeps, key="cmp_sweep")
    if sweep != ALL_RUNS:
        df = df[df["sweep"] == sweep]
    strategies = sorted(df["strategy"].dropna().unique())
    from_url("cmp_strategies", "strategies", [], parse=split_list, clean=lambda v: [s for s in v if s in strategies])
    picked = c2.multiselect("Strategies", strategies, key="cmp_strategies", placeholder="all strategies")
    if picked:
        df = df[df["strategy"].isin(picked)]
    from_url(
        "cmp_states", "states", DEFAULT_STATES, parse=split_list, clean=lambda v: [s for s in v if s in STATE_CHOICES]
    )
    states = c3.multiselect("States", STATE_CHOICES, key="cmp_states")
    if states:
        df = df[df["state"].isin(states)]
    ids, names = df["id"].tolist(), unique_names(dict(zip(df["id"], df["name"])))
    default = ids[:MAX_DEFAULT_RUNS]
    # Other filters pick their runs afresh; the same filters keep the user's (or the shared link's) choice.
    # Runs deleted from disk only leave the choice: the rest of it stays.
    signature = "|".join(ids)
    before = st.session_state.get("cmp_filtered", signature)
    if before != signature:
        removed = set(before.split("|")) - set(ids)
        only_deleted = set(ids) <= set(before.split("|")) and not removed & stored
        kept = [r for r in st.session_state.get("cmp_runs") or [] if r in ids]
        st.session_state["cmp_runs"] = kept if only_deleted and "cmp_runs" in st.session_state else default
    st.session_state["cmp_filtered"] = signature
    if "cmp_runs" not in st.session_state and "runs" in st.query_params:  # a shared link, opened here
        absent = [r for r in split_list(st.query_params["runs"]) if r not in stored]
        if absent:
            more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
            st.warning(
                f"The link names runs this runs folder does not have: {', '.join(absent[:5])}{more} (deleted, or "
                "shared from another machine). The comparison shows the rest."
            )
    from_url("cmp_runs", "runs", default, parse=split_list, clean=lambda v: [i for i in v if i in names])
    chosen = st.multiselect(f"Runs ({len(df)} match)", ids, key="cmp_runs", format_func=lambda i: names.get(i, i))
    # The sweep and the runs always go in the link: "the latest sweep" changes as sweeps are launched.
    to_url(sweep=(sweep, None), strategies=(picked, []), states=(states, DEFAULT_STATES), runs=(chosen, None))
    return chosen


# -- the decision view --------------------------------------------------------------------------------
def accuracy_range(lows: list[float], highs: list[float]) -> list[float]:
    """A y range holding every interval, at least MIN_ACCURACY_SPAN wide, inside [0, 1]."""
    lo, hi = min(lows) - 0.01, max(highs) + 0.01
    if hi - lo < MIN_ACCURACY_SPAN:
        mid = (lo + hi) / 2
        lo, hi = mid - MIN_ACCURACY_SPAN / 2, mid + MIN_ACCURACY_SPAN / 2
    shift = max(0.0, hi - 1.0) - max(0.0, -lo)
    return [max(0.0, lo - shift), min(1.0, hi - shift)]


def _bars(row: pd.Series, value: str, low: str, high: str) -> dict | None:
    if pd.isna(row[low]) or pd.isna(row[high]):
        return dict(type="data", array=[0.0], visible=False)
    return dict(type="data", symmetric=False, array=[row[high] - row[value]], arrayminus=[row[value] - row[low]])


def cost_chart(part: pd.DataFrame, x: str, title: str, log_x: bool = False) -> go.Figure:
    """Mean test accuracy with its 95% interval against a cost, one point per group; hollow points are worse
    than the best beyond noise."""
    fig = go.Figure()
    for _, row in part.dropna(subset=[x]).iterrows():
        fig.add_scatter(
            x=[row[x]],
            y=[row["test accuracy"]],
            mode="markers",
            name=row["strategy"],
            marker=dict(
                color=strategy_color(row["strategy id"]),
                size=13,
                symbol="circle-open" if row["verdict"] == "worse" else "circle",
                line=dict(width=2),
            ),
            error_y=_bars(row, "test accuracy", "95% low", "95% high"),
            error_x=_bars(row, x, "wall low", "wall high") if x == "wall time (s)" else None,
            hovertemplate=f"{row['strategy']}: %{{y:.3f}} ({row['verdict']})<extra></extra>",
        )
    lows = part["95% low"].fillna(part["test accuracy"]).tolist()
    highs = part["95% high"].fillna(part["test accuracy"]).tolist()
    fig.update_layout(
        title=title,
        height=360,
        margin=dict(l=0, r=0, t=40, b=0),
        xaxis=dict(
            title=dict(text=title.split(" against ")[-1]), type="log" if log_x else "linear", rangemode="nonnegative"
        ),
        yaxis=dict(title=dict(text="test accuracy (95% interval)"), range=accuracy_range(lows, highs)),
    )
    return fig


def noise_sentence(task: str, part: pd.DataFrame) -> str:
    best = part[part["verdict"] == "best"].iloc[0]
    text = f"**{task}** · best mean: **{best['strategy']}** ({best['test accuracy']:.3f})"
    noise = part.loc[part["verdict"] == "within noise", "strategy"].tolist()
    worse = part.loc[part["verdict"] == "worse", "strategy"].tolist()
    unknown = part.loc[part["verdict"] == "no interval", "strategy"].tolist()
    if noise:
        text += f" · within noise of it: {', '.join(noise)}: these runs cannot tell them apart"
    if worse:
        text += f" · worse: {', '.join(worse)}"
    if unknown:
        text += f" · no interval (one seed, no test predictions): {', '.join(unknown)}"
    return text


def decision_ui(store, records: dict, run_ids: list[str]) -> None:
    table = decision_table(store, [records[r] for r in run_ids])
    if table.empty:
        st.info("The decision view appears when chosen runs complete: it compares their test results.")
        return
    st.caption(WALL_HELP)
    for task, part in table.groupby("task", sort=False):
        st.markdown(noise_sentence(task, part))
    shown = table.drop(columns=["wall low", "wall high", "strategy id", "runs"])
    st.dataframe(
        shown.round({"wall time (s)": 1, "training time (s)": 1}),
        hide_index=True,
        width="stretch",
        placeholder="–",
        column_config={
            "strategy": st.column_config.TextColumn("strategy", pinned=True),
            **{c: st.column_config.NumberColumn(c, format="%.3f") for c in ("test accuracy", "95% low", "95% high")},
            **{c: st.column_config.NumberColumn(c, format="%+.3f") for c in ("vs best", "vs best low", "vs best high")},
            "wall time (s)": st.column_config.NumberColumn("wall time (s)", format="localized", help=WALL_HELP),
            "training time (s)": st.column_config.NumberColumn("training time (s)", format="localized", help=WALL_HELP),
            "trainable params": st.column_config.NumberColumn("trainable params", format="compact"),
            "test set ±": st.column_config.NumberColumn(
                "test set ±",
                format="±%.3f",
                help="How precisely this many test sentences pin an accuracy, whatever the number of seeds "
                "(binomial 95%). Seeds that agree exactly give a narrower interval over seeds, not a surer result.",
            ),
            "why": st.column_config.TextColumn("why", width="large"),
        },
    )
    st.caption(
        "95% intervals: a t interval over seeds; with one seed, a bootstrap over its test predictions (or the "
        "binomial standard error of an accuracy on that many sentences). 'vs best' pairs runs by seed where it can; "
        "a difference smaller than the test sets can resolve ('test set ±') is within noise too."
    )
    tasks = table["task"].unique().tolist()
    from_url("cmp_task", "task", tasks[0], clean=lambda v: v if v in tasks else None)
    task = st.selectbox("Task", tasks, key="cmp_task") if len(tasks) > 1 else tasks[0]
    part = table[table["task"] == task]
    left, right = st.columns(2)
    left.plotly_chart(cost_chart(part, "wall time (s)", f"{task}: accuracy against wall time of the whole run (s)"))
    right.plotly_chart(
        cost_chart(part, "trainable params", f"{task}: accuracy against trainable parameters (log)", log_x=True)
    )
    to_url(task=(task, tasks[0]))


# -- curves -------------------------------------------------------------------------------------------
def _series_label(config: dict, name: str) -> str:
    """A legend entry that starts with the strategy: run names of sweeps already do."""
    label = group_label(config)
    return name if name.startswith(config.get("strategy") or "?") else f"{label} · {name}"


def curve_chart(title: str, x: str, x_label: str, metric: str, keys, members, frames, smoothing, grouped) -> go.Figure:
    fig = go.Figure()
    for key in keys:
        series = [frames[r].sort_values(x) for r in members[key] if r in frames]
        series = [s for s in series if not s.empty and metric in s and s[metric].notna().any()]
        if not series:
            continue
        color = strategy_color(key[1])
        name = key[0]
        if grouped and len(series) > 1:
            grid = np.unique(np.concatenate([s[x].to_numpy() for s in series]))
            stack = np.vstack([np.interp(grid, s[x], ema(s[metric].to_numpy(), smoothing)) for s in series])
            fig.add_scatter(
                x=np.r_[grid, grid[::-1]],
                y=np.r_[stack.max(0), stack.min(0)[::-1]],
                fill="toself",
                fillcolor=color,
                opacity=0.15,
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
            )
            fig.add_scatter(x=grid, y=stack.mean(0), name=f"{name} (mean of {len(series)})", line=dict(color=color))
            continue
        for i, s in enumerate(series):
            if smoothing > 0:  # the raw curve, faint, behind the smoothed one
                fig.add_scatter(
                    x=s[x],
                    y=s[metric],
                    line=dict(color=color, width=1),
                    opacity=0.25,
                    hoverinfo="skip",
                    showlegend=False,
                )
            dash = ("solid", "dot", "dash", "dashdot")[i % 4]
            fig.add_scatter(
                x=s[x], y=ema(s[metric].to_numpy(), smoothing), name=name, line=dict(color=color, dash=dash)
            )
    fig.update_layout(
        title=title, height=320, margin=dict(l=0, r=0, t=40, b=0), xaxis_title=x_label, legend=dict(font=dict(size=11))
    )
    return fig


def curves_ui(records: dict, run_ids: list[str], evals: pd.DataFrame, train: pd.DataFrame) -> None:
    if evals.empty and train.empty:
        st.info("No evaluation points yet: runs log validation metrics every few steps.")
        return
    configs = {r: records[r].config for r in run_ids}
    groups = {r: group_key_of(c) for r, c in configs.items()}
    points = int(evals.groupby(["run", "task"]).size().max()) if not evals.empty else 0
    c1, c2, c3, c4 = st.columns(4)
    from_url("cmp_metric", "metric", METRICS[0], clean=lambda v: v if v in METRICS else None)
    metric = c1.selectbox("Metric", METRICS, key="cmp_metric")
    from_url("cmp_x", "x", "step", clean=lambda v: v if v in X_AXES else None)
    x_label = c2.selectbox("x-axis", list(X_AXES), key="cmp_x")
    smooth_default = 0.0 if points < SMOOTH_MIN_POINTS else 0.6
    from_url("cmp_smoothing", "smoothing", smooth_default, parse=float, clean=lambda v: v if 0 <= v <= 0.99 else None)
    smoothing = c3.slider(
        "Smoothing",
        0.0,
        0.99,
        step=0.01,
        key="cmp_smoothing",
        help=f"Exponential moving average, bias-corrected. Off by default for curves under {SMOOTH_MIN_POINTS} "
        "points: smoothing a short curve invents a slow climb.",
    )
    repeated = len(set(groups.values())) < len(groups)
    from_url("cmp_grouped", "mean_over_seeds", repeated, parse=lambda v: v == "1", clean=lambda v: bool(v))
    grouped = c4.toggle(
        "Mean over seeds",
        key="cmp_grouped",
        help="Runs with the same config but another seed become one line with a min-max band.",
    )
    to_url(
        metric=(metric, METRICS[0]),
        x=(x_label, "step"),
        smoothing=(round(smoothing, 2), smooth_default),
        mean_over_seeds=(int(grouped), int(repeated)),
    )
    x = X_AXES[x_label]
    labels = group_labels(configs)
    members: dict[tuple, list[str]] = {}
    for r in run_ids:
        name = records[r].config.get("name") or r
        label = labels[groups[r]] if grouped else _series_label(configs[r], name)
        members.setdefault((label, configs[r].get("strategy")), []).append(r)
    for title, curves, value in ((f"validation {metric}", evals, metric), ("training loss", train, "loss")):
        for task in curves["task"].unique() if not curves.empty else []:
            tc = curves[curves["task"] == task]
            frames = {r: tc[tc["run"] == r] for r in run_ids}
            fig = curve_chart(f"{task}: {title}", x, x_label, value, list(members), members, frames, smoothing, grouped)
            st.plotly_chart(fig, width="stretch", key=f"curve-{title}-{task}")


# -- results, config, per class -----------------------------------------------------------------------
def results_ui(table: pd.DataFrame) -> None:
    defaults = default_result_columns(table)
    extra = [c for c in table.columns if c not in defaults and c != "id"]
    from_url("cmp_columns", "columns", [], parse=split_list, clean=lambda v: [c for c in v if c in extra])
    more = st.multiselect("More columns", extra, key="cmp_columns", placeholder="validation curves, seed, tokens/s…")
    to_url(columns=(more, []))
    shown = table[[c for c in table.columns if c in defaults or c in more]]
    number = st.column_config.NumberColumn
    config = {"run": st.column_config.TextColumn("run", pinned=True)}
    for c in shown.columns:
        if " test " in c or " val " in c:
            config[c] = number(c, format="%.3f")
        elif c in ("wall time (s)", "training time (s)", "tokens/s"):
            config[c] = number(c, format="localized", help=WALL_HELP if "time" in c else None)
    config["trainable params"] = number("trainable params", format="compact")
    st.dataframe(
        shown.round({"wall time (s)": 1, "training time (s)": 1, "tokens/s": 0}),
        hide_index=True,
        column_config=config,
        placeholder="–",
    )
    st.download_button(
        "Download all columns as CSV", table.to_csv(index=False).encode(), "freezelab-results.csv", "text/csv"
    )


def per_class_ui(run_ids: list[str], records: dict) -> None:
    done = [r for r in run_ids if records[r].summary and records[r].summary.tasks]
    if not done:
        st.info("Per-class results appear when runs complete.")
        return
    names = unique_names({r: records[r].config.get("name") or r for r in done})
    run_id = st.selectbox("Run", done, format_func=names.get)
    tasks = records[run_id].summary.tasks
    cols = st.columns(len(tasks))
    for col, (task, t) in zip(cols, tasks.items()):
        if t.confusion_matrix is None or t.per_class is None:
            col.info(f"{task}: no test results (the run did not complete).")
            continue
        labels = t.label_names
        fig = px.imshow(
            np.array(t.confusion_matrix),
            x=labels,
            y=labels,
            text_auto=True,
            color_continuous_scale="Blues",
            labels=dict(x="predicted", y="true", color="count"),
            title=f"{task}: confusion matrix",
        )
        fig.update_layout(height=360, margin=dict(l=0, r=0, t=40, b=0), coloraxis_showscale=False)
        col.plotly_chart(fig, width="stretch")
        f1 = pd.DataFrame({"class": labels, "F1": [t.per_class[c]["f1"] for c in labels]})
        col.plotly_chart(
            px.bar(f1, x="class", y="F1", range_y=[0, 1], height=240, title=f"{task}: F1 per class"), width="stretch"
        )


# -- imbalance: per-class recall, the curriculum, the loss weights -------------------------------------
CLASS_COLORS = px.colors.qualitative.Dark2  # classes (and tasks) told apart by hue, not by shades of one colour
IMBALANCE_DEFAULTS = {"task_sampling": "proportional", "loss_weighting": "fixed"}
TASK_IMBALANCE_DEFAULTS = {"class_weighting": "none", "class_balanced_sampling": False, "class_ratio": None}


def imbalance_settings(config: dict) -> list[str]:
    """The imbalance options a run's config sets away from their defaults, e.g. ['curriculum', 'uncertainty']."""
    found = [str(config[k]) for k, default in IMBALANCE_DEFAULTS.items() if config.get(k, default) != default]
    if config.get("max_task_repeats") is not None:
        found.append(f"at most {config['max_task_repeats']} passes")
    for task in config.get("tasks") or []:
        if not isinstance(task, dict):
            continue
        changed = [k for k, default in TASK_IMBALANCE_DEFAULTS.items() if task.get(k, default) != default]
        if task.get("augment", "none") != "none":
            changed.append("augment")
        if changed:
            found.append(f"{task.get('name')}: {', '.join(k.replace('_', ' ') for k in changed)}")
    return found


def validation_only(evals: pd.DataFrame) -> pd.DataFrame:
    """The validation records of eval curves (records written before the training sample existed name no split)."""
    return evals[evals["split"].fillna("validation") == "validation"] if "split" in evals else evals


def recall_frame(evals: pd.DataFrame) -> pd.DataFrame:
    """Eval records as one row per (task, step, class) recall (empty when the run logged none)."""
    if evals.empty or "recall" not in evals:
        return pd.DataFrame(columns=["task", "step", "class", "recall"])
    rows = [
        {"task": r.task, "step": r.step, "class": label, "recall": value}
        for r in evals.itertuples()
        if isinstance(r.recall, dict)
        for label, value in r.recall.items()
    ]
    return pd.DataFrame(rows, columns=["task", "step", "class", "recall"])


def recall_chart(task: str, recall: pd.DataFrame, balanced: pd.DataFrame) -> go.Figure:
    """One line per class (validation recall against step), with balanced accuracy (their mean) dashed."""
    fig = go.Figure()
    for i, (label, part) in enumerate(recall.groupby("class", sort=False)):
        part = part.sort_values("step")
        color = CLASS_COLORS[i % len(CLASS_COLORS)]
        fig.add_scatter(x=part["step"], y=part["recall"], name=str(label), mode="lines+markers", line=dict(color=color))
    if not balanced.empty:
        balanced = balanced.sort_values("step")
        fig.add_scatter(
            x=balanced["step"],
            y=balanced["balanced_accuracy"],
            name="balanced accuracy",
            mode="lines",
            line=dict(color="#111827", dash="dash"),
        )
    fig.update_layout(
        title=f"{task}: validation recall per class",
        height=320,
        margin=dict(l=0, r=0, t=40, b=0),
        xaxis_title="step",
        yaxis=dict(title=dict(text="recall"), range=[-0.02, 1.02]),
    )
    return fig


def schedule_chart(schedule: pd.DataFrame) -> go.Figure:
    """The curriculum's task sampling weights against step, one line per task."""
    fig = go.Figure()
    rows = [(r.step, task, w) for r in schedule.sort_values("step").itertuples() for task, w in r.weights.items()]
    weights = pd.DataFrame(rows, columns=["step", "task", "weight"])
    for i, (task, part) in enumerate(weights.groupby("task", sort=False)):
        color = CLASS_COLORS[i % len(CLASS_COLORS)]
        fig.add_scatter(x=part["step"], y=part["weight"], name=str(task), mode="lines+markers", line=dict(color=color))
    fig.update_layout(
        title="curriculum: task sampling weight",
        height=300,
        margin=dict(l=0, r=0, t=40, b=0),
        xaxis_title="step",
        yaxis=dict(title=dict(text="share of batches"), range=[-0.02, 1.02]),
    )
    return fig


def loss_weight_chart(weights: pd.DataFrame, column: str, title: str) -> go.Figure:
    """One line per task of a ``loss_weights`` column (the weight, or the learned log-variance) against step."""
    fig = go.Figure()
    for i, (task, part) in enumerate(weights.dropna(subset=[column]).groupby("task", sort=False)):
        part = part.sort_values("step")
        color = CLASS_COLORS[i % len(CLASS_COLORS)]
        fig.add_scatter(x=part["step"], y=part[column], name=str(task), mode="lines+markers", line=dict(color=color))
    fig.update_layout(title=title, height=300, margin=dict(l=0, r=0, t=40, b=0), xaxis_title="step")
    return fig


def imbalance_ui(store, run_ids: list[str], records: dict) -> None:
    """For one chosen run: validation recall per class over training, the curriculum's task weights and the loss
    weights, each shown when the run logged it (metrics read through core.analysis.load_curves)."""
    names = unique_names({r: records[r].config.get("name") or r for r in run_ids})
    settings = {r: imbalance_settings(records[r].config) for r in run_ids}
    default = next((r for r in run_ids if settings[r]), run_ids[0])
    from_url("cmp_imbalance_run", "imbalance_run", default, clean=lambda v: v if v in names else None)
    run_id = st.selectbox(
        "Run",
        run_ids,
        key="cmp_imbalance_run",
        format_func=lambda r: f"{names[r]} · {'; '.join(settings[r])}" if settings[r] else names[r],
    )
    to_url(imbalance_run=(run_id, default))
    config = records[run_id].config
    st.caption(
        f"Imbalance options: {'; '.join(settings[run_id])}."
        if settings[run_id]
        else "This run uses no imbalance option (proportional sampling, fixed loss weights, no class options)."
    )

    st.markdown("**Recall per class** (validation)")
    evals = validation_only(load_curves(store, [run_id]))
    recall = recall_frame(evals)
    if recall.empty:
        st.caption("No per-class recall in this run's validation records yet (runs log it at each evaluation).")
    else:
        tasks = list(dict.fromkeys(recall["task"]))
        for col, task in zip(st.columns(len(tasks)), tasks):
            part = evals[evals["task"] == task]
            balanced = part[["step", "balanced_accuracy"]].dropna() if "balanced_accuracy" in part else pd.DataFrame()
            fig = recall_chart(task, recall[recall["task"] == task], balanced)
            col.plotly_chart(fig, width="stretch", key=f"imbalance-recall-{task}")

    st.markdown("**Curriculum**")
    schedule = load_curves(store, [run_id], kind="schedule")
    if schedule.empty or "weights" not in schedule:
        sampling = config.get("task_sampling", "proportional")
        st.caption(
            "No schedule records yet: a curriculum run logs its task weights as it trains."
            if sampling == "curriculum"
            else f"No curriculum schedule: this run's task sampling is {sampling}. With task sampling = curriculum "
            "(Launch, Imbalance) the batches move from the abundant task to the curriculum target."
        )
    else:
        st.plotly_chart(schedule_chart(schedule), width="stretch", key="imbalance-schedule")

    st.markdown("**Loss weights**")
    weights = load_curves(store, [run_id], kind="loss_weights")
    if weights.empty or "weight" not in weights:
        weighting = config.get("loss_weighting", "fixed")
        st.caption(
            f"No loss-weight records yet: {weighting} weighting logs its weights as the run trains."
            if weighting != "fixed"
            else "No loss-weight records: this run uses fixed loss weights (each task's Loss weight). "
            "inverse_size and uncertainty weighting log theirs as they train."
        )
        return
    left, right = st.columns(2)
    left.plotly_chart(
        loss_weight_chart(weights, "weight", "loss weight per task"), width="stretch", key="imbalance-loss-weight"
    )
    if "log_variance" in weights and weights["log_variance"].notna().any():
        right.plotly_chart(
            loss_weight_chart(weights, "log_variance", "learned log-variance s per task (weight = exp(-s))"),
            width="stretch",
            key="imbalance-log-variance",
        )
    else:
        right.caption("No learned log-variance: only uncertainty weighting (Kendall et al. 2018) learns one.")


def config_ui(run_ids: list[str], records: dict) -> None:
    names = unique_names({r: records[r].config.get("name") or r for r in run_ids})
    diff = config_diff({names[r]: records[r].config for r in run_ids})
    if diff.empty:
        st.info("These runs share every config key.")
    else:
        st.caption("Only the keys that differ between the chosen runs.")
        st.dataframe(diff, width="stretch")


def separate_ui(run_ids: list[str], records: dict) -> None:
    separate = separate_models_table([records[r] for r in run_ids])
    if separate.empty:
        st.info(
            'Launch a sweep with "Also train each task alone" to weigh one multi-task model against two '
            "single-task ones. `python -m core separate-report` adds prediction latency."
        )
    else:
        st.dataframe(separate.drop(columns=["multi_task_run", "single_task_runs"]), hide_index=True, width="stretch")


# -- the view: refreshed while a chosen run is live ---------------------------------------------------
def note_deleted(run_ids: list[str]) -> None:
    """Remember the names of chosen runs that are gone, for the notice at the top of the page: once per run (a tab
    click reruns the view with the run ids it was drawn with, the deleted one included)."""
    announced = st.session_state.setdefault(ANNOUNCED, set())
    new = [r for r in run_ids if r not in announced]
    announced.update(new)
    names = st.session_state.get(NAMES, {})
    st.session_state[GONE] = list(dict.fromkeys([*st.session_state.get(GONE, []), *(names.get(r, r) for r in new)]))


def compare_view(run_ids: list[str], records: dict, refreshing: bool) -> None:
    store = get_store()
    gone = [r for r in run_ids if not store.exists(r)]
    if gone:  # deleted while the page was open (this fragment still holds the old records): redraw without them
        note_deleted(gone)
        st.rerun(scope="app")
    live = [r for r in run_ids if records[r].state.live]
    if live:  # what may have changed since the page read it: only the live runs
        records = {**records, **{r: store.record(r) for r in live if store.exists(r)}}
        live = [r for r in live if records[r].state.live]
    if refreshing and not live:
        st.rerun(scope="app")  # the last live run ended: redraw everything once, then stop refreshing
    for r in live:
        progress = records[r].progress
        name = records[r].config.get("name") or r
        st.caption(f"🏃 {name}: {progress_text(progress)} · this view refreshes every {LIVE_REFRESH_SECONDS} s")
    from_url("compare_tab", "tab", TABS[0], clean=lambda v: v if v in TABS else None)
    tabs = dict(zip(TABS, st.tabs(TABS, key="compare_tab", on_change="rerun")))
    to_url(tab=(st.session_state["compare_tab"], TABS[0]))
    opened = next((label for label, tab in tabs.items() if tab.open), TABS[0])
    with tabs[opened]:
        if opened == "Decision":
            decision_ui(store, records, run_ids)
        elif opened == "Curves":
            curves_ui(records, run_ids, load_curves(store, run_ids), load_curves(store, run_ids, kind="train"))
        elif opened == "Results":
            results_ui(results_table(store, run_ids, records))
        elif opened == "Config diff":
            config_ui(run_ids, records)
        elif opened == "Per class":
            per_class_ui(run_ids, records)
        elif opened == "Imbalance":
            imbalance_ui(store, run_ids, records)
        else:
            separate_ui(run_ids, records)


@guarded
def page() -> None:
    st.title("Compare runs")
    store = get_store()
    records = {r.id: r for r in store.list_runs()}
    gone = [r for r in st.session_state.get("cmp_runs") or [] if r not in records]
    if gone:
        note_deleted(gone)
    for name in st.session_state.pop(GONE, []):
        st.warning(f"Run {name} was deleted; removed from the comparison.")
    if not records:
        st.info("Nothing to compare yet. Launch a sweep of strategies on **Launch**; its runs appear here.")
        return
    run_ids = choose_runs_ui(runs_table(list(records.values())))
    st.session_state[NAMES] = {r: records[r].config.get("name") or r for r in run_ids}
    if not run_ids:
        st.info("Choose runs above (filters narrow the list).")
        return
    live = any(records[r].state.live for r in run_ids)
    view = st.fragment(compare_view, run_every=LIVE_REFRESH_SECONDS if live else None)
    view(run_ids, {r: records[r] for r in run_ids}, live)


page()
