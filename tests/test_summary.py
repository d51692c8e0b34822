"""summary.json and throughput bookkeeping without training, and run folders written before the typed records."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from core.config import RunConfig
from core.meter import Meter, Totals
from core.records import RunState, RunStatus, RunSummary
from core.store import STATUS_FILE, SUMMARY_FILE, RunStore
from core.summary import TaskFacts, summarize
from tests.conftest import tiny_config

LEGACY_RUN = Path(__file__).parent / "data" / "legacy_run"
LEGACY_ID = "20240611-093012-frozen-backbone-8c6b"

# summary.json's keys as the engine wrote them before the typed records (git: core/train.py, Trainer._summary).
SUMMARY_KEYS = {
    "run_id", "state", "strategy", "backbone", "device", "steps", "embedding_cache", "cached_bottom_layers",
    "total_steps", "epochs", "train_seconds", "wall_seconds", "examples_seen", "tokens_seen", "examples_per_second",
    "tokens_per_second", "trainable_params", "total_params", "trainable_percent", "layers", "tasks",
}  # fmt: skip
TASK_KEYS = {
    "label_names", "n_train", "n_validation", "n_test", "trained", "head_frozen", "val_accuracy", "val_macro_f1",
    "best_val_accuracy", "best_val_step", "initial_val_accuracy", "val_accuracy_change",
}  # fmt: skip
TEST_KEYS = {"test_accuracy", "test_macro_f1", "test_loss", "per_class", "confusion_matrix"}
# Keys the typed records added since, None unless a run measures them (train_accuracy: cfg.train_eval_examples).
ADDED_TASK_KEYS = {"train_accuracy"}


def _old_keys(entry: dict) -> set[str]:
    """A task entry's keys as the previous format had them; an added key may only be there empty."""
    assert all(entry.get(k) is None for k in ADDED_TASK_KEYS), entry
    return set(entry) - ADDED_TASK_KEYS


def _without_added(summary: dict) -> dict:
    tasks = {name: {k: v for k, v in t.items() if k not in ADDED_TASK_KEYS} for name, t in summary["tasks"].items()}
    return {**summary, "tasks": tasks}


PARAMETERS = {
    "trainable_params": 2695,
    "total_params": 13_695_751,
    "trainable_percent": 0.0197,
    "layers": [{"group": "embeddings", "trainable": 0, "total": 11_918_592}],
}
FACTS = {
    "topic": TaskFacts(["business", "tech"], n_train=32, n_validation=20, n_test=20, trained=True, head_frozen=False),
    "sentiment": TaskFacts(["neg", "pos"], n_train=32, n_validation=20, n_test=20, trained=False, head_frozen=True),
}


def _eval(step: int, task: str, accuracy: float) -> dict:
    return {"kind": "eval", "split": "validation", "step": step, "epoch": step / 8, "wall_seconds": 1.0 + step,
            "task": task, "loss": 1.0 - accuracy, "accuracy": accuracy, "macro_f1": accuracy - 0.1}  # fmt: skip


# Validation curves as the engine logs them, with the records of other kinds in between.
EVALS = [
    _eval(0, "topic", 0.2),
    _eval(0, "sentiment", 0.7),
    {"kind": "train", "step": 2, "epoch": 0.25, "wall_seconds": 2.0, "task": "topic", "loss": 0.9, "lr": 0.01},
    {"kind": "throughput", "step": 2, "epoch": 0.25, "wall_seconds": 2.0, "examples_per_second": 9.0},
    _eval(3, "topic", 0.6),
    _eval(3, "sentiment", 0.65),
    {"kind": "unfreeze", "step": 4, "epoch": 0.5, "wall_seconds": 4.0, "unfrozen_layers": 1},
    _eval(6, "topic", 0.6),
    _eval(6, "sentiment", 0.6),
    _eval(8, "topic", 0.5),
    _eval(8, "sentiment", 0.55),
]
TEST = {
    task: {"loss": 0.4, "accuracy": 0.75, "macro_f1": 0.7, "confusion_matrix": [[8, 2], [3, 7]],
           "per_class": {name: {"precision": 0.7, "recall": 0.8, "f1": 0.75, "support": 10} for name in facts.label_names}}
    for task, facts in FACTS.items()
}  # fmt: skip


