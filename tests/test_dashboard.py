"""Every dashboard page through streamlit's AppTest, on a runs folder holding real (tiny) trained runs."""

from __future__ import annotations

import json
import shutil
import time

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core import jobs
from core.records import RunState, RunSummary, TaskSummary
from core.store import META_FILE, STATUS_FILE, SUMMARY_FILE, RunStore
from core.train import train_run
from tests.conftest import tiny_config
from tests.dashboard_fixtures import (
    FAILED_NAME,
    SEEDS,
    app,
    curve_names,
    finished_run,
    kill_everything_for,
    no_problem,
    one,
    open_tab,
    parse_params,
    seeded_once,
)

PAGES = ["pages/runs.py", "pages/compare.py", "pages/playground.py"]
DEFAULT_SENTENCES = ["The central bank raised interest rates again.", "A warm, funny and beautifully acted film."]


@pytest.fixture(scope="session")
def seeded(tmp_path_factory) -> dict:
    return seeded_once(tmp_path_factory)


@pytest.fixture
def seeded_copy(seeded, tmp_path) -> dict:
    """A copy of the seeded runs without their checkpoints, for tests that change or delete runs."""
    root = tmp_path / "runs"
    shutil.copytree(seeded["root"], root, ignore=shutil.ignore_patterns("checkpoint"))
    return {**seeded, "root": root}


def params(at: AppTest) -> tuple[float, float]:
    metrics = {m.label: m.value for m in at.metric}
    return parse_params(metrics["Trainable parameters"]), parse_params(metrics["Total parameters"])


def launch_button(at: AppTest):
    buttons = [b for b in at.button if b.label.startswith("Launch (")]
    assert len(buttons) == 1, [b.label for b in at.button]
    return buttons[0]


