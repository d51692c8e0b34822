"""Runs: every run with state, progress and results; live updates; cancel, resume, delete, tags, notes, download."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import jobs
from core.analysis import evaluation_seconds, remaining_seconds, runs_table
from core.errors import user_message
from core.records import RunState
from core.store import RunRecord
from pages.common import (
    fmt_seconds,
    from_url,
    get_store,
    guarded,
    model_zip,
    progress_fraction,
    progress_text,
    run_label,
    state_label,
    to_url,
)

REFRESH_SECONDS = 2
LIVE_STATES = [s.value for s in RunState if s.live]
PICK = "runs_run"  # the chosen run's id: the picker's key, and ?run= in the URL
KEEP = "session"  # filters survive a visit to another page
ACTION_WORDS = {"cancel": "Cancelling", "resume": "Resuming", "delete": "Deleting", "meta": "Saving tags and notes"}


def kept_choice(key: str, options: list) -> list:
    """Drop from a filter's kept choice what the runs no longer offer (a state no run is in any more)."""
    if key in st.session_state:
        st.session_state[key] = [v for v in st.session_state[key] if v in options]
    return options


def filters_ui(df):
    c1, c2, c3, c4 = st.columns(4)
    states = c1.multiselect(
        "State",
        kept_choice("runs_states", sorted(df["state"].unique())),
        placeholder="any state",
        key="runs_states",
        persist_state=KEEP,
    )
    strategies = c2.multiselect(
        "Strategy",
        kept_choice("runs_strategies", sorted(df["strategy"].dropna().unique())),
        placeholder="any strategy",
        key="runs_strategies",
        persist_state=KEEP,
    )
    sweeps = c3.multiselect(
        "Sweep",
        kept_choice("runs_sweeps", sorted(df["sweep"].dropna().unique())),
        placeholder="any sweep",
        key="runs_sweeps",
        persist_state=KEEP,
    )
    tag = c4.text_input("Tag or name contains", placeholder="e.g. baseline", key="runs_tag", persist_state=KEEP)
    mask = df["id"].notna()
    if states:
        mask &= df["state"].isin(states)
    if strategies:
        mask &= df["strategy"].isin(strategies)
    if sweeps:
        mask &= df["sweep"].isin(sweeps)
    if tag:
        mask &= df["tags"].str.contains(tag, case=False, regex=False) | df["name"].str.contains(
            tag, case=False, regex=False
        )
    return df[mask]


def time_left(record: RunRecord) -> tuple[float | None, bool]:
    """Seconds a live run still needs and whether that includes its evaluations (measured from its metrics)."""
    progress = record.progress
    if record.state != RunState.RUNNING or progress.phase:
        return progress.eta_seconds, False
    if progress.eta_seconds is None:
        return None, False
    metrics = get_store().read_metrics(record.id)
    return remaining_seconds(progress, metrics, record.config.get("eval_every_steps")), (
        evaluation_seconds(metrics) is not None
    )


# -- the live part: the table and the chosen run's state, from one read ---------------------------------
def table_ui(df: pd.DataFrame, fresh: dict[str, RunRecord]) -> None:
    df = df.copy()
    active = df["state"].isin(LIVE_STATES)
    df["state"] = [state_label(s, damaged=isinstance(d, str)) for s, d in zip(df["state"], df["damaged"])]
    df["progress"] = (df["progress"] * 100).round(1)
    df["activity"] = ""
    df["eta"] = ""
    for i in df.index[active]:
        record = fresh.get(df.at[i, "id"])
        if record is None:
            continue
        progress = record.progress
        df.at[i, "progress"] = round(progress_fraction(progress) * 100, 1)
        idle = RunState.QUEUED.value  # a live run that is not running is queued
        df.at[i, "activity"] = progress.phase or ("training" if record.state == RunState.RUNNING else idle)
        left, _ = time_left(record)
        df.at[i, "eta"] = fmt_seconds(left) if left is not None else ""
    task_cols = [c for c in df.columns if c.endswith(" test acc")]
    cols = ["name", "state", "activity", "progress", "eta", "strategy", "freeze_layers", "backbone", "seed"]
    cols += [*task_cols, "trainable_params", "train_seconds", "tags", "id"]
    st.dataframe(
        df[[c for c in cols if c in df.columns]],
        hide_index=True,
        width="stretch",
        placeholder="–",
        column_config={
            "name": st.column_config.TextColumn("name", pinned=True),
            "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=100, format="%.0f%%"),
            "train_seconds": st.column_config.NumberColumn("training s", format="localized"),
            "trainable_params": st.column_config.NumberColumn("trainable", format="compact"),
            **{c: st.column_config.NumberColumn(c, format="%.3f") for c in task_cols},
        },
    )


