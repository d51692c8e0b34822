"""Fault injection with real processes: kill -9 at random moments, killed and doubled runners, damaged
run folders, writes that fail. Every case must end in a state that tells the truth, with nothing lost.

The long variant (100 kill points) is ``python -m tests.stress --kills 100``; the counts of this suite are in
README's Reliability section.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from core import checkpoint as ckpt
from core import jobs
from core.errors import CheckpointError, FreezeLabError, JobError
from core.records import Progress, RunState
from core.store import RunStore
from core.train import train_run
from tests.conftest import run_cli
from tests.faultkit import Zygote, check_after_kill, fault_config, kill_series, metrics_problem, wait_gone, wait_running
from tests.processes import ROOT, start_runner, wait_for, wait_for_pid, wait_for_state

KILL_POINTS = 10


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def _weights(store: RunStore, run_id: str) -> dict[str, torch.Tensor]:
    return ckpt.load_weights(store.checkpoint_dir(run_id))


def _train_losses(store: RunStore, run_id: str) -> list[tuple]:
    return [(r["step"], r["task"], r["loss"]) for r in store.read_metrics(run_id) if r["kind"] == "train"]


def _same_weights(store_a: RunStore, a: str, store_b: RunStore, b: str) -> bool:
    wa, wb = _weights(store_a, a), _weights(store_b, b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(zygote, tmp_path_factory):
    """One uninterrupted run of fault_config in a worker, and how long it trained."""
    store = RunStore(tmp_path_factory.mktemp("reference") / "runs")
    run_id = store.create_run(fault_config())
    pid = zygote.start(store, run_id)
    assert wait_running(store, run_id, pid, timeout=120)
    tick = time.time()
    wait_gone(pid, 300)
    status = store.read_status(run_id)
    assert status.state == RunState.COMPLETED, status.error
    return store, run_id, time.time() - tick


# -- issue 13.1: a checkpoint is one unit ---------------------------------------------------------------------
def test_kill_between_weights_and_train_state_resumes_from_a_whole_unit(zygote, reference):
    """The worker dies (SIGKILL) after writing step 8's weights, before step 8's optimizer state: resume must
    continue from step 6's unit and end bit-identical to the uninterrupted run."""
    ref_store, ref_id, _ = reference
    store = ref_store
    run_id = store.create_run(fault_config())
    pid = zygote.start(store, run_id, die_before_train_state_step=8)
    wait_running(store, run_id, pid, timeout=120)
    wait_gone(pid, 120)
    assert check_after_kill(store, run_id, pid) == []
    assert ckpt.read_checkpoint_meta(store.checkpoint_dir(run_id))["step"] == 8  # the newer weights are there
    assert json.loads((store.checkpoint_dir(run_id) / "train_state.json").read_text())["step"] == 6
    assert jobs.resume(store, run_id, start_runner=False) == "resume"
    pid = zygote.start(store, run_id, resume=True)
    wait_running(store, run_id, pid, timeout=120)
    wait_gone(pid, 300)
    assert store.state(run_id) == RunState.COMPLETED, store.read_status(run_id).error
    assert _train_losses(store, run_id) == _train_losses(ref_store, ref_id)
    assert _same_weights(store, run_id, ref_store, ref_id), "resumed weights differ from the uninterrupted run"


def test_a_mismatched_checkpoint_is_refused_with_a_message(store):
    """A checkpoint whose weights and optimizer state disagree (the older layout, interrupted) is not trained on."""
    cfg = fault_config(max_steps=8, checkpoint_every_steps=4)
    run_id = store.create_run(cfg)
    store.request_stop(run_id)
    assert train_run(store, run_id) == RunState.STOPPED  # a resume unit at step 0
    ckpt_dir = store.checkpoint_dir(run_id)
    state = json.loads((ckpt_dir / "train_state.json").read_text())
    state["step"] = 4  # the JSON says step 4, its files hold step 0
    (ckpt_dir / "train_state.json").write_text(json.dumps(state))
    assert "train_state.json is for step 4" in store.checkpoint_problem(run_id)  # the store sees it too
    with pytest.raises(CheckpointError, match="does not match itself .*refused"):
        train_run(store, run_id, resume=True)
    status = store.read_status(run_id)
    assert status.state == RunState.FAILED and "does not match itself" in status.error


