"""FreezeLab dashboard: `streamlit run app.py`. Pages live in pages/; all logic lives in core/."""

import streamlit as st

st.set_page_config(page_title="FreezeLab", page_icon="🧊", layout="wide")

pages = [
    st.Page("pages/launch.py", title="Launch", icon="🚀", default=True),
    st.Page("pages/runs.py", title="Runs", icon="📋"),
    st.Page("pages/compare.py", title="Compare", icon="📈"),
    st.Page("pages/playground.py", title="Playground", icon="💬"),
    st.Page("pages/findings.py", title="Findings", icon="🔬"),
]
nav = st.navigation(pages)
# Pages opened before any session ran this router (a bookmark on a fresh server) would run bare as legacy
# `pages/` scripts; they check this flag and come here first (see pages/common.py).
st.session_state["freezelab_router"] = True
with st.sidebar:
    from pages.common import get_store

    st.caption(f"Runs folder: `{get_store().root.resolve()}`")
    st.caption("Training runs in background processes: closing this tab stops nothing.")
nav.run()
