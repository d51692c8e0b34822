"""Launch: choose backbone, strategy, data and settings; see what trains and how much data each split gets;
queue runs or a sweep. Every value is kept while you visit other pages; problems show next to their field.
The Imbalance expander holds the options for uneven data: how tasks are mixed and weighted, and per task
class weights, class-balanced batches, a rare-class scenario (class ratio) and augmentation."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core import jobs
from core.backbones import BUILTIN_BACKBONES, load_backbone_config
from core.config import (
    Augment,
    ClassWeighting,
    CurriculumTarget,
    LossWeighting,
    RunConfig,
    TaskConfig,
    TaskSampling,
    choices,
    parse_class_ratio,
)
from core.data import BUILTIN_DATASETS, class_warning, load_task_data, preview_file, read_table
from core.errors import ConfigError, DataError, FreezeLabError
from core.strategies import STRATEGIES, plan
from pages.common import capital, fmt_params, get_store, guarded, own_name, stored_upload

BUILTIN_LABELS = {"bbc_topics": 5, "rt_sentiment": 2, "imdb_sentiment": 2}
OTHER = "Other: a model folder or hub id"
KEEP = "session"  # widget values survive a visit to another page
MIN_SPLIT = 5  # fewer validation or test examples than this measure nothing: Launch is refused
SMALL_SPLIT = 100  # fewer than this: one sentence moves accuracy by a point or more, so warn
MIN_ROWS_PER_CLASS = 2  # fewer on average: most classes cannot be in both training and test, so Launch is refused
# Learning rates: "+" moves by a step the size of the typical low end (not Streamlit's 0.01), and "%g" shows the
# value exactly as it is stored (sprintf.js prints the number itself), where "%.0e" showed 1.5e-4 as 2e-04.
HEAD_LR = {"step": 1e-3, "format": "%g"}
BODY_LR = {"step": 1e-5, "format": "%g"}
DEFAULT_DEPTH = 12  # the k slider's end when the backbone's depth cannot be read (its error says why)
# The field that caps each split: a split its cap keeps small grows by raising that field.
CAP_FIELDS = {
    "train": "Training examples",
    "validation": "Validation sentences per task",
    "test": "Test sentences per task",
}
SWEEP_DEFAULT = ["frozen_backbone", "freeze_lower", "full_finetune"]
# Config fields as the page names them: errors speak of what the user sees, never of tasks[1].name.
FIELD_LABELS = {
    "backbone": "Backbone",
    "strategy": "Strategy",
    "freeze_layers": "Frozen bottom layers k",
    "unfreeze_every_steps": "Unfreeze interval",
    "lora_r": "LoRA rank r",
    "lora_alpha": "LoRA alpha",
    "epochs": "Epochs",
    "batch_size": "Batch size",
    "max_length": "Max tokens per sentence",
    "head_learning_rate": "Head learning rate",
    "backbone_learning_rate": "Backbone learning rate",
    "eval_every_steps": "Evaluation interval",
    "max_eval_examples": "Validation sentences per task",
    "max_test_examples": "Test sentences per task",
    "task_sampling": "Task sampling",
    "name": "Name",
    "layer_lr_decay": "Layer-wise LR decay",
    "max_train_examples": "Training examples",
    "loss_weight": "Loss weight",
    "dataset": "Data",
    "curriculum_target": "Curriculum target",
    "max_task_repeats": "Max passes over a task's data",
    "loss_weighting": "Loss weighting",
    "class_weighting": "Class weighting",
    "class_balanced_sampling": "Class-balanced batches",
    "class_ratio": "Class ratio",
    "augment": "Augmentation",
    "augment_copies": "Augmented copies",
    "augment_alpha": "Share of words changed",
}
# The Imbalance expander: what each choice does, with the idea it comes from.
SAMPLING_HELP = (
    "Which task each batch comes from. proportional: by training-set size; round_robin: alternate tasks; "
    "temperature: size^(1/2), between the two (T5); uniform: both tasks equally likely; curriculum: starts on "
    "the abundant task and moves the weight to the curriculum target by the last step."
)
TARGET_HELP = (
    "Where a curriculum ends (used only when task sampling is curriculum, or when a sweep varies task "
    "sampling to curriculum): uniform = equal weights, proportional = by size, limited = all weight on the "
    "smallest task."
)
REPEATS_HELP = (
    "UniMax (Chung et al. 2023): a small task gets at most this many passes over its training data in the run, so "
    "up-sampling it does not make it memorise its few examples; the batches it gives up go to the other task "
    "(when every task hits its cap, the run is shorter). Empty: no cap."
)
LOSS_WEIGHTING_HELP = (
    "fixed: each task's Loss weight. inverse_size: 1 / training size (normalised to mean 1), so the small task "
    "counts as much as the large one. uncertainty: a learned weight per task (Kendall et al. 2018, "
    "exp(-s) * loss + s / 2 with a learned log-variance s): a noisy or hard task is weighted down."
)
CLASS_WEIGHTING_HELP = (
    "Weights each class in this task's cross-entropy, for a rare class. inverse: 1 / class frequency. effective: "
    "the effective number of samples, (1 - beta) / (1 - beta^n) (Cui et al. 2019): gentler than inverse for a "
    "very rare class."
)
BALANCED_HELP = "Draw every class equally often within this task's batches (the rare class is oversampled)."
RATIO_HELP = (
    "Keep only this fraction of a class in the TRAINING split, to simulate a rare class; validation and test keep "
    "their class mix, so the damage shows. CLASS=FRACTION, several separated by commas, e.g. negative=0.1. "
    "Empty: keep everything."
)
AUGMENT_HELP = (
    "Extra training copies of this task's examples (training split only, no download). eda: random deletion, "
    "swap and insertion of words (Wei & Zou 2019); embedding: words replaced by their nearest neighbours in the "
    "backbone's input embeddings; both: each copy is one or the other at random."
)
_FIELD_RE = re.compile(r"^(?:tasks\[(?P<task>\d+)\]\.)?(?P<field>[a-z_]+)=(?P<value>.*?)(?P<rest>(?: is |: ).*)$", re.S)


def user_words(message: str) -> tuple[str | None, str]:
    """(the field a config error is about, the error in the page's words): 'head_learning_rate=5.0 is out of
    range…' becomes 'Head learning rate 5.0 is out of range…'."""
    m = _FIELD_RE.match(message)
    if not m:
        return None, message
    label = FIELD_LABELS.get(m["field"], m["field"].replace("_", " ").capitalize())
    if m["task"] is not None:
        label = f"Task {'AB'[int(m['task'])]} {label.lower()}"
        return f"tasks[{m['task']}].{m['field']}", f"{label} {m['value']}{m['rest']}"
    return m["field"], f"{label} {m['value']}{m['rest']}"


@dataclasses.dataclass
class TaskForm:
    """What one task's controls produced: its config (None when off or incomplete) and where to say problems."""

    letter: str
    config: TaskConfig | None = None
    n_labels: int = 0
    ok: bool = True
    slots: dict = dataclasses.field(default_factory=dict)
    data_name: str = ""  # the data as the user chose it: a built-in name, a file name, a hub id
    label_names: list[str] | None = None  # the dataset's classes, when the page has read the data
    train_classes: dict[str, int] | None = None  # training examples per class (after the training cap)


@st.cache_data(show_spinner=False, max_entries=256)
def cached_plan(config_json: str, num_labels: tuple) -> dict:
    return plan(RunConfig.from_dict(json.loads(config_json)), dict(num_labels))


@st.cache_data(show_spinner=False, max_entries=16)
def label_count(path: str, column: str, mtime: float) -> tuple[int, int, int]:
    """(distinct values, classes, labelled rows) of an uploaded file's column; classes and rows count as
    core.data.file_class_warning does (blank labels dropped). Cached: Streamlit reruns the page on every click."""
    values = read_table(path)[column]
    labels = values.dropna().astype(str).str.strip()
    labels = labels[labels != ""]
    return int(values.nunique()), int(labels.nunique()), len(labels)


@st.cache_data(show_spinner=False, max_entries=64)
def backbone_layers(spec: str) -> int | None:
    """The backbone's transformer layer count from its config.json (no weights are loaded); None when the config
    does not say. A BackboneError is raised, not cached: a folder fixed or a network back is seen at once."""
    layers = getattr(load_backbone_config(spec), "num_hidden_layers", None)
    return layers if isinstance(layers, int) else None


@st.cache_data(show_spinner=False, max_entries=16)
def cached_preview(path: str, mtime: float) -> dict:
    return preview_file(path)


@st.cache_data(show_spinner="Checking the data…", max_entries=64)
def split_sizes(
    dataset: str,
    text: str,
    label: str,
    max_train: int | None,
    mtime: float,
    max_eval: int | None = RunConfig.max_eval_examples,
    max_test: int | None = RunConfig.max_test_examples,
) -> dict:
    """The examples each split will get, as a run would load them ({"error": ...} when the data cannot be used)."""
    try:
        data = load_task_data(
            "check",
            dataset,
            text_column=text,
            label_column=label,
            max_train_examples=max_train,
            max_eval_examples=max_eval,
            max_test_examples=max_test,
        )
    except DataError as exc:
        return {"error": str(exc)}
    return {
        "train": len(data.train),
        "validation": len(data.validation),
        "test": len(data.test),
        "labels": list(data.label_names),
        "train_classes": data.summary()["train"]["classes"],
    }


def name_problem(name: str, default_name: str) -> str | None:
    if not name:
        return f"Task name is empty: name the task with letters, digits and '_' (e.g. {default_name})."
    if not name.replace("_", "").isalnum():
        suggestion = re.sub(r"\W+", "_", name).strip("_") or default_name
        return f"Task name {name!r} can hold letters, digits and '_' only (e.g. {suggestion})."
    return None


def eval_caps() -> tuple[int | None, int | None]:
    """(validation, test) sentences per task as the Training settings hold them now (0 test: the whole split)."""
    max_eval = st.session_state.get("set_max_eval_examples", RunConfig.max_eval_examples)
    max_test = st.session_state.get("set_max_test_examples", 0)
    return (int(max_eval) if max_eval else None), (int(max_test) if max_test else None)


def grow_advice(small: list[str], sizes: dict, caps: dict[str, int | None], is_file: bool) -> str:
    """How to grow the ``small`` splits: raise the cap the user set where that cap is what keeps the split small,
    else add rows to the file (or, for built-in data, pick a larger dataset)."""
    capped = [s for s in small if caps.get(s) is not None and sizes[s] >= caps[s]]
    fixes = []
    if capped:
        where = " (under Training settings)" if set(capped) - {"train"} else ""
        fixes.append("raise " + " and ".join(f"'{CAP_FIELDS[s]}' from {caps[s]:,}" for s in capped) + where)
    if rest := [s for s in small if s not in capped]:
        data = "add rows to the file" if is_file else "choose a larger dataset"
        fixes.append(f"{data} (its {' and '.join(rest)} split{'s are' if len(rest) > 1 else ' is'} smaller)")
    return ", and ".join(fixes)


def data_check_ui(form: TaskForm, dataset: str, text: str, label: str, cap: int | None) -> None:
    """Split sizes before anything is queued: refuse data that cannot measure anything, warn about data that
    can barely measure (a 60-row file leaves 6 test sentences: each one is 16.7 accuracy points)."""
    is_file = Path(dataset).is_file()
    mtime = Path(dataset).stat().st_mtime if is_file else 0.0
    # The evaluation caps are set further down the page (Training settings): their current values are in the
    # session already, so the sizes shown here are the ones the run will get.
    max_eval, max_test = eval_caps()
    sizes = split_sizes(dataset, text, label, cap, mtime, max_eval, max_test)
    if "error" in sizes:
        text = (
            user_words(sizes["error"])[1].replace("text_column", "Text column").replace("label_column", "Label column")
        )
        st.error(capital(own_name(text, dataset, form.data_name)))
        form.ok = False
        return
    train, val, test = sizes["train"], sizes["validation"], sizes["test"]
    form.label_names, form.train_classes = sizes["labels"], sizes["train_classes"]
    st.caption(f"Split sizes: {train:,} train · {val:,} validation · {test:,} test")
    caps = {"train": cap, "validation": max_eval, "test": max_test}
    if min(train, val, test) < MIN_SPLIT:
        small = [s for s in ("train", "validation", "test") if sizes[s] < MIN_SPLIT]
        st.error(
            f"Only {train} train, {val} validation and {test} test examples: at least {MIN_SPLIT} of each are "
            f"needed to measure anything. To fix it, {grow_advice(small, sizes, caps, is_file)}."
        )
        form.ok = False
    elif min(val, test) < SMALL_SPLIT:
        small = [s for s in ("validation", "test") if sizes[s] < SMALL_SPLIT]
        st.warning(
            f"Only {val:,} validation and {test:,} test examples: each test sentence moves test accuracy by "
            f"{100 / test:.1f} points, so differences between runs will mostly be noise. Aim for about "
            f"{SMALL_SPLIT} or more of each: {grow_advice(small, sizes, caps, is_file)}."
        )


def _forget_upload(letter: str) -> None:
    st.session_state.pop(f"kept_{letter}", None)  # the file was removed or replaced in the uploader


def task_ui(letter: str, default_name: str, default_dataset: str) -> TaskForm:
    """The controls of one task, with its problems written under the field they concern."""
    form = TaskForm(letter)
    st.markdown(f"**Task {letter}**")
    if not st.toggle(f"Train task {letter}", value=True, key=f"use_{letter}", persist_state=KEEP):
        return form
    name = st.text_input("Task name", default_name, key=f"name_{letter}", persist_state=KEEP).strip()
    form.slots["name"] = st.empty()
    if problem := name_problem(name, default_name):
        form.slots["name"].error(problem)
        form.ok = False
    source = st.radio(
        "Data", ["Built-in", "Upload a file", "Hub dataset"], horizontal=True, key=f"src_{letter}", persist_state=KEEP
    )
    text_col, label_col, n_labels, check = "text", "label", 2, True
    if source == "Built-in":
        names = list(BUILTIN_DATASETS)
        dataset = st.selectbox(
            "Dataset",
            names,
            index=names.index(default_dataset),
            key=f"ds_{letter}",
            persist_state=KEEP,
            format_func=lambda n: f"{n}: {BUILTIN_DATASETS[n]}",
        )
        n_labels = BUILTIN_LABELS.get(dataset, 2)
        form.data_name = dataset
    elif source == "Upload a file":
        upload = st.file_uploader(
            "CSV, JSONL or Parquet",
            type=["csv", "jsonl", "json", "parquet"],
            key=f"up_{letter}",
            on_change=_forget_upload,
            args=(letter,),
        )
        if upload is not None:
            try:
                st.session_state[f"kept_{letter}"] = (upload.name, stored_upload(upload))
            except FreezeLabError as exc:  # too large, or the runs folder cannot be written
                st.error(capital(str(exc)))
                form.ok = False
                return form
        kept = st.session_state.get(f"kept_{letter}")
        if kept is None:
            st.info("Upload a file with a text column and a label column.")
            form.ok = False
            return form
        if upload is None:
            st.caption(f"Using {kept[0]}, uploaded earlier (upload another file to replace it).")
        dataset, form.data_name = kept[1], kept[0]
        try:
            preview = cached_preview(dataset, Path(dataset).stat().st_mtime)
        except (FreezeLabError, OSError) as exc:  # unreadable file (or gone): say it here, keep the rest of the page
            text = str(exc) if isinstance(exc, FreezeLabError) else f"file {kept[0]} could not be read ({exc})."
            st.error(f"{capital(own_name(text, dataset, kept[0]))} Upload a fixed file to use it.")
            form.ok = False
            return form
        st.dataframe(preview["rows"], hide_index=True, width="stretch")
        cols = preview["columns"]
        text_col = st.selectbox("Text column", cols, key=f"tc_{letter}", persist_state=KEEP)
        label_col = st.selectbox(
            "Label column", cols, index=min(1, len(cols) - 1), key=f"lc_{letter}", persist_state=KEEP
        )
        if text_col == label_col:
            only = " This file has only one column." if len(cols) == 1 else ""
            st.error(
                f"Text and label are the same column ({label_col!r}): pick the column that holds each sentence's "
                f"class as the label column.{only}"
            )
            form.ok, check = False, False
        else:
            n_labels, n_classes, n_labelled = label_count(dataset, label_col, Path(dataset).stat().st_mtime)
            st.caption(f"{preview['n_rows']:,} rows, {n_labels} label values in {label_col!r}")
            if n_labels < 2:
                st.error(f"Label column {label_col!r} holds {n_labels} class: a classifier needs at least 2.")
                form.ok, check = False, False
            elif many := class_warning(f"file {kept[0]}", label_col, n_classes, n_labelled):
                many = capital(many.replace("label_column", "Label column"))
                if n_labelled < MIN_ROWS_PER_CLASS * n_classes:
                    # Most classes have one row: it lands in training or in test, never both, so nothing is measured.
                    st.error(
                        f"{many} With fewer than {MIN_ROWS_PER_CLASS} rows per class, most classes cannot be both "
                        "trained and tested: Launch is off until the file has more rows per class."
                    )
                    form.ok = False
                else:
                    st.warning(many)
    else:
        hub = st.text_input(
            "Hub dataset name", placeholder="e.g. ag_news (needs network)", key=f"hub_{letter}", persist_state=KEEP
        )
        if not hub:
            form.ok = False
            return form
        dataset, check, form.data_name = f"hf:{hub}", False, hub
        text_col = st.text_input("Text column", "text", key=f"htc_{letter}", persist_state=KEEP)
        label_col = st.text_input("Label column", "label", key=f"hlc_{letter}", persist_state=KEEP)
        st.caption("A hub dataset is checked when its run starts (it needs network).")
    cap = st.number_input(
        "Training examples (0 = all)",
        0,
        1_000_000,
        500,
        step=100,
        key=f"max_{letter}",
        persist_state=KEEP,
        help="Small numbers simulate a task with little data.",
    )
    form.slots["max_train_examples"] = st.empty()
    weight = st.number_input("Loss weight", 0.0, 100.0, 1.0, step=0.5, key=f"w_{letter}", persist_state=KEEP)
    form.slots["loss_weight"] = st.empty()
    if check:
        data_check_ui(form, dataset, text_col, label_col, int(cap) or None)
    form.config = TaskConfig(
        name=name,
        dataset=dataset,
        text_column=text_col,
        label_column=label_col,
        max_train_examples=int(cap) or None,
        loss_weight=float(weight),
    )
    form.n_labels = n_labels
    return form


def diagram(report: dict) -> go.Figure:
    """Bottom-to-top bars, one per layer group: blue trains, grey is frozen."""
    layers = report["layers"]
    names = [g["group"] for g in layers]
    fig = go.Figure()
    for label, key, color in (("trainable", "trainable", "#2563eb"), ("frozen", None, "#cbd5e1")):
        values = [g["trainable"] if key else g["total"] - g["trainable"] for g in layers]
        fig.add_bar(
            y=names,
            x=values,
            orientation="h",
            name=label,
            marker_color=color,
            text=[fmt_params(v) if v else "" for v in values],
            textposition="inside",
        )
    fig.update_layout(
        barmode="stack",
        height=90 + 28 * len(names),
        margin=dict(l=0, r=0, t=10, b=0),
        xaxis=dict(type="log", title="parameters (log scale)"),
        legend=dict(orientation="h", y=1.08),
        yaxis=dict(autorange=True),
    )
    return fig


def model_ui(slots: dict) -> tuple[str, str, int | None, dict, bool]:
    """Backbone and strategy with the strategy's own settings; returns backbone, strategy, k, extra config and
    whether the backbone could be read (when not, its error is under the Backbone field)."""
    options = list(BUILTIN_BACKBONES) + [OTHER]
    choice = st.selectbox(
        "Backbone",
        options,
        key="backbone",
        persist_state=KEEP,
        format_func=lambda b: (
            b if b == OTHER else f"{b}  ·  {BUILTIN_BACKBONES[b].size_class}  ·  {BUILTIN_BACKBONES[b].speed_class}"
        ),
    )
    backbone = (
        st.text_input(
            "Model folder or hub id", placeholder="bert-base-uncased", key="backbone_other", persist_state=KEEP
        )
        if choice == OTHER
        else choice
    )
    backbone = (backbone or "").strip()
    slots["backbone"] = st.empty()
    depth, backbone_ok = None, True
    if backbone:  # an empty one is refused by the config check, under this field too
        try:
            depth = backbone_layers(backbone)
        except FreezeLabError as exc:
            text = str(exc)
            slots["backbone"].error(capital(text))
            backbone_ok = False
    st.caption(
        BUILTIN_BACKBONES[choice].description
        if choice in BUILTIN_BACKBONES
        else "Any Hugging Face encoder; a hub id needs network access."
    )
    strategy = st.selectbox(
        "Strategy",
        list(STRATEGIES),
        index=list(STRATEGIES).index("frozen_backbone"),
        key="strategy",
        persist_state=KEEP,
        format_func=lambda s: f"{s}: {STRATEGIES[s].title}",
    )
    st.info(STRATEGIES[strategy].when_to_use)
    freeze_layers, extra = None, {}
    if STRATEGIES[strategy].uses_freeze_layers:
        top = max(depth or DEFAULT_DEPTH, 1)  # the slider ends at the backbone's own depth
        kept = st.session_state.get("freeze_layers", min(3, top))
        if "freeze_layers" not in st.session_state or kept > top:  # k chosen on a deeper backbone: its deepest
            st.session_state["freeze_layers"] = min(kept, top)  # set here, not as value=: one source of truth
        freeze_layers = st.slider(
            "Freeze the bottom k transformer layers",
            0,
            top,
            key="freeze_layers",
            persist_state=KEEP,
            help="The embeddings are frozen too. k=0 freezes the embeddings only.",
        )
        slots["freeze_layers"] = st.empty()
        if kept > top:
            slots["freeze_layers"].caption(
                f"k lowered from {kept} to {top}: {backbone} has {top} layer{'s' if top != 1 else ''}."
            )
    if STRATEGIES[strategy].staged:
        every = st.number_input(
            "Unfreeze one more layer every N steps (0 = every epoch)", 0, 100000, 0, key="unfreeze", persist_state=KEEP
        )
        slots["unfreeze_every_steps"] = st.empty()
        extra["unfreeze_every_steps"] = int(every) or None
    if STRATEGIES[strategy].lora:
        r_col, a_col = st.columns(2)
        extra["lora_r"] = int(r_col.number_input("LoRA rank r", 1, 256, 8, key="lora_r", persist_state=KEEP))
        slots["lora_r"] = r_col.empty()
        extra["lora_alpha"] = int(a_col.number_input("LoRA alpha", 1, 1024, 16, key="lora_alpha", persist_state=KEEP))
        slots["lora_alpha"] = a_col.empty()
    return backbone, strategy, freeze_layers, extra, backbone_ok


def settings_ui(slots: dict, extra: dict) -> dict:
    """The training settings, each with a place for its own error; returns RunConfig keywords and the seeds text."""
    c1, c2, c3 = st.columns(3)

    def field(col, name: str, widget, *args, **kwargs):
        value = widget(*args, key=f"set_{name}", persist_state=KEEP, **kwargs)
        slots[name] = col.empty()
        return value

    values = {
        "epochs": float(field(c1, "epochs", c1.number_input, "Epochs", 0.1, 100.0, 1.0, step=0.5)),
        "batch_size": int(field(c2, "batch_size", c2.number_input, "Batch size", 1, 1024, 32)),
        "max_length": int(field(c3, "max_length", c3.number_input, "Max tokens per sentence", 8, 512, 128)),
        "head_learning_rate": float(
            field(c1, "head_learning_rate", c1.number_input, "Head learning rate", 0.0, 10.0, 3e-2, **HEAD_LR)
        ),
        "backbone_learning_rate": float(
            field(c2, "backbone_learning_rate", c2.number_input, "Backbone learning rate", 0.0, 10.0, 5e-5, **BODY_LR)
        ),
        "eval_every_steps": int(
            field(
                c3,
                "eval_every_steps",
                c3.number_input,
                "Evaluate every N steps (0 = auto)",
                0,
                100000,
                0,
                help="Auto: about 6 validation points per run, whatever its length.",
            )
        )
        or None,
    }
    name = field(c2, "name", c2.text_input, "Run name (optional)")
    values["name"] = name.strip() or None
    values["seeds"] = field(c3, "seeds", c3.text_input, "Seeds", "0", help="Comma-separated; one run per seed.")
    decay = field(
        c1,
        "layer_lr_decay",
        c1.number_input,
        "Layer-wise LR decay (1 = off)",
        0.1,
        1.0,
        1.0,
        step=0.05,
        help="Each layer's rate is the one above it times this (0.95 in Sun et al. 2019).",
    )
    if decay < 1.0:
        extra["layer_lr_decay"] = float(decay)
    values["max_eval_examples"] = int(
        field(
            c2,
            "max_eval_examples",
            c2.number_input,
            "Validation sentences per task",
            10,
            1_000_000,
            RunConfig.max_eval_examples,
            help="Scored at every evaluation; 500 resolves accuracy to about ±4 points (95%).",
        )
    )
    test_cap = field(
        c3,
        "max_test_examples",
        c3.number_input,
        "Test sentences per task (0 = all)",
        0,
        1_000_000,
        0,
        help="The final test. A cap makes a run quicker and its result vaguer: 100 sentences give about ±10 points "
        "(95%), and Compare flags small test sets.",
    )
    values["max_test_examples"] = int(test_cap) or None
    return values


# -- the Imbalance expander ---------------------------------------------------------------------------
def class_ratio_from_text(
    text: str, labels: list[str] | None, dataset: str
) -> tuple[dict[str, float] | None, str | None]:
    """'negative=0.1, positive=0.5' as {class: fraction} (None when empty), or the error in the user's words: the
    bad part and how to write it. Class names are checked against ``labels`` when the page has read the data."""
    try:
        return (parse_class_ratio(text, labels, dataset) or None), None
    except ConfigError as exc:
        return None, str(exc)


def ratio_effect(ratio: dict[str, float], counts: dict[str, int]) -> str:
    """What a class ratio leaves of the training split, counted as the engine keeps rows (at least one a class)."""
    after = {c: (max(1, round(ratio[c] * n)) if c in ratio and n else n) for c, n in counts.items()}
    parts = [f"{c} {counts[c]:,} → {after[c]:,}" if c in ratio else f"{c} {counts[c]:,}" for c in counts]
    return f"Training examples per class after the ratio: {' · '.join(parts)} ({sum(after.values()):,} in all)."


def task_imbalance_ui(form: TaskForm) -> None:
    """One task's imbalance options, written into its config; a bad class ratio is said under its field."""
    letter = form.letter
    weighting = st.selectbox(
        "Class weighting",
        choices(ClassWeighting),
        key=f"imb_cw_{letter}",
        persist_state=KEEP,
        help=CLASS_WEIGHTING_HELP,
    )
    form.slots["class_weighting"] = st.empty()
    balanced = st.checkbox("Class-balanced batches", key=f"imb_bal_{letter}", persist_state=KEEP, help=BALANCED_HELP)
    form.slots["class_balanced_sampling"] = st.empty()
    ratio_text = st.text_input(
        "Class ratio (training split only)",
        key=f"imb_ratio_{letter}",
        persist_state=KEEP,
        placeholder=f"e.g. {(form.label_names or ['negative'])[-1]}=0.1",
        help=RATIO_HELP,
    )
    form.slots["class_ratio"] = st.empty()
    ratio, problem = class_ratio_from_text(ratio_text, form.label_names, form.data_name or form.config.dataset)
    if problem:
        form.slots["class_ratio"].error(problem)
        form.ok = False
    elif ratio and form.train_classes:
        st.caption(ratio_effect(ratio, form.train_classes))
    elif ratio and form.label_names is None:
        st.caption("The class names are checked against the data when the run starts.")
    augment = st.selectbox(
        "Augmentation", choices(Augment), key=f"imb_aug_{letter}", persist_state=KEEP, help=AUGMENT_HELP
    )
    form.slots["augment"] = st.empty()
    c1, c2 = st.columns(2)
    copies = c1.number_input(
        "Augmented copies",
        1,
        20,
        1,
        key=f"imb_copies_{letter}",
        persist_state=KEEP,
        disabled=augment == Augment.NONE,
        help="Augmented copies of each training example.",
    )
    form.slots["augment_copies"] = c1.empty()
    alpha = c2.number_input(
        "Share of words changed",
        0.01,
        0.5,
        0.1,
        step=0.05,
        key=f"imb_alpha_{letter}",
        persist_state=KEEP,
        disabled=augment == Augment.NONE,
        help="Share of a sentence's words each augmented copy changes.",
    )
    form.slots["augment_alpha"] = c2.empty()
    on = augment != Augment.NONE  # copies and share mean nothing without augmentation: keep the defaults then
    form.config = dataclasses.replace(
        form.config,
        class_weighting=weighting,
        class_balanced_sampling=bool(balanced),
        class_ratio=ratio,
        augment=augment,
        augment_copies=int(copies) if on else 1,
        augment_alpha=float(alpha) if on else 0.1,
    )


def imbalance_ui(slots: dict, forms: list[TaskForm]) -> dict:
    """How the tasks are mixed and weighted (RunConfig keywords, returned) and each task's own options (written
    into its config). Every value is kept across pages like the rest of the form."""
    c1, c2 = st.columns(2)
    sampling = c1.selectbox(
        "Task sampling", choices(TaskSampling), key="set_task_sampling", persist_state=KEEP, help=SAMPLING_HELP
    )
    slots["task_sampling"] = c1.empty()
    target = c2.selectbox(
        "Curriculum target",
        choices(CurriculumTarget),
        key="imb_curriculum_target",
        persist_state=KEEP,
        help=TARGET_HELP,
    )
    slots["curriculum_target"] = c2.empty()
    repeats = c1.number_input(
        "Max passes over a task's data",
        min_value=1.0,
        max_value=1000.0,
        value=None,
        step=1.0,
        key="imb_max_repeats",
        persist_state=KEEP,
        placeholder="no cap",
        help=REPEATS_HELP,
    )
    slots["max_task_repeats"] = c1.empty()
    weighting = c2.selectbox(
        "Loss weighting", choices(LossWeighting), key="imb_loss_weighting", persist_state=KEEP, help=LOSS_WEIGHTING_HELP
    )
    slots["loss_weighting"] = c2.empty()
    columns = st.columns(2)
    for col, form in zip(columns, forms):
        with col:
            st.markdown(f"**Task {form.letter}**")
            if form.config is None:
                st.caption(f"Task {form.letter} is off or has no data yet.")
            else:
                task_imbalance_ui(form)
    values = {"task_sampling": sampling, "loss_weighting": weighting, "max_task_repeats": repeats}
    if sampling == TaskSampling.CURRICULUM:  # elsewhere the target means nothing: configs keep the default
        values["curriculum_target"] = target
    return values | {"curriculum_target_choice": target}


def what_trains_ui(cfg: RunConfig | None, forms: list[TaskForm], slots: dict) -> dict | None:
    """The parameter counts and the layer diagram; None when there is no valid config or no plan for it (the
    plan's error is then written under the field it concerns: the k slider, or the Backbone)."""
    st.subheader("What trains")
    report = None
    if cfg is not None:
        labels = tuple(sorted({f.config.name: f.n_labels for f in forms if f.config is not None}.items()))
        try:
            report = cached_plan(json.dumps(cfg.to_dict()), labels)
        except FreezeLabError as exc:
            field, text = user_words(str(exc))
            if str(exc).startswith("freeze_layers="):
                field, text = "freeze_layers", text.replace("freeze_layers=", "Frozen bottom layers k = ", 1)
            slot = slots.get(field) or slots["backbone"]
            slot.error(capital(text))
    if report is None:
        st.caption("The parameter counts appear once the settings marked in red are fixed.")
        return None
    m1, m2 = st.columns(2)
    m1.metric("Trainable parameters", fmt_params(report["trainable_params"]))
    m2.metric(
        "Total parameters",
        fmt_params(report["total_params"]),
        f"{report['trainable_percent']:.2f}% train",
        delta_color="off",
    )
    st.plotly_chart(diagram(report), width="stretch", config={"displayModeBar": False})
    return report


def imbalance_sweep_ui(cfg: RunConfig | None, forms: list[TaskForm]) -> dict[str, list]:
    """Imbalance options a sweep may vary, as ``jobs.sweep``'s ``vary`` ({config key: values}); an empty choice
    keeps the launch form's value. A task's keys are task_a / task_b by its place in the config."""
    st.markdown("**Also vary** (empty: the value set under Imbalance)")

    def pick(label: str, options: list, key: str, **kwargs) -> list:
        return st.multiselect(label, options, key=key, persist_state=KEEP, placeholder="as set above", **kwargs)

    vary = {
        "task_sampling": pick("Task sampling values", choices(TaskSampling), "sweep_task_sampling"),
        "loss_weighting": pick("Loss weighting values", choices(LossWeighting), "sweep_loss_weighting"),
    }
    for i, form in enumerate(forms if cfg is not None else []):
        prefix, name = f"task_{'ab'[i]}", cfg.tasks[i].name
        vary[f"{prefix}.class_weighting"] = pick(
            f"Class weighting values for {name}", choices(ClassWeighting), f"sweep_cw_{form.letter}"
        )
        vary[f"{prefix}.class_balanced_sampling"] = pick(
            f"Class-balanced batches for {name}",
            [False, True],
            f"sweep_bal_{form.letter}",
            format_func=lambda on: "on" if on else "off",
        )
        vary[f"{prefix}.augment"] = pick(
            f"Augmentation values for {name}", choices(Augment), f"sweep_aug_{form.letter}"
        )
    return {key: values for key, values in vary.items() if values}


def sweep_ui(cfg: RunConfig | None, seeds: list[int], forms: list[TaskForm], report: dict | None, target: str) -> None:
    n_tasks = len(forms)
    with st.popover("Launch a sweep", width="stretch", disabled=cfg is None):
        picked = st.multiselect(
            "Strategies", list(STRATEGIES), default=SWEEP_DEFAULT, key="sweep_strategies", persist_state=KEEP
        )
        deep = [s for s in picked if STRATEGIES[s].uses_freeze_layers]
        depths: list[int] = []
        if deep:
            n_layers = sum(g["group"].startswith("layer.") for g in report["layers"]) if report else 12
            default = [cfg.freeze_layers] if cfg is not None and cfg.freeze_layers is not None else []
            depths = st.multiselect(
                f"Freeze depths (k) for {', '.join(deep)}",
                list(range(n_layers + 1)),
                default=[k for k in default if k <= n_layers],
                key="sweep_depths",
                persist_state=KEEP,
                placeholder="choose one or more k",
                help="One run per depth: the embeddings and the bottom k layers are frozen.",
            )
            if not depths:
                st.caption(f"Choose at least one freeze depth for {', '.join(deep)}.")
        separate = st.checkbox(
            "Also train each task alone (multi-task vs separate models)",
            disabled=n_tasks < 2,
            key="sweep_separate",
            persist_state=KEEP,
        )
        vary = imbalance_sweep_ui(cfg, forms)
        per_seed = (len(picked) - len(deep) + len(deep) * len(depths)) * math.prod(len(v) for v in vary.values())
        st.caption(
            f"{per_seed} configurations x {len(seeds)} seeds = {per_seed * len(seeds)} runs"
            f"{' (x3 with separate models)' if separate else ''}, in the background."
        )
        if st.button("Queue the sweep", disabled=not picked or cfg is None or (bool(deep) and not depths)):
            base = cfg
            if TaskSampling.CURRICULUM in vary.get("task_sampling", []):  # its runs end where the form says
                base = dataclasses.replace(cfg, curriculum_target=target)
            sweep_id, ids = jobs.sweep(
                get_store(),
                base,
                strategies=picked,
                seeds=seeds,
                freeze_layers=depths or None,
                separate_models=separate,
                vary=vary or None,
            )
            st.success(f"Queued sweep {sweep_id} with {len(ids)} runs. Compare them on the Compare page.")


@guarded
def page() -> None:
    st.title("Launch runs")
    st.caption("Pick what to freeze, see what it costs, then queue a run or a sweep. Runs train in the background.")
    slots: dict = {}
    extra: dict = {}
    left, right = st.columns([3, 2], gap="large")
    with left:
        backbone, strategy, freeze_layers, extra, backbone_ok = model_ui(slots)
        a_col, b_col = st.columns(2)
        with a_col:
            form_a = task_ui("A", "topic", "bbc_topics")
        with b_col:
            form_b = task_ui("B", "sentiment", "rt_sentiment")
        with st.expander("Training settings"):
            values = settings_ui(slots, extra)
        with st.expander("Imbalance"):
            values |= imbalance_ui(slots, [form_a, form_b])
    target = values.pop("curriculum_target_choice")
    forms = [f for f in (form_a, form_b) if f.config is not None]
    tasks = [f.config for f in forms]
    for i, form in enumerate(forms):  # a config error about tasks[i] goes under that task's field
        for key, slot in form.slots.items():
            slots[f"tasks[{i}].{key}"] = slot
    if len(tasks) == 2 and tasks[0].name and tasks[0].name == tasks[1].name:
        form_b.slots["name"].error(
            f"Task B has the same name as Task A ({tasks[0].name!r}): give each task its own name."
        )
        form_b.ok = False
    seeds_text = values.pop("seeds")
    cfg, seeds = None, []
    try:
        seeds = [int(s) for s in seeds_text.split(",") if s.strip()]
        if not seeds:
            slots["seeds"].error("Seeds is empty: give at least one, e.g. 0 or 0,1,2.")
    except ValueError:
        slots["seeds"].error("Seeds must be whole numbers separated by commas, e.g. 0,1,2.")
    names = [t.name for t in tasks]
    names_ok = len(set(names)) == len(names) and all(name_problem(n, "task") is None for n in names)
    # Task names already have their own messages: check the other settings with placeholder names.
    check_tasks = tasks if names_ok else [dataclasses.replace(t, name=f"task{i}") for i, t in enumerate(tasks)]
    general = st.empty()  # errors that belong to no single field
    if not tasks and all(f.ok for f in (form_a, form_b)):
        general.error("Switch on at least one task (Task A or Task B).")
    try:
        candidate = RunConfig(
            strategy=strategy, freeze_layers=freeze_layers, backbone=backbone, tasks=check_tasks, **values, **extra
        ).validate()
        if tasks and seeds and backbone_ok and all(f.ok for f in (form_a, form_b)):
            cfg = dataclasses.replace(candidate, tasks=tasks)
    except ConfigError as exc:
        field, text = user_words(str(exc))
        if tasks and not (field or "").endswith(".name"):
            (slots.get(field) or general).error(text)
    with right:
        report = what_trains_ui(cfg, forms, slots)
    if report is None:  # no plan: nothing to launch until the field marked in red is fixed
        cfg = None
    st.divider()
    c1, c2 = st.columns(2)
    with c1:
        n_runs = len(seeds) if cfg else 0
        if st.button(
            f"Launch ({n_runs} run{'' if n_runs == 1 else 's'})", type="primary", disabled=cfg is None, width="stretch"
        ):
            store = get_store()
            ids = [jobs.submit(store, dataclasses.replace(cfg, seed=seed)) for seed in seeds]
            st.success(f"Queued {len(ids)} run(s): {', '.join(ids)}. Follow them on the Runs page.")
        if cfg is None:
            st.caption(
                "Launch is off until every field marked in red is fixed (some sit under Training settings or Imbalance)."
            )
    with c2:
        sweep_ui(cfg, seeds, forms, report, target)


page()