# -- kill -9 at random moments ----------------------------------------------------------------------------------
def test_kill_minus_nine_at_random_moments_ends_truthful_and_resumes_to_the_same_result(zygote, reference, tmp_path):
    ref_store, ref_id, seconds = reference
    store = RunStore(tmp_path / "runs")
    report = kill_series(
        zygote, store, lambda: store.create_run(fault_config()), KILL_POINTS, max_delay=seconds * 1.1, seed=13
    )
    print(f"kill points: {report.kills}, delays {report.delays}, phases {report.phases}, runs {len(report.runs)}")
    assert report.failures == []
    assert report.kills == KILL_POINTS and len(set(report.delays)) == KILL_POINTS
    for run_id in report.runs:  # every run finished, with exactly the uninterrupted run's history and weights
        assert store.state(run_id) == RunState.COMPLETED
        assert _train_losses(store, run_id) == _train_losses(ref_store, ref_id)
        assert _same_weights(store, run_id, ref_store, ref_id)
        assert metrics_problem(store, run_id) is None


# -- the runner ---------------------------------------------------------------------------------------------
def test_a_submit_landing_while_the_runner_exits_idle_is_served(jstore, monkeypatch):
    """The runner saw an empty queue and is about to exit; a submit lands in that moment (the runner still
    holds the lock, so the submit starts no other runner). The run must still be served."""
    import core.runner as runner_mod

    runner = runner_mod.Runner(jstore, idle_exit_seconds=0.0)
    started, submitted = [], []
    monkeypatch.setattr(runner, "_start_local", lambda run_id, resume: started.append(run_id) or runner._claim(run_id))
    real_queued = runner_mod.queued_runs

    def queue_then_submit(store, *statuses):
        queue = real_queued(store, *statuses)
        if not queue and not submitted:  # the runner looked, found nothing: a submit lands now
            submitted.append(jobs.submit(jstore, fault_config()))
            assert not jobs.ensure_runner(jstore), "the lock is held: the submit starts no runner of its own"
        return queue

    monkeypatch.setattr(runner_mod, "queued_runs", queue_then_submit)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert runner.serve() == 0
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert submitted and started == submitted, "the run submitted at the idle exit was left with no runner"
    assert not jobs.runner_alive(jstore) and jobs.runner_info(jstore) is None


