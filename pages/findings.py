"""Findings: pick a question, run the experiment that answers it, read what the numbers settle (and what not)."""

from __future__ import annotations

import functools
import io
import tempfile
import zipfile

import streamlit as st

from core import studies
from core.config import RunConfig
from core.errors import ConfigError, FreezeLabError
from core.findings import analyse, seeds_to_settle
from core.records import RunState
from core.report import figures, write_report
from core.store import RunStore
from core.study_values import points_text
from pages.common import fmt_seconds, from_url, get_store, guarded

REFRESH_SECONDS = 5
KEEP = "session"  # the new study's settings survive a visit to another page
STATUS_STYLE = {"better": ("🟢", "success"), "worse": ("🔴", "error"), "equivalent": ("🔵", "info"),
                "unsettled": ("⚪", "warning")}  # fmt: skip


def _seeds(text: str) -> list[int]:
    try:
        seeds = sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    except ValueError:
        raise ConfigError(f"Seeds {text!r}: give whole numbers separated by commas, e.g. 0,1,2.") from None
    if not seeds or min(seeds) < 0:
        raise ConfigError("Seeds: give at least one seed of 0 or more, e.g. 0,1,2 (3 or more give intervals).")
    return seeds


def new_study_ui(store) -> None:
    """Choose questions, scale and seeds; see the run count and estimated time; launch."""
    designs = studies.builtin_designs(studies.SCALES["quick"])
    titles = {d: f"{designs[d].question} ({d})" for d in studies.QUESTIONS}
    chosen = st.multiselect("Questions", list(studies.QUESTIONS), default=["speed"], format_func=titles.get,
                            key="study_questions", persist_state=KEEP,
                            help="Each question is a designed experiment (see its cells below).")  # fmt: skip
    c1, c2, c3, c4 = st.columns(4)
    scale = c1.selectbox("Scale", list(studies.SCALES), key="study_scale", persist_state=KEEP,
                         format_func=lambda s: f"{s}: {studies.SCALES[s].train_examples:,} examples per task")  # fmt: skip
    seeds_text = c2.text_input(
        "Seeds", "0,1,2", key="study_seeds", persist_state=KEEP, help="3 or more seeds give intervals."
    )
    points = c3.number_input("Practical difference (points)", 0.1, 20.0, 1.0, 0.5, key="study_threshold",
                             persist_state=KEEP, help="A difference smaller than this counts as no difference in practice.")  # fmt: skip
    backbone = c4.text_input("Backbone", "minilm-l6", key="study_backbone", persist_state=KEEP)
    try:
        seeds = _seeds(seeds_text)
        # The command line's base: a study launched here and one run by `study run` reuse each other's runs.
        base = studies.scaled_base(RunConfig(backbone=backbone).validate(), scale, given={"backbone"})
        n_layers = _layers(backbone)
        table = studies.builtin_designs(studies.SCALES[scale], n_layers)
        planned = studies.plan([table[d] for d in chosen], base, seeds)
        studies.match_existing(store, planned)
        est = studies.estimate(store, planned)
    except FreezeLabError as exc:
        st.error(str(exc))
        return
    if not chosen:
        st.info("Pick at least one question.")
        return
    shared = f"; {est['cells_shared']} serve more than one question" if est["cells_shared"] else ""
    with st.expander(f"What runs: {est['runs']} runs ({est['runs_reused']} already in the store{shared})"):
        for d in chosen:
            st.markdown(f"**{table[d].question}** " + ", ".join(f"`{c.label}`" for c in table[d].cells)
                        + (f"  \n_{table[d].note}_" if table[d].note else ""))  # fmt: skip
    if studies.SCALES[scale].run_settings:
        st.caption(f"Scale {scale} also sets {studies.SCALES[scale].describe_settings()}: what fits a 2-core CPU, "
                   "and what docs/findings.md was run with. Fewer test sentences give wider intervals.")  # fmt: skip
    cached = "; ".join(est["frozen_cached"]) or "none yet (the first frozen-backbone run computes them)"
    st.caption(
        f"About **{fmt_seconds(est['total_seconds'])}** for {est['runs_to_train']} runs to train, one at a time on "
        f"this machine ({est['basis']}). Frozen-backbone embeddings already cached: {cached}."
    )
    if st.button("Launch study", type="primary", key="study_launch"):
        study = studies.create_study(store, base, designs=chosen, scale=scale, seeds=seeds, threshold=points / 100)
        studies.launch(store, study)
        st.query_params["study"] = study.id
        st.session_state["study_pick"] = study.id  # the picker keeps its choice over the URL: show the new study
        st.rerun()


def _layers(backbone: str) -> int:
    from core.backbones import load_backbone_config

    return load_backbone_config(backbone).num_hidden_layers


