"""The Findings page (AppTest) on a study that really ran: 2 cells x 3 seeds, each run trained by core.train.

The fixture builds a custom study (freeze_lower k=0 against frozen_backbone over the one-layer MiniLM), queues it
with core.studies.launch and trains every run in-process with core.train.train_run: nothing is fabricated. The
page's verdicts are checked against core.findings run on the same store, and their numbers against a scipy
recomputation from the runs' own summaries.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from streamlit.testing.v1 import AppTest

from core import stats, studies
from core.findings import analyse, seeds_to_settle
from core.records import RunState
from core.store import RunStore
from core.study_values import fmt_sig2, split_metric
from core.train import train_run
from tests.conftest import tiny_config
from tests.dashboard_fixtures import APP, chart_spec, kill_everything_for, no_problem, one, values

PAGE = "pages/findings.py"
STUDY_NAME = "page test"
FACTORS = {"strategy": ["freeze_lower", "frozen_backbone"]}  # the first level is the reference
REFERENCE, CELL = "strategy=freeze_lower", "strategy=frozen_backbone"
SEEDS = [0, 1, 2]
MARKS = {"better": "🟢", "worse": "🔴", "equivalent": "🔵", "unsettled": "⚪"}


def build_finished_study(root: Path) -> dict:
    """A custom study of 2 cells x 3 seeds, queued by core.studies.launch and trained in-process (seconds a run)."""
    store = RunStore(root)
    base = tiny_config(freeze_layers=0, max_steps=5, eval_every_steps=100, checkpoint_every_steps=1000)
    study = studies.create_study(store, base, custom_factors=FACTORS, seeds=SEEDS, name=STUDY_NAME)
    planned = studies.launch(store, study, start_runner=False)
    assert [p.action for p in planned] == ["new"] * 6
    for p in planned:
        assert train_run(store, p.run_id) == RunState.COMPLETED, store.read_status(p.run_id)
    return {"root": root, "study_id": study.id, "runs": {(p.cell, p.seed): p.run_id for p in planned}}


_FINISHED: dict[str, dict] = {}


def finished_study_once(tmp_path_factory) -> dict:
    """``build_finished_study`` once per test session, whichever module asks first (read-only for tests)."""
    if "study" not in _FINISHED:
        _FINISHED["study"] = build_finished_study(tmp_path_factory.mktemp("finished-study") / "runs")
    return _FINISHED["study"]


def findings_app(mp: pytest.MonkeyPatch, runs_dir: Path, query: dict | None = None) -> AppTest:
    """The whole app (router included) on ``runs_dir``, opened straight on the Findings page."""
    mp.setenv("FREEZELAB_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.switch_page(PAGE)  # before the first run: the page is found by its file name (no custom url_path)
    at.run()
    no_problem(at)
    assert [t.value for t in at.title] == ["Findings"]
    return at


def copy_without_checkpoints(finished: dict, dest: Path) -> RunStore:
    shutil.copytree(finished["root"], dest, ignore=shutil.ignore_patterns("checkpoint"))
    return RunStore(dest)


def lines(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


def progress_text(at: AppTest) -> str:
    bars = at.get("progress")
    assert len(bars) == 1, bars
    return bars[0].proto.text


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    return finished_study_once(tmp_path_factory)


@pytest.fixture(scope="module")
def findings(finished):
    store = RunStore(finished["root"])
    return analyse(store, studies.load_study(store, finished["study_id"]))


@pytest.fixture(scope="module")
def shown(finished):
    """The Findings page opened by a link to the finished study, rendered once for the tests that only read it."""
    with pytest.MonkeyPatch.context() as mp:
        yield findings_app(mp, finished["root"], {"study": finished["study_id"]})


def verdicts(findings) -> list:
    return [c for c in findings.designs["custom"].comparisons if not c.derived]


# -- a finished study -------------------------------------------------------------------------------
def test_the_finished_study_is_listed_and_open(shown, finished):
    study_id = finished["study_id"]
    picker = one(shown.selectbox, "Study")
    assert picker.options == [study_id] and picker.value == study_id
    assert shown.query_params["study"] == study_id
    assert [s.value for s in shown.subheader] == [STUDY_NAME]
    caption = f"`{study_id}` · scale quick · seeds 0, 1, 2 · practical difference 1 point"
    assert caption in [c.value for c in shown.caption]
    assert progress_text(shown) == "6 of 6 runs completed"
    assert not shown.warning
    assert [h.value for h in shown.markdown if h.value.startswith("####")] == ["#### Custom study"]


def _binomial_half(p: float, n: int) -> float:
    """95% Wald half-width of an accuracy on n sentences, p held half a sentence inside [0, 1]."""
    q = min(max(p, 0.5 / n), 1 - 0.5 / n)
    return sps.norm.ppf(0.975) * math.sqrt(q * (1 - q) / n)


def test_verdicts_show_the_numbers_the_trained_runs_give(shown, finished, findings):
    store = RunStore(finished["root"])
    page = lines(shown)
    design = findings.designs["custom"]
    assert design.answer in page
    assert {(c.cell, c.metric) for c in verdicts(findings)} == {
        (CELL, "test_accuracy:a"), (CELL, "test_accuracy:b"), (CELL, "train_seconds")
    }  # fmt: skip
    summaries = {key: store.read_summary(run_id) for key, run_id in finished["runs"].items()}
    for c in verdicts(findings):
        line = f"{MARKS[c.status]} {c.sentence}"
        assert line in page, (line, page)
        base, letter = split_metric(c.metric)
        if base == "test_accuracy":  # paired t over the seeds' differences, in points, from the summaries
            task = findings.tasks[letter]
            diff = [
                summaries[(CELL, s)].tasks[task].test_accuracy - summaries[(REFERENCE, s)].tasks[task].test_accuracy
                for s in SEEDS
            ]
            m = re.search(rf"(gains|loses) (\d+\.\d)(?: \[(-?\d+\.\d), (-?\d+\.\d)\])? points of {task} test acc", line)
            assert m, line
            sign = 1 if m.group(1) == "gains" else -1
            assert sign * float(m.group(2)) == pytest.approx(100 * np.mean(diff), abs=0.051)
            d = np.mean(diff)
            low, high = sps.t.interval(0.95, df=2, loc=d, scale=sps.sem(diff)) if np.std(diff) > 0 else (d, d)
            # never narrower than what the two cells' test sets resolve (mean accuracies over the seeds)
            floor = math.hypot(*(
                _binomial_half(np.mean([summaries[(key, s)].tasks[task].test_accuracy for s in SEEDS]),
                               summaries[(key, SEEDS[0])].tasks[task].n_test)
                for key in (CELL, REFERENCE)
            ))  # fmt: skip
            low, high = max(-1.0, min(low, d - floor)), min(1.0, max(high, d + floor))
            shown_low, shown_high = sorted(sign * float(m.group(i)) for i in (3, 4))
            assert (shown_low, shown_high) == pytest.approx((100 * low, 100 * high), abs=0.051)
        else:  # training time: full over frozen per seed, a t interval on the log ratios
            logs = [
                math.log(summaries[(REFERENCE, s)].train_seconds / summaries[(CELL, s)].train_seconds) for s in SEEDS
            ]
            low, high = sps.t.interval(0.95, df=2, loc=np.mean(logs), scale=sps.sem(logs))
            up = np.mean(logs) >= 0
            est, lo, hi = (math.exp(np.mean(logs)), math.exp(low), math.exp(high)) if up else (
                math.exp(-np.mean(logs)), math.exp(-high), math.exp(-low))  # fmt: skip
            word = "faster" if up else "slower"
            assert f"trains {fmt_sig2(est)}x [{fmt_sig2(lo)}, {fmt_sig2(hi)}] {word} than {REFERENCE}" in line, line


def test_an_unsettled_comparison_says_so_with_the_seeds_it_needs(shown, findings):
    unsettled = [c for c in verdicts(findings) if c.status == "unsettled"]
    assert unsettled, "the fixture should leave the accuracy on 20 test sentences unsettled over 3 seeds"
    page = lines(shown)
    estimates = 0
    for c in unsettled:
        line = next(v for v in page if c.sentence in v)
        assert line.startswith("⚪ ") and "(unsettled)" in line
        needed = c.verdict.seeds_needed
        if line.endswith("More seeds cannot settle it; only a larger test set can."):
            # 20 test sentences resolve a difference only to about +-30 points: no seed count settles it
            assert needed is None and c.comparison.widened
        elif needed is None:
            assert line.endswith(f"More than {stats.MAX_SEEDS} seeds would be needed to settle it.")
        elif needed > len(SEEDS):
            assert line.endswith(f"About {needed} seeds would settle it.")
        else:
            assert "seeds would" not in line
            continue
        estimates += 1
    assert estimates or all(c.comparison.widened for c in unsettled), "an unsettled comparison says what settles it"
    advice = seeds_to_settle(findings)["custom"]
    if advice.max_seeds and advice.max_seeds > len(SEEDS):
        assert f"Queue seeds up to {advice.max_seeds} to settle what is unsettled" in [b.label for b in shown.button]
    settled = [c for c in verdicts(findings) if c.status != "unsettled"]
    for c in settled:
        assert f"{MARKS[c.status]} {c.sentence}" in page and "seeds would settle" not in c.sentence


def test_the_recommendation_cards_chart_and_means_appear(shown, findings):
    design = findings.designs["custom"]
    assert design.recommendations
    assert [s.value for s in shown.success] == [f"**Recommendation.** {r.sentence}" for r in design.recommendations]
    assert {r.task for r in design.recommendations} == {"topic", "sentiment"}
    (chart,) = shown.get("plotly_chart")
    traces = chart_spec(chart)["data"]
    assert traces and all(set(values(t["x"])) <= {REFERENCE, CELL} for t in traces)
    bars = [t for t in traces if t.get("type") == "bar"]
    assert bars, [t.get("type") for t in traces]
    for metric in ("test_accuracy:a", "test_accuracy:b"):  # the bars' heights are the cells' means, in percent
        want = sorted(round(100 * design.stat(c, metric).interval.estimate, 6) for c in (REFERENCE, CELL))
        tops = [
            sorted(round(y + t.get("base", 0), 6) for y in values(t["y"])) for t in bars if len(values(t["y"])) == 2
        ]
        assert want in tops, (metric, want, tops)
    (table,) = shown.dataframe
    means = table.value
    row = means[(means.cell == CELL) & (means.metric == "test_accuracy:a")].iloc[0]
    assert row["mean"] == pytest.approx(design.stat(CELL, "test_accuracy:a").interval.estimate)
    assert row["n"] == 3
    assert not shown.exception and not shown.error


# -- choosing, launching, losing ---------------------------------------------------------------------
def test_a_launched_study_is_shown_and_the_picker_switches_back(monkeypatch, tmp_path, finished):
    store = copy_without_checkpoints(finished, tmp_path / "runs")
    monkeypatch.setattr("core.jobs.ensure_runner", lambda store: None)  # queue the runs, train nothing
    try:
        at = findings_app(monkeypatch, store.root)
        old = finished["study_id"]
        assert one(at.selectbox, "Study").value == old
        one(at.button, "Launch study").click().run()  # the default question: speed, 3 cells x 3 seeds
        no_problem(at)
        (new,) = set(store.study_ids()) - {old}
        assert one(at.selectbox, "Study").value == new, "the page must open the study it just launched"
        assert at.query_params["study"] == new
        assert [s.value for s in at.subheader] == ["speed"]
        assert progress_text(at) == "0 of 9 runs completed · 9 queued"
        one(at.selectbox, "Study").set_value(old).run()
        no_problem(at)
        assert [s.value for s in at.subheader] == [STUDY_NAME] and at.query_params["study"] == old
        assert progress_text(at) == "6 of 6 runs completed"
        linked = findings_app(monkeypatch, store.root, {"study": old})  # a shared link to the older study
        assert one(linked.selectbox, "Study").value == old and [s.value for s in linked.subheader] == [STUDY_NAME]
    finally:
        kill_everything_for(store)


def test_the_lite_scale_says_what_it_sets_and_the_study_carries_it(monkeypatch, tmp_path):
    store = RunStore(tmp_path / "runs")
    monkeypatch.setattr("core.jobs.ensure_runner", lambda store: None)  # queue the runs, train nothing
    try:
        at = findings_app(monkeypatch, store.root)
        one(at.selectbox, "Scale").set_value("lite").run()
        no_problem(at)
        (note,) = [c.value for c in at.caption if c.value.startswith("Scale lite also sets")]
        assert "500 test sentences per task" in note and "64 tokens" in note
        one(at.button, "Launch study").click().run()
        no_problem(at)
        (study_id,) = store.study_ids()
        base = studies.load_study(store, study_id).base_config
        assert {k: base[k] for k in studies.LITE_SETTINGS} == studies.LITE_SETTINGS
        assert base["max_length"] == 64 and base["backbone"] == "minilm-l6"
    finally:
        kill_everything_for(store)


def test_an_empty_runs_folder_invites_a_first_study(monkeypatch, tmp_path):
    at = findings_app(monkeypatch, tmp_path / "runs")
    assert [i.value for i in at.info] == ["No study yet: pick a question above and launch it."]
    assert not [s for s in at.selectbox if s.label == "Study"]
    assert one(at.button, "Launch study")
    assert not list((tmp_path / "runs").glob("**/study.json"))


def test_deleted_runs_and_a_deleted_runs_folder_read_clearly(monkeypatch, tmp_path, finished):
    store = copy_without_checkpoints(finished, tmp_path / "runs")
    at = findings_app(monkeypatch, store.root, {"study": finished["study_id"]})
    assert progress_text(at) == "6 of 6 runs completed"
    for run_id in finished["runs"].values():  # deleted by hand, behind the dashboard's back
        shutil.rmtree(store.path(run_id))
    at.run()
    no_problem(at)
    assert progress_text(at) == "0 of 6 runs completed · 6 missing"
    assert [w.value for w in at.warning] == [
        "6 of this study's runs are no longer in the runs folder (deleted). **Continue** queues them again "
        "(finished runs are reused)."
    ]
    assert "No completed runs yet: nothing to answer." in lines(at)
    assert not [v for v in lines(at) if v[:1] in MARKS.values()] and not at.success
    shutil.rmtree(store.root)  # the whole runs folder, while the page shows one of its studies
    at.run()
    no_problem(at)
    assert [i.value for i in at.info] == ["No study yet: pick a question above and launch it."]
    assert not [s for s in at.selectbox if s.label == "Study"]