def status_ui(record: RunRecord) -> None:
    """The chosen run's header, progress and messages."""
    st.subheader(run_label(record))
    if record.damaged:
        st.warning(f"This run folder is damaged ({record.damaged}); what could be read is shown.")
    if record.state.live:
        left, with_eval = time_left(record)
        progress = record.progress
        st.progress(progress_fraction(progress), text=progress_text(progress, left, with_eval))
    if record.status.error:
        st.error(record.status.error)
    if record.status.note:
        st.caption(record.status.note)


@st.fragment(run_every=REFRESH_SECONDS)
@guarded
def live_ui(df: pd.DataFrame, chosen: str | None, states: dict[str, RunState]) -> None:
    """Every few seconds, re-read the queued and running runs and the chosen one; finished runs do not change by
    themselves. The table and the chosen run's progress come from the same read, so they always agree."""
    store = get_store()
    wanted = set(df.loc[df["state"].isin(LIVE_STATES), "id"]) | ({chosen} if chosen else set())
    fresh: dict[str, RunRecord] = {}
    for run_id in wanted:
        try:
            fresh[run_id] = store.record(run_id)
        except (LookupError, ValueError):  # deleted while the page was open
            continue
    if any(fresh[r].state != states.get(r) for r in fresh):
        st.rerun(scope="app")  # a run changed state by itself: redraw its actions and the whole table
    order = [i for i in df["id"] if i in fresh or i not in wanted]  # a run that could not be read is gone
    rows = runs_table([fresh[i] for i in order if i in fresh])
    df = pd.concat([df[df["id"].isin(order) & ~df["id"].isin(fresh)], rows], ignore_index=True)
    df = df.set_index("id").reindex(order).reset_index() if not df.empty else df
    if df.empty:
        st.info("These runs are gone (deleted from disk?).")
    else:
        table_ui(df, fresh)
    if chosen in fresh:
        status_ui(fresh[chosen])


# -- the chosen run ------------------------------------------------------------------------------------
def pick_run_ui(df: pd.DataFrame, records: dict[str, RunRecord]) -> str | None:
    """The picker holds a run id, so a run changing state (or the filters changing) never moves it to another run;
    the id is also ?run= in the URL."""
    options = df["id"].tolist()
    from_url(PICK, "run", options[0] if options else None, clean=lambda v: v if v in records else None)
    chosen = st.session_state[PICK]
    if chosen is not None and chosen not in options:
        options = [chosen, *options]  # filtered out, still shown: the details below stay on it
    if not options:
        return None
    st.selectbox("Run details", options, key=PICK, format_func=lambda i: f"{records[i].config.get('name') or i}  ({i})")
    to_url(run=(st.session_state[PICK], None))
    return st.session_state[PICK]


def _act(run_id: str, action: str) -> None:
    """Button callbacks: they run before the page is drawn again, so what the page shows next includes their effect."""
    store = get_store()
    try:
        if action == "cancel":
            new = jobs.cancel(store, run_id)
            message = f"{run_id}: {'stop requested' if new == RunState.RUNNING else new}"
        elif action == "resume":
            how = jobs.resume(store, run_id)
            message = f"{run_id} queued to {'continue' if how == 'resume' else 'start again'}"
        elif action == "delete":
            store.delete_run(run_id)
            st.session_state.pop(PICK, None)
            message = f"{run_id} moved to the trash"
        else:
            tags = st.session_state.get(f"tags_{run_id}", "")
            meta = store.update_meta(run_id, tags=tags.split(","), notes=st.session_state.get(f"notes_{run_id}", ""))
            st.session_state[f"tags_{run_id}"] = ", ".join(meta.tags)
            message = "Saved"
        st.session_state["runs_toast"] = message
    except Exception as exc:  # noqa: BLE001 - said next to the run, never dropped silently
        st.session_state["runs_problem"] = f"{ACTION_WORDS.get(action, action)} did not happen: {user_message(exc)}"


