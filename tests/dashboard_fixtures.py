"""Helpers shared by the dashboard tests (AppTest) and the browser test: real runs, real processes."""

from __future__ import annotations

import base64
import json
import re
import socket
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from streamlit.testing.v1 import AppTest

from core import jobs
from core.config import RunConfig, TaskConfig
from core.errors import DataError
from core.records import Progress, RunState, RunSummary, TaskSummary
from core.store import RunStore
from core.train import train_run
from tests.conftest import ROOT, tiny_config

# the process helpers live in tests/processes.py; these two are imported from here by the dashboard tests
from tests.processes import kill_everything_for, wait_for  # noqa: F401

APP = str(ROOT / "app.py")
SEED_STRATEGIES = ["frozen_backbone", "full_finetune"]
SEEDS = [0, 1]
FAILED_NAME = "broken-data"


def seed_runs(root: Path) -> dict:
    """Really train a 2 strategies x 2 seeds sweep in-process, plus one run that fails on missing data."""
    store = RunStore(root)
    sweep_id, ids = jobs.sweep(
        store, tiny_config(checkpoint_every_steps=1000), strategies=SEED_STRATEGIES, seeds=SEEDS, start_runner=False
    )
    for run_id in ids:
        assert train_run(store, run_id) == RunState.COMPLETED, store.read_status(run_id)
    failed = store.create_run(
        tiny_config(name=FAILED_NAME, tasks=[TaskConfig(name="topic", dataset=str(root / "no-such-file.csv"))])
    )
    with pytest.raises(DataError, match="does not exist"):
        train_run(store, failed)
    assert store.read_status(failed).state == RunState.FAILED
    names = {run_id: store.record(run_id).config["name"] for run_id in [*ids, failed]}
    return {"root": root, "sweep_id": sweep_id, "completed": ids, "failed": failed, "names": names}


_SEEDED: dict[str, dict] = {}


def seeded_once(tmp_path_factory) -> dict:
    """``seed_runs`` trained once per test session, whichever test module asks first (read-only for tests)."""
    if "runs" not in _SEEDED:
        _SEEDED["runs"] = seed_runs(tmp_path_factory.mktemp("seeded") / "runs")
    return _SEEDED["runs"]


def finished_run(store: RunStore, cfg: RunConfig, summary: RunSummary, state: RunState = RunState.COMPLETED) -> str:
    """A run that ended without training, built only through the store's lifecycle (no file names)."""
    run_id = store.create_run(cfg)
    store.transition(run_id, RunState.RUNNING, started_at=time.time())
    store.write_summary(run_id, summary)
    store.transition(run_id, state, finished_at=time.time())
    return run_id