def _summary(state=RunState.COMPLETED, test=TEST, evals=EVALS, totals=None) -> RunSummary:
    return summarize(
        "run-1",
        state,
        RunConfig(strategy="freeze_head_b", backbone="minilm-l6:1"),
        device="cpu",
        steps=8,
        total_steps=8,
        epochs=1.0,
        totals=totals or Totals(train_seconds=2.00049, wall_seconds=10.12345, examples_seen=64, tokens_seen=1600),
        parameters=PARAMETERS,
        embedding_cache=False,
        cached_bottom_layers=0,
        tasks=FACTS,
        evals=evals,
        test=test,
    )


def test_summary_reads_the_validation_curve_of_each_task():
    summary = _summary()
    topic, sentiment = summary.tasks["topic"], summary.tasks["sentiment"]
    assert (topic.initial_val_accuracy, topic.val_accuracy, topic.val_macro_f1) == (0.2, 0.5, 0.4)
    assert (topic.best_val_accuracy, topic.best_val_step) == (0.6, 3)  # the earliest of two equal bests
    assert topic.val_accuracy_change == pytest.approx(0.3)
    assert (sentiment.best_val_accuracy, sentiment.best_val_step) == (0.7, 0)
    assert sentiment.val_accuracy_change == pytest.approx(-0.15)  # a frozen head's drift: the backbone moved it
    assert (sentiment.trained, sentiment.head_frozen, topic.trained, topic.head_frozen) == (False, True, True, False)
    assert (topic.label_names, topic.n_train, topic.n_validation, topic.n_test) == (["business", "tech"], 32, 20, 20)


def test_summary_copies_the_run_facts_and_rounds_the_times():
    summary = _summary()
    assert (summary.run_id, summary.state, summary.strategy, summary.backbone) == (
        "run-1",
        "completed",
        "freeze_head_b",
        "minilm-l6:1",
    )
    assert (summary.device, summary.steps, summary.total_steps, summary.epochs) == ("cpu", 8, 8, 1.0)
    assert (summary.train_seconds, summary.wall_seconds) == (2.0, 10.123)
    assert (summary.examples_seen, summary.tokens_seen) == (64, 1600)
    # Throughput over the time inside training steps, unrounded (as before: the rounding is for display).
    assert summary.examples_per_second == 64 / 2.00049 and summary.tokens_per_second == 1600 / 2.00049
    assert summary.trainable_params == 2695 and summary.total_params == 13_695_751
    assert summary.trainable_percent == 0.0197 and summary.layers == PARAMETERS["layers"]
    assert (summary.embedding_cache, summary.cached_bottom_layers) == (False, 0)
    assert summary.extra == {}


def test_a_run_with_no_training_time_has_no_throughput():
    summary = _summary(totals=Totals(train_seconds=0.0, wall_seconds=3.0))
    assert summary.examples_per_second is None and summary.tokens_per_second is None


def test_test_metrics_only_in_a_completed_runs_summary():
    completed = _summary().to_dict()
    for task in FACTS:
        entry = completed["tasks"][task]
        assert _old_keys(entry) == TASK_KEYS | TEST_KEYS
        assert (entry["test_accuracy"], entry["test_macro_f1"], entry["test_loss"]) == (0.75, 0.7, 0.4)
        assert entry["confusion_matrix"] == [[8, 2], [3, 7]] and set(entry["per_class"]) == set(FACTS[task].label_names)
    stopped = _summary(state=RunState.STOPPED, test=None)
    assert stopped.state == "stopped"
    assert all(_old_keys(entry) == TASK_KEYS for entry in stopped.to_dict()["tasks"].values())
    assert stopped.tasks["topic"].test_accuracy is None