def _limited_runner(store: RunStore, max_file_bytes: int) -> subprocess.Popen:
    """A runner whose writes of more than ``max_file_bytes`` per file fail (EFBIG, as on a full disk)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, resource.RLIM_INFINITY))

    cmd = [sys.executable, "-m", "core", "--runs-dir", str(store.root.resolve()), "runner", "--idle-exit", "60"]
    store.root.mkdir(parents=True, exist_ok=True)
    log = open(store.root / "test-runner.log", "a")  # noqa: SIM115 - the child keeps its own copy
    try:
        return subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=limit)
    finally:
        log.close()


def test_runner_survives_failing_writes_and_a_run_that_cannot_write_fails_alone(jstore):
    """The runner's own writes fail (file-size limit, like a full disk): it keeps serving. Once writes work
    again, it trains the queue; a run whose metrics file is on a full device (/dev/full) fails with that
    reason, and the run after it completes."""
    import psutil

    full = jstore.create_run(fault_config(name="full-disk"))
    os.symlink("/dev/full", jstore.path(full) / "metrics.jsonl")  # every append: ENOSPC
    fine = jstore.create_run(fault_config(name="fine", max_steps=6))
    jstore.update_status(fine, queued_at=time.time() + 1)  # after `full` in the queue
    runner = _limited_runner(jstore, max_file_bytes=16)
    try:
        time.sleep(2)  # a few ticks in which every heartbeat and status write fails
        assert runner.poll() is None, "the runner died on a failing write"
        assert jstore.state(full) == RunState.QUEUED and jstore.state(fine) == RunState.QUEUED
        psutil.Process(runner.pid).rlimit(psutil.RLIMIT_FSIZE, (psutil.RLIM_INFINITY, psutil.RLIM_INFINITY))
        wait_for_state(jstore, fine, RunState.COMPLETED, RunState.FAILED, timeout=240)
    finally:
        runner.kill()
        runner.wait()
    status = jstore.read_status(full)
    assert status.state == RunState.FAILED and "No space left on device" in status.error, status.error
    assert "metrics.jsonl" in status.error and "Unexpected" not in status.error
    assert jstore.state(fine) == RunState.COMPLETED, jstore.read_status(fine).error
    assert "Traceback" not in (jstore.root / "test-runner.log").read_text()


def test_submit_on_a_full_disk_says_so_and_leaves_no_folder(tmp_path):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16, resource.RLIM_INFINITY))

    runs = tmp_path / "runs"
    runs.mkdir()
    env = {**os.environ, "FREEZELAB_RUNS_DIR": str(runs), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "core", "submit", "--backbone", "minilm-l6:1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, preexec_fn=limit,
    )  # fmt: skip
    assert out.returncode == 2 and "could not write" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert [p.name for p in runs.iterdir() if not p.name.startswith(".")] == [], "no half-made run folder"


def test_runner_and_worker_killed_then_two_runners_restarted_at_once(jstore):
    """kill -9 of the runner and of the worker of a run in flight, then two runners started at the same
    moment: exactly one serves; the killed run is failed with the reason, with a whole checkpoint to resume
    from (resume itself is proven by the kill series above); the queued run trains exactly once."""
    first = jobs.submit(jstore, fault_config(name="in-flight", max_steps=2000), start_runner=False)
    second = jobs.submit(jstore, fault_config(name="queued", max_steps=6), start_runner=False)
    runner = start_runner(jstore, grace_seconds=2)
    pid = wait_for_pid(jstore, first, 120)
    wait_for(lambda: (jstore.read_status(first).progress or Progress()).step >= 5, 120, "a checkpoint or two")
    os.kill(runner.pid, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    runner.wait()
    wait_gone(pid, 10)
    pair = [start_runner(jstore, grace_seconds=2) for _ in range(2)]
    try:
        wait_for(lambda: any(r.poll() is not None for r in pair), 60, "one of the two runners to step aside")
        assert [r.poll() for r in pair].count(None) == 1, "exactly one runner serves"
        assert [r.returncode for r in pair if r.returncode is not None] == [0], "the other one left quietly"
        wait_for_state(jstore, second, RunState.COMPLETED, timeout=240)
        assert [r.poll() for r in pair].count(None) == 1
    finally:
        for r in pair:
            r.kill()
            r.wait()
    assert check_after_kill(jstore, first, pid) == []
    assert jstore.has_train_state(first) and jstore.checkpoint_problem(first) is None
    assert jstore.log_path(second).read_text().count("strategy=") == 1, "the queued run trained once"
    assert jstore.log_path(first).read_text().count("strategy=") == 1, (
        "the killed run was not restarted behind our back"
    )
    assert "Traceback" not in (jstore.root / "test-runner.log").read_text()


# -- a damaged store: each damaged run is shown as damaged with its reason; the rest works ------------------------
def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _unit_file(store: RunStore, run_id: str, key: str):
    """A file of the run's resume unit (``train_state.json`` names them; the older layout had a fixed name)."""
    state = json.loads((store.checkpoint_dir(run_id) / "train_state.json").read_text())
    return store.checkpoint_dir(run_id) / state.get(key, "train_state.safetensors")


