"""The job runner with real processes: queue order, cancel and resume, kill -9, runner restarts, Ray."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from core import jobs
from core.store import RunStore
from tests.conftest import run_cli, tiny_config


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def long_config(**overrides):
    """Enough steps to be caught in the middle; checkpoints every 10 steps. It trains the backbone:
    a frozen one trains its heads on cached embeddings, 300 steps in well under a second."""
    base = dict(strategy="full_finetune", max_steps=300, eval_every_steps=25, log_every_steps=5, checkpoint_every_steps=10)
    base.update(overrides)
    return tiny_config(**base)


@pytest.fixture
def jstore(tmp_path):
    store = RunStore(tmp_path / "runs")
    yield store
    # Leave no process behind: the runner, then any worker still training.
    info = jobs.runner_info(store)
    if info:
        _kill(info["pid"])
    for record in store.list_runs():
        if record.state == "running" and record.status.get("pid"):
            _kill(record.status["pid"])


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def state(store: RunStore, run_id: str) -> str:
    return store.read_status(run_id).get("state")


def test_submit_returns_at_once_and_three_runs_complete_one_after_another(jstore):
    tick = time.perf_counter()
    ids = [jobs.submit(jstore, tiny_config(seed=i)) for i in range(3)]
    assert time.perf_counter() - tick < 3.0  # submit only writes files and spawns the runner
    assert [state(jstore, i) for i in ids] == ["queued"] * 3 or state(jstore, ids[0]) == "running"
    wait_for(lambda: all(state(jstore, i) == "completed" for i in ids), 180, "three runs to complete")
    spans = sorted((jstore.read_status(i)["started_at"], jstore.read_status(i)["finished_at"]) for i in ids)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 0.5, "with concurrency 1 runs must not overlap"
    assert [s[0] for s in spans] == [jstore.read_status(i)["started_at"] for i in ids], "submission order"


def test_cancel_stops_within_seconds_keeps_a_checkpoint_and_resume_continues_without_gap(jstore):
    run_id = jobs.submit(jstore, long_config())
    wait_for(lambda: (jstore.read_status(run_id).get("progress") or {}).get("step", 0) >= 12, 120, "training to pass step 12")
    tick = time.time()
    jobs.cancel(jstore, run_id)
    wait_for(lambda: state(jstore, run_id) == "stopped", 15, "the run to stop")
    assert time.time() - tick < 15
    stopped_at = jstore.read_status(run_id)["progress"]["step"]
    assert 0 < stopped_at < 300
    assert (jstore.checkpoint_dir(run_id) / "train_state.json").is_file()
    assert (jstore.checkpoint_dir(run_id) / "model.safetensors").is_file()

    assert jobs.resume(jstore, run_id) == "resume"
    wait_for(lambda: state(jstore, run_id) == "completed", 180, "the resumed run to complete")
    records = jstore.read_metrics(run_id)
    windows = [r["step"] for r in records if r["kind"] == "throughput"]
    assert windows == list(range(5, 301, 5)), "one log window every 5 steps, none missing, none repeated"
    evals = [r["step"] for r in records if r["kind"] == "eval" and r["task"] == "topic"]
    assert evals == sorted(set(evals)) and evals[0] == 0 and evals[-1] == 300
    assert stopped_at in evals  # the stop wrote an evaluation at the step it stopped
    summary = jstore.read_summary(run_id)
    assert summary["steps"] == 300 and summary["state"] == "completed"


def test_kill_minus_nine_marks_the_run_failed_with_a_reason(jstore):
    run_id = jobs.submit(jstore, long_config())
    pid = wait_for(lambda: state(jstore, run_id) == "running" and jstore.read_status(run_id).get("pid"), 120, "a pid")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: state(jstore, run_id) == "failed", 20, "the run to be marked failed")
    error = jstore.read_status(run_id)["error"]
    assert "SIGKILL" in error and "resume" in error


def test_a_dead_process_is_found_without_a_runner(jstore):
    """A run whose process vanished is marked failed by any reader (reconcile), not left running."""
    run_id = jstore.create_run(tiny_config(), state="running")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    jstore.update_status(run_id, pid=proc.pid, host=socket.gethostname())
    assert jobs.reconcile(jstore) == [run_id]
    assert state(jstore, run_id) == "failed" and f"pid {proc.pid}" in jstore.read_status(run_id)["error"]


def test_runner_killed_and_restarted_serves_the_queue_and_runs_nothing_twice(jstore):
    ids = [jobs.submit(jstore, tiny_config(seed=i, max_steps=40)) for i in range(3)]
    runner_pid = wait_for(lambda: (jobs.runner_info(jstore) or {}).get("pid"), 30, "the runner")
    wait_for(lambda: state(jstore, ids[0]) == "running", 60, "the first run to start")
    os.kill(runner_pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(runner_pid) or psutil.Process(runner_pid).status() == "zombie", 10, "runner death")
    assert not jobs.runner_alive(jstore)
    assert jobs.ensure_runner(jstore) is True
    assert jobs.ensure_runner(jstore) is False  # only one runner per directory
    wait_for(lambda: all(state(jstore, i) == "completed" for i in ids), 240, "all runs to complete")
    for run_id in ids:
        log = jstore.log_path(run_id).read_text()
        assert log.count("strategy=") == 1, f"{run_id} was started more than once"
        zero_evals = [r for r in jstore.read_metrics(run_id) if r["kind"] == "eval" and r["step"] == 0]
        assert len(zero_evals) == 2  # one per task, once


def test_cancel_a_queued_run_drops_it(jstore):
    run_id = jobs.submit(jstore, tiny_config(), start_runner=False)
    assert jobs.cancel(jstore, run_id) == "stopped"
    assert run_id not in jobs.queued_runs(jstore)


def test_sweep_submits_every_strategy_with_a_shared_sweep_id_and_group_key(jstore):
    base = tiny_config(freeze_layers=None, backbone="minilm-l6:2")
    sweep_id, ids = jobs.sweep(jstore, base, strategies=["frozen_backbone", "freeze_lower"], seeds=[0, 1],
                               start_runner=False)
    assert len(ids) == 4
    configs = [jstore.read_config(i) for i in ids]
    assert {c.sweep_id for c in configs} == {sweep_id}
    assert [c.freeze_layers for c in configs if c.strategy == "freeze_lower"] == [1, 1]  # half of 2 layers
    groups = {}
    for c in configs:
        groups.setdefault(c.group_key(), set()).add(c.seed)
    assert sorted(map(sorted, groups.values())) == [[0, 1], [0, 1]]


def test_cli_submit_queue_cancel(tmp_path):
    runs = tmp_path / "runs"
    out = run_cli("submit", "--strategy", "frozen_backbone", "--backbone", "minilm-l6:1", "--max-steps", "100000",
                  "--max-train-examples", "32", "--max-eval-examples", "20", runs_dir=runs)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]
    store = RunStore(runs)
    try:
        wait_for(lambda: state(store, run_id) == "running", 60, "the run to start")
        queue = run_cli("queue", runs_dir=runs)
        assert run_id in queue.stdout and "running" in queue.stdout
        cancel = run_cli("cancel", run_id, "--wait", "20", runs_dir=runs)
        assert cancel.returncode == 0 and "stopped" in cancel.stdout
    finally:
        info = jobs.runner_info(store)
        if info:
            _kill(info["pid"])


@pytest.mark.skipif(shutil.which("ray") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ray")),
                    reason="ray is in requirements-dev.txt")
def test_ray_backend_runs_two_runs_on_a_local_ray_instance(jstore):
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run(
        [ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--object-store-memory=100000000", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={ray_tmp}"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        address = f"127.0.0.1:{port}"
        ids = [jobs.submit(jstore, tiny_config(seed=i), backend="ray", address=address) for i in range(2)]
        wait_for(lambda: all(state(jstore, i) in ("completed", "failed") for i in ids), 300, "ray runs")
        for run_id in ids:
            status = jstore.read_status(run_id)
            assert status["state"] == "completed", status.get("error")
            assert status["backend"] == "ray"
            assert jstore.read_summary(run_id)["tasks"]["topic"]["test_accuracy"] >= 0
    finally:
        info = jobs.runner_info(jstore)
        if info:
            _kill(info["pid"])
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_separate_models_sweep_gives_three_comparable_runs(jstore):
    from core.analysis import separate_models_table
    from core.train import train_run

    sweep_id, ids = jobs.sweep(jstore, tiny_config(), strategies=["frozen_backbone"], seeds=[0],
                               separate_models=True, start_runner=False)
    assert len(ids) == 3
    configs = [jstore.read_config(i) for i in ids]
    assert [len(c.tasks) for c in configs] == [2, 1, 1]
    assert [c.tasks[0].name for c in configs[1:]] == ["topic", "sentiment"]
    assert len({c.separate_of for c in configs}) == 1
    for run_id in ids:
        assert train_run(jstore, run_id) == "completed"
    table = separate_models_table(jstore.list_runs())
    assert len(table) == 1
    row = table.iloc[0]
    for task in ("topic", "sentiment"):
        assert 0 <= row[f"{task} acc (multi-task)"] <= 1 and 0 <= row[f"{task} acc (alone)"] <= 1
    # Two single-task models carry two backbones: nearly twice the parameters to serve.
    assert row["params to serve (separate)"] > 1.9 * row["params to serve (multi-task)"] * 0.99
    assert set(jstore.read_summary(ids[1])["tasks"]) == {"topic"}