def test_a_task_without_evaluations_has_empty_curve_landmarks():
    summary = _summary(state=RunState.STOPPED, test=None, evals=[r for r in EVALS if r.get("task") != "topic"])
    topic = summary.tasks["topic"]
    assert topic.val_accuracy is topic.best_val_step is topic.initial_val_accuracy is topic.val_accuracy_change is None
    assert summary.tasks["sentiment"].val_accuracy == 0.55


def test_summary_json_keys_are_todays_and_round_trip():
    data = json.loads(json.dumps(_summary().to_dict()))
    assert set(data) == SUMMARY_KEYS
    assert all(_old_keys(t) == TASK_KEYS | TEST_KEYS for t in data["tasks"].values())
    assert RunSummary.from_dict(data).to_dict() == data
    assert RunSummary.from_dict(data) == _summary()


def test_meter_windows_and_run_totals():
    meter = Meter(["topic", "sentiment"], started=time.time() - 5.0)
    meter.add("sentiment", 0.5, examples=8, tokens=200, seconds=0.5)
    meter.add("topic", 1.0, examples=8, tokens=100, seconds=0.25)
    meter.add("topic", 2.0, examples=4, tokens=100, seconds=0.25)
    position = {"step": 3, "epoch": 0.375, "wall_seconds": 5.0}
    records = meter.flush(position, lr=0.01)
    # Per-task mean loss in the trained tasks' order, then the window's throughput.
    assert records == [
        {"kind": "train", **position, "task": "topic", "loss": 1.5, "lr": 0.01},
        {"kind": "train", **position, "task": "sentiment", "loss": 0.5, "lr": 0.01},
        {"kind": "throughput", **position, "examples_per_second": 20.0, "tokens_per_second": 400.0},
    ]
    meter.add("topic", 3.0, examples=10, tokens=50, seconds=0.5)
    window = meter.flush(position, lr=0.0)
    assert [r["task"] for r in window if r["kind"] == "train"] == ["topic"]  # a window resets
    assert window[-1]["examples_per_second"] == 20.0 and window[-1]["tokens_per_second"] == 100.0
    totals = meter.totals()
    assert (totals.train_seconds, totals.examples_seen, totals.tokens_seen) == (1.5, 30, 450)
    assert totals.examples_per_second == 20.0 and totals.tokens_per_second == 300.0
    assert 5.0 <= totals.wall_seconds < 6.0
    assert meter.eta_seconds(step=4, total_steps=12) == 3.0  # 8 steps left at 4 steps per 1.5 s
    assert meter.eta_seconds(step=0, total_steps=12) is None
    empty = Meter(["topic"]).flush(position, lr=0.0)
    assert empty == [{"kind": "throughput", **position, "examples_per_second": None, "tokens_per_second": None}]


def test_a_resumed_meter_counts_on_from_its_train_state():
    saved = Totals(train_seconds=1.5, wall_seconds=30.0, examples_seen=30, tokens_seen=450)
    assert Totals.from_dict(json.loads(json.dumps(saved.to_dict()))) == saved
    assert Totals.from_dict({}) == Totals()  # an older train state without counts
    meter = Meter.resumed(["topic"], saved)
    meter.add("topic", 1.0, examples=10, tokens=50, seconds=0.5)
    totals = meter.totals()
    assert (totals.train_seconds, totals.examples_seen, totals.tokens_seen) == (2.0, 40, 500)
    assert 30.0 <= totals.wall_seconds < 31.0


# -- a run folder written before the typed records ------------------------------------------------------
@pytest.fixture
def legacy(tmp_path) -> RunStore:
    """tests/data/legacy_run: a frozen_backbone run trained and written by the engine before this refactor."""
    store = RunStore(tmp_path / "runs")
    shutil.copytree(LEGACY_RUN, store.root / LEGACY_ID)
    return store