DAMAGE = {  # case -> (how to damage a stopped run that has a checkpoint and a resume unit, what the reason says)
    "truncated status.json": (lambda s, r: _truncate(s.path(r) / "status.json"), "status.json is not valid JSON"),
    "empty status.json": (lambda s, r: (s.path(r) / "status.json").write_text(""), "status.json is not valid JSON"),
    "status.json holds a list": (lambda s, r: (s.path(r) / "status.json").write_text("[]"), "not a JSON object"),
    "config.json not JSON": (lambda s, r: _truncate(s.path(r) / "config.json"), "config.json is not a JSON object"),
    "config.json wrong types": (
        lambda s, r: (s.path(r) / "config.json").write_text(json.dumps({"strategy": ["bitfit"], "seed": "x"})),
        "config.json strategy",
    ),
    "weights file missing": (
        lambda s, r: (s.checkpoint_dir(r) / "model.safetensors").unlink(),
        "checkpoint/model.safetensors is missing",
    ),
    "weights file truncated": (
        lambda s, r: _truncate(s.checkpoint_dir(r) / "model.safetensors"),
        "checkpoint/model.safetensors is truncated",
    ),
    "weights file corrupted": (
        lambda s, r: (s.checkpoint_dir(r) / "model.safetensors").write_bytes(os.urandom(4096)),
        "checkpoint/model.safetensors",
    ),
    "optimizer state missing": (lambda s, r: _unit_file(s, r, "tensors_file").unlink(), "is missing"),
    "optimizer state truncated": (lambda s, r: _truncate(_unit_file(s, r, "tensors_file"), 0.9), "truncated"),
    "train_state.json damaged": (
        lambda s, r: (s.checkpoint_dir(r) / "train_state.json").write_text("{"),
        "checkpoint/train_state.json",
    ),
    "tokenizer folder missing": (
        lambda s, r: shutil.rmtree(s.checkpoint_dir(r) / "tokenizer"),
        "checkpoint/tokenizer/ is missing",
    ),
}


