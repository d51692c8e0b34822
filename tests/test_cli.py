"""The CLI as a user runs it: real subprocesses, a real runs directory."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from core import jobs
from core.cli import BACKENDS, build_parser, config_from_args
from core.config import ConfigError, Device, TaskConfig, TaskSampling
from core.records import RunState
from core.store import RunStore
from core.strategies import STRATEGIES
from tests.conftest import ROOT, TINY_CLI_ARGS, run_cli, tiny_config


def test_strategies_lists_every_strategy_as_json(tmp_path):
    result = run_cli("strategies", "--json", runs_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [s["id"] for s in listed] == list(STRATEGIES)
    assert all(s["when_to_use"] for s in listed)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("cli") / "runs"
    result = run_cli("train", "--strategy", "frozen_backbone", "--epochs", "2", *TINY_CLI_ARGS, runs_dir=runs)
    assert result.returncode == 0, result.stderr
    return runs, result


def test_train_prints_the_run_id_last_and_show_json_has_the_promised_fields(trained_run):
    runs, result = trained_run
    run_id = result.stdout.strip().splitlines()[-1]
    shown = run_cli("show", run_id, "--json", runs_dir=runs)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["id"] == run_id
    assert data["config"]["strategy"] == "frozen_backbone"
    assert data["status"]["state"] == "completed"
    summary = data["summary"]
    for task in ("topic", "sentiment"):
        assert 0 <= summary["tasks"][task]["test_accuracy"] <= 1
        assert 0 <= summary["tasks"][task]["test_macro_f1"] <= 1
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["train_seconds"] > 0


def test_predict_json_gives_a_label_and_every_probability(trained_run):
    runs, result = trained_run
    run_id = result.stdout.strip().splitlines()[-1]
    out = run_cli("predict", run_id, "shares in the bank fell", "a warm and funny film", "--json", runs_dir=runs)
    assert out.returncode == 0, out.stderr
    preds = json.loads(out.stdout)
    assert [p["text"] for p in preds] == ["shares in the bank fell", "a warm and funny film"]
    for p in preds:
        topic = p["tasks"]["topic"]
        assert (
            set(topic["probabilities"]) == {"business", "entertainment", "politics", "sport", "tech"}
            or len(topic["probabilities"]) == 5
        )
        assert topic["label"] in topic["probabilities"]
        assert abs(sum(topic["probabilities"].values()) - 1) < 1e-5
        assert set(p["tasks"]["sentiment"]["probabilities"]) == {"negative", "positive"}


def test_runs_lists_and_delete_restores(trained_run):
    runs, result = trained_run
    run_id = result.stdout.strip().splitlines()[-1]
    listed = json.loads(run_cli("runs", "--json", runs_dir=runs).stdout)
    assert run_id in [r["id"] for r in listed]
    assert run_cli("delete", run_id, runs_dir=runs).returncode == 0
    assert run_id not in [r["id"] for r in json.loads(run_cli("runs", "--json", runs_dir=runs).stdout)]
    gone = run_cli("show", run_id, runs_dir=runs)
    assert gone.returncode == 2 and "not found" in gone.stderr and "Traceback" not in gone.stderr
    assert run_cli("restore", run_id, runs_dir=runs).returncode == 0
    assert run_cli("show", run_id, "--json", runs_dir=runs).returncode == 0


def test_show_and_runs_give_each_accuracy_its_test_set_noise(trained_run):
    runs, result = trained_run
    run_id = result.stdout.strip().splitlines()[-1]
    summary = json.loads(run_cli("show", run_id, "--json", runs_dir=runs).stdout)["summary"]
    shown = run_cli("show", run_id + "/", runs_dir=runs)  # tab completion's trailing slash is accepted
    assert shown.returncode == 0, shown.stderr
    for task, facts in summary["tasks"].items():
        line = next(x for x in shown.stdout.splitlines() if x.startswith(f"task     {task}:"))
        found = re.search(r"test acc (\d\.\d{3}) \+-(\d\.\d{3}) \(n=(\d+)\)", line)
        assert found, line
        p, half, n = float(found[1]), float(found[2]), int(found[3])
        assert n == facts["n_test"] and p == pytest.approx(facts["test_accuracy"], abs=5e-4)
        q = min(max(p, 0.5 / n), 1 - 0.5 / n)  # an accuracy of 0 or 1 on n sentences is not exact either
        assert half == pytest.approx(1.96 * math.sqrt(q * (1 - q) / n), abs=1e-3)
        assert ("a small test set" in line) == (n < 100)
    listed = next(x for x in run_cli("runs", runs_dir=runs).stdout.splitlines() if x.startswith(run_id))
    assert listed.count("(n=") == len(summary["tasks"]) and "+-" in listed


def test_a_path_for_a_run_id_gets_the_folder_name_as_a_hint(tmp_path):
    result = run_cli("show", "runs/abc-1/", runs_dir=tmp_path)
    assert result.returncode == 2 and "not valid" in result.stderr
    assert "the folder's name alone: 'abc-1'" in result.stderr


def test_separate_report_names_a_sweep_that_does_not_exist(tmp_path):
    result = run_cli("separate-report", "nosuch", runs_dir=tmp_path)
    assert result.returncode == 2 and "no sweep 'nosuch'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("bad_id", ["../etc", "a/b", "..", "/tmp/x", ""])
def test_run_ids_with_paths_are_refused(tmp_path, bad_id):
    result = run_cli("show", bad_id, runs_dir=tmp_path)
    assert result.returncode == 2
    assert "not valid" in result.stderr and "Traceback" not in result.stderr


def test_bad_data_gets_a_message_not_a_traceback(tmp_path):
    csv = tmp_path / "reviews.csv"
    csv.write_text("sentence,stars\nlovely,5\nawful,1\n" * 10)
    result = run_cli("train", "--task-b", str(csv), *TINY_CLI_ARGS, runs_dir=tmp_path / "runs")
    assert result.returncode == 2
    assert "reviews.csv" in result.stderr and "text" in result.stderr
    assert "Traceback" not in result.stderr


def test_absurd_learning_rate_is_refused_before_anything_runs(tmp_path):
    result = run_cli("train", "--head-lr", "1e3", *TINY_CLI_ARGS, runs_dir=tmp_path / "runs")
    assert result.returncode == 2 and "head_learning_rate" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_importing_the_cli_loads_no_heavy_library():
    code = "import sys, core.cli; print([m for m in ('torch', 'pandas', 'transformers', 'ray') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert BACKENDS == jobs.BACKENDS


def _config(*argv: str, store: RunStore | None = None):
    args = build_parser().parse_args(["train", *argv])
    return config_from_args(args, store or RunStore("/nonexistent-runs"))


def test_options_build_the_config_file_then_options_then_set(tmp_path):
    config_file = tmp_path / "base.json"
    config_file.write_text(json.dumps({"name": "from-file", "epochs": 3, "seed": 7}))
    cfg = _config(
        "--config",
        str(config_file),
        "--strategy",
        "freeze_lower",
        "--freeze-layers",
        "2",
        "--seed",
        "1",
        "--task-b",
        "reviews.csv",
        "--task-b-text-column",
        "review",
        "--max-train-examples",
        "50",
        "--task-a-max-train-examples",
        "10",
        "--task-sampling",
        "round_robin",
        "--device",
        "cpu",
        "--set",
        "warmup_ratio=0.2",
        "--set",
        'lora_targets=["query"]',
        "--set",
        "epochs=2",
    )
    assert (cfg.name, cfg.strategy, cfg.freeze_layers, cfg.seed) == ("from-file", "freeze_lower", 2, 1)
    assert (cfg.task_sampling, cfg.device, cfg.warmup_ratio, cfg.lora_targets) == ("round_robin", "cpu", 0.2, ["query"])
    assert cfg.epochs == 2  # --set comes last
    assert cfg.tasks == [
        TaskConfig(name="topic", dataset="bbc_topics", max_train_examples=10),
        TaskConfig(name="sentiment", dataset="reviews.csv", text_column="review", max_train_examples=50),
    ]
    assert _config("--tasks", "b").tasks == [TaskConfig(name="sentiment", dataset="rt_sentiment")]
    with pytest.raises(ConfigError, match="unknown config keys"):
        _config("--set", "no_such_key=1")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _config("--set", "warmup_ratio")


@pytest.mark.parametrize(("option", "enum"), [("--device", Device), ("--task-sampling", TaskSampling)])
def test_choices_come_from_the_enums(option, enum, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", option, "no-such-choice"])
    error = capsys.readouterr().err
    assert "invalid choice" in error and all(e.value in error for e in enum)
    for e in enum:
        build_parser().parse_args(["train", option, e.value])


def test_damaged_runs_are_listed_with_their_reason_not_a_traceback(tmp_path):
    runs = tmp_path / "runs"
    store = RunStore(runs)
    broken_status = store.create_run(tiny_config(name="broken-status"), run_id="broken-status")
    (runs / broken_status / "status.json").write_text("{not json")
    odd_summary = store.create_run(tiny_config(name="odd-summary"), run_id="odd-summary")
    (runs / odd_summary / "summary.json").write_text(json.dumps({"steps": "many"}))
    healthy = store.create_run(tiny_config(name="healthy"), run_id="healthy")

    listed = run_cli("runs", runs_dir=runs)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert "damaged" in lines[broken_status] and "status.json is not valid JSON" in lines[broken_status]
    assert "damaged" in lines[odd_summary] and "summary.json.steps" in lines[odd_summary]
    assert "damaged" not in lines[healthy]
    as_json = {r["id"]: r for r in json.loads(run_cli("runs", "--json", runs_dir=runs).stdout)}
    assert "status.json" in as_json[broken_status]["damaged"] and as_json[healthy]["damaged"] is None

    shown = run_cli("show", broken_status, runs_dir=runs)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    assert "damaged  status.json is not valid JSON" in shown.stdout
    shown = run_cli("show", odd_summary, "--json", runs_dir=runs)
    assert shown.returncode == 0 and "summary.json.steps" in json.loads(shown.stdout)["damaged"]

    queue = run_cli("queue", "--json", runs_dir=runs)
    assert queue.returncode == 0, queue.stderr
    data = json.loads(queue.stdout)
    assert [r["id"] for r in data["runs"]] == [healthy]
    assert {r["id"] for r in data["damaged"]} == {broken_status, odd_summary}
    queue = run_cli("queue", runs_dir=runs)
    assert queue.returncode == 0 and f"{broken_status}" in queue.stdout and "damaged" in queue.stdout

    resumed = run_cli("resume", broken_status, runs_dir=runs)
    assert resumed.returncode == 2 and "damaged" in resumed.stderr and "Traceback" not in resumed.stderr
    deleted = run_cli("delete", broken_status, runs_dir=runs)
    assert deleted.returncode == 0, deleted.stderr
    assert store.run_ids() == [odd_summary, healthy]
    assert store.state(healthy) == RunState.QUEUED
