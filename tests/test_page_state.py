"""Pages keep what the user typed and say what they did (AppTest on the real pages, real tiny runs): whole-file
prediction limits and column choice, what the Playground's time counts, settings kept across page switches,
actions on a run deleted by hand, and Compare's selection when a chosen run is deleted."""

from __future__ import annotations

import io
import shutil
import time

import pandas as pd
import pytest

from core.records import RunState, RunSummary
from core.store import RunStore
from core.train import train_run
from tests.conftest import tiny_config
from tests.dashboard_fixtures import DECISION_SWEEP, app, decision_runs, finished_run, no_problem, one, open_tab

RUNS, COMPARE, FINDINGS, PLAYGROUND = "pages/runs.py", "pages/compare.py", "pages/findings.py", "pages/playground.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny frozen-backbone run, really trained."""
    store = RunStore(tmp_path_factory.mktemp("state") / "runs")
    run_id = store.create_run(tiny_config(name="state-frozen", strategy="frozen_backbone"))
    assert train_run(store, run_id) == RunState.COMPLETED
    return {"root": store.root, "id": run_id}


@pytest.fixture(scope="module")
def decision(tmp_path_factory) -> dict:
    return decision_runs(tmp_path_factory.mktemp("state-decision") / "runs")


@pytest.fixture
def runs_copy(decision, tmp_path) -> dict:
    """The synthetic runs plus a failed one, in a folder the test may change."""
    root = tmp_path / "runs"
    shutil.copytree(decision["root"], root)
    failed = finished_run(RunStore(root), tiny_config(name="broken-data"), RunSummary(), state=RunState.FAILED)
    return {**decision, "root": root, "failed": failed}


def texts(at, kind: str) -> list[str]:
    return [e.value for e in at.get(kind)]


