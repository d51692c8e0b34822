"""Playground: type sentences, see every chosen run's predictions for both tasks side by side."""

from __future__ import annotations

import threading
from collections import OrderedDict

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.data import read_table
from core.errors import FreezeLabError, user_message
from core.predict import INT8_MIN_AGREEMENT, Predictor, read_int8_report
from core.records import RunState
from core.shared_predict import timed_side_by_side
from pages.common import capital, get_store, guarded, own_name, stored_upload

MAX_CSV_ROWS = 5000
MAX_SHOWN_CHARS = 200
MAX_DETAILED = 20  # sentences shown one by one (with their probability charts); a table holds them all
TEXT_COLUMN_NAMES = ("text", "sentence", "review", "content", "body", "comment", "document")
KEEP = "session"  # choices survive a visit to another page


@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def load_predictor(runs_dir: str, run_id: str, checkpoint_mtime: float, int8: bool) -> Predictor:
    """Models stay loaded between interactions (keyed by the checkpoint's time, so retraining reloads). int8 is
    asked for only where the run's stored agreement allows it: loading never measures."""
    from core.store import RunStore

    return Predictor.from_run(RunStore(runs_dir), run_id, int8=int8)


class ComputedPredictions:
    """Each run's predictions for a list of sentences, computed once: other widgets, reruns, other sessions and
    other choices of runs reuse them. Keyed by (runs folder, run, checkpoint time, int8, sentences); the
    oldest entries go first beyond ``size``."""

    def __init__(self, size: int = 256) -> None:
        self.items: OrderedDict[tuple, dict] = OrderedDict()
        self.size, self.lock = size, threading.Lock()

    def get(self, key: tuple) -> dict | None:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key: tuple, value: dict) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


@st.cache_resource
def computed_predictions() -> ComputedPredictions:
    return ComputedPredictions()


def side_by_side(chosen: dict[str, bool], sentences: list[str]) -> dict[str, dict | Exception]:
    """Each chosen run's predictions ({run: int8}): kept ones as they are, the rest computed together, with the
    pretrained weights that runs hold read once (frozen layers computed once, LoRA runs riding along:
    core.shared_predict.timed_side_by_side). A run that fails to load or predict gets its exception; the others
    still get their predictions."""
    store = get_store()
    root, cache = str(store.root), computed_predictions()
    keys = {r: (root, r, store.checkpoint_mtime(r) or 0.0, int8, tuple(sentences)) for r, int8 in chosen.items()}
    out: dict[str, dict | Exception | None] = {r: cache.get(key) for r, key in keys.items()}
    out = {r: None if found is None else {**found, "reused": True} for r, found in out.items()}
    loaded: dict[str, Predictor] = {}
    for run_id in [r for r, found in out.items() if found is None]:
        try:
            loaded[run_id] = load_predictor(*keys[run_id][:4])
        except Exception as exc:  # noqa: BLE001 - one run's broken checkpoint must not blank the other columns
            out[run_id] = exc
    if not loaded:
        return out
    answers: dict[str, dict] = {}
    try:
        both = timed_side_by_side(list(loaded.values()), sentences)
        for run_id, predictor in loaded.items():
            answers[run_id] = {
                "results": both.results[run_id],
                "seconds": both.seconds[run_id],
                "max_length": predictor.max_length,
                "shared": both.plan.note(run_id),
            }
    except Exception:  # noqa: BLE001 - then each run alone, so that an error stays in its own column
        for run_id, predictor in loaded.items():
            try:
                results, seconds = predictor.timed_predict(sentences)
                answers[run_id] = {"results": results, "seconds": seconds, "max_length": predictor.max_length}
            except Exception as exc:  # noqa: BLE001
                out[run_id] = exc
    for run_id, answer in answers.items():
        cache.put(keys[run_id], answer)
        out[run_id] = answer
    return out


def predictor_for(run_id: str, int8: bool = False) -> Predictor:
    store = get_store()
    return load_predictor(str(store.root), run_id, store.checkpoint_mtime(run_id) or 0.0, int8)


def int8_choice(run_id: str, wanted: bool) -> tuple[bool, str | None]:
    """Whether this run predicts in int8, and the note that says why (from the agreement measured in training)."""
    if not wanted:
        return False, None
    report = read_int8_report(get_store(), run_id)
    if report is None:
        return (
            False,
            "int8 agreement not measured for this run (measured when a run ends, except in studies; `python -m core int8 RUN` measures it): full precision",
        )
    agreement = f"{100 * report['agreement']:.1f}%"
    if report["allowed"]:
        return True, f"int8 (agreement {agreement} with full precision on {report['n']:,} test sentences)"
    return False, (
        f"full precision: int8 agreed on only {agreement} of {report['n']:,} test sentences "
        f"(needs {100 * INT8_MIN_AGREEMENT:.1f}%)"
    )