def test_a_run_folder_of_the_previous_format_opens_with_its_values(legacy):
    record = legacy.record(LEGACY_ID)
    assert record.damaged is None
    status = record.status
    assert status.state == RunState.COMPLETED and record.state.finished
    assert (status.backend, status.host, status.pid, status.started_by_runner) == ("local", "laptop", 12380, 12378)
    assert (status.started_at, status.finished_at, status.error) == (1718097022.9388, 1718097044.0098, None)
    assert (status.trainable_params, status.total_params) == (2695, 13_695_751)
    assert (record.progress.step, record.progress.total_steps, record.progress.fraction) == (8, 8, 1.0)
    assert record.progress.tokens_per_second == 1016.2025736715063 and record.progress.phase is None
    summary = record.summary
    assert (summary.run_id, summary.state, summary.steps, summary.tokens_seen) == (LEGACY_ID, "completed", 8, 1555)
    assert summary.test_accuracy("topic") == 0.4 and summary.tasks["sentiment"].test_accuracy == 0.7
    assert summary.tasks["topic"].confusion_matrix[3] == [0, 0, 0, 4, 1]
    assert summary.tasks["sentiment"].best_val_step == 6 and summary.extra == {}
    assert (record.meta.tags, record.meta.notes) == (["baseline", "legacy"], "written before the typed records")
    assert record.run_config() == tiny_config(
        strategy="frozen_backbone", eval_batch_size=128, head_learning_rate=0.03, backbone_learning_rate=5e-05,
        warmup_ratio=0.1, checkpoint_every_steps=4, device="cpu",
    )  # fmt: skip
    assert len(legacy.read_metrics(LEGACY_ID)) == 18 and legacy.live_run_ids() == []


def test_old_files_round_trip_through_the_records_unchanged(legacy):
    path = legacy.path(LEGACY_ID)
    old_summary = json.loads((path / SUMMARY_FILE).read_text())
    assert _without_added(RunSummary.from_dict(old_summary).to_dict()) == old_summary  # same keys, same values
    assert set(old_summary) == SUMMARY_KEYS
    old_status = json.loads((path / STATUS_FILE).read_text())
    new_status = RunStatus.from_dict(old_status).to_dict()
    assert {k: new_status[k] for k in old_status if k != "progress"} == {
        k: v for k, v in old_status.items() if k != "progress"
    }
    assert {k: new_status["progress"][k] for k in old_status["progress"]} == old_status["progress"]


def test_summarize_reproduces_the_previous_engines_summary(legacy):
    """The same results give the same summary.json as the engine before this refactor wrote."""
    old = json.loads((legacy.path(LEGACY_ID) / SUMMARY_FILE).read_text())
    test = {
        name: {"accuracy": t["test_accuracy"], "macro_f1": t["test_macro_f1"], "loss": t["test_loss"],
               "per_class": t["per_class"], "confusion_matrix": t["confusion_matrix"]}
        for name, t in old["tasks"].items()
    }  # fmt: skip
    facts = {
        name: TaskFacts(t["label_names"], t["n_train"], t["n_validation"], t["n_test"], t["trained"], t["head_frozen"])
        for name, t in old["tasks"].items()
    }
    new = summarize(
        LEGACY_ID,
        RunState.COMPLETED,
        legacy.read_config(LEGACY_ID),
        device=old["device"],
        steps=old["steps"],
        total_steps=old["total_steps"],
        epochs=old["epochs"],
        totals=Totals(old["train_seconds"], old["wall_seconds"], old["examples_seen"], old["tokens_seen"]),
        parameters={k: old[k] for k in ("trainable_params", "total_params", "trainable_percent", "layers")},
        embedding_cache=old["embedding_cache"],
        cached_bottom_layers=old["cached_bottom_layers"],
        tasks=facts,
        evals=legacy.read_metrics(LEGACY_ID),
        test=test,
    ).to_dict()
    # The old rates divided by the unrounded training time; the summary holds the rounded one.
    for rate in ("examples_per_second", "tokens_per_second"):
        assert new.pop(rate) == pytest.approx(old.pop(rate), rel=1e-3)
    assert _without_added(new) == old
