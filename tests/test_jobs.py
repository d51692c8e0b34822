"""The job runner with real processes: queue order, cancel and resume, kill -9, runner restarts, the stop
escalation, sweeps, Ray."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from core import jobs
from core.config import ConfigError
from core.records import RunState
from core.store import RunStore
from core.supervise import due_signal
from core.sweeps import expand_sweep
from tests.conftest import run_cli, tiny_config
from tests.processes import gone, kill, start_runner, wait_for, wait_for_pid, wait_for_state

LONG_STEPS = 200


def long_config(**overrides):
    """Enough steps to be caught in the middle; a resumable checkpoint every 30 steps. It trains the
    transformer layer, so every step runs the backbone (a frozen one trains its heads on cached embeddings, 200
    steps in well under a second), but not the 12M-parameter word embeddings, whose AdamW updates and
    checkpoints made a step 5x slower."""
    base = dict(
        strategy="freeze_embeddings",
        max_steps=LONG_STEPS,
        eval_every_steps=20,
        log_every_steps=5,
        checkpoint_every_steps=30,
    )
    base.update(overrides)
    return tiny_config(**base)


def state(store: RunStore, run_id: str) -> RunState | None:
    return store.state(run_id)


def step(store: RunStore, run_id: str) -> int:
    progress = store.read_status(run_id).progress
    return progress.step if progress else 0


def test_submit_returns_at_once_and_three_runs_complete_one_after_another(jstore):
    ids = [jobs.submit(jstore, tiny_config(seed=i)) for i in range(3)]
    # submit only writes files and spawns the runner: it returns before the last run has even started
    assert state(jstore, ids[-1]) == RunState.QUEUED
    assert [state(jstore, i) for i in ids] == [RunState.QUEUED] * 3 or state(jstore, ids[0]) == RunState.RUNNING
    wait_for(lambda: all(state(jstore, i) == RunState.COMPLETED for i in ids), 180, "three runs to complete")
    statuses = [jstore.read_status(i) for i in ids]
    spans = sorted((s.started_at, s.finished_at) for s in statuses)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 0.5, "with concurrency 1 runs must not overlap"
    assert [s[0] for s in spans] == [s.started_at for s in statuses], "submission order"
    cores = len(os.sched_getaffinity(0))
    for i in ids:  # one run at a time gets every core
        assert f"torch_threads={cores}" in jstore.log_path(i).read_text()


def test_two_runs_at_once_share_the_cores(jstore):
    jobs.set_concurrency(jstore, 2)
    ids = [jobs.submit(jstore, tiny_config(seed=i)) for i in range(2)]
    wait_for(lambda: all(state(jstore, i) == RunState.COMPLETED for i in ids), 180, "two runs to complete")
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for i in ids:
        assert f"torch_threads={threads}" in jstore.log_path(i).read_text()


def test_cancel_stops_within_seconds_keeps_a_checkpoint_and_resume_continues_without_gap(jstore):
    run_id = jobs.submit(jstore, long_config())
    wait_for(lambda: step(jstore, run_id) >= 12, 120, "training to pass step 12")
    tick = time.time()
    jobs.cancel(jstore, run_id)
    wait_for_state(jstore, run_id, RunState.STOPPED, timeout=15)
    assert time.time() - tick < 15
    stopped_at = step(jstore, run_id)
    assert 0 < stopped_at < LONG_STEPS
    assert jstore.has_train_state(run_id)
    assert (jstore.checkpoint_dir(run_id) / "model.safetensors").is_file()

    assert jobs.resume(jstore, run_id) == "resume"
    wait_for_state(jstore, run_id, RunState.COMPLETED, timeout=600)
    records = jstore.read_metrics(run_id)
    windows = [r["step"] for r in records if r["kind"] == "throughput"]
    assert windows == list(range(5, LONG_STEPS + 1, 5)), "one log window every 5 steps, none missing, none repeated"
    evals = [r["step"] for r in records if r["kind"] == "eval" and r["task"] == "topic"]
    assert evals == sorted(set(evals)) and evals[0] == 0 and evals[-1] == LONG_STEPS
    assert stopped_at in evals  # the stop wrote an evaluation at the step it stopped
    summary = jstore.read_summary(run_id)
    assert summary.steps == LONG_STEPS and summary.state == RunState.COMPLETED


def test_kill_minus_nine_marks_the_run_failed_with_a_reason(jstore):
    run_id = jobs.submit(jstore, long_config())
    pid = wait_for_pid(jstore, run_id, 120)
    os.kill(pid, signal.SIGKILL)
    wait_for_state(jstore, run_id, RunState.FAILED, timeout=20)
    error = jstore.read_status(run_id).error
    assert "SIGKILL" in error and "resume" in error


def test_a_dead_process_is_found_without_a_runner(jstore):
    """A run whose process vanished is marked failed by any reader (reconcile), not left running."""
    run_id = jstore.create_run(tiny_config())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    jstore.transition(run_id, RunState.RUNNING, pid=proc.pid, host=socket.gethostname())
    assert jobs.reconcile(jstore) == [run_id]
    assert state(jstore, run_id) == RunState.FAILED and f"pid {proc.pid}" in jstore.read_status(run_id).error


def test_runner_killed_and_restarted_serves_the_queue_and_runs_nothing_twice(jstore):
    ids = [jobs.submit(jstore, tiny_config(seed=i, max_steps=40)) for i in range(3)]
    runner_pid = wait_for(lambda: (jobs.runner_info(jstore) or {}).get("pid"), 30, "the runner")
    wait_for_state(jstore, ids[0], RunState.RUNNING, timeout=60)
    os.kill(runner_pid, signal.SIGKILL)
    wait_for(lambda: gone(runner_pid), 10, "runner death")
    assert not jobs.runner_alive(jstore)
    assert jobs.ensure_runner(jstore) is True
    assert jobs.ensure_runner(jstore) is False  # only one runner per directory
    wait_for(lambda: all(state(jstore, i) == RunState.COMPLETED for i in ids), 240, "all runs to complete")
    for run_id in ids:
        log = jstore.log_path(run_id).read_text()
        assert log.count("strategy=") == 1, f"{run_id} was started more than once"
        zero_evals = [r for r in jstore.read_metrics(run_id) if r["kind"] == "eval" and r["step"] == 0]
        assert len(zero_evals) == 2  # one per task, once


def test_a_queued_run_whose_source_run_was_deleted_fails_in_one_step_with_the_reason(jstore):
    """A run queued to start from another run's weights (init_from) waits for it; if that run is deleted, the
    runner fails the queued run straight away, without starting a worker, and says how to fix it."""
    from core.runner import Runner

    source = jstore.create_run(tiny_config(name="source"))
    follower = jstore.create_run(tiny_config(name="follower", init_from=source))
    jstore.delete_run(source)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert Runner(jstore, idle_exit_seconds=0.0).serve() == 0  # nothing it can start: it exits when idle
    finally:
        signal.signal(signal.SIGTERM, handler)
    status = jstore.read_status(follower)
    assert status.state == RunState.FAILED and status.finished_at is not None
    assert source in status.error and "restore it" in status.error
    assert status.pid is None and not jstore.log_path(follower).exists(), "no worker was started"


def test_cancel_a_queued_run_drops_it(jstore):
    run_id = jobs.submit(jstore, tiny_config(), start_runner=False)
    assert jobs.cancel(jstore, run_id) == RunState.STOPPED
    assert run_id not in jobs.queued_runs(jstore)


# -- the one escalation path: stop flag, then SIGTERM, then SIGKILL ---------------------------------------
@pytest.mark.parametrize(
    ("waited", "expected"),
    [(None, None), (0.0, None), (1.0, None), (1.01, signal.SIGTERM), (2.0, signal.SIGTERM), (2.01, signal.SIGKILL)],
)
def test_the_signal_due_after_a_stop_request(waited, expected):
    assert due_signal(waited, grace_seconds=1.0) == expected


STUBBORN_WORKER = """
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
signal.signal(signal.SIGTERM, lambda *_: log.write(f"TERM {time.time()}\\n"))
log.write("ready\\n")
while True:
    time.sleep(0.05)