def prob_chart(probabilities: dict[str, float]) -> go.Figure:
    labels = sorted(probabilities, key=probabilities.get)
    fig = go.Figure(
        go.Bar(
            x=[probabilities[k] for k in labels],
            y=labels,
            orientation="h",
            text=[f"{probabilities[k]:.0%}" for k in labels],
            textposition="auto",
            marker_color=["#2563eb" if k == labels[-1] else "#cbd5e1" for k in labels],
        )
    )
    fig.update_layout(
        height=40 + 26 * len(labels), margin=dict(l=0, r=0, t=0, b=0), xaxis=dict(range=[0, 1], visible=False)
    )
    return fig


def shown_text(text: str) -> str:
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1].rstrip() + "…"


def timing_text(n: int, out: dict) -> str:
    """What the time counts (the model's computation, not drawing the page), and whether it was measured now."""
    ms = f"{out['seconds'] * 1000:,.0f} ms"
    if out.get("reused"):
        return f"{n} sentence(s): predictions reused from an earlier computation (the model took {ms} then)"
    return f"{n} sentence(s): model computation {ms} (drawing the page not included)"


def probability_table(out: dict) -> pd.DataFrame:
    """Every sentence's label and probabilities for each task, one row per sentence."""
    rows = []
    for r in out["results"]:
        row = {"sentence": r["text"]}
        for task, pred in r["tasks"].items():
            row[task] = pred["label"]
            row.update({f"{task}: {label}": p for label, p in pred["probabilities"].items()})
        row["truncated"] = bool(r.get("truncated"))
        rows.append(row)
    return pd.DataFrame(rows)


def run_column(
    run_id: str, name: str, sentences: list[str], out: dict | Exception, note: str | None, show_probabilities: bool
) -> None:
    """One run's predictions (or its error: it stays in this column)."""
    st.markdown(f"**{name}**")
    if isinstance(out, Exception):
        st.error(f"{run_id}: {user_message(out)}")
        return
    st.caption(timing_text(len(sentences), out))
    if out.get("shared"):
        st.caption(out["shared"])
    if note:
        st.caption(note)
    results = out["results"]
    if len(results) > MAX_DETAILED:
        what = "with probability charts" if show_probabilities else "one by one"
        st.caption(
            f"The first {MAX_DETAILED} of {len(results)} sentences are shown {what}; "
            f"the table below holds all {len(results)}."
        )
    for i, r in enumerate(results[:MAX_DETAILED]):
        st.markdown(f"> {shown_text(r['text'])}")
        if r.get("truncated"):
            st.caption(
                f"Truncated: this run reads the first {out['max_length']} of {r['tokens']} tokens; "
                "the rest of the sentence did not count."
            )
        for task, pred in r["tasks"].items():
            st.markdown(f"{task}: **{pred['label']}**")
            if show_probabilities:
                st.plotly_chart(
                    prob_chart(pred["probabilities"]),
                    width="stretch",
                    config={"displayModeBar": False},
                    key=f"{run_id}-{task}-{i}",
                )
    if len(results) > MAX_DETAILED:
        st.dataframe(probability_table(out), hide_index=True, width="stretch", key=f"{run_id}-table")


def text_column(df: pd.DataFrame) -> str:
    """The most text-like column: one named like text, else the string column with the longest mean length."""
    by_name = {str(c).strip().lower(): c for c in df.columns}
    for name in TEXT_COLUMN_NAMES:
        if name in by_name:
            return by_name[name]
    lengths = {c: df[c].dropna().astype(str).str.len().mean() for c in df.columns if not looks_numeric(df[c])}
    lengths = {c: n for c, n in lengths.items() if n == n}  # an all-empty column has no mean
    return max(lengths, key=lengths.get) if lengths else df.columns[0]


def looks_numeric(column: pd.Series) -> bool:
    """Whether nearly every non-empty value is a number (an id, a label): not sentences to classify."""
    values = column.dropna().astype(str).str.strip()
    values = values[values != ""]
    return not values.empty and pd.to_numeric(values, errors="coerce").notna().mean() >= 0.9


