"""Runs: every run with state, progress and results; live updates; cancel, resume, delete, tags, notes."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import jobs
from core.analysis import runs_table
from pages.common import STATE_ICONS, fmt_seconds, get_store, guarded, run_label

REFRESH_SECONDS = 2


def filters_ui(df):
    c1, c2, c3, c4 = st.columns(4)
    states = c1.multiselect("State", sorted(df["state"].unique()), placeholder="any state")
    strategies = c2.multiselect("Strategy", sorted(df["strategy"].dropna().unique()), placeholder="any strategy")
    sweeps = c3.multiselect("Sweep", sorted(df["sweep"].dropna().unique()), placeholder="any sweep")
    tag = c4.text_input("Tag or name contains", placeholder="e.g. baseline")
    mask = df["id"].notna()
    if states:
        mask &= df["state"].isin(states)
    if strategies:
        mask &= df["strategy"].isin(strategies)
    if sweeps:
        mask &= df["sweep"].isin(sweeps)
    if tag:
        mask &= df["tags"].str.contains(tag, case=False, regex=False) | df["name"].str.contains(tag, case=False, regex=False)
    return df[mask]


@st.fragment(run_every=REFRESH_SECONDS)
@guarded
def live_table(df: pd.DataFrame) -> None:
    """Every few seconds, re-read only the queued and running runs; finished ones do not change by themselves
    (a resume or delete from this page reruns the whole page)."""
    store = get_store()
    active = df["state"].isin(["queued", "running"])
    if active.any():
        fresh = []
        for run_id in df.loc[active, "id"]:
            try:
                fresh.append(store.record(run_id))
            except (LookupError, ValueError):  # deleted while the page was open
                continue
        order = df["id"].tolist()
        df = pd.concat([df[~active], runs_table(fresh)], ignore_index=True)
        present = set(df["id"])
        df = df.set_index("id").reindex([i for i in order if i in present]).reset_index()
    if df.empty:
        st.info("These runs are gone (deleted from disk?).")
        return
    df = df.copy()
    df["state"] = df["state"].map(lambda s: f"{STATE_ICONS.get(s, '?')} {s}")
    df["progress"] = (df["progress"] * 100).round(1)
    active = df["state"].str.contains("running|queued")
    df["eta"] = [fmt_seconds(s) if a and s is not None else "" for s, a in zip(df["eta_seconds"], active)]
    task_cols = [c for c in df.columns if c.endswith(" test acc")]
    cols = ["name", "state", "progress", "eta", "strategy", "freeze_layers", "backbone", "seed", *task_cols,
            "trainable_params", "train_seconds", "tags", "id"]
    st.dataframe(
        df[[c for c in cols if c in df.columns]], hide_index=True, width="stretch",
        column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=100, format="%.0f%%"),
            "train_seconds": st.column_config.NumberColumn("train s", format="%.1f"),
            "trainable_params": st.column_config.NumberColumn("trainable", format="%d"),
            **{c: st.column_config.NumberColumn(c, format="%.3f") for c in task_cols},
        },
    )


def detail_ui(run_id: str) -> None:
    store = get_store()
    if not store.exists(run_id):
        st.warning(f"Run {run_id} is no longer on disk (deleted outside the dashboard?). Pick another.")
        return
    record = store.record(run_id)
    status = record.status
    st.subheader(run_label(record))
    progress = status.get("progress") or {}
    if record.state in ("running", "queued"):
        total = progress.get("total_steps") or 0
        frac = (progress.get("step", 0) / total) if total else 0.0
        eta = progress.get("eta_seconds")
        st.progress(min(frac, 1.0), text=f"step {progress.get('step', 0)} of {total or '?'}"
                    + (f" · about {fmt_seconds(eta)} left" if eta else ""))
    if status.get("error"):
        st.error(status["error"])
    if status.get("note"):
        st.caption(status["note"])
    c1, c2, c3 = st.columns(3)
    if record.state in ("running", "queued") and c1.button("Cancel", key=f"cancel_{run_id}"):
        new = jobs.cancel(store, run_id)
        st.toast(f"{run_id}: {'stop requested' if new == 'running' else new}")
    if record.state in ("stopped", "failed") and c1.button("Resume", key=f"resume_{run_id}"):
        how = jobs.resume(store, run_id)
        st.toast(f"{run_id} queued to {'continue' if how == 'resume' else 'start again'}")
    if record.state != "running" and c2.button("Delete", key=f"delete_{run_id}", help="Moves it to the trash; restorable below."):
        store.delete_run(run_id)
        st.toast(f"{run_id} moved to the trash")
        st.rerun()
    with st.form(f"meta_{run_id}"):
        tags = st.text_input("Tags (comma-separated)", ", ".join(record.meta.get("tags", [])))
        notes = st.text_area("Notes", record.meta.get("notes", ""), height=80)
        if st.form_submit_button("Save tags and notes"):
            store.update_meta(run_id, tags=tags.split(","), notes=notes)
            st.toast("Saved")
    with st.expander("Log (last 40 lines)"):
        st.code(store.read_log_tail(run_id, 40) or "(no log yet)", language="text")
    with st.expander("Config"):
        st.json(record.config, expanded=False)


@guarded
def page() -> None:
    st.title("Runs")
    store = get_store()
    records = store.list_runs()
    # A run whose process died shows as failed, not running forever.
    if jobs.reconcile(store, statuses={r.id: r.status for r in records}):
        records = store.list_runs()
    if not records:
        st.info("No runs yet. Go to **Launch**, pick a strategy and press Launch; runs appear here as they train.")
        st.page_link("pages/launch.py", label="Launch a run", icon="🚀")
        return
    df = filters_ui(runs_table(records))
    active = int(df["state"].isin(["queued", "running"]).sum())
    st.caption(f"{len(df)} of {len(records)} runs shown · {active} queued or running · refreshes every {REFRESH_SECONDS} s")
    live_table(df)
    if df.empty:
        return
    labels = {r.id: run_label(r) for r in records}
    chosen = st.selectbox("Run details", df["id"].tolist(), format_func=lambda i: f"{labels[i]}  ({i})")
    detail_ui(chosen)
    trash = store.trashed_run_ids()
    if trash:
        with st.expander(f"Trash ({len(trash)})"):
            restore = st.selectbox("Deleted run", trash)
            if st.button("Restore"):
                store.restore_run(restore)
                st.rerun()


page()