"""


def test_cancel_escalates_a_worker_that_ignores_the_stop_flag_to_sigterm_then_sigkill(jstore, tmp_path):
    """A worker that neither checks the flag nor ends on SIGTERM: cancel sends SIGTERM once after one
    grace period, SIGKILL after two, then records the run as stopped."""
    signals = tmp_path / "signals.log"
    worker = subprocess.Popen([sys.executable, "-c", STUBBORN_WORKER, str(signals)])
    try:
        wait_for(lambda: signals.is_file() and "ready" in signals.read_text(), 30, "the stubborn worker")
        run_id = jstore.create_run(tiny_config())
        jstore.transition(
            run_id,
            RunState.RUNNING,
            pid=worker.pid,
            pid_create_time=psutil.Process(worker.pid).create_time(),
            host=socket.gethostname(),
        )
        tick = time.time()
        assert jobs.cancel(jstore, run_id, wait_seconds=20, grace_seconds=0.5) == RunState.STOPPED
        took = time.time() - tick
        assert worker.wait(timeout=5) == -signal.SIGKILL
    finally:
        kill(worker.pid)
        worker.wait()
    terms = [float(line.split()[1]) for line in signals.read_text().splitlines() if line.startswith("TERM")]
    assert len(terms) == 1, "SIGTERM is sent once"
    assert terms[0] - tick >= 0.5 - 0.05, "not before one grace period"
    assert 1.0 - 0.05 <= took < 5, "SIGKILL after two grace periods"
    status = jstore.read_status(run_id)
    assert status.note == "the training process ended" and status.error is None
    assert not jstore.stop_requested(run_id)


def _pending(pid: int, sig: signal.Signals) -> bool:
    """The signal is pending for ``pid`` (delivered to a stopped process, not yet handled)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return False
    masks = [int(line.split()[1], 16) for line in lines if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask >> (sig - 1) & 1 for mask in masks)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads pending signals from /proc (Linux)")
