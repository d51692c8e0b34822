"""Issue 10, the dashboard: the imbalance options set on Launch land in the queued run's config (and in a sweep's
grid), a bad class ratio is said next to its field, and Compare draws what those options log (per-class recall,
the curriculum, the loss weights) for a really trained tiny run."""

from __future__ import annotations

import pytest

from core import jobs
from core.config import TaskConfig
from core.records import RunState, RunSummary
from core.store import RunStore
from core.train import train_run
from tests.conftest import tiny_config
from tests.dashboard_fixtures import app, chart_spec, curve_names, finished_run, no_problem, one, open_tab, values

COMPARE = "pages/compare.py"
RUNS = "pages/runs.py"
LAUNCH = "pages/launch.py"
SENTIMENT_CLASSES = ["negative", "positive"]


@pytest.fixture
def no_runner(monkeypatch):
    """Launch and sweeps queue their runs; nothing starts training them."""
    monkeypatch.setattr(jobs, "ensure_runner", lambda store: None)


def launch_button(at):
    found = [b for b in at.button if b.label.startswith("Launch (")]
    assert len(found) == 1, [b.label for b in at.button]
    return found[0]


def errors(container) -> list[str]:
    return [e.value for e in container.error]


# -- Launch ------------------------------------------------------------------------------------------------
def test_launch_imbalance_options_land_in_the_queued_config(monkeypatch, tmp_path, no_runner):
    at = app(monkeypatch, tmp_path / "runs")
    no_problem(at)
    expander = one(at.expander, "Imbalance")
    assert not expander.proto.expanded, "collapsed by default: the form looks as it did"
    assert one(at.selectbox, "Task sampling").options == [
        "proportional",
        "round_robin",
        "temperature",
        "uniform",
        "curriculum",
    ]
    assert one(at.number_input, "Max passes over a task's data").value is None, "no cap unless asked"

    one(at.selectbox, "Task sampling").set_value("curriculum").run()
    one(at.selectbox, "Curriculum target").set_value("limited").run()
    one(at.number_input, "Max passes over a task's data").set_value(3.0).run()
    one(at.selectbox, "Loss weighting").set_value("uncertainty").run()
    at.selectbox(key="imb_cw_A").set_value("effective").run()
    at.selectbox(key="imb_aug_A").set_value("eda").run()
    at.number_input(key="imb_copies_A").set_value(2).run()
    at.selectbox(key="imb_cw_B").set_value("inverse").run()
    at.checkbox(key="imb_bal_B").check().run()
    at.text_input(key="imb_ratio_B").set_value("negative=0.1").run()
    no_problem(at)
    # 500 training examples of rt_sentiment are 250 a class; keeping a tenth of negative leaves 25.
    shown = [c.value for c in one(at.expander, "Imbalance").caption]
    assert any("negative 250 → 25 · positive 250 (275 in all)" in c for c in shown), shown

    launch_button(at).click().run()
    no_problem(at)
    store = RunStore(tmp_path / "runs")
    (run_id,) = store.run_ids()
    cfg = store.read_config(run_id)
    assert (cfg.task_sampling, cfg.curriculum_target, cfg.max_task_repeats, cfg.loss_weighting) == (
        "curriculum",
        "limited",
        3.0,
        "uncertainty",
    )
    topic, sentiment = cfg.tasks
    assert (topic.name, topic.class_weighting, topic.class_balanced_sampling, topic.class_ratio) == (
        "topic",
        "effective",
        False,
        None,
    )
    assert (topic.augment, topic.augment_copies, topic.augment_alpha) == ("eda", 2, 0.1)
    assert (sentiment.name, sentiment.class_weighting, sentiment.class_balanced_sampling) == (
        "sentiment",
        "inverse",
        True,
    )
    assert sentiment.class_ratio == {"negative": 0.1}
    assert (sentiment.augment, sentiment.augment_copies) == ("none", 1)


def test_launch_imbalance_defaults_leave_the_config_as_before(monkeypatch, tmp_path, no_runner):
    """Untouched, the expander changes nothing: a run queued from the bare form has the engine's defaults, and a
    curriculum target chosen without curriculum sampling is not written into the config."""
    at = app(monkeypatch, tmp_path / "runs")
    one(at.selectbox, "Curriculum target").set_value("limited").run()
    launch_button(at).click().run()
    no_problem(at)
    store = RunStore(tmp_path / "runs")
    cfg = store.read_config(store.run_ids()[0])
    assert (cfg.task_sampling, cfg.curriculum_target, cfg.max_task_repeats, cfg.loss_weighting) == (
        "proportional",
        "uniform",
        None,
        "fixed",
    )
    defaults = TaskConfig(name="x", dataset="y")
    for task in cfg.tasks:
        for field in ("class_weighting", "class_balanced_sampling", "class_ratio", "augment", "augment_copies"):
            assert getattr(task, field) == getattr(defaults, field), (task.name, field)


