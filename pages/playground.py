"""Playground: type sentences, see every chosen run's predictions for both tasks side by side."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from core.data import read_table
from core.predict import Predictor
from pages.common import get_store, guarded

MAX_CSV_ROWS = 5000


@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def load_predictor(runs_dir: str, run_id: str, checkpoint_mtime: float, int8: bool) -> Predictor:
    """Models stay loaded between interactions (keyed by the checkpoint's time, so retraining reloads)."""
    from core.store import RunStore

    return Predictor.from_run(RunStore(runs_dir), run_id, int8=int8)


def predictor_for(run_id: str, int8: bool = False) -> Predictor:
    store = get_store()
    weights = store.checkpoint_dir(run_id) / "model.safetensors"
    mtime = weights.stat().st_mtime if weights.exists() else 0.0
    return load_predictor(str(store.root), run_id, mtime, int8)


def prob_chart(probabilities: dict[str, float]) -> go.Figure:
    labels = sorted(probabilities, key=probabilities.get)
    fig = go.Figure(go.Bar(x=[probabilities[k] for k in labels], y=labels, orientation="h",
                           text=[f"{probabilities[k]:.0%}" for k in labels], textposition="auto",
                           marker_color=["#2563eb" if k == labels[-1] else "#cbd5e1" for k in labels]))
    fig.update_layout(height=40 + 26 * len(labels), margin=dict(l=0, r=0, t=0, b=0), xaxis=dict(range=[0, 1], visible=False))
    return fig


@guarded
def page() -> None:
    st.title("Playground")
    store = get_store()
    done = [r for r in store.list_runs() if r.state in ("completed", "stopped") and
            (store.checkpoint_dir(r.id) / "model.safetensors").exists()]
    if not done:
        st.info("No trained run yet. Launch one on **Launch**; when it completes, try sentences here.")
        return
    names = {r.id: r.config.get("name") or r.id for r in done}
    chosen = st.multiselect("Runs", list(names), default=list(names)[:2], format_func=names.get, max_selections=6)
    if not chosen:
        st.info("Pick one or more runs to compare their predictions.")
        return
    text = st.text_area("Sentences, one a line", "The central bank raised interest rates again.\n"
                        "A warm, funny and beautifully acted film.", height=110)
    int8 = st.toggle("Faster int8 prediction", help="Dynamic int8 quantization; used only for runs where it "
                     "predicts the same label as full precision on at least 99.5% of the test set (checked once).")
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        st.warning("Type at least one sentence (empty lines are skipped).")
        return
    columns = st.columns(len(chosen))
    for col, run_id in zip(columns, chosen):
        with col:
            st.markdown(f"**{names[run_id]}**")
            try:
                results, seconds = predictor_for(run_id, int8).timed_predict(sentences)
            except (ValueError, LookupError, OSError) as exc:
                st.error(f"{run_id}: {exc}")
                continue
            st.caption(f"{len(sentences)} sentence(s) in {seconds * 1000:.0f} ms")
            for i, r in enumerate(results):
                st.markdown(f"> {r['text'][:200]}")
                for task, pred in r["tasks"].items():
                    st.markdown(f"{task}: **{pred['label']}**")
                    st.plotly_chart(prob_chart(pred["probabilities"]), width="stretch",
                                    config={"displayModeBar": False}, key=f"{run_id}-{task}-{i}")
    st.divider()
    st.subheader("Predict a whole file")
    upload = st.file_uploader("CSV, JSONL or Parquet", type=["csv", "jsonl", "json", "parquet"])
    if upload is not None:
        from pages.launch import save_upload

        df = read_table(save_upload(upload))
        column = st.selectbox("Text column", list(df.columns))
        run_id = st.selectbox("Run", chosen, format_func=names.get)
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
            if skipped:
                st.caption(f"{skipped} empty row(s) skipped.")
            st.download_button("Download predictions", rows.to_csv(index=False).encode(), "predictions.csv", "text/csv")


page()