def parse_params(text: str) -> float:
    """The inverse of pages.common.fmt_params: '2.7k' -> 2700, '22.57M' -> 22570000."""
    m = re.fullmatch(r"([0-9.]+)([kM]?)", text.strip())
    assert m, f"not a parameter count: {text!r}"
    return float(m.group(1)) * {"": 1, "k": 1e3, "M": 1e6}[m.group(2)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- shared AppTest helpers ---------------------------------------------------------------------------
def app(monkeypatch, runs_dir: Path, page: str | None = None, query: dict | None = None) -> AppTest:
    """The whole app (router included) on ``runs_dir``, switched to ``page``; ``query``: the URL's parameters."""
    monkeypatch.setenv("FREEZELAB_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, at.exception
    return at


def one(elements, label: str):
    """The single widget with this label (fails loudly when the page changed)."""
    found = [e for e in elements if e.label == label]
    assert len(found) == 1, f"{len(found)} widgets labelled {label!r}: {[e.label for e in elements]}"
    return found[0]


def no_problem(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not [e.value for e in at.error], [e.value for e in at.error]


def open_tab(at: AppTest, label: str):
    """Compare draws only its open tab (the choice is part of its shareable URL): open one the way a click does."""
    at.session_state["compare_tab"] = label
    at.run()
    assert not at.exception, at.exception
    return one(at.tabs, label)


def chart_spec(chart) -> dict:
    return json.loads(chart.proto.spec)


def values(data) -> list:
    """A plotly trace's x or y as a list (plotly sends numpy arrays as base64 typed arrays)."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)


def curve_names(chart) -> list[str]:
    """The legend entries of a plotly chart element."""
    return [t["name"] for t in chart_spec(chart)["data"] if t.get("name") and t.get("showlegend") is not False]


# -- synthetic runs with known numbers, for the decision view -----------------------------------------
N_TEST = 500
DECISION_SWEEP = "sweep-29990101-000000-dddd"  # sorts first: the sweep Compare opens on
SINGLE_SWEEP = "sweep-29990101-000000-aaaa"
# strategy -> per seed (topic, sentiment) test accuracy on N_TEST sentences each.
DECISION_ACCURACY = {
    "full_finetune": [(0.90, 0.80), (0.91, 0.82), (0.92, 0.81)],
    "lora": [(0.905, 0.79), (0.89, 0.80), (0.925, 0.83)],
    "frozen_backbone": [(0.80, 0.70), (0.81, 0.71), (0.79, 0.72)],
}
# strategy -> (whole-run wall seconds, training seconds, trainable parameters); seed s adds s seconds.
DECISION_COST = {
    "full_finetune": (105.0, 61.0, 22_568_071),
    "lora": (130.0, 80.0, 76_423),
    "frozen_backbone": (46.6, 0.2, 2_695),
}
SINGLE_ACCURACY = {"bitfit": (0.84, 0.75), "freeze_lower": (0.85, 0.74)}  # one seed each
EVAL_POINTS = 7


def _predictions(accuracy: float, n_labels: int, seed: int) -> dict[str, list[int]]:
    """Test labels and predictions with exactly ``accuracy`` right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, N_TEST)
    wrong = rng.choice(N_TEST, round((1 - accuracy) * N_TEST), replace=False)
    predictions = labels.copy()
    predictions[wrong] = (labels[wrong] + 1) % n_labels
    return {"labels": labels.tolist(), "predictions": predictions.tolist()}


def _synthetic_run(store: RunStore, strategy: str, seed: int, sweep: str, accuracy, cost, predictions: bool) -> str:
    cfg = RunConfig(
        strategy=strategy,
        freeze_layers=3 if strategy == "freeze_lower" else None,
        seed=seed,
        sweep_id=sweep,
        name=f"{strategy}-s{seed}",
    )
    wall, train, params = cost
    labels = {"topic": ["business", "entertainment", "politics", "sport", "tech"], "sentiment": ["neg", "pos"]}
    tasks = {
        task: TaskSummary(label_names=labels[task], n_test=N_TEST, test_accuracy=acc, test_macro_f1=acc - 0.01)
        for task, acc in zip(labels, accuracy)
    }
    summary = RunSummary(
        strategy=strategy,
        wall_seconds=wall + seed,
        train_seconds=train + seed,
        trainable_params=params,
        total_params=22_568_071,
        tokens_per_second=1234.5,
        tasks=tasks,
    )
    run_id = finished_run(store, cfg, summary)
    records = []
    for k in range(EVAL_POINTS):
        pos = {"step": 10 * k, "epoch": k / 3, "wall_seconds": 5.0 * k}
        for task, acc in zip(labels, accuracy):
            value = acc * (0.6 + 0.4 * k / (EVAL_POINTS - 1))
            records.append({"kind": "eval", "split": "validation", **pos, "task": task, "accuracy": value})
            records[-1].update(loss=1 - value, macro_f1=value - 0.01)
            if k:
                records.append({"kind": "train", **pos, "task": task, "loss": 1.5 - value, "lr": 1e-3})
    store.append_metrics(run_id, *records)
    if predictions:
        store.write_test_predictions(
            run_id, {task: _predictions(acc, len(labels[task]), seed) for task, acc in zip(labels, accuracy)}
        )
    return run_id


def decision_runs(root: Path) -> dict:
    """A 3-strategy x 3-seed sweep with the numbers above, and a one-seed sweep (bitfit with test predictions,
    freeze_lower without). Built through the store, no training: seconds."""
    store = RunStore(root)
    ids: dict[str, dict[int, str]] = {}
    for strategy, per_seed in DECISION_ACCURACY.items():
        for seed, accuracy in enumerate(per_seed):
            ids.setdefault(strategy, {})[seed] = _synthetic_run(
                store, strategy, seed, DECISION_SWEEP, accuracy, DECISION_COST[strategy], predictions=True
            )
    single = {
        strategy: _synthetic_run(
            store, strategy, 0, SINGLE_SWEEP, accuracy, (60.0, 20.0, 5_000_000), predictions=strategy == "bitfit"
        )
        for strategy, accuracy in SINGLE_ACCURACY.items()
    }
    return {"root": root, "ids": ids, "single": single}


# -- a run that is training right now ------------------------------------------------------------------
def start_stand_in() -> psutil.Popen:
    """A process that stands in for a worker: alive, so the dashboard never marks its run as dead, and harmless
    to kill (the teardown helpers kill the pid of every running run)."""
    return psutil.Popen([sys.executable, "-c", "import time; time.sleep(900)"])


def live_run(store: RunStore, cfg: RunConfig, worker: psutil.Popen, progress: Progress | None = None) -> str:
    """A run in state running whose training process is ``worker`` (see ``start_stand_in``)."""
    run_id = store.create_run(cfg)
    store.transition(
        run_id,
        RunState.RUNNING,
        pid=worker.pid,
        pid_create_time=worker.create_time(),
        host=socket.gethostname(),
        started_at=time.time(),
        progress=progress or Progress(step=0, total_steps=20),
    )
    return run_id


def stop_stand_in(worker: psutil.Popen) -> None:
    try:
        worker.kill()
    except (psutil.NoSuchProcess, ProcessLookupError):  # the teardown helpers may have killed it already
        pass
    worker.wait(timeout=10)
