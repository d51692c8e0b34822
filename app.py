"""FreezeLab dashboard entry point: `streamlit run app.py`."""

import streamlit as st

st.set_page_config(page_title="FreezeLab", page_icon="🧊", layout="wide")
st.title("FreezeLab")
st.write(
    "Decide what to freeze when fine-tuning a multi-task sentence transformer, with evidence. "
    "The dashboard pages (launch, runs, compare, playground) are being built; until then use the CLI:"
)
st.code("python -m core strategies\npython -m core train --strategy frozen_backbone --max-train-examples 500 --epochs 1\n"
        "python -m core runs", language="bash")
