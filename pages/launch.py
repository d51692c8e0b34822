"""Launch: choose backbone, strategy, data and settings; see what trains; queue runs or a sweep."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core import jobs
from core.backbones import BUILTIN_BACKBONES
from core.config import ConfigError, RunConfig, TaskConfig
from core.data import BUILTIN_DATASETS, preview_file, read_table
from core.strategies import STRATEGIES, plan
from pages.common import fmt_params, get_store, guarded

BUILTIN_LABELS = {"bbc_topics": 5, "rt_sentiment": 2, "imdb_sentiment": 2}
OTHER = "Other: a model folder or hub id"


@st.cache_data(show_spinner=False, max_entries=256)
def cached_plan(config_json: str, num_labels: tuple) -> dict:
    return plan(RunConfig.from_dict(json.loads(config_json)), dict(num_labels))


@st.cache_data(show_spinner=False, max_entries=16)
def label_count(path: str, column: str, mtime: float) -> int:
    """Distinct labels of an uploaded file's column (cached: Streamlit reruns the page on every click)."""
    return int(read_table(path)[column].nunique())


@st.cache_data(show_spinner=False, max_entries=16)
def cached_preview(path: str, mtime: float) -> dict:
    return preview_file(path)


def save_upload(upload) -> str:
    """Keep an uploaded file under the runs folder, named by its content, and return its path."""
    data = upload.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", upload.name)[-60:]
    folder = get_store().root / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}-{safe}"
    if not path.exists():
        path.write_bytes(data)
    return str(path)


def task_ui(letter: str, default_name: str, default_dataset: str) -> tuple[TaskConfig | None, int]:
    """The controls of one task; returns its config (None when switched off) and its label count."""
    st.markdown(f"**Task {letter}**")
    use = st.toggle(f"Train task {letter}", value=True, key=f"use_{letter}")
    if not use:
        return None, 0
    name = st.text_input("Task name", default_name, key=f"name_{letter}")
    source = st.radio("Data", ["Built-in", "Upload a file", "Hub dataset"], horizontal=True, key=f"src_{letter}")
    text_col, label_col, n_labels = "text", "label", 2
    if source == "Built-in":
        names = list(BUILTIN_DATASETS)
        dataset = st.selectbox("Dataset", names, index=names.index(default_dataset), key=f"ds_{letter}",
                               format_func=lambda n: f"{n}: {BUILTIN_DATASETS[n]}")
        n_labels = BUILTIN_LABELS.get(dataset, 2)
    elif source == "Upload a file":
        upload = st.file_uploader("CSV, JSONL or Parquet", type=["csv", "jsonl", "json", "parquet"], key=f"up_{letter}")
        if upload is None:
            st.info("Upload a file with a text column and a label column.")
            return None, 0
        dataset = save_upload(upload)
        preview = cached_preview(dataset, Path(dataset).stat().st_mtime)
        st.dataframe(preview["rows"], hide_index=True, width="stretch")
        cols = preview["columns"]
        text_col = st.selectbox("Text column", cols, key=f"tc_{letter}")
        label_col = st.selectbox("Label column", cols, index=min(1, len(cols) - 1), key=f"lc_{letter}")
        n_labels = label_count(dataset, label_col, Path(dataset).stat().st_mtime)
        st.caption(f"{preview['n_rows']:,} rows, {n_labels} label values in {label_col!r}")
    else:
        hub = st.text_input("Hub dataset name", placeholder="e.g. ag_news (needs network)", key=f"hub_{letter}")
        if not hub:
            return None, 0
        dataset = f"hf:{hub}"
        text_col = st.text_input("Text column", "text", key=f"htc_{letter}")
        label_col = st.text_input("Label column", "label", key=f"hlc_{letter}")
    cap = st.number_input("Training examples (0 = all)", 0, 1_000_000, 500, step=100, key=f"max_{letter}",
                          help="Small numbers simulate a task with little data.")
    weight = st.number_input("Loss weight", 0.0, 100.0, 1.0, step=0.5, key=f"w_{letter}")
    return TaskConfig(name=name.strip(), dataset=dataset, text_column=text_col, label_column=label_col,
                      max_train_examples=int(cap) or None, loss_weight=float(weight)), n_labels


