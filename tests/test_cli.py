"""The CLI as a user runs it: real subprocesses, a real runs directory."""

from __future__ import annotations

import json

import pytest

from core.strategies import STRATEGIES
from tests.conftest import TINY_CLI_ARGS, run_cli


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
        assert set(topic["probabilities"]) == {"business", "entertainment", "politics", "sport", "tech"} or len(
            topic["probabilities"]
        ) == 5
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