# -- 1. Playground: a whole file ----------------------------------------------------------------------------
def csv_bytes(df: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    df.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


def upload(at, name: str, data: bytes):
    one(at.get("file_uploader"), "CSV, JSONL or Parquet").upload(name, data, "text/csv")
    at.run()
    assert not at.exception, at.exception
    return at


def test_playground_file_says_before_and_after_that_only_the_first_rows_are_predicted(monkeypatch, trained):
    sentences = ["Markets fell as the bank raised rates.", "A funny, warm film.", "The striker scored twice."]
    df = pd.DataFrame({"id": range(6000), "text": [sentences[i % 3] for i in range(6000)]})
    at = app(monkeypatch, trained["root"], PLAYGROUND)
    upload(at, "big.csv", csv_bytes(df))
    before = [w for w in texts(at, "warning") if "rows" in w]
    assert before == ["Only the first 5,000 of 6,000 rows are predicted (and downloaded). Split the file to "
                      "predict the rest."], texts(at, "warning")  # fmt: skip
    one(at.button, "Predict the column").click().run()
    no_problem(at)
    notes = [c for c in texts(at, "caption") if c.startswith("The download holds")]
    assert len(notes) == 1 and "5,000 row(s)" in notes[0] and "first 5,000 of 6,000 rows" in notes[0], notes
    assert {"topic_label", "sentiment_label"} <= set(at.dataframe[0].value.columns)


def test_playground_file_picks_the_text_column_and_warns_about_numbers(monkeypatch, trained):
    at = app(monkeypatch, trained["root"], PLAYGROUND)
    upload(at, "named.csv", b"id,text\n0,Markets fell sharply.\n1,A lovely film.\n")
    assert one(at.selectbox, "Text column").value == "text"
    assert not [w for w in texts(at, "warning") if "holds numbers" in w]

    at = app(monkeypatch, trained["root"], PLAYGROUND)
    data = b"id,code,words\n0,ab,The bank raised interest rates again.\n1,cd,A warm and funny film.\n"
    upload(at, "unnamed.csv", data)
    assert one(at.selectbox, "Text column").value == "words", "the string column with the longest values"
    one(at.selectbox, "Text column").set_value("id").run()
    assert [w for w in texts(at, "warning") if "holds numbers" in w] == [
        "Column 'id' holds numbers, not sentences: the runs would classify the numbers as text. "
        "Pick the column with the sentences."
    ]


# -- 2. Playground: what the time counts, and how much is drawn ---------------------------------------------
def test_playground_time_says_what_it_counts_and_when_it_was_reused(monkeypatch, trained):
    at = app(monkeypatch, trained["root"], PLAYGROUND)
    one(at.multiselect, "Runs").set_value([trained["id"]]).run()
    lines = [f"Sentence {i} about rates and films, {time.time()}." for i in range(30)]
    one(at.text_area, "Sentences, one a line").set_value("\n".join(lines)).run()
    no_problem(at)
    first = [c for c in texts(at, "caption") if c.startswith("30 sentence(s)")]
    assert len(first) == 1 and "model computation" in first[0] and "drawing the page not included" in first[0], first
    ms = first[0].split("model computation ")[1].split(" ms")[0]
    assert "The first 20 of 30 sentences are shown with probability charts; the table below holds all 30." in texts(
        at, "caption"
    )
    assert len(at.get("plotly_chart")) == 20 * 2, "charts for the first 20 sentences, two tasks each"
    table = at.dataframe[0].value
    assert table["sentence"].tolist() == lines and {"topic", "sentiment"} <= set(table.columns)

    at.run()  # a rerun that computes nothing: the time is the earlier one, and said to be
    again = [c for c in texts(at, "caption") if c.startswith("30 sentence(s)")]
    assert again == [f"30 sentence(s): predictions reused from an earlier computation (the model took {ms} ms then)"]


# -- 3. Settings kept across page switches ------------------------------------------------------------------
def test_findings_new_study_settings_survive_a_visit_to_another_page(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs", FINDINGS)
    one(at.text_input, "Seeds").set_value("0,1,2,3,4").run()
    one(at.text_input, "Backbone").set_value("minilm-l6:2").run()
    one(at.selectbox, "Scale").set_value("lite").run()
    no_problem(at)
    at.switch_page(RUNS).run()
    at.switch_page(FINDINGS).run()
    no_problem(at)
    assert one(at.text_input, "Seeds").value == "0,1,2,3,4"
    assert one(at.text_input, "Backbone").value == "minilm-l6:2"
    assert one(at.selectbox, "Scale").value == "lite"


def test_runs_filters_survive_a_visit_to_another_page(monkeypatch, runs_copy):
    at = app(monkeypatch, runs_copy["root"], RUNS)
    one(at.multiselect, "State").set_value(["completed"]).run()
    one(at.multiselect, "Strategy").set_value(["lora"]).run()
    one(at.multiselect, "Sweep").set_value([DECISION_SWEEP]).run()
    one(at.text_input, "Tag or name contains").set_value("s1").run()
    shown = at.dataframe[0].value["name"].tolist()
    assert shown == ["lora-s1"], shown
    at.switch_page(COMPARE).run()
    at.switch_page(RUNS).run()
    no_problem(at)
    assert one(at.multiselect, "State").value == ["completed"]
    assert one(at.multiselect, "Strategy").value == ["lora"]
    assert one(at.multiselect, "Sweep").value == [DECISION_SWEEP]
    assert one(at.text_input, "Tag or name contains").value == "s1"
    assert at.dataframe[0].value["name"].tolist() == ["lora-s1"]


# -- 4. Runs: an action on a run deleted by hand ------------------------------------------------------------
@pytest.mark.parametrize(
    "button, words", [("Save tags and notes", "Saving tags and notes"), ("Delete", "Deleting"), ("Resume", "Resuming")]
)
def test_runs_action_on_a_run_deleted_by_hand_says_what_did_not_happen(monkeypatch, runs_copy, button, words):
    victim = runs_copy["failed"]
    at = app(monkeypatch, runs_copy["root"], RUNS, query={"run": victim})
    assert one(at.selectbox, "Run details").value == victim
    shutil.rmtree(RunStore(runs_copy["root"]).path(victim))
    one(at.button, button).click().run()
    assert not at.exception, at.exception
    errors = texts(at, "error")
    assert len(errors) == 1 and errors[0].startswith(f"{words} did not happen: run '{victim}' was not found"), errors


# -- 5. Compare: a chosen run deleted by hand ---------------------------------------------------------------
def test_compare_drops_a_deleted_run_with_a_notice_and_keeps_the_rest_of_the_choice(monkeypatch, runs_copy):
    full, lora = runs_copy["ids"]["full_finetune"][0], runs_copy["ids"]["lora"][0]
    at = app(monkeypatch, runs_copy["root"], COMPARE)
    one(at.multiselect, "Runs (9 match)").set_value([full, lora]).run()
    assert set(open_tab(at, "Decision").dataframe[0].value["strategy"]) == {"full_finetune", "lora"}
    open_tab(at, "Curves")
    shutil.rmtree(RunStore(runs_copy["root"]).path(lora))
    decision = open_tab(at, "Decision")
    no_problem(at)
    assert texts(at, "warning") == ["Run lora-s0 was deleted; removed from the comparison."]
    assert one(at.multiselect, "Runs (8 match)").value == [full], "the rest of the choice stays"
    assert set(decision.dataframe[0].value["strategy"]) == {"full_finetune"}, "no stale numbers of the deleted run"
    at.run()
    assert not texts(at, "warning"), "the notice is said once"


def test_compare_says_which_runs_of_a_shared_link_are_not_here(monkeypatch, decision):
    full = decision["ids"]["full_finetune"][0]
    at = app(monkeypatch, decision["root"], COMPARE, query={"sweep": DECISION_SWEEP, "runs": f"{full},ghost-run-1"})
    no_problem(at)
    notice = texts(at, "warning")
    assert len(notice) == 1 and "ghost-run-1" in notice[0] and full not in notice[0], notice
    assert one(at.multiselect, "Runs (9 match)").value == [full], "the rest of the link is shown"


@pytest.mark.parametrize(
    "name, data, words",
    [("empty.csv", b"", "is empty"), ("broken.csv", b'text,label\n"unterminated,1\n', "could not be read as CSV")],
)
def test_playground_file_with_a_problem_says_so_under_the_uploader_with_its_own_name(
    monkeypatch, trained, name, data, words
):
    at = app(monkeypatch, trained["root"], PLAYGROUND)
    upload(at, name, data)
    errors = texts(at, "error")
    assert len(errors) == 1 and words in errors[0] and errors[0].startswith(f"File {name}"), errors
    assert "uploads" not in errors[0], "no stored name or server path"
    assert not [b for b in at.button if b.label == "Predict the column"]
    assert at.text_area, "the rest of the Playground stays"


def test_compare_names_a_deleted_run_once_however_many_tabs_are_opened(monkeypatch, runs_copy):
    """AppTest reruns the whole page on a tab click; a browser reruns only the view, with the run ids it was drawn
    with (the deleted one included), which repeated the notice on every click until each run was announced once.
    This guards the whole-page path; the browser path was checked by hand with Chromium."""
    full, lora = runs_copy["ids"]["full_finetune"][0], runs_copy["ids"]["lora"][0]
    at = app(monkeypatch, runs_copy["root"], COMPARE)
    one(at.multiselect, "Runs (9 match)").set_value([full, lora]).run()
    shutil.rmtree(RunStore(runs_copy["root"]).path(lora))
    seen = []
    for tab in ("Curves", "Decision", "Results", "Curves"):
        open_tab(at, tab)
        seen += texts(at, "warning")
    assert seen == ["Run lora-s0 was deleted; removed from the comparison."], seen