def test_a_bad_class_ratio_is_said_next_to_its_field_and_keeps_the_other_inputs(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    one(at.selectbox, "Loss weighting").set_value("uncertainty").run()
    at.selectbox(key="imb_cw_B").set_value("inverse").run()
    one(at.number_input, "Epochs").set_value(2.5).run()
    assert not launch_button(at).disabled

    at.text_input(key="imb_ratio_B").set_value("negative0.1").run()
    assert not at.exception, at.exception
    shown = errors(at)
    assert len(shown) == 1, shown
    assert "'negative0.1'" in shown[0] and "CLASS=FRACTION" in shown[0] and "negative=0.1" in shown[0], shown
    assert errors(one(at.expander, "Imbalance")) == shown, "the error sits in the Imbalance expander"
    assert launch_button(at).disabled and launch_button(at).label.startswith("Launch (0 run")
    # Everything else the user set is still there.
    assert one(at.selectbox, "Loss weighting").value == "uncertainty"
    assert at.selectbox(key="imb_cw_B").value == "inverse"
    assert one(at.number_input, "Epochs").value == 2.5

    at.text_input(key="imb_ratio_B").set_value("negatve=0.1").run()
    shown = errors(at)
    assert len(shown) == 1 and "'negatve' is not a class of rt_sentiment" in shown[0], shown
    assert "negative, positive" in shown[0] and "Did you mean 'negative'?" in shown[0], shown

    at.text_input(key="imb_ratio_B").set_value("negative=5").run()
    shown = errors(at)
    assert len(shown) == 1 and "between 0.001 and 1" in shown[0], shown
    assert not any("tasks[" in e or "class_ratio" in e for e in shown), "the page's words, not the config's"

    # The bad value and its message survive a visit to another page, like the rest of the form.
    at.switch_page(RUNS).run()
    at.switch_page(LAUNCH).run()
    assert not at.exception, at.exception
    assert at.text_input(key="imb_ratio_B").value == "negative=5"
    assert one(at.selectbox, "Loss weighting").value == "uncertainty"
    assert len(errors(at)) == 1 and launch_button(at).disabled

    at.text_input(key="imb_ratio_B").set_value("negative=0.2").run()
    no_problem(at)
    assert not launch_button(at).disabled


def test_launch_sweep_varies_imbalance_options(monkeypatch, tmp_path, no_runner):
    at = app(monkeypatch, tmp_path / "runs")
    one(at.selectbox, "Curriculum target").set_value("limited").run()
    at.checkbox(key="imb_bal_A").check().run()
    [m for m in at.multiselect if m.label == "Strategies"][0].set_value(["frozen_backbone"]).run()
    one(at.multiselect, "Task sampling values").set_value(["proportional", "curriculum"]).run()
    one(at.multiselect, "Class weighting values for sentiment").set_value(["none", "effective"]).run()
    no_problem(at)
    assert any("4 configurations x 1 seeds = 4 runs" in c.value for c in at.caption), [c.value for c in at.caption]
    one(at.button, "Queue the sweep").click().run()
    no_problem(at)
    store = RunStore(tmp_path / "runs")
    configs = [store.read_config(i) for i in store.run_ids()]
    assert sorted((c.task_sampling, c.tasks[1].class_weighting) for c in configs) == [
        ("curriculum", "effective"),
        ("curriculum", "none"),
        ("proportional", "effective"),
        ("proportional", "none"),
    ]
    assert all(c.tasks[0].class_balanced_sampling and not c.tasks[1].class_balanced_sampling for c in configs)
    curriculum = [c for c in configs if c.task_sampling == "curriculum"]
    assert {c.curriculum_target for c in curriculum} == {"limited"}, "the target set on the form"
    assert len({c.sweep_id for c in configs}) == 1


# -- Compare -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imbalance_runs(tmp_path_factory) -> dict:
    """A tiny run really trained with a curriculum and uncertainty weighting (topic is the abundant task), and a
    plain run that logged validation records only."""
    store = RunStore(tmp_path_factory.mktemp("imbalance") / "runs")
    cfg = tiny_config(
        name="curriculum-uncertainty",
        strategy="frozen_backbone",
        task_sampling="curriculum",
        curriculum_target="limited",
        loss_weighting="uncertainty",
        tasks=[
            TaskConfig(name="topic", dataset="bbc_topics", max_train_examples=40),
            TaskConfig(name="sentiment", dataset="rt_sentiment", max_train_examples=16, class_weighting="effective"),
        ],
        checkpoint_every_steps=1000,
    )
    trained = store.create_run(cfg)
    assert train_run(store, trained) == RunState.COMPLETED, store.read_status(trained)
    plain = finished_run(store, tiny_config(name="plain"), RunSummary())
    store.append_metrics(
        plain,
        *[
            {"kind": "eval", "split": "validation", "step": s, "epoch": s / 4, "wall_seconds": float(s), "task": task}
            | {"accuracy": 0.5, "loss": 1.0, "balanced_accuracy": 0.5, "recall": recall}
            for s in (0, 4)
            for task, recall in (("topic", {"business": 0.5, "sport": 0.5}), ("sentiment", {"negative": 0.5}))
        ],
    )
    return {"root": store.root, "trained": trained, "plain": plain, "metrics": store.read_metrics(trained)}


def charts(tab) -> dict:
    return {chart_spec(c)["layout"]["title"]["text"]: c for c in tab.get("plotly_chart")}


def trace(chart, name: str) -> dict:
    found = [t for t in chart_spec(chart)["data"] if t.get("name") == name]
    assert len(found) == 1, (name, [t.get("name") for t in chart_spec(chart)["data"]])
    return found[0]


def test_compare_draws_recall_curriculum_and_loss_weights_of_a_trained_run(monkeypatch, imbalance_runs):
    metrics, trained = imbalance_runs["metrics"], imbalance_runs["trained"]
    at = app(monkeypatch, imbalance_runs["root"], COMPARE, query={"runs": f"{trained},{imbalance_runs['plain']}"})
    tab = open_tab(at, "Imbalance")
    no_problem(at)
    assert one(tab.selectbox, "Run").value == trained, "opens on the run that uses imbalance options"
    shown = charts(tab)
    assert sorted(shown) == [
        "curriculum: task sampling weight",
        "learned log-variance s per task (weight = exp(-s))",
        "loss weight per task",
        "sentiment: validation recall per class",
        "topic: validation recall per class",
    ], sorted(shown)

    # (a) one line per class, each the validation recall the run logged at each evaluation.
    evals = [r for r in metrics if r["kind"] == "eval" and r["split"] == "validation" and r["task"] == "sentiment"]
    assert len(evals) >= 3
    recall_chart = shown["sentiment: validation recall per class"]
    assert curve_names(recall_chart) == [*SENTIMENT_CLASSES, "balanced accuracy"]
    for label in SENTIMENT_CLASSES:
        line = trace(recall_chart, label)
        assert values(line["x"]) == [r["step"] for r in evals]
        assert values(line["y"]) == pytest.approx([r["recall"][label] for r in evals])
    assert values(trace(recall_chart, "balanced accuracy")["y"]) == pytest.approx(
        [r["balanced_accuracy"] for r in evals]
    )
    assert len(curve_names(shown["topic: validation recall per class"])) == 5 + 1, "five BBC topics"

    # (b) the curriculum: all weight on the abundant task (topic) first, moving to the limited one (sentiment).
    schedule = [r for r in metrics if r["kind"] == "schedule"]
    assert len(schedule) >= 2
    curriculum = shown["curriculum: task sampling weight"]
    assert sorted(curve_names(curriculum)) == ["sentiment", "topic"]
    for task in ("topic", "sentiment"):
        line = trace(curriculum, task)
        assert values(line["x"]) == [r["step"] for r in schedule]
        assert values(line["y"]) == pytest.approx([r["weights"][task] for r in schedule])
    topic_weights = values(trace(curriculum, "topic")["y"])
    assert topic_weights[0] == pytest.approx(1.0) and topic_weights[-1] < topic_weights[0]

    # (c) the loss weights and the learned log-variances, per task, as logged.
    logged = [r for r in metrics if r["kind"] == "loss_weights" and r["task"] == "sentiment"]
    assert len(logged) >= 2
    weight_line = trace(shown["loss weight per task"], "sentiment")
    assert values(weight_line["y"]) == pytest.approx([r["weight"] for r in logged])
    variance_line = trace(shown["learned log-variance s per task (weight = exp(-s))"], "sentiment")
    assert values(variance_line["x"]) == [r["step"] for r in logged]
    assert values(variance_line["y"]) == pytest.approx([r["log_variance"] for r in logged])
    assert values(variance_line["y"])[-1] != 0.0, "the log-variance is learned: it moved from its start"


def test_compare_says_what_a_plain_run_did_not_log(monkeypatch, imbalance_runs):
    trained, plain = imbalance_runs["trained"], imbalance_runs["plain"]
    at = app(monkeypatch, imbalance_runs["root"], COMPARE, query={"runs": f"{trained},{plain}"})
    open_tab(at, "Imbalance")
    one(at.selectbox, "Run").set_value(plain).run()
    tab = one(at.tabs, "Imbalance")
    no_problem(at)
    assert sorted(charts(tab)) == ["sentiment: validation recall per class", "topic: validation recall per class"]
    assert curve_names(charts(tab)["topic: validation recall per class"]) == ["business", "sport", "balanced accuracy"]
    captions = " ".join(c.value for c in tab.caption)
    assert "No curriculum schedule" in captions and "proportional" in captions, captions
    assert "No loss-weight records" in captions and "fixed" in captions, captions
    assert at.query_params["imbalance_run"] == plain, "the chosen run is part of the shareable link"
    assert at.query_params["tab"] == "Imbalance"
