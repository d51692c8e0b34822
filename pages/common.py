"""Helpers shared by the pages: the run store, error display, small formatters."""

from __future__ import annotations

import functools
import os

import streamlit as st

from core.store import RunStore, default_runs_dir

STATE_ICONS = {"queued": "⏳", "running": "🏃", "completed": "✅", "failed": "❌", "stopped": "⏹️"}


def get_store() -> RunStore:
    return RunStore(os.environ.get("FREEZELAB_RUNS_DIR") or default_runs_dir())


def guarded(page):
    """Run a page; any error becomes a readable message on the page, never a traceback."""

    @functools.wraps(page)
    def wrapper(*args, **kwargs):
        if not st.session_state.get("freezelab_router"):
            st.switch_page("app.py")  # reached as a legacy page: go through the router (st.navigation)
        try:
            return page(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the last line of defence for the UI
            if type(exc).__name__ in ("RerunException", "StopException", "RerunData"):
                raise
            st.error(f"{exc}" if isinstance(exc, (ValueError, LookupError)) else f"Something went wrong: {type(exc).__name__}: {exc}")

    return wrapper


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


def run_label(record) -> str:
    name = record.config.get("name") or record.id
    return f"{STATE_ICONS.get(record.state, '?')} {name}"