def file_ui(chosen: list[str], names: dict[str, str]) -> None:
    st.subheader("Predict a whole file")
    upload = st.file_uploader("CSV, JSONL or Parquet", type=["csv", "jsonl", "json", "parquet"])
    if upload is None:
        return
    stored = ""
    try:
        stored = stored_upload(upload)
        df = read_table(stored)
    except FreezeLabError as exc:  # empty, malformed or unreadable: say so here, naming the user's own file
        st.error(f"{capital(own_name(str(exc), stored, upload.name))} Upload a fixed file to predict it.")
        return
    if df.attrs.get("note"):
        st.caption(df.attrs["note"])
    columns = list(df.columns)
    column = st.selectbox("Text column", columns, index=columns.index(text_column(df)))
    if looks_numeric(df[column]):
        st.warning(
            f"Column {column!r} holds numbers, not sentences: the runs would classify the numbers as text. "
            "Pick the column with the sentences."
        )
    run_id = st.selectbox("Run", chosen, format_func=names.get)
    limit = ""
    if len(df) > MAX_CSV_ROWS:
        limit = f"Only the first {MAX_CSV_ROWS:,} of {len(df):,} rows are predicted (and downloaded)."
        st.warning(f"{limit} Split the file to predict the rest.")
    if st.button("Predict the column"):
        rows = df.head(MAX_CSV_ROWS).copy()
        texts = rows[column].fillna("").astype(str).str.strip()
        keep = texts != ""
        preds = predictor_for(run_id).predict(texts[keep].tolist())
        for task in preds[0]["tasks"] if preds else []:
            rows.loc[keep, f"{task}_label"] = [p["tasks"][task]["label"] for p in preds]
            rows.loc[keep, f"{task}_confidence"] = [max(p["tasks"][task]["probabilities"].values()) for p in preds]
        skipped = int((~keep).sum())
        st.dataframe(rows.head(50), width="stretch")
        st.caption(
            f"The download holds {len(rows):,} row(s), predictions from column {column!r}"
            + (f"; {skipped} empty row(s) skipped" if skipped else "")
            + (f". {limit}" if limit else ".")
            + (" The table above shows the first 50." if len(rows) > 50 else "")
        )
        st.download_button("Download predictions", rows.to_csv(index=False).encode(), "predictions.csv", "text/csv")


@guarded
def page() -> None:
    st.title("Playground")
    store = get_store()
    done = [
        r for r in store.list_runs() if r.state in (RunState.COMPLETED, RunState.STOPPED) and store.has_checkpoint(r.id)
    ]
    if not done:
        st.info("No trained run yet. Launch one on **Launch**; when it completes, try sentences here.")
        return
    shown = [r.config.get("name") or r.id for r in done]
    names = {r.id: n if shown.count(n) == 1 else f"{n} ({r.id})" for r, n in zip(done, shown)}
    kept = st.session_state.get("pg_runs")
    if kept is None or any(r not in names for r in kept):  # first visit, or runs deleted since
        st.session_state["pg_runs"] = [r for r in kept if r in names] if kept is not None else list(names)[:2]
    chosen = st.multiselect(
        "Runs",
        list(names),
        format_func=names.get,
        max_selections=6,
        key="pg_runs",
        persist_state=KEEP,
    )
    if not chosen:
        st.info("Pick one or more runs to compare their predictions.")
        return
    text = st.text_area(
        "Sentences, one a line",
        "The central bank raised interest rates again.\nA warm, funny and beautifully acted film.",
        height=110,
        key="pg_text",
        persist_state=KEEP,
    )
    c1, c2 = st.columns(2)
    int8 = c1.toggle(
        "Faster int8 prediction",
        key="pg_int8",
        persist_state=KEEP,
        help=f"Dynamic int8 quantization; used only for runs where it predicted the same label as full precision "
        f"on at least {100 * INT8_MIN_AGREEMENT:.1f}% of the test set (measured once, when training ended).",
    )
    show_probabilities = c2.toggle("Show class probabilities", value=True, key="pg_probs", persist_state=KEEP)
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        st.warning("Type at least one sentence (empty lines are skipped).")
        return
    choices = {run_id: int8_choice(run_id, int8) for run_id in chosen}
    outs = side_by_side({run_id: use for run_id, (use, _) in choices.items()}, sentences)
    for col, run_id in zip(st.columns(len(chosen)), chosen):
        with col:
            run_column(run_id, names[run_id], sentences, outs[run_id], choices[run_id][1], show_probabilities)
    st.divider()
    file_ui(chosen, names)


page()