def actions_ui(record: RunRecord) -> None:
    store, run_id = get_store(), record.id
    mtime = store.checkpoint_mtime(run_id)
    actions = [
        name
        for name, shown in (
            ("cancel", record.state.live),
            ("resume", record.state in (RunState.STOPPED, RunState.FAILED)),
            ("delete", record.state != RunState.RUNNING),
            ("download", mtime is not None and not record.state.live),
        )
        if shown
    ]
    cols = dict(zip(actions, st.columns(4)))
    if "cancel" in cols:
        cols["cancel"].button("Cancel", key=f"cancel_{run_id}", on_click=_act, args=(run_id, "cancel"))
    if "resume" in cols:
        cols["resume"].button("Resume", key=f"resume_{run_id}", on_click=_act, args=(run_id, "resume"))
    if "delete" in cols:
        cols["delete"].button(
            "Delete",
            key=f"delete_{run_id}",
            help="Moves it to the trash; restorable below.",
            on_click=_act,
            args=(run_id, "delete"),
        )
    if "download" in cols:
        cols["download"].download_button(
            "Download model (.zip)",
            data=lambda: model_zip(str(store.root), run_id, mtime),
            file_name=f"{run_id}-sentence-transformer.zip",
            mime="application/zip",
            help="A sentence-transformers folder (LoRA merged), the task heads in safetensors and a README.",
            on_click="ignore",
        )
    for key, value in ((f"tags_{run_id}", ", ".join(record.meta.tags)), (f"notes_{run_id}", record.meta.notes)):
        st.session_state.setdefault(key, value)
    with st.form(f"meta_{run_id}"):
        st.text_input("Tags (comma-separated)", key=f"tags_{run_id}")
        st.text_area("Notes", key=f"notes_{run_id}", height=80)
        st.form_submit_button("Save tags and notes", on_click=_act, args=(run_id, "meta"))
    with st.expander("Log (last 40 lines)"):
        st.code(store.read_log_tail(run_id, 40) or "(no log yet)", language="text")
    with st.expander("Config"):
        st.json(record.config, expanded=False)


@guarded
def page() -> None:
    st.title("Runs")
    if "runs_toast" in st.session_state:
        st.toast(st.session_state.pop("runs_toast"))
    store = get_store()
    records = store.list_runs()
    # A run whose process died shows as failed, not running forever.
    if jobs.reconcile(store, statuses={r.id: r.status for r in records if not r.damaged}):
        records = store.list_runs()
    if not records:
        st.info("No runs yet. Go to **Launch**, pick a strategy and press Launch; runs appear here as they train.")
        st.page_link("pages/launch.py", label="Launch a run", icon="🚀")
        return
    by_id = {r.id: r for r in records}
    df = filters_ui(runs_table(records))
    active = int(df["state"].isin(LIVE_STATES).sum())
    st.caption(
        f"{len(df)} of {len(records)} runs shown · {active} queued or running · refreshes every {REFRESH_SECONDS} s"
    )
    chosen = pick_run_ui(df, by_id)
    if "runs_problem" in st.session_state:
        st.error(st.session_state.pop("runs_problem"))
    live_ui(df, chosen, {r.id: r.state for r in records})
    if chosen is not None:
        actions_ui(by_id[chosen])
    trash = store.trashed_run_ids()
    if trash:
        with st.expander(f"Trash ({len(trash)})"):
            restore = st.selectbox("Deleted run", trash)
            if st.button("Restore"):
                store.restore_run(restore)
                st.rerun()


page()