@pytest.fixture(scope="module")
def damaged_store(tmp_path_factory):
    """A stopped run (checkpoint and resume unit) copied once per damage, a healthy copy, and a run with a
    half-written metrics line."""
    store = RunStore(tmp_path_factory.mktemp("damaged") / "runs")
    source = store.create_run(fault_config(max_steps=8, checkpoint_every_steps=2), run_id="source")
    store.request_stop(source)
    assert train_run(store, source) == RunState.STOPPED
    ids = {}
    for i, (case, (damage, _)) in enumerate(DAMAGE.items()):
        run_id = f"damaged-{i:02d}"
        shutil.copytree(store.path(source), store.path(run_id))
        damage(store, run_id)
        ids[case] = run_id
    with open(store.path(source) / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "step": 9, "lo')  # a line cut short by a kill
    return store, source, ids


def test_damaged_runs_are_marked_with_their_reason_and_the_rest_works(damaged_store):
    store, source, ids = damaged_store
    records = {r.id: r for r in store.list_runs()}
    assert set(records) == {source, *ids.values()}
    assert records[source].damaged is None and records[source].state == RunState.STOPPED
    assert store.read_metrics(source) and metrics_problem(store, source) is None  # the partial line is skipped
    for case, run_id in ids.items():
        assert records[run_id].damaged and DAMAGE[case][1] in records[run_id].damaged, (case, records[run_id].damaged)
    # a checkpoint that is not whole is not offered for prediction, and refuses with a message when asked
    from core.predict import Predictor

    for case in ("weights file missing", "weights file truncated", "weights file corrupted"):
        assert not store.has_checkpoint(ids[case])
        with pytest.raises(CheckpointError):
            Predictor.from_run(store, ids[case], device="cpu")
    assert store.has_checkpoint(source)


@pytest.mark.parametrize("case", [c for c in DAMAGE if "optimizer" in c or "train_state" in c or "weights" in c])
def test_resume_refuses_a_damaged_checkpoint_with_a_message(damaged_store, case):
    store, _, ids = damaged_store
    run_id = ids[case]
    before = (store.path(run_id) / "status.json").read_text()
    if store.has_train_state(run_id) and store.read_status(run_id).state == RunState.STOPPED:
        with pytest.raises(FreezeLabError, match="cannot be resumed: its checkpoint is damaged"):
            jobs.resume(store, run_id, start_runner=False)
        assert (store.path(run_id) / "status.json").read_text() == before, "nothing changed"


def test_every_command_works_on_a_store_with_damaged_runs(damaged_store, tmp_path):
    store, source, ids = damaged_store
    runs = tmp_path / "runs"
    shutil.copytree(store.root, runs)
    commands = [["runs"], ["runs", "--json"], ["queue"], ["queue", "--json"]]
    commands += [["show", run_id] for run_id in ids.values()] + [["show", source, "--json"]]
    commands += [["predict", ids["weights file truncated"], "a sentence"]]
    commands += [["delete", run_id] for run_id in ids.values()]
    for argv in commands:
        out = run_cli(*argv, runs_dir=runs)
        assert "Traceback" not in out.stderr and out.returncode in (0, 2), (argv, out.stderr)
        if argv[0] != "predict":
            assert out.returncode == 0, (argv, out.stderr)
    assert RunStore(runs).run_ids() == [source], "every damaged run could be deleted"
    assert sorted(RunStore(runs).trashed_run_ids()) == sorted(ids.values()), "and is in the trash"


def test_a_run_folder_deleted_by_hand_while_listed(damaged_store, tmp_path, monkeypatch):
    store, source, _ = damaged_store
    root = tmp_path / "runs"
    shutil.copytree(store.root, root)
    copy = RunStore(root)
    listed = copy.run_ids()
    shutil.rmtree(root / listed[0])  # deleted between the listing and the reading
    monkeypatch.setattr(copy, "run_ids", lambda: listed)
    assert [r.id for r in copy.list_runs()] == listed[1:]
    out = run_cli("show", listed[0], runs_dir=root)
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr


def test_damaged_checkpoints_show_as_damaged_on_the_pages(damaged_store, tmp_path, monkeypatch):
    from tests.dashboard_fixtures import app, no_problem

    store, source, ids = damaged_store
    root = tmp_path / "runs"
    shutil.copytree(store.root, root)
    at = app(monkeypatch, root, "pages/runs.py")
    no_problem(at)
    df = at.dataframe[0].value.set_index("id")
    assert all("damaged" in df.loc[run_id, "state"] for run_id in ids.values())
    for page in ("pages/compare.py", "pages/playground.py"):
        no_problem(app(monkeypatch, root, page))


# -- delete and restore -----------------------------------------------------------------------------------------
def test_delete_never_destroys_an_older_copy_in_the_trash(store):
    run_id = store.create_run(fault_config(), run_id="twice")
    store.update_meta(run_id, notes="first")
    store.delete_run(run_id)
    store.create_run(fault_config(), run_id="twice")
    store.update_meta(run_id, notes="second")
    assert store.delete_run(run_id).name == "twice.deleted-2"
    assert store.trashed_run_ids() == ["twice.deleted-2", "twice"]
    assert store.restore_run("twice") == "twice" and store.read_meta("twice").notes == "second"  # the newest
    assert store.trashed_run_ids() == ["twice"]
    store.delete_run("twice")  # the trash still holds the first: this one is kept beside it, nothing overwritten
    assert store.trashed_run_ids() == ["twice.deleted-2", "twice"]
    assert store.restore_run("twice") == "twice" and store.read_meta("twice").notes == "second"
    with pytest.raises(JobError, match="already exists"):
        store.restore_run("twice")  # the first copy, over the live run: refused
    store.delete_run("twice")
    assert store.restore_run("twice.deleted-2") == "twice"  # a trash entry as the Runs page lists it
    assert store.trashed_run_ids() == ["twice"] and store.read_meta("twice").notes == "second"


def test_delete_of_a_running_run_and_restore_over_a_run_say_why(tmp_path):
    runs = tmp_path / "runs"
    store = RunStore(runs)
    running = store.create_run(fault_config(), run_id="busy")
    store.transition(running, RunState.RUNNING)
    out = run_cli("delete", "busy", runs_dir=runs)
    assert out.returncode == 2 and "cancel it first" in out.stderr and "Traceback" not in out.stderr
    store.create_run(fault_config(), run_id="kept")
    store.delete_run("kept")
    store.create_run(fault_config(), run_id="kept")
    out = run_cli("restore", "kept", runs_dir=runs)
    assert out.returncode == 2 and "already exists" in out.stderr and "Traceback" not in out.stderr
    assert store.exists("busy") and store.exists("kept") and store.trashed_run_ids() == ["kept"]
