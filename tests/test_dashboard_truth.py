"""The dashboard tells the truth (issue 12): every bug a new user met, as an AppTest case written before its fix.

Compare and Runs use synthetic runs with known numbers (built through the store in seconds), so each
interval shown can be recomputed here with scipy; Playground and export use really trained tiny runs.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import core.predict
import core.shared_predict
from core import jobs
from core.checkpoint import load_model
from core.config import RunConfig
from core.features import FrozenFeatures
from core.files import write_json_atomic
from core.records import Progress, RunState, RunSummary, TaskSummary
from core.runtime import run_logger
from core.store import RunStore
from core.strategies import STRATEGIES
from core.train import Trainer, train_run
from tests.conftest import run_cli, tiny_config
from tests.dashboard_fixtures import (
    DECISION_ACCURACY,
    DECISION_COST,
    DECISION_SWEEP,
    N_TEST,
    SINGLE_ACCURACY,
    SINGLE_SWEEP,
    app,
    chart_spec,
    curve_names,
    decision_runs,
    finished_run,
    live_run,
    no_problem,
    one,
    open_tab,
    start_stand_in,
    stop_stand_in,
    values,
)

COMPARE = "pages/compare.py"
RUNS = "pages/runs.py"
PLAYGROUND = "pages/playground.py"
TASKS = ("topic", "sentiment")
Z95 = stats.norm.ppf(0.975)


@pytest.fixture(scope="module")
def decision(tmp_path_factory) -> dict:
    return decision_runs(tmp_path_factory.mktemp("decision") / "runs")


@pytest.fixture
def runs_copy(decision, tmp_path) -> dict:
    """The synthetic runs plus a failed one, in a folder the test may change."""
    root = tmp_path / "runs"
    shutil.copytree(decision["root"], root)
    store = RunStore(root)
    failed = finished_run(store, tiny_config(name="broken-data"), RunSummary(), state=RunState.FAILED)
    store.update_status(failed, error="file no-such-file.csv does not exist")
    return {**decision, "root": root, "failed": failed}


@pytest.fixture
def worker():
    proc = start_stand_in()
    yield proc
    stop_stand_in(proc)


def decision_table(at) -> pd.DataFrame:
    return one(at.tabs, "Decision").dataframe[0].value


def row(table: pd.DataFrame, strategy: str, task: str) -> pd.Series:
    found = table[(table["strategy"] == strategy) & (table["task"] == task)]
    assert len(found) == 1, (strategy, task, table[["strategy", "task"]])
    return found.iloc[0]


def texts(container) -> str:
    kinds = ("markdown", "caption", "info", "warning", "success", "error")
    return "\n".join(e.value for kind in kinds for e in container.get(kind))


# -- Compare: the decision view ----------------------------------------------------------------------------
def test_compare_opens_on_a_decision_view_whose_intervals_are_recomputed_by_scipy(monkeypatch, decision):
    at = app(monkeypatch, decision["root"], COMPARE)
    no_problem(at)
    assert at.tabs[0].label == "Decision", [t.label for t in at.tabs]
    assert one(at.selectbox, "Sweep").value == DECISION_SWEEP
    table = decision_table(at)
    assert len(table) == len(DECISION_ACCURACY) * len(TASKS)
    for strategy, per_seed in DECISION_ACCURACY.items():
        for t, task in enumerate(TASKS):
            acc = np.array([p[t] for p in per_seed])
            low, high = stats.t.interval(0.95, len(acc) - 1, loc=acc.mean(), scale=stats.sem(acc))
            # never narrower than the binomial interval of the mean on the N_TEST sentences the seeds share
            floor = Z95 * np.sqrt(acc.mean() * (1 - acc.mean()) / N_TEST)
            low, high = max(0.0, min(low, acc.mean() - floor)), min(1.0, max(high, acc.mean() + floor))
            r = row(table, strategy, task)
            assert r["seeds"] == 3
            assert r["test accuracy"] == pytest.approx(acc.mean())
            assert (r["95% low"], r["95% high"]) == (pytest.approx(low), pytest.approx(high))
            assert r["interval"].startswith("t over 3 seeds")
            wall, train, params = DECISION_COST[strategy]
            assert r["wall time (s)"] == pytest.approx(wall + 1)  # seeds 0, 1, 2 add 0, 1, 2 seconds
            assert r["training time (s)"] == pytest.approx(train + 1)
            assert r["trainable params"] == params


def test_compare_says_plainly_which_differences_are_within_noise(monkeypatch, decision):
    at = app(monkeypatch, decision["root"], COMPARE)
    table = decision_table(at)
    flags = {(s, t): f for s, t, f in zip(table["strategy"], table["task"], table["verdict"])}
    # topic: full_finetune is best; lora's paired differences (+0.5, -2.0, +0.5 points) straddle zero;
    # frozen_backbone loses 10-13 points on every seed.
    assert flags["full_finetune", "topic"] == "best"
    assert flags["lora", "topic"] == "within noise"
    assert flags["frozen_backbone", "topic"] == "worse"
    ff = [p[0] for p in DECISION_ACCURACY["full_finetune"]]
    lora = [p[0] for p in DECISION_ACCURACY["lora"]]
    ci = stats.ttest_rel(lora, ff).confidence_interval(0.95)
    r = row(table, "lora", "topic")
    assert r["vs best"] == pytest.approx(np.mean(lora) - np.mean(ff))
    assert (r["vs best low"], r["vs best high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    shown = texts(one(at.tabs, "Decision"))
    assert "within noise" in shown and "lora" in shown, shown
    assert "Wall time" in shown and "whole run" in shown and "training steps only" in shown, shown


def test_compare_does_not_call_worse_what_a_tiny_test_set_cannot_resolve(store):
    """Seeds that agree exactly (deterministic tiny runs) give a zero-width interval over seeds; on 20 test
    sentences a 20-point gap is 4 sentences, which the test set cannot tell from luck."""
    from core.analysis import decision_table

    for strategy, accuracy in (("full_finetune", 0.5), ("frozen_backbone", 0.3), ("bitfit", 0.2)):
        for seed in (0, 1):
            summary = RunSummary(
                tasks={"topic": TaskSummary(label_names=["a", "b"], n_test=20, test_accuracy=accuracy)}
            )
            finished_run(store, tiny_config(strategy=strategy, seed=seed, name=f"{strategy}-s{seed}"), summary)
    table = decision_table(store, store.list_runs()).set_index("strategy")
    half = Z95 * np.sqrt(0.3 * 0.7 / 20)
    # two seeds that agree exactly: the interval is what 20 test sentences resolve, not [0.3, 0.3]
    low, high = table.loc["frozen_backbone", "95% low"], table.loc["frozen_backbone", "95% high"]
    assert (low, high) == (pytest.approx(0.3 - half), pytest.approx(0.3 + half))
    assert table.loc["frozen_backbone", "test set ±"] == pytest.approx(half)
    assert table.loc["frozen_backbone", "verdict"] == "within noise"
    assert "within what the test sets resolve" in table.loc["frozen_backbone", "why"]
    assert table.loc["bitfit", "verdict"] == "worse", "30 points on 20 sentences is beyond it"


def test_compare_single_seed_intervals_come_from_test_predictions_or_the_binomial_error(monkeypatch, decision):
    from core.stats import bootstrap_mean

    at = app(monkeypatch, decision["root"], COMPARE)
    one(at.selectbox, "Sweep").set_value(SINGLE_SWEEP).run()
    no_problem(at)
    table = decision_table(at)
    store = RunStore(decision["root"])
    predictions = store.read_test_predictions(decision["single"]["bitfit"])
    for t, task in enumerate(TASKS):
        bitfit = row(table, "bitfit", task)
        truth = predictions[task]
        correct = (np.array(truth["labels"]) == np.array(truth["predictions"])).astype(float)
        expected = bootstrap_mean(correct)
        assert bitfit["test accuracy"] == pytest.approx(SINGLE_ACCURACY["bitfit"][t])
        assert (bitfit["95% low"], bitfit["95% high"]) == (pytest.approx(expected.low), pytest.approx(expected.high))
        assert bitfit["interval"] == f"bootstrap over {N_TEST} test examples"
        # No test predictions: the binomial standard error of an accuracy on N_TEST sentences, said as such.
        p = SINGLE_ACCURACY["freeze_lower"][t]
        half = Z95 * np.sqrt(p * (1 - p) / N_TEST)
        lower = row(table, "freeze_lower k=3", task)
        assert (lower["95% low"], lower["95% high"]) == (pytest.approx(p - half), pytest.approx(p + half))
        assert lower["interval"] == f"binomial standard error (n={N_TEST})"
        assert lower["seeds"] == 1


def test_compare_cost_charts_have_error_bars_and_axes_that_do_not_magnify_noise(monkeypatch, decision):
    at = app(monkeypatch, decision["root"], COMPARE)
    charts = one(at.tabs, "Decision").get("plotly_chart")
    assert len(charts) == 2, "accuracy against whole-run wall time and against trainable parameters"
    for chart in charts:
        spec = chart_spec(chart)
        points = [t for t in spec["data"] if t.get("mode") != "lines"]
        assert points and all(t.get("error_y", {}).get("array") for t in points), "every point has its interval"
        low, high = spec["layout"]["yaxis"]["range"]
        assert high - low >= 0.10 - 1e-9, (low, high)
        shown = [y for t in points for y in t["y"]]
        assert low <= min(shown) and max(shown) <= high
    wall = chart_spec(charts[0])
    assert "whole run" in wall["layout"]["xaxis"]["title"]["text"]
    xs = {t["name"]: t["x"][0] for t in wall["data"] if t.get("mode") != "lines"}
    assert xs["frozen_backbone"] == pytest.approx(DECISION_COST["frozen_backbone"][0] + 1), "wall time, not 0.2 s"


def _trace_colour(trace: dict) -> str | None:
    return (trace.get("marker") or {}).get("color") or (trace.get("line") or {}).get("color")


def test_compare_gives_each_strategy_one_colour_and_a_readable_legend_on_every_chart(monkeypatch, decision):
    from pages.common import STRATEGY_COLORS

    assert list(STRATEGY_COLORS) == list(STRATEGIES)
    assert len(set(STRATEGY_COLORS.values())) == len(STRATEGIES)
    at = app(monkeypatch, decision["root"], COMPARE)
    charts = list(one(at.tabs, "Decision").get("plotly_chart"))
    charts += list(open_tab(at, "Curves").get("plotly_chart"))
    assert len(charts) == 2 + 2 * len(TASKS)
    for chart in charts:
        names = curve_names(chart)
        assert names, chart_spec(chart)["layout"].get("title")
        for trace in chart_spec(chart)["data"]:
            if not trace.get("name") or trace.get("showlegend") is False:
                continue
            strategy = trace["name"].split(" ")[0]
            assert strategy in STRATEGIES and ", " not in trace["name"], trace["name"]
            assert _trace_colour(trace) == STRATEGY_COLORS[strategy], (trace["name"], _trace_colour(trace))


def test_compare_does_not_smooth_short_curves_and_shows_training_loss(monkeypatch, decision):
    at = app(monkeypatch, decision["root"], COMPARE)
    curves = open_tab(at, "Curves")
    assert one(at.slider, "Smoothing").value == 0.0, "7 points: smoothing would invent a slow climb"
    titles = [chart_spec(c)["layout"]["title"]["text"] for c in curves.get("plotly_chart")]
    assert titles == [f"{t}: validation accuracy" for t in TASKS] + [f"{t}: training loss" for t in TASKS]
    loss = chart_spec(curves.get("plotly_chart")[2])
    store = RunStore(decision["root"])
    ff = decision["ids"]["full_finetune"]
    expected = np.mean(
        [[r["loss"] for r in store.read_metrics(ff[s]) if r["kind"] == "train" and r["task"] == "topic"] for s in ff],
        axis=0,
    )
    line = [t for t in loss["data"] if t.get("name", "").startswith("full_finetune")][0]
    assert values(line["y"]) == pytest.approx(expected.tolist())


def test_compare_results_table_is_curated(monkeypatch, decision):
    at = app(monkeypatch, decision["root"], COMPARE)
    results = open_tab(at, "Results")
    frame = results.dataframe[0]
    cols = list(frame.value.columns)
    assert cols[:3] == ["run", "topic test accuracy", "sentiment test accuracy"], cols
    assert len(cols) <= 10, cols
    config = json.loads(frame.proto.columns)
    assert config["run"]["pinned"] is True
    assert config["trainable params"]["type_config"]["format"] == "compact"  # 22568071 reads 22.6M
    assert config["wall time (s)"]["type_config"]["format"] == "localized"  # thousands separators
    assert config["topic test accuracy"]["type_config"]["format"] == "%.3f"
    more = one(at.multiselect, "More columns")
    assert "topic val accuracy best" in more.options
    more.set_value(["topic val accuracy best"]).run()
    cols = list(one(at.tabs, "Results").dataframe[0].value.columns)
    assert "topic val accuracy best" in cols and cols[0] == "run"


def test_compare_selection_tab_and_settings_live_in_the_url(monkeypatch, decision):
    lora = decision["ids"]["lora"]
    query = {
        "sweep": DECISION_SWEEP,
        "runs": f"{lora[0]},{lora[2]}",
        "tab": "Curves",
        "metric": "loss",
        "smoothing": "0.3",
    }
    at = app(monkeypatch, decision["root"], COMPARE, query=query)
    no_problem(at)
    assert one(at.multiselect, "Runs (9 match)").value == [lora[0], lora[2]]
    assert one(at.selectbox, "Metric").value == "loss"
    assert one(at.slider, "Smoothing").value == pytest.approx(0.3)
    titles = [chart_spec(c)["layout"]["title"]["text"] for c in one(at.tabs, "Curves").get("plotly_chart")]
    assert titles[0] == "topic: validation loss", titles
    one(at.selectbox, "Metric").set_value("macro_f1").run()
    assert at.query_params["metric"] == "macro_f1"
    assert at.query_params["tab"] == "Curves"
    assert at.query_params["runs"] == f"{lora[0]},{lora[2]}"
    assert at.query_params["sweep"] == DECISION_SWEEP


# -- Runs ------------------------------------------------------------------------------------------------
def test_runs_selection_is_a_run_id_kept_in_the_url(monkeypatch, runs_copy):
    at = app(monkeypatch, runs_copy["root"], RUNS, query={"run": runs_copy["failed"]})
    assert not at.exception, at.exception
    assert one(at.selectbox, "Run details").value == runs_copy["failed"]
    assert at.subheader[0].value == "❌ broken-data"
    other = runs_copy["ids"]["lora"][1]
    one(at.selectbox, "Run details").set_value(other).run()
    assert at.query_params["run"] == other


def test_runs_tags_typed_while_the_run_changed_state_are_saved_and_the_picker_stays(monkeypatch, runs_copy, worker):
    store = RunStore(runs_copy["root"])
    run_id = live_run(store, tiny_config(name="finishing"), worker, Progress(step=3, total_steps=8))
    newer = finished_run(store, tiny_config(name="zz-newer"), RunSummary())  # listed first: the picker's default
    at = app(monkeypatch, store.root, RUNS)
    assert one(at.selectbox, "Run details").value == newer
    one(at.selectbox, "Run details").set_value(run_id).run()
    assert at.subheader[0].value == "🏃 finishing"
    one(at.text_input, "Tags (comma-separated)").input("keep, me")
    one(at.text_area, "Notes").input("typed while it trained")
    store.transition(run_id, RunState.COMPLETED, finished_at=time.time())  # meanwhile, the run ends
    one(at.button, "Save tags and notes").click().run()
    assert not at.exception, at.exception
    assert store.read_meta(run_id).to_dict() == {"tags": ["keep", "me"], "notes": "typed while it trained"}
    assert one(at.selectbox, "Run details").value == run_id, "the picker did not jump to another run"
    assert at.subheader[0].value == "✅ finishing"


def test_runs_resume_refreshes_the_table_and_the_buttons_at_once(monkeypatch, runs_copy):
    started = []
    monkeypatch.setattr(jobs, "ensure_runner", lambda store: started.append(store.root))
    failed = runs_copy["failed"]
    at = app(monkeypatch, runs_copy["root"], RUNS, query={"run": failed})
    one(at.selectbox, "Run details").set_value(failed).run()
    one(at.button, "Resume").click().run()
    assert not at.exception, at.exception
    assert started, "resume asks a runner to serve the queue"
    assert at.dataframe[0].value.set_index("id").loc[failed, "state"] == "⏳ queued"
    labels = [b.label for b in at.button]
    assert "Resume" not in labels and "Cancel" in labels, labels
    assert one(at.selectbox, "Run details").value == failed
    assert at.subheader[0].value.startswith("⏳")


def _eval_rich_metrics() -> list[dict]:
    """1 s per training step; every evaluation (steps 0, 4, 8) takes 5 s."""
    records = []
    wall = 0.0
    for step in range(0, 11):
        if step and step % 2 == 0:
            records.append({"kind": "train", "step": step, "wall_seconds": wall, "task": "topic", "loss": 1.0})
        if step % 4 == 0:
            records.append({"kind": "eval", "step": step, "wall_seconds": wall, "task": "topic", "accuracy": 0.5})
            wall += 5.0
        wall += 1.0
    return records


def test_eta_includes_the_evaluations_still_to_come():
    from core.analysis import evaluation_seconds, remaining_seconds

    records = _eval_rich_metrics()
    assert evaluation_seconds(records) == pytest.approx(5.0)
    progress = Progress(step=10, total_steps=20, eta_seconds=10.0)
    # Training: 10 s. Evaluations at steps 12 and 16, the final one and the test split: 4 x 5 s.
    assert remaining_seconds(progress, records) == pytest.approx(30.0)


def test_runs_eta_includes_evaluation(monkeypatch, runs_copy, worker):
    store = RunStore(runs_copy["root"])
    cfg = tiny_config(name="evaluating", eval_every_steps=4)
    run_id = live_run(store, cfg, worker, Progress(step=10, total_steps=20, eta_seconds=10))
    store.append_metrics(run_id, *_eval_rich_metrics())
    at = app(monkeypatch, store.root, RUNS, query={"run": run_id})
    one(at.selectbox, "Run details").set_value(run_id).run()
    bars = [p for p in at.get("progress")]
    assert any("about 30.0 s left, evaluation included" in (b.proto.text or "") for b in bars), [
        b.proto.text for b in bars
    ]
    assert at.dataframe[0].value.set_index("id").loc[run_id, "eta"] == "30.0 s"


def test_runs_show_progress_of_setup_phases(monkeypatch, runs_copy, worker):
    store = RunStore(runs_copy["root"])
    progress = Progress(phase="caching frozen layers", phase_done=1200, phase_total=4000, eta_seconds=70.0)
    run_id = live_run(store, tiny_config(name="caching"), worker, progress)
    at = app(monkeypatch, store.root, RUNS)
    one(at.selectbox, "Run details").set_value(run_id).run()
    no_problem(at)
    texts_ = [b.proto.text for b in at.get("progress")]
    assert "caching frozen layers: 1,200 of 4,000 sentences · about 70.0 s left" in texts_, texts_
    table = at.dataframe[0].value.set_index("id")
    assert table.loc[run_id, "activity"] == "caching frozen layers"
    assert table.loc[run_id, "progress"] == pytest.approx(30.0)


def test_runs_offer_a_model_download_for_runs_with_weights(monkeypatch, pair, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(pair["root"], root)
    failed = finished_run(RunStore(root), tiny_config(name="no weights"), RunSummary(), state=RunState.FAILED)
    at = app(monkeypatch, root, RUNS, query={"run": pair["ids"]["lora"]})
    no_problem(at)
    assert [b.label for b in at.get("download_button")] == ["Download model (.zip)"]
    one(at.selectbox, "Run details").set_value(failed).run()
    assert not at.get("download_button"), "no weights, nothing to download"


# -- Playground -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict:
    """A frozen-backbone run and a LoRA run, really trained (tiny)."""
    store = RunStore(tmp_path_factory.mktemp("pair") / "runs")
    ids = {}
    for strategy in ("frozen_backbone", "lora"):
        run_id = store.create_run(tiny_config(name=f"pair-{strategy}", strategy=strategy))
        assert train_run(store, run_id) == RunState.COMPLETED
        ids[strategy] = run_id
    return {"root": store.root, "ids": ids}


def _predictions(at) -> list[tuple[str, str]]:
    out, sentence = [], None
    for md in at.markdown:
        if md.value.startswith("> "):
            sentence = md.value[2:]
        elif ": **" in md.value and sentence is not None:
            out.append((sentence, md.value.split(": **")[0]))
    return out


def test_int8_prediction_works_for_a_lora_run(pair):
    store = RunStore(pair["root"])
    run_id = pair["ids"]["lora"]
    write_json_atomic(store.int8_path(run_id), {"agreement": 1.0, "n": 40, "allowed": True})
    fast = core.predict.Predictor.from_run(store, run_id, int8=True)  # was: 'function' object has no attribute 'dtype'
    full = core.predict.Predictor.from_run(store, run_id)
    texts_ = ["markets fell sharply", "a lovely film"]
    got, want = fast.probabilities(texts_), full.probabilities(texts_)
    for task in want:
        assert torch.allclose(got[task], want[task], atol=0.1), task


@pytest.mark.parametrize("strategy", ["frozen_backbone", "lora"])
def test_measure_int8_records_the_agreement_once_for_every_strategy(pair, tmp_path, strategy):
    root = tmp_path / "runs"
    shutil.copytree(pair["root"], root)
    store = RunStore(root)
    run_id = pair["ids"][strategy]
    store.int8_path(run_id).unlink(missing_ok=True)
    report = core.predict.measure_int8(store, run_id)
    assert report["n"] == 40 and 0.0 <= report["agreement"] <= 1.0  # 20 test sentences per task
    assert report["allowed"] == (report["agreement"] >= core.predict.INT8_MIN_AGREEMENT)
    assert core.predict.read_int8_report(store, run_id) == report


def test_playground_never_measures_int8_in_the_page(monkeypatch, pair, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(pair["root"], root)
    store = RunStore(root)
    for run_id in pair["ids"].values():
        store.int8_path(run_id).unlink(missing_ok=True)

    def measured_in_the_page(*args, **kwargs):
        raise AssertionError("the page measured int8 agreement (75 s on real data); the worker does that")

    monkeypatch.setattr(core.predict, "int8_agreement", measured_in_the_page)
    monkeypatch.setattr(core.predict, "measure_int8", measured_in_the_page)
    at = app(monkeypatch, root, PLAYGROUND)
    one(at.multiselect, "Runs").set_value(list(pair["ids"].values())).run()
    one(at.toggle, "Faster int8 prediction").set_value(True).run()
    no_problem(at)
    assert len(_predictions(at)) == 2 * 2 * 2, "both runs predict, at full precision"
    assert sum("int8 agreement not measured" in c.value for c in at.caption) == 2, [c.value for c in at.caption]


def test_playground_int8_with_a_lora_run_keeps_every_column(monkeypatch, pair, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(pair["root"], root)
    store = RunStore(root)
    for run_id in pair["ids"].values():
        write_json_atomic(store.int8_path(run_id), {"agreement": 0.999, "n": 40, "allowed": True})
    at = app(monkeypatch, root, PLAYGROUND)
    one(at.multiselect, "Runs").set_value(list(pair["ids"].values())).run()
    one(at.toggle, "Faster int8 prediction").set_value(True).run()
    no_problem(at)
    assert len(_predictions(at)) == 2 * 2 * 2
    assert sum("int8 (agreement 99.9%" in c.value for c in at.caption) == 2, [c.value for c in at.caption]


def test_playground_one_runs_error_never_blanks_the_others(monkeypatch, pair, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(pair["root"], root)
    store = RunStore(root)
    broken, sound = pair["ids"]["lora"], pair["ids"]["frozen_backbone"]
    manifest = store.checkpoint_dir(broken) / "checkpoint.json"  # damaged by hand: a TypeError when it loads
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "label_names": {"topic": 5}}))
    at = app(monkeypatch, root, PLAYGROUND)
    one(at.multiselect, "Runs").set_value([broken, sound]).run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and broken in errors[0], errors
    assert len(_predictions(at)) == 2 * 2, "the sound run still shows both sentences for both tasks"


def test_playground_predicts_again_only_when_the_sentences_or_the_runs_change(monkeypatch, pair):
    calls = []  # (run, sentences) each time a run's predictions are computed, alone or with the others
    original = core.shared_predict.side_by_side_probabilities

    def counted(predictors, texts_, *args, **kwargs):
        calls.extend((p.run_id, tuple(texts_)) for p in predictors)
        return original(predictors, texts_, *args, **kwargs)

    monkeypatch.setattr(core.shared_predict, "side_by_side_probabilities", counted)
    at = app(monkeypatch, pair["root"], PLAYGROUND)
    ids = list(pair["ids"].values())
    one(at.multiselect, "Runs").set_value(ids).run()
    sentences = f"Counting calls {time.time()}.\nA second line."
    calls.clear()
    one(at.text_area, "Sentences, one a line").set_value(sentences).run()
    assert len(calls) == 2, calls
    at.run()  # any other rerun (a click elsewhere, a refresh) reuses the predictions
    one(at.toggle, "Show class probabilities").set_value(False).run()
    assert len(calls) == 2, calls
    one(at.text_area, "Sentences, one a line").set_value(sentences + "\nA third line.").run()
    assert len(calls) == 4, calls
    one(at.multiselect, "Runs").set_value(ids[:1]).run()  # a run dropped: the other's predictions are kept
    assert len(calls) == 4, calls


def test_playground_says_when_a_sentence_was_truncated(monkeypatch, pair):
    long = " ".join(["The central bank raised interest rates again and markets fell"] * 6)
    at = app(monkeypatch, pair["root"], PLAYGROUND)
    one(at.multiselect, "Runs").set_value([pair["ids"]["frozen_backbone"]]).run()
    one(at.text_area, "Sentences, one a line").set_value(f"Short one.\n{long}").run()
    no_problem(at)
    quotes = [m.value for m in at.markdown if m.value.startswith("> ")]
    assert quotes[0] == "> Short one."
    assert quotes[1].endswith("…") and len(quotes[1]) < len(long), quotes[1]
    notes = [c.value for c in at.caption if "truncated" in c.value.lower()]
    assert len(notes) == 1 and "first 32 of" in notes[0], [c.value for c in at.caption]


# -- Launch ----------------------------------------------------------------------------------------------
def _upload(at, letter: str, name: str, data: bytes):
    at.radio(key=f"src_{letter}").set_value("Upload a file").run()
    uploader = [u for u in at.file_uploader if u.key == f"up_{letter}"][0]
    uploader.upload(name, data, "text/csv")
    at.run()
    assert not at.exception, at.exception


def _launch(at):
    found = [b for b in at.button if b.label.startswith("Launch (")]
    assert len(found) == 1
    return found[0]


def test_launch_refuses_one_column_for_both_text_and_labels(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    rows = "\n".join(f"sentence number {i}" for i in range(80))
    _upload(at, "A", "one-column.csv", f"review\n{rows}\n".encode())
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "same column" in errors[0] and "label" in errors[0].lower(), errors
    assert "text_column" not in errors[0] and "tasks[" not in errors[0], errors
    task_a = [c for c in at.columns if any(u.key == "up_A" for u in c.file_uploader)]
    assert task_a and [e.value for e in task_a[-1].error] == errors, "the error sits in Task A's column"
    assert _launch(at).disabled


def test_launch_shows_split_sizes_and_warns_about_tiny_test_sets(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    rows = "\n".join(f'"sentence {i} is {"good" if i % 2 else "bad"}",{"pos" if i % 2 else "neg"}' for i in range(60))
    _upload(at, "A", "sixty.csv", f"text,label\n{rows}\n".encode())
    no_problem(at)
    shown = texts(at)
    assert "48 train · 6 validation · 6 test" in shown, shown
    warnings = [w.value for w in at.warning]
    assert any("6 test" in w and "16.7 points" in w for w in warnings), warnings
    assert not _launch(at).disabled, "a warning, not a refusal"


def test_launch_keeps_the_form_across_pages(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    one(at.selectbox, "Strategy").set_value("bitfit").run()
    one(at.text_input, "Run name (optional)").set_value("kept").run()
    one(at.number_input, "Epochs").set_value(2.5).run()
    at.number_input(key="max_B").set_value(300).run()
    at.switch_page(RUNS).run()
    at.switch_page("pages/launch.py").run()
    no_problem(at)
    assert one(at.selectbox, "Strategy").value == "bitfit"
    assert one(at.text_input, "Run name (optional)").value == "kept"
    assert one(at.number_input, "Epochs").value == 2.5
    assert at.number_input(key="max_B").value == 300


def test_launch_sweep_asks_for_the_freeze_depths(monkeypatch, tmp_path):
    monkeypatch.setattr(jobs, "ensure_runner", lambda store: None)
    at = app(monkeypatch, tmp_path / "runs")
    sweep_strategies = [m for m in at.multiselect if m.label == "Strategies"][0]
    sweep_strategies.set_value(["frozen_backbone", "freeze_lower"]).run()
    depths = one(at.multiselect, "Freeze depths (k) for freeze_lower")
    assert depths.value == [], "no silent k=3: the user picks"
    assert one(at.button, "Queue the sweep").disabled
    depths.set_value([1, 4]).run()
    one(at.button, "Queue the sweep").click().run()
    no_problem(at)
    configs = [RunStore(tmp_path / "runs").read_config(i) for i in RunStore(tmp_path / "runs").run_ids()]
    assert sorted((c.strategy, c.freeze_layers) for c in configs) == [
        ("freeze_lower", 1),
        ("freeze_lower", 4),
        ("frozen_backbone", None),
    ]


def test_launch_errors_sit_next_to_their_fields_in_the_users_words(monkeypatch, tmp_path):
    at = app(monkeypatch, tmp_path / "runs")
    at.text_input(key="name_B").set_value("").run()
    errors = [e.value for e in at.error]
    assert errors == ["Task name is empty: name the task with letters, digits and '_' (e.g. sentiment)."], errors
    task_b = [c for c in at.columns if any(t.key == "name_B" for t in c.text_input)]
    assert task_b and [e.value for e in task_b[-1].error] == errors, "the error sits in Task B's column"
    assert _launch(at).disabled
    at.text_input(key="name_B").set_value("sentiment").run()
    one(at.number_input, "Head learning rate").set_value(5.0).run()
    settings = one(at.expander, "Training settings")
    assert [e.value for e in settings.error] == [
        "Head learning rate 5.0 is out of range: use a value between 1e-07 and 1 (typical: 1e-3 to 3e-2)."
    ]
    assert not any("head_learning_rate" in e.value or "tasks[" in e.value for e in at.error)


# -- setup-phase progress ---------------------------------------------------------------------------------
def test_frozen_features_report_progress_while_caching(store):
    cfg = tiny_config(strategy="frozen_backbone")
    run_id = store.create_run(cfg)
    store.transition(run_id, RunState.RUNNING)
    trainer = Trainer(store, run_id, run_logger(store.log_path(run_id)))
    seen: list[tuple[int, int]] = []
    encoded = {t: {"train": s.train, "validation": s.validation, "test": s.test} for t, s in trainer.tasks.items()}
    total = sum(len(e) for splits in encoded.values() for e in splits.values())
    for cache in (store.root / "fresh-cache", store.root / "fresh-cache"):  # computed, then read from the cache
        seen.clear()
        FrozenFeatures(
            trainer.model,
            encoded,
            RunConfig.from_dict(cfg.to_dict()),
            trainer.trained_names,
            True,
            cache,
            trainer.device,
            trainer.pad_id,
            trainer.log,
            on_progress=lambda done, n: seen.append((done, n)),
        )
        assert seen and seen[-1] == (total, total), seen
        assert all(n == total for _, n in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_caching_progress_lands_in_status_json(store):
    from core.features import status_progress

    run_id = store.create_run(tiny_config())
    report = status_progress(store, run_id, every_seconds=0.0)
    report(300, 1000)
    progress = store.read_status(run_id).progress
    assert (progress.phase, progress.phase_done, progress.phase_total) == ("caching frozen layers", 300, 1000)


# -- take a model away -----------------------------------------------------------------------------------
def test_cli_export_writes_a_folder_sentence_transformers_loads(pair, tmp_path):
    from sentence_transformers import SentenceTransformer

    store = RunStore(pair["root"])
    run_id = pair["ids"]["lora"]
    out = tmp_path / "exported"
    done = run_cli("export", run_id, str(out), runs_dir=store.root)
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    again = run_cli("export", run_id, str(out), runs_dir=store.root)
    assert again.returncode == 2 and "--overwrite" in again.stderr, again.stderr
    assert run_cli("export", run_id, str(out), "--overwrite", runs_dir=store.root).returncode == 0
    texts_ = ["the central bank raised interest rates", "a warm and funny film"]
    model, tokenizer, meta = load_model(store.checkpoint_dir(run_id))
    enc = tokenizer(texts_, truncation=True, max_length=meta["max_length"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        want = model.embed(enc["input_ids"], enc["attention_mask"])
    got = SentenceTransformer(str(out), device="cpu").encode(texts_, convert_to_tensor=True)
    assert torch.allclose(got.cpu(), want, atol=1e-4)