# -- Launch -------------------------------------------------------------------------------------------
def test_launch_shows_parameter_counts_that_follow_strategy_and_backbone(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    no_problem(at)
    assert [t.value for t in at.title] == ["Launch runs"]
    assert str((tmp_path / "runs").resolve()) in " ".join(c.value for c in at.sidebar.caption)
    assert one(at.selectbox, "Strategy").value == "frozen_backbone"
    trainable, total = params(at)
    # Frozen backbone: only the two heads train (384 x 5 + 5 for topic, 384 x 2 + 2 for sentiment).
    assert trainable == pytest.approx(384 * 5 + 5 + 384 * 2 + 2, rel=0.02)
    assert total > 20e6
    assert at.get("plotly_chart"), "the what-trains diagram"
    assert launch_button(at).label == "Launch (1 run)" and not launch_button(at).disabled

    one(at.selectbox, "Strategy").set_value("full_finetune").run()
    no_problem(at)
    full_trainable, full_total = params(at)
    assert full_trainable == full_total == total, "full fine-tuning trains every parameter"
    assert full_trainable > 1000 * trainable

    one(at.selectbox, "Backbone").set_value("minilm-l6:2").run()
    no_problem(at)
    small_trainable, small_total = params(at)
    assert small_total < total and small_trainable == small_total, "a 2-layer cut has fewer parameters"

    one(at.selectbox, "Strategy").set_value("frozen_backbone").run()
    assert params(at) == (trainable, small_total)


def test_launch_invalid_settings_show_an_error_and_disable_launch(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    assert not launch_button(at).disabled

    # The widget itself allows 0..10; the config allows up to 1: the message names the field and the range.
    one(at.number_input, "Head learning rate").set_value(5.0).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors == [
        "Head learning rate 5.0 is out of range: use a value between 1e-07 and 1 (typical: 1e-3 to 3e-2)."
    ], errors
    assert launch_button(at).disabled and launch_button(at).label.startswith("Launch (0 run")
    assert not at.metric, "no parameter counts for an invalid config"

    one(at.number_input, "Head learning rate").set_value(0.01).run()
    no_problem(at)
    assert not launch_button(at).disabled

    one(at.text_input, "Seeds").set_value("a,b").run()
    assert [e.value for e in at.error] == ["Seeds must be whole numbers separated by commas, e.g. 0,1,2."]
    assert launch_button(at).disabled

    one(at.text_input, "Seeds").set_value(" ").run()
    assert ["Seeds is empty" in e.value for e in at.error] == [True]
    assert launch_button(at).disabled

    one(at.text_input, "Seeds").set_value("0, 1,2").run()
    no_problem(at)
    assert launch_button(at).label == "Launch (3 runs)" and not launch_button(at).disabled

    at.text_input(key="name_B").set_value("topic").run()  # two tasks with one name
    assert [e.value for e in at.error] == ["Task B has the same name as Task A ('topic'): give each task its own name."]
    assert launch_button(at).disabled


def test_launch_counts_with_task_a_switched_off(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    at.toggle(key="use_A").set_value(False).run()
    no_problem(at)
    trainable, _ = params(at)
    assert trainable == 384 * 2 + 2, "frozen backbone, sentiment task only: one 2-class head"


@pytest.fixture
def launch_store(tmp_path, monkeypatch):
    """A runs folder whose background runner (and its worker) is killed after the test."""
    monkeypatch.setenv("FREEZELAB_CONCURRENCY", "1")
    store = RunStore(tmp_path / "runs")
    yield store
    kill_everything_for(store)


def test_launch_button_queues_a_cheap_run_in_the_background(monkeypatch, launch_store):
    at = app(monkeypatch, launch_store.root)
    one(at.selectbox, "Backbone").set_value("minilm-l6:2").run()
    at.number_input(key="max_A").set_value(40).run()
    at.number_input(key="max_B").set_value(40).run()
    one(at.number_input, "Max tokens per sentence").set_value(32).run()
    one(at.text_input, "Run name (optional)").set_value("ui launch").run()
    no_problem(at)
    assert launch_button(at).label == "Launch (1 run)"

    tick = time.time()
    launch_button(at).click().run()
    assert time.time() - tick < 30, "Launch only queues; training runs in another process"
    no_problem(at)
    ids = launch_store.run_ids()
    assert len(ids) == 1 and "ui-launch" in ids[0], ids
    run_id = ids[0]
    assert [s.value for s in at.success] == [f"Queued 1 run(s): {run_id}. Follow them on the Runs page."]
    assert launch_store.read_status(run_id).state in (RunState.QUEUED, RunState.RUNNING)
    cfg = launch_store.read_config(run_id)
    assert cfg.backbone == "minilm-l6:2" and cfg.name == "ui launch" and cfg.max_length == 32 and cfg.seed == 0
    assert [(t.name, t.dataset, t.max_train_examples) for t in cfg.tasks] == [
        ("topic", "bbc_topics", 40),
        ("sentiment", "rt_sentiment", 40),
    ]
    assert jobs.runner_alive(launch_store), "submit started a runner for this folder"


def test_launch_caps_the_test_set_and_refuses_a_cap_too_small_to_mean_anything(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    cap = one(at.number_input, "Test sentences per task (0 = all)")
    assert cap.value == 0 and one(at.number_input, "Validation sentences per task").value == 500
    cap.set_value(5).run()
    errors = [e.value for e in at.error]
    assert any("test" in e.lower() and "10" in e for e in errors), errors
    assert launch_button(at).disabled
    one(at.number_input, "Test sentences per task (0 = all)").set_value(100).run()
    one(at.number_input, "Validation sentences per task").set_value(50).run()
    no_problem(at)
    assert not launch_button(at).disabled
    sizes = [c.value for c in at.caption if c.value.startswith("Split sizes:")]
    assert len(sizes) == 2 and all(s.endswith("· 50 validation · 100 test") for s in sizes), sizes


# -- Runs ---------------------------------------------------------------------------------------------
def test_runs_page_lists_every_seeded_run_with_results(monkeypatch, seeded):
    at = app(monkeypatch, seeded["root"], "pages/runs.py")
    no_problem(at)
    assert [t.value for t in at.title] == ["Runs"]
    assert any("5 of 5 runs shown" in c.value for c in at.caption), [c.value for c in at.caption]
    df = at.dataframe[0].value
    assert set(df["id"]) == set(seeded["names"])
    assert set(df["name"]) == set(seeded["names"].values())
    states = dict(zip(df["id"], df["state"]))
    assert all(states[i] == "✅ completed" for i in seeded["completed"])
    assert states[seeded["failed"]] == "❌ failed"
    done = df[df["id"].isin(seeded["completed"])]
    for col in ("topic test acc", "sentiment test acc"):
        assert done[col].between(0, 1).all(), done[col]
    assert (done["trainable_params"] > 0).all()

    details = one(at.selectbox, "Run details")
    assert details.value in seeded["names"]
    assert at.subheader[0].value.startswith(("✅", "❌"))
    details.set_value(seeded["failed"]).run()
    assert not at.exception
    assert at.subheader[0].value == f"❌ {FAILED_NAME}"
    assert any("does not exist" in e.value for e in at.error), "the failed run's error is shown"
    assert "Resume" in [b.label for b in at.button]


def test_runs_page_survives_run_folders_deleted_behind_its_back(monkeypatch, seeded_copy):
    root = seeded_copy["root"]
    victim, partial = seeded_copy["completed"][0], seeded_copy["completed"][1]
    at = app(monkeypatch, root, "pages/runs.py")
    one(at.selectbox, "Run details").set_value(victim).run()
    assert at.subheader[0].value.endswith(seeded_copy["names"][victim])

    shutil.rmtree(root / victim)  # deleted outside the dashboard while it shows the run
    (RunStore(root).path(partial) / STATUS_FILE).unlink()  # and a run folder caught half-written
    at.run()
    no_problem(at)
    df = at.dataframe[0].value
    ids = set(df["id"])
    assert victim not in ids and partial in ids and len(ids) == 4
    assert df.set_index("id").loc[partial, "state"] == "⚠️ failed (damaged)", "a half-written run shows as damaged"
    assert one(at.selectbox, "Run details").value != victim
    assert any("4 of 4 runs shown" in c.value for c in at.caption)

    for run_id in seeded_copy["names"]:
        shutil.rmtree(root / run_id, ignore_errors=True)
    at.run()
    no_problem(at)
    assert any("Launch" in i.value for i in at.info), "an emptied folder shows the empty state"


def test_runs_page_saves_tags_and_notes(monkeypatch, seeded_copy):
    root = seeded_copy["root"]
    run_id = seeded_copy["completed"][2]
    at = app(monkeypatch, root, "pages/runs.py")
    one(at.selectbox, "Run details").set_value(run_id).run()
    one(at.text_input, "Tags (comma-separated)").input("baseline, tiny ,, baseline")
    one(at.text_area, "Notes").input("Seed 0 looks\nbetter.")
    one(at.button, "Save tags and notes").click().run()
    no_problem(at)
    assert RunStore(root).read_meta(run_id).to_dict() == {
        "tags": ["baseline", "tiny"],
        "notes": "Seed 0 looks\nbetter.",
    }
    assert "Saved" in [t.value for t in at.toast]

    at.run()  # the next run of the page reads them back
    assert one(at.text_input, "Tags (comma-separated)").value == "baseline, tiny"
    assert one(at.text_area, "Notes").value == "Seed 0 looks\nbetter."
    df = at.dataframe[0].value
    assert df.set_index("id").loc[run_id, "tags"] == "baseline, tiny"

    one(at.text_input, "Tag or name contains").set_value("TINY").run()
    no_problem(at)
    assert list(at.dataframe[0].value["id"]) == [run_id]


# -- Compare ------------------------------------------------------------------------------------------
def results_tab(at: AppTest):
    return one(at.tabs, "Results")


def test_compare_page_shows_tabs_results_curves_and_per_class(monkeypatch, seeded):
    at = app(monkeypatch, seeded["root"], "pages/compare.py")
    no_problem(at)
    assert [t.value for t in at.title] == ["Compare runs"]
    assert [t.label for t in at.tabs][:5] == ["Decision", "Curves", "Results", "Config diff", "Per class"]
    assert one(at.selectbox, "Sweep").value == seeded["sweep_id"]
    assert sorted(one(at.multiselect, "Runs (4 match)").value) == sorted(seeded["completed"])

    decision = one(at.tabs, "Decision")
    assert set(decision.dataframe[0].value["strategy"]) == {"frozen_backbone", "full_finetune"}
    assert len(decision.get("plotly_chart")) == 2, "accuracy against wall time and against trainable parameters"

    curves = open_tab(at, "Curves")
    assert one(at.toggle, "Mean over seeds").value, "on by default when the chosen runs repeat a config over seeds"
    assert [sorted(curve_names(c)) for c in curves.get("plotly_chart")] == [
        ["frozen_backbone (mean of 2)", "full_finetune (mean of 2)"]
    ] * 4, "one validation and one training-loss chart per task, a line per strategy"
    table = open_tab(at, "Results").dataframe[0].value
    assert sorted(table["run"]) == sorted(seeded["names"][i] for i in seeded["completed"])
    for col in ("topic test accuracy", "sentiment test accuracy"):
        assert table[col].between(0, 1).all() and table[col].notna().all(), table[col]
    assert set(table["strategy"]) == {"frozen_backbone", "full_finetune"}
    assert {"strategy", "seed"} <= set(open_tab(at, "Config diff").dataframe[0].value.index)
    assert len(open_tab(at, "Per class").get("plotly_chart")) == 4, "confusion matrix and F1 bars for both tasks"

    open_tab(at, "Results")
    picked = seeded["completed"][:2]
    one(at.multiselect, "Runs (4 match)").set_value(picked).run()
    no_problem(at)
    assert sorted(results_tab(at).dataframe[0].value["run"]) == sorted(seeded["names"][i] for i in picked)

    one(at.selectbox, "Sweep").set_value("(all runs)").run()
    one(at.multiselect, "States").set_value(["completed", "failed"]).run()
    no_problem(at)
    table = results_tab(at).dataframe[0].value
    assert len(table) == 5 and FAILED_NAME in set(table["run"])
    assert table.set_index("run").loc[FAILED_NAME, "state"] == "failed"


@pytest.fixture(scope="module")
def two_sweeps(seeded, tmp_path_factory) -> dict:
    """The seeded runs plus a second real sweep whose runs carry the same names but another head learning rate."""
    root = tmp_path_factory.mktemp("two-sweeps") / "runs"
    shutil.copytree(seeded["root"], root, ignore=shutil.ignore_patterns("checkpoint"))
    store = RunStore(root)
    sweep_id, ids = jobs.sweep(
        store,
        tiny_config(head_learning_rate=1e-4, checkpoint_every_steps=1000),
        strategies=["frozen_backbone"],
        seeds=SEEDS,
        start_runner=False,
    )
    for run_id in ids:
        assert train_run(store, run_id) == "completed"
    assert {store.record(i).config["name"] for i in ids} == {"frozen_backbone-s0", "frozen_backbone-s1"}
    return {**seeded, "root": root, "second": ids}


def _all_completed(monkeypatch, runs: dict) -> AppTest:
    at = app(monkeypatch, runs["root"], "pages/compare.py")
    one(at.selectbox, "Sweep").set_value("(all runs)").run()
    no_problem(at)
    assert len(one(at.multiselect, "Runs (6 match)").value) == 6
    return at


def test_compare_mean_over_seeds_keeps_different_configs_apart(monkeypatch, two_sweeps):
    at = _all_completed(monkeypatch, two_sweeps)
    curves = open_tab(at, "Curves")
    assert one(at.toggle, "Mean over seeds").value
    for chart in curves.get("plotly_chart"):
        names = curve_names(chart)
        assert len(names) == 3 and all(n.endswith("(mean of 2)") for n in names), names


def test_compare_config_diff_shows_every_chosen_run(monkeypatch, two_sweeps):
    at = _all_completed(monkeypatch, two_sweeps)
    diff = open_tab(at, "Config diff").dataframe[0].value
    assert diff.shape[1] == 6, list(diff.columns)
    assert "head_learning_rate" in diff.index, list(diff.index)


# -- Playground ---------------------------------------------------------------------------------------
def _predictions(at: AppTest) -> list[tuple[str, str, str]]:
    """(sentence, task, label) for every prediction line the page wrote, in order."""
    out, sentence = [], None
    for md in at.markdown:
        text = md.value
        if text.startswith("> "):
            sentence = text[2:]
        elif ": **" in text and sentence is not None:
            task, label = text.split(": **", 1)
            out.append((sentence, task, label.rstrip("*")))
    return out


def test_playground_predicts_both_tasks_for_the_default_and_typed_sentences(monkeypatch, seeded):
    at = app(monkeypatch, seeded["root"], "pages/playground.py")
    no_problem(at)
    assert [t.value for t in at.title] == ["Playground"]
    chosen = one(at.multiselect, "Runs").value
    assert len(chosen) == 2 and set(chosen) <= set(seeded["completed"])
    assert [f"**{seeded['names'][r]}**" for r in chosen] == [m.value for m in at.markdown if m.value.startswith("**")]
    summary = RunStore(seeded["root"]).read_summary(chosen[0])
    labels = {task: set(t.label_names) for task, t in summary.tasks.items()}
    assert set(labels) == {"topic", "sentiment"}

    preds = _predictions(at)
    assert [(s, t) for s, t, _ in preds] == [
        (s, t) for _ in chosen for s in DEFAULT_SENTENCES for t in ("topic", "sentiment")
    ]
    assert all(label in labels[task] for _, task, label in preds), preds
    assert len(at.get("plotly_chart")) == len(preds), "one probability chart per prediction"

    one(at.text_area, "Sentences, one a line").set_value("Shares fell sharply on Wall Street.\n\n").run()
    no_problem(at)
    preds = _predictions(at)
    assert [(s, t) for s, t, _ in preds] == [
        ("Shares fell sharply on Wall Street.", t) for _ in chosen for t in ("topic", "sentiment")
    ]

    one(at.multiselect, "Runs").set_value([seeded["completed"][3]]).run()
    no_problem(at)
    assert len(_predictions(at)) == 2

    one(at.text_area, "Sentences, one a line").set_value("  \n ").run()
    assert not at.exception and [w.value for w in at.warning] == [
        "Type at least one sentence (empty lines are skipped)."
    ]


def test_playground_accepts_the_same_sentence_twice(monkeypatch, seeded):
    at = app(monkeypatch, seeded["root"], "pages/playground.py")
    one(at.text_area, "Sentences, one a line").set_value("Same sentence.\nSame sentence.").run()
    no_problem(at)
    assert len(_predictions(at)) == 2 * 2 * 2


# -- Damaged run folders ------------------------------------------------------------------------------
@pytest.fixture
def damaged(seeded, tmp_path) -> dict:
    """The seeded runs (checkpoints included) plus a run built through the store, with three folders damaged:
    an unreadable status, a summary of the wrong shape (its checkpoint is sound), meta.json that is not an object."""
    root = tmp_path / "runs"
    shutil.copytree(seeded["root"], root)
    store = RunStore(root)
    built = finished_run(
        store,
        tiny_config(name="built-by-store"),
        RunSummary(strategy="frozen_backbone", train_seconds=1.5, tasks={"topic": TaskSummary(test_accuracy=0.625)}),
    )
    bad_status, bad_summary, bad_meta = seeded["completed"][:3]
    (store.path(bad_status) / STATUS_FILE).write_text("{not json")
    (store.path(bad_summary) / SUMMARY_FILE).write_text(json.dumps({"tasks": ["not", "an", "object"]}))
    store.update_meta(bad_meta, tags=["keep"])
    (store.path(bad_meta) / META_FILE).write_text("[1, 2]")
    records = {r.id: r for r in store.list_runs()}
    assert {i for i, r in records.items() if r.damaged} == {bad_status, bad_summary, bad_meta}
    assert records[built].state == RunState.COMPLETED and records[built].summary.test_accuracy("topic") == 0.625
    return {**seeded, "root": root, "built": built, "bad": [bad_status, bad_summary, bad_meta]}


def test_damaged_run_folders_show_as_damaged_on_every_page(monkeypatch, damaged):
    bad_status, bad_summary, bad_meta = damaged["bad"]
    at = app(monkeypatch, damaged["root"], "pages/runs.py")
    no_problem(at)
    df = at.dataframe[0].value.set_index("id")
    assert len(df) == 6
    assert df.loc[bad_status, "state"] == "⚠️ failed (damaged)"
    assert df.loc[bad_summary, "state"] == df.loc[bad_meta, "state"] == "⚠️ completed (damaged)"
    assert df.loc[damaged["built"], "state"] == "✅ completed"
    assert df.loc[damaged["built"], "topic test acc"] == 0.625, "a summary written through the store is shown"
    assert df.loc[bad_meta, "topic test acc"] == pytest.approx(
        RunStore(damaged["root"]).read_summary(bad_meta).test_accuracy("topic")
    ), "what could be read still shows"

    one(at.selectbox, "Run details").set_value(bad_status).run()
    assert not at.exception
    assert at.subheader[0].value == f"⚠️ {damaged['names'][bad_status]}"
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and "damaged" in warnings[0] and "status.json is not valid JSON" in warnings[0], warnings
    assert any("damaged run folder" in e.value for e in at.error), "the store's reason is the run's error"

    at = app(monkeypatch, damaged["root"], "pages/compare.py")
    one(at.selectbox, "Sweep").set_value("(all runs)").run()
    one(at.multiselect, "States").set_value(["completed", "failed"]).run()
    no_problem(at)
    table = open_tab(at, "Results").dataframe[0].value.set_index("run")
    names = damaged["names"]
    assert len(table) == 6
    assert "summary.json tasks is list" in table.loc[names[bad_summary], "damaged"]
    assert "meta.json" in table.loc[names[bad_meta], "damaged"]
    assert pd.notna(table.loc[names[bad_meta], "topic test accuracy"]), "what could be read still shows"
    assert table["damaged"].isna().sum() == 3, "sound runs carry no damage"

    at = app(monkeypatch, damaged["root"], "pages/playground.py")
    no_problem(at)
    runs = one(at.multiselect, "Runs")
    assert bad_status not in runs.options and damaged["names"][bad_status] not in runs.options
    runs.set_value([bad_summary]).run()
    no_problem(at)
    assert len(_predictions(at)) == 2 * 2, "a sound checkpoint still predicts when the summary is damaged"


# -- Empty state --------------------------------------------------------------------------------------
@pytest.mark.parametrize("folder", ["empty", "missing"])
def test_empty_runs_folder_tells_the_user_to_launch(monkeypatch, tmp_path, folder):
    root = tmp_path / "runs"
    if folder == "empty":
        root.mkdir()
    at = app(monkeypatch, root)
    no_problem(at)
    assert launch_button(at).label == "Launch (1 run)", "Launch works on an empty folder"
    for page, title in zip(PAGES, ["Runs", "Compare runs", "Playground"]):
        at.switch_page(page)
        at.run()
        no_problem(at)
        assert [t.value for t in at.title] == [title]
        infos = [i.value for i in at.info]
        assert len(infos) == 1 and "**Launch**" in infos[0], infos
        assert not at.dataframe
    assert at.switch_page("pages/runs.py").run().page_link[0].label == "Launch a run"