@st.fragment(run_every=REFRESH_SECONDS)
@guarded
def progress_ui(study_id: str) -> None:
    store = get_store()
    study = studies.load_study(store, study_id)
    counts = studies.progress(store, study)
    if not counts:
        st.info("No run of this study is queued yet: **Continue** queues them.")
        return
    total = sum(counts.values())
    done = counts.get(RunState.COMPLETED, 0)
    others = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if state != RunState.COMPLETED)
    st.progress(done / total, text=f"{done} of {total} runs completed" + (f" · {others}" if others else ""))
    if counts.get("missing"):
        st.warning(f"{counts['missing']} of this study's runs are no longer in the runs folder (deleted). "
                   "**Continue** queues them again (finished runs are reused).")  # fmt: skip
    if counts.get(RunState.FAILED) or counts.get(RunState.STOPPED):
        st.warning("Some runs did not finish. **Continue** queues what is missing (finished runs are reused).")


def study_ui(store, study_id: str) -> None:
    study = studies.load_study(store, study_id)
    st.subheader(study.name or study.id)
    st.caption(f"`{study.id}` · scale {study.scale} · seeds {', '.join(map(str, study.seeds))} · "
               f"practical difference {points_text(study.threshold)}")  # fmt: skip
    progress_ui(study_id)
    c1, c2 = st.columns(2)
    if c1.button("Continue (queue what is missing)", key="study_continue"):
        planned = studies.launch(store, study)
        st.toast(f"{sum(p.action != 'reuse' for p in planned)} runs queued or resumed")
    findings = analyse(store, study)
    advice = seeds_to_settle(findings)
    wanted = max((a.max_seeds or 0 for a in advice.values()), default=0)
    if wanted > len(study.seeds) and c2.button(f"Queue seeds up to {wanted} to settle what is unsettled",
                                               key="study_more_seeds"):  # fmt: skip
        study.seeds = sorted(set(study.seeds) | set(range(max(study.seeds) + 1, max(study.seeds) + 1 + wanted)))[
            :wanted
        ]
        studies.launch(store, study)
        st.rerun()
    charts = figures(findings)
    for design_id, d in findings.designs.items():
        with st.container(border=True):
            st.markdown(f"#### {d.design.question}")
            st.write(d.answer)
            for rec in d.recommendations:
                st.success(f"**Recommendation.** {rec.sentence}")
            for c in (c for c in d.comparisons if not c.derived):
                mark, _ = STATUS_STYLE.get(c.status, ("⚪", "warning"))
                st.markdown(f"{mark} {c.sentence}")
            if design_id in charts:
                st.plotly_chart(charts[design_id], key=f"chart-{design_id}", width="stretch")
            with st.expander("Means with 95% intervals"):
                st.dataframe(d.means_frame(), hide_index=True)
    # Written when the button is clicked, not on every page run (its PNG charts take seconds to draw).
    report = functools.partial(report_zip, str(store.root), study_id)
    st.download_button("Download the report (markdown + charts)", report, f"{study_id}-report.zip",
                       mime="application/zip", key="study_report")  # fmt: skip


def report_zip(runs_root: str, study_id: str) -> bytes:
    """The study's report (core.report: report.md and its PNG charts) as of now, zipped under ``STUDY_ID/``.
    Called by the download button outside the page's script run; writes nothing into the runs folder."""
    store = RunStore(runs_root)
    study = studies.load_study(store, study_id)
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="freezelab-report-") as tmp:
        report = write_report(store, study, analyse(store, study), out_dir=tmp)
        with zipfile.ZipFile(buffer, "w") as zf:
            for path in sorted(report.parent.iterdir()):
                zf.write(path, f"{study_id}/{path.name}")
    return buffer.getvalue()


@guarded
def page() -> None:
    st.title("Findings")
    st.caption("A question from the seeds, answered with several seeds and 95% intervals. A difference whose whole "
               "interval lies inside the practical threshold is reported as equivalent; one whose interval reaches "
               "across the threshold, or includes no difference, as unsettled.")  # fmt: skip
    store = get_store()
    ids = store.study_ids()
    with st.expander("Start a study", expanded=not ids):
        new_study_ui(store)
    if not ids:
        st.info("No study yet: pick a question above and launch it.")
        return
    # The session's choice, else the link's ?study=, else the newest; a study deleted meanwhile falls back too.
    from_url("study_pick", "study", ids[0], clean=lambda v: v if v in ids else None)
    study_id = st.selectbox("Study", ids, key="study_pick")
    if st.query_params.get("study") != study_id:
        st.query_params["study"] = study_id
    study_ui(store, study_id)


page()