def diagram(report: dict) -> go.Figure:
    """Bottom-to-top bars, one per layer group: blue trains, grey is frozen."""
    layers = report["layers"]
    names = [g["group"] for g in layers]
    fig = go.Figure()
    for label, key, color in (("trainable", "trainable", "#2563eb"), ("frozen", None, "#cbd5e1")):
        values = [g["trainable"] if key else g["total"] - g["trainable"] for g in layers]
        fig.add_bar(y=names, x=values, orientation="h", name=label, marker_color=color,
                    text=[fmt_params(v) if v else "" for v in values], textposition="inside")
    fig.update_layout(barmode="stack", height=90 + 28 * len(names), margin=dict(l=0, r=0, t=10, b=0),
                      xaxis=dict(type="log", title="parameters (log scale)"), legend=dict(orientation="h", y=1.08),
                      yaxis=dict(autorange=True))
    return fig


@guarded
def page() -> None:
    st.title("Launch runs")
    st.caption("Pick what to freeze, see what it costs, then queue a run or a sweep. Runs train in the background.")
    left, right = st.columns([3, 2], gap="large")
    with left:
        options = list(BUILTIN_BACKBONES) + [OTHER]
        choice = st.selectbox("Backbone", options, format_func=lambda b: b if b == OTHER else
                              f"{b}  ·  {BUILTIN_BACKBONES[b].size_class}  ·  {BUILTIN_BACKBONES[b].speed_class}")
        backbone = st.text_input("Model folder or hub id", placeholder="bert-base-uncased") if choice == OTHER else choice
        st.caption(BUILTIN_BACKBONES[choice].description if choice in BUILTIN_BACKBONES else
                   "Any Hugging Face encoder; a hub id needs network access.")
        strategy = st.selectbox("Strategy", list(STRATEGIES), index=list(STRATEGIES).index("frozen_backbone"), format_func=lambda s: f"{s}: {STRATEGIES[s].title}")
        st.info(STRATEGIES[strategy].when_to_use)
        freeze_layers, extra = None, {}
        if STRATEGIES[strategy].uses_freeze_layers:
            freeze_layers = st.slider("Freeze the bottom k transformer layers", 0, 12, 3,
                                      help="The embeddings are frozen too. k=0 freezes the embeddings only.")
        if STRATEGIES[strategy].staged:
            every = st.number_input("Unfreeze one more layer every N steps (0 = every epoch)", 0, 100000, 0)
            extra["unfreeze_every_steps"] = int(every) or None
        if STRATEGIES[strategy].lora:
            r_col, a_col = st.columns(2)
            extra["lora_r"] = int(r_col.number_input("LoRA rank r", 1, 256, 8))
            extra["lora_alpha"] = int(a_col.number_input("LoRA alpha", 1, 1024, 16))
        a_col, b_col = st.columns(2)
        with a_col:
            task_a, labels_a = task_ui("A", "topic", "bbc_topics")
        with b_col:
            task_b, labels_b = task_ui("B", "sentiment", "rt_sentiment")
        with st.expander("Training settings"):
            c1, c2, c3 = st.columns(3)
            epochs = c1.number_input("Epochs", 0.1, 100.0, 1.0, step=0.5)
            batch_size = c2.number_input("Batch size", 1, 1024, 32)
            max_length = c3.number_input("Max tokens per sentence", 8, 512, 128)
            head_lr = c1.number_input("Head learning rate", 0.0, 10.0, 3e-2, format="%.0e")
            backbone_lr = c2.number_input("Backbone learning rate", 0.0, 10.0, 5e-5, format="%.0e")
            eval_every = c3.number_input("Evaluate every N steps (0 = auto)", 0, 100000, 0,
                                         help="Auto: about 6 validation points per run, whatever its length.")
            sampling = c1.selectbox("Task sampling", ["proportional", "round_robin", "temperature"],
                                    help="How batches of the two tasks are mixed; temperature uses size^(1/2) (T5).")
            name = c2.text_input("Run name (optional)")
            seeds_text = c3.text_input("Seeds", "0", help="Comma-separated; one run per seed.")
            decay = c1.number_input("Layer-wise LR decay (1 = off)", 0.1, 1.0, 1.0, step=0.05,
                                    help="Each layer's rate is the one above it times this (0.95 in Sun et al. 2019).")
            if decay < 1.0:
                extra["layer_lr_decay"] = float(decay)
    tasks = [t for t in (task_a, task_b) if t is not None]
    cfg, problem, seeds = None, None, []
    try:
        seeds = [int(s) for s in seeds_text.split(",") if s.strip()]
    except ValueError:
        problem = "Seeds must be whole numbers separated by commas, e.g. 0,1,2."
    try:
        cfg = RunConfig(
            strategy=strategy, freeze_layers=freeze_layers, backbone=(backbone or "").strip(), tasks=tasks,
            epochs=float(epochs), batch_size=int(batch_size), max_length=int(max_length),
            head_learning_rate=float(head_lr), backbone_learning_rate=float(backbone_lr),
            eval_every_steps=int(eval_every) or None, task_sampling=sampling, name=name.strip() or None, **extra,
        ).validate()
        if not seeds:
            raise ConfigError(problem or "Seeds is empty: give at least one, e.g. 0 or 0,1,2.")
    except ConfigError as exc:
        cfg, problem = None, str(exc)
    with right:
        st.subheader("What trains")
        if cfg is not None:
            try:
                pairs = [(t, n) for t, n in ((task_a, labels_a), (task_b, labels_b)) if t is not None]
                labels = tuple(sorted({t.name: n for t, n in pairs}.items()))
                report = cached_plan(json.dumps(cfg.to_dict()), labels)
                m1, m2 = st.columns(2)
                m1.metric("Trainable parameters", fmt_params(report["trainable_params"]))
                m2.metric("Total parameters", fmt_params(report["total_params"]), f"{report['trainable_percent']:.2f}% train",
                          delta_color="off")
                st.plotly_chart(diagram(report), width="stretch", config={"displayModeBar": False})
            except (ConfigError, ValueError) as exc:
                problem = str(exc)
        if problem:
            st.error(problem)
    st.divider()
    c1, c2 = st.columns(2)
    with c1:
        n_runs = len(seeds) if cfg else 0
        if st.button(f"Launch ({n_runs} run{'' if n_runs == 1 else 's'})", type="primary",
                     disabled=cfg is None, width="stretch"):
            store = get_store()
            ids = []
            for seed in seeds:
                run_cfg = RunConfig.from_dict({**cfg.to_dict(), "seed": seed})
                ids.append(jobs.submit(store, run_cfg))
            st.success(f"Queued {len(ids)} run(s): {', '.join(ids)}. Follow them on the Runs page.")
    with c2:
        with st.popover("Launch a sweep", width="stretch", disabled=cfg is None):
            picked = st.multiselect("Strategies", list(STRATEGIES), default=["frozen_backbone", "freeze_lower", "full_finetune"])
            separate = st.checkbox("Also train each task alone (multi-task vs separate models)",
                                   disabled=len(tasks) < 2)
            st.caption(f"{len(picked)} strategies x {len(seeds)} seeds = {len(picked) * len(seeds)} runs"
                       f"{' (x3 with separate models)' if separate else ''}, in the background.")
            if st.button("Queue the sweep", disabled=not picked or cfg is None):
                sweep_id, ids = jobs.sweep(get_store(), cfg, strategies=picked, seeds=seeds, separate_models=separate)
                st.success(f"Queued sweep {sweep_id} with {len(ids)} runs. Compare them on the Compare page.")


page()