def test_the_runner_escalates_a_hung_worker_to_sigterm_then_sigkill(jstore):
    """A real worker, frozen with SIGSTOP, cannot see the flag nor handle SIGTERM (it stays pending):
    the runner sends SIGTERM after one grace period, SIGKILL after two, and records the run as stopped."""
    grace = 2.0  # long enough for this test to see SIGTERM pending before SIGKILL lands, even on a busy machine
    runner = start_runner(jstore, grace_seconds=grace)
    try:
        run_id = jobs.submit(jstore, long_config(), start_runner=False)
        pid = wait_for_pid(jstore, run_id, 120)
        os.kill(pid, signal.SIGSTOP)
        tick = time.time()
        assert jobs.cancel(jstore, run_id) == RunState.RUNNING  # the flag only: the runner escalates
        # Pending on a live process: SIGTERM came first, and SIGKILL had not come yet.
        term_at = wait_for(lambda: _pending(pid, signal.SIGTERM) and time.time(), 10, "SIGTERM", interval=0.02)
        wait_for_state(jstore, run_id, RunState.STOPPED, timeout=10)
        status = jstore.read_status(run_id)
    finally:
        runner.kill()
        runner.wait()
    assert gone(pid)
    assert term_at - tick >= grace - 0.05
    assert status.note == "the training process was killed by SIGKILL"
    assert status.finished_at - tick >= 2 * grace - 0.05
    assert not jstore.stop_requested(run_id)


# -- sweeps ----------------------------------------------------------------------------------------------
def test_sweep_expansion_is_a_pure_function_of_the_grid(store):
    base = tiny_config(backbone="minilm-l6:2", name="grid")
    before = base.to_dict()
    grid = dict(
        strategies=["frozen_backbone", "freeze_lower", "freeze_head_a"],
        seeds=[0, 1, 2],
        backbones=["minilm-l6:1", "minilm-l6:2"],
        freeze_layers=[0, 1],
        separate_models=True,
    )
    configs = expand_sweep(base, sweep_id="sweep-x", **grid)
    # Per backbone and seed: frozen_backbone with its two single-task partners (3), freeze_lower at two
    # depths with partners (6), freeze_head_a alone (a frozen head has no single-task partner: 1).
    assert len(configs) == 2 * 3 * (3 + 6 + 1) == 60
    assert Counter(c.strategy for c in configs) == {"frozen_backbone": 18, "freeze_lower": 36, "freeze_head_a": 6}
    assert Counter(c.backbone for c in configs) == {"minilm-l6:1": 30, "minilm-l6:2": 30}
    assert Counter(c.freeze_layers for c in configs if c.strategy == "freeze_lower") == {0: 18, 1: 18}
    assert {c.sweep_id for c in configs} == {"sweep-x"}
    assert len({(c.backbone, c.name) for c in configs}) == 60, "each run of a backbone has its own name"
    assert configs[0].name == "grid-frozen_backbone-s0"
    partners = [c for c in configs if len(c.tasks) == 1]
    assert len(partners) == 2 * 3 * 3 * 2
    multi = {c.separate_of: c for c in configs if len(c.tasks) == 2 and c.separate_of}
    for p in partners:
        assert p.name == f"{multi[p.separate_of].name}-only-{p.tasks[0].name}"
        assert p.tasks[0] == next(t for t in base.tasks if t.name == p.tasks[0].name)
    # Pure: the base is untouched, nothing is shared with it, the same grid gives the same configs.
    assert base.to_dict() == before
    assert all(t is not b for c in configs for t in c.tasks for b in base.tasks)
    assert [c.to_dict() for c in expand_sweep(base, sweep_id="sweep-x", **grid)] == [c.to_dict() for c in configs]
    assert store.run_ids() == [] and not store.root.exists()


