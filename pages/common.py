"""Helpers shared by the pages: the run store, error display, uploads, colours, the URL, small formatters."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plotly.express as px
import streamlit as st

from core.errors import user_message
from core.records import Progress, RunState
from core.store import RunRecord, RunStore, default_runs_dir
from core.strategies import STRATEGIES
from core.uploads import save_upload

# One colour per strategy on every chart of every page, fixed by the registry's order (not by which runs
# happen to be chosen): frozen_backbone is the same orange on Compare's curves and on its cost charts.
PALETTE = px.colors.qualitative.D3
STRATEGY_COLORS = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(STRATEGIES)}
OTHER_COLOR = "#64748b"

STATE_ICONS = {
    RunState.QUEUED: "⏳",
    RunState.RUNNING: "🏃",
    RunState.COMPLETED: "✅",
    RunState.FAILED: "❌",
    RunState.STOPPED: "⏹️",
}
DAMAGED_ICON = "⚠️"


def get_store() -> RunStore:
    return RunStore(os.environ.get("FREEZELAB_RUNS_DIR") or default_runs_dir())


def guarded(page):
    """Run a page; any error becomes a readable message on the page (core.errors.user_message), never a traceback."""

    source = f"pages/{Path(inspect.getfile(page)).name}"

    @functools.wraps(page)
    def wrapper(*args, **kwargs):
        if not st.session_state.get("freezelab_router"):
            # Reached as a legacy page (a link opened on a fresh server): go through the router (st.navigation),
            # then come back here with the link's query (a shared ?run=... must survive the detour).
            st.session_state["freezelab_return"] = (source, st.query_params.to_dict())
            st.switch_page("app.py")
        back = st.session_state.pop("freezelab_return", None)
        if back is not None and back[0] != source:
            st.switch_page(back[0], query_params=back[1])
        try:
            return page(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the last line of defence for the UI
            if type(exc).__name__ in ("RerunException", "StopException", "RerunData"):
                raise
            st.error(user_message(exc))

    return wrapper


def stored_upload(upload) -> str:
    """Keep a ``st.file_uploader`` file under the runs folder (named by its content) and return its path."""
    return str(save_upload(get_store().root, upload.name, upload.getvalue()))


def fmt_params(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}")


def fmt_seconds(s) -> str:
    if s is None or s != s:
        return "-"
    s = float(s)
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.1f} s"


def state_label(state: str, damaged: bool = False) -> str:
    """A state with its icon, e.g. '✅ completed'; a damaged run folder shows as such: '⚠️ failed (damaged)'."""
    if damaged:
        return f"{DAMAGED_ICON} {state} (damaged)"
    return f"{STATE_ICONS.get(state, '?')} {state}"


def run_label(record: RunRecord) -> str:
    name = record.config.get("name") or record.id
    icon = DAMAGED_ICON if record.damaged else STATE_ICONS.get(record.state, "?")
    return f"{icon} {name}"


def strategy_color(strategy: str | None) -> str:
    return STRATEGY_COLORS.get(strategy or "", OTHER_COLOR)


def fmt_count(n) -> str:
    return "-" if n is None else f"{int(n):,}"


def progress_text(progress: Progress, remaining: float | None = None, evaluation_included: bool = False) -> str:
    """'step 6 of 20 · about 14.0 s left, evaluation included', or a setup phase: 'caching frozen layers: 3 of 10
    sentences · about 1.2 min left'."""
    if progress.phase:
        text = f"{progress.phase}: {fmt_count(progress.phase_done or 0)} of {fmt_count(progress.phase_total)} sentences"
        left = progress.eta_seconds
    else:
        text = f"step {progress.step} of {progress.total_steps or '?'}"
        left = remaining if remaining is not None else progress.eta_seconds
    if left is not None:
        text += f" · about {fmt_seconds(left)} left" + (", evaluation included" if evaluation_included else "")
    return text


def progress_fraction(progress: Progress) -> float:
    if progress.phase:
        return min(1.0, (progress.phase_done or 0) / progress.phase_total) if progress.phase_total else 0.0
    return min(1.0, progress.fraction or 0.0)


# -- the URL: shareable views -------------------------------------------------------------------------
def split_list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def capital(text: str) -> str:
    """A core message ('file a.csv is empty…') as the page writes a sentence: 'File a.csv is empty…'."""
    return text[:1].upper() + text[1:]


def own_name(message: str, stored: str, name: str) -> str:
    """A message about an uploaded file, naming the file as the user uploaded it: no stored copy, no server path."""
    if not stored or stored == name:
        return message
    return message.replace(stored, name).replace(Path(stored).name, name)


def from_url(key: str, param: str, default: Any, *, parse: Callable = str, clean: Callable | None = None) -> None:
    """Give the widget of ``key`` its value before it is drawn: the one it has, else the URL's ``param`` (a shared
    link), else ``default``. ``clean`` maps a value to one the widget can show, or None to use ``default``."""
    clean = clean or (lambda value: value)
    if key in st.session_state:
        current = clean(st.session_state[key])
        if current is None:
            st.session_state[key] = default
        elif current != st.session_state[key]:
            st.session_state[key] = current
        return
    value = None
    if param in st.query_params:
        try:
            value = clean(parse(st.query_params[param]))
        except (ValueError, TypeError):
            value = None
    st.session_state[key] = default if value is None else value


def to_url(**params: tuple[Any, Any]) -> None:
    """Write each ``param=(value, default)`` into the URL, leaving defaults out to keep links short."""
    for param, (value, default) in params.items():
        if value == default or value is None:
            if param in st.query_params:
                del st.query_params[param]
            continue
        text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        if st.query_params.get(param) != text:
            st.query_params[param] = text


# -- take a model away --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def model_zip(runs_root: str, run_id: str, checkpoint_mtime: float) -> bytes:
    """A run exported as a sentence-transformers folder, zipped (core.export); built once per checkpoint. Plain
    caching: a download button calls this outside the page's script run."""
    from core.export import export_zip

    store = RunStore(runs_root)
    return export_zip(
        store.checkpoint_dir(run_id), config=store.read_config(run_id), summary=store.read_summary(run_id)
    )