def test_an_invalid_sweep_queues_nothing(store):
    with pytest.raises(ConfigError, match="freeze_layers=-1"):
        jobs.sweep(
            store,
            tiny_config(),
            strategies=["frozen_backbone", "freeze_lower"],
            seeds=[0],
            freeze_layers=[1, -1],
            start_runner=False,
        )
    assert store.run_ids() == []


def test_sweep_submits_every_strategy_with_a_shared_sweep_id_and_group_key(jstore):
    base = tiny_config(freeze_layers=None, backbone="minilm-l6:2")
    sweep_id, ids = jobs.sweep(
        jstore, base, strategies=["frozen_backbone", "freeze_lower"], seeds=[0, 1], start_runner=False
    )
    assert len(ids) == 4
    assert [state(jstore, i) for i in ids] == [RunState.QUEUED] * 4
    configs = [jstore.read_config(i) for i in ids]
    assert {c.sweep_id for c in configs} == {sweep_id}
    assert [c.freeze_layers for c in configs if c.strategy == "freeze_lower"] == [1, 1]  # half of 2 layers
    groups = {}
    for c in configs:
        groups.setdefault(c.group_key(), set()).add(c.seed)
    assert sorted(map(sorted, groups.values())) == [[0, 1], [0, 1]]


def test_cli_submit_queue_cancel(jstore):
    runs = jstore.root
    out = run_cli(
        "submit",
        "--strategy",
        "frozen_backbone",
        "--backbone",
        "minilm-l6:1",
        "--max-steps",
        "100000",
        "--max-train-examples",
        "32",
        "--max-eval-examples",
        "20",
        runs_dir=runs,
    )
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]
    wait_for_state(jstore, run_id, RunState.RUNNING, timeout=60)
    queue = run_cli("queue", runs_dir=runs)
    assert run_id in queue.stdout and "running" in queue.stdout
    cancel = run_cli("cancel", run_id, "--wait", "20", runs_dir=runs)
    assert cancel.returncode == 0 and "stopped" in cancel.stdout


@pytest.mark.skipif(
    shutil.which("ray") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ray")),
    reason="ray is in requirements-dev.txt",
)
def test_ray_backend_runs_two_runs_on_a_local_ray_instance(jstore):
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run(
        [
            ray_bin,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--object-store-memory=100000000",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={ray_tmp}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        address = f"127.0.0.1:{port}"
        ids = [jobs.submit(jstore, tiny_config(seed=i), backend="ray", address=address) for i in range(2)]
        wait_for(lambda: all(state(jstore, i) in (RunState.COMPLETED, RunState.FAILED) for i in ids), 300, "ray runs")
        for run_id in ids:
            status = jstore.read_status(run_id)
            assert status.state == RunState.COMPLETED, status.error
            assert status.backend == "ray"
            assert jstore.read_summary(run_id).test_accuracy("topic") >= 0
    finally:
        info = jobs.runner_info(jstore)
        if info:
            kill(info["pid"])
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_separate_models_sweep_gives_three_comparable_runs(jstore):
    from core.analysis import separate_models_table
    from core.train import train_run

    sweep_id, ids = jobs.sweep(
        jstore, tiny_config(), strategies=["frozen_backbone"], seeds=[0], separate_models=True, start_runner=False
    )
    assert len(ids) == 3
    configs = [jstore.read_config(i) for i in ids]
    assert [len(c.tasks) for c in configs] == [2, 1, 1]
    assert [c.tasks[0].name for c in configs[1:]] == ["topic", "sentiment"]
    assert len({c.separate_of for c in configs}) == 1
    for run_id in ids:
        assert train_run(jstore, run_id) == RunState.COMPLETED
    table = separate_models_table(jstore.list_runs())
    assert len(table) == 1
    row = table.iloc[0]
    for task in ("topic", "sentiment"):
        assert 0 <= row[f"{task} acc (multi-task)"] <= 1 and 0 <= row[f"{task} acc (alone)"] <= 1
    # Two single-task models carry two backbones: nearly twice the parameters to serve.
    assert row["params to serve (separate)"] > 1.9 * row["params to serve (multi-task)"] * 0.99
    assert set(jstore.read_summary(ids[1]).tasks) == {"topic"}
