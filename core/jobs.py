"""Background jobs: a queue that lives in the run store, and one runner per runs directory.

* ``submit`` writes a run folder in state ``queued`` and makes sure a runner serves the directory;
  it returns at once. The queue is simply the queued runs, oldest first.
* The runner (``python -m core runner``) holds an exclusive lock on ``<runs>/.runner.lock``, so only
  one serves a directory; it is started detached (its own session) and survives its caller. It runs
  each queued run as a separate OS process (``python -m core _work RUN``), at most ``concurrency`` at
  once, and exits after a while with nothing to do; the next submit starts a new one.
* Runs whose process died (kill -9, out of memory, reboot) are found by pid and process start time
  and marked ``failed`` with the reason; nothing stays ``running`` forever.
* ``cancel`` drops a queued run, or asks a running one to stop (STOP flag, checked every step); the
  runner escalates to SIGTERM, then SIGKILL, after a grace period.
* With ``backend="ray"`` the runner hands the run to Ray as a task that reserves CPUs (or a GPU):
  on a local Ray instance or an existing cluster. The task writes to the same run store.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from core.config import ConfigError, RunConfig
from core.store import RunStore, read_json, write_json_atomic

LOCK_NAME = ".runner.lock"
RUNNER_INFO = ".runner.json"
SETTINGS = ".queue.json"
POLL_SECONDS = 0.5
DEFAULT_GRACE_SECONDS = 10.0
DEFAULT_IDLE_EXIT_SECONDS = 120.0
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class JobError(ValueError):
    pass


# -- submitting ---------------------------------------------------------------------------------------
def submit(
    store: RunStore, cfg: RunConfig, *, backend: str = "local", address: str | None = None,
    start_runner: bool = True, run_id: str | None = None,
) -> str:
    if backend not in ("local", "ray"):
        raise JobError(f"backend={backend!r}: choose local or ray.")
    run_id = store.create_run(cfg, state="queued", run_id=run_id)
    store.update_status(run_id, backend=backend, ray_address=address, queued_at=time.time())
    if start_runner:
        ensure_runner(store)
    return run_id


def sweep(
    store: RunStore, base: RunConfig, *, strategies: list[str], seeds: list[int], backbones: list[str] | None = None,
    freeze_layers: list[int] | None = None, backend: str = "local", address: str | None = None,
    start_runner: bool = True, separate_models: bool = False,
) -> tuple[str, list[str]]:
    """Submit strategies x seeds (x backbones x freeze depths) sharing one sweep id.

    ``separate_models``: next to each two-task run, also one run per task alone with the same
    settings, linked by ``separate_of``, so multi-task can be weighed against separate models."""
    from core.backbones import load_backbone_config
    from core.store import slugify
    from core.strategies import get_strategy

    if not strategies or not seeds:
        raise ConfigError("a sweep needs at least one strategy and one seed.")
    sweep_id = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    configs = []
    for backbone, strategy, seed in itertools.product(backbones or [base.backbone], strategies, seeds):
        depths: list[int | None] = [None]
        if get_strategy(strategy).uses_freeze_layers:
            # No depth given: freeze the bottom half, the middle ground between the two extremes.
            depths = list(freeze_layers or [base.freeze_layers or load_backbone_config(backbone).num_hidden_layers // 2])
        for k in depths:
            d = base.to_dict()
            d.update(strategy=strategy, seed=seed, backbone=backbone, freeze_layers=k, sweep_id=sweep_id)
            label = f"{strategy}{'-k' + str(k) if k is not None else ''}-s{seed}"
            d["name"] = f"{base.name}-{label}" if base.name else label
            single = separate_models and len(base.tasks) == 2 and get_strategy(strategy).frozen_head_task is None
            if single:
                d["separate_of"] = f"{sweep_id}:{label}"
            configs.append(RunConfig.from_dict(d).validate())  # all valid before any is queued
            for task in base.tasks if single else []:
                configs.append(RunConfig.from_dict({**d, "tasks": [task.__dict__], "name": f"{d['name']}-only-{task.name}"}).validate())
    run_ids = []
    for i, cfg in enumerate(configs):
        run_id = f"{sweep_id}-{i:03d}-{slugify(cfg.name or cfg.strategy, 60)}"
        run_ids.append(submit(store, cfg, backend=backend, address=address, start_runner=False, run_id=run_id))
    if start_runner:
        ensure_runner(store)
    return sweep_id, run_ids


# -- the runner process ---------------------------------------------------------------------------------
def runner_alive(store: RunStore) -> bool:
    """True when some process holds the runner lock of this runs directory."""
    store.root.mkdir(parents=True, exist_ok=True)
    with open(store.root / LOCK_NAME, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def ensure_runner(store: RunStore, concurrency: int | None = None) -> bool:
    """Start a detached runner unless one already serves this directory. True if one was started.

    The caller takes the lock and hands the locked file to the child (flock belongs to the open file,
    which the child inherits), so there is no moment in which a second caller could start another.
    """
    if concurrency is not None:
        set_concurrency(store, concurrency)
    store.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(store.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for attempt in range(10):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # Held by a runner, or only probed for a moment by runner_alive(): look again shortly.
                info = read_json(store.root / RUNNER_INFO) or {}
                if attempt == 9 or time.time() - info.get("heartbeat", 0) < 5:
                    return False
                time.sleep(0.05)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        with open(store.root / "runner.log", "a") as log:
            subprocess.Popen(
                [sys.executable, "-m", "core", "--runs-dir", str(store.root.resolve()), "runner", "--lock-fd", str(fd)],
                cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                pass_fds=(fd,),
            )
        return True
    finally:
        os.close(fd)  # the child's copy keeps the lock


def set_concurrency(store: RunStore, concurrency: int) -> None:
    if not 1 <= concurrency <= 64:
        raise ConfigError(f"concurrency={concurrency}: use 1 to 64 runs at once (1 suits a 2-core CPU).")
    write_json_atomic(store.root / SETTINGS, {"concurrency": concurrency})


def get_concurrency(store: RunStore) -> int:
    env = os.environ.get("FREEZELAB_CONCURRENCY")
    if env and env.isdigit():
        return max(1, int(env))
    return int((read_json(store.root / SETTINGS, {}) or {}).get("concurrency", 1))


@dataclass
class Job:
    run_id: str
    started: float
    proc: subprocess.Popen | None = None
    ray_ref: object | None = None
    signalled: set = field(default_factory=set)


class Runner:
    def __init__(self, store: RunStore, idle_exit_seconds: float = DEFAULT_IDLE_EXIT_SECONDS,
                 grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
        self.store, self.idle_exit_seconds, self.grace_seconds = store, idle_exit_seconds, grace_seconds
        self.jobs: dict[str, Job] = {}
        self._ray_ready: str | None = None

    def serve(self, lock_fd: int | None = None) -> int:
        """Serve the queue until idle. ``lock_fd``: a lock already taken for us by ensure_runner."""
        self.store.root.mkdir(parents=True, exist_ok=True)
        if lock_fd is None:
            lock_fd = os.open(self.store.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a no-op on a lock we already hold
        except BlockingIOError:
            return 0  # another runner serves this directory
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        idle_since = time.time()
        try:
            while True:
                self.tick()
                if self.jobs or queued_runs(self.store):
                    idle_since = time.time()
                elif time.time() - idle_since > self.idle_exit_seconds:
                    return 0
                time.sleep(POLL_SECONDS)
        finally:
            (self.store.root / RUNNER_INFO).unlink(missing_ok=True)

    def tick(self) -> None:
        write_json_atomic(self.store.root / RUNNER_INFO, {
            "pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time(),
            "concurrency": get_concurrency(self.store), "running": sorted(self.jobs),
        })
        self._reap()
        reconcile(self.store, skip=set(self.jobs))
        orphans = running_elsewhere(self.store, skip=set(self.jobs))  # e.g. workers of a runner that was killed
        for job in list(self.jobs.values()):
            self._escalate(job)
        for run_id in queued_runs(self.store):
            if run_id in self.jobs:  # resumed before its previous process was reaped: next tick
                continue
            status = self.store.read_status(run_id)
            if self.store.stop_requested(run_id):  # cancelled while queued
                self.store.update_status(run_id, state="stopped", finished_at=time.time(), error=None)
                self.store.clear_stop(run_id)
                continue
            local_running = sum(1 for j in self.jobs.values() if j.proc is not None) + len(orphans)
            if status.get("backend") == "ray":
                self._start_ray(run_id, status)
            elif local_running < get_concurrency(self.store):
                self._start_local(run_id, bool(status.get("resume")))

    def _start_local(self, run_id: str, resume: bool) -> None:
        cmd = [sys.executable, "-m", "core", "--runs-dir", str(self.store.root.resolve()), "_work", run_id]
        if resume:
            cmd.append("--resume")
        self.store.update_status(run_id, state="running", pid=None, started_by_runner=os.getpid())
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(self.store.path(run_id) / "worker.err", "a"))  # noqa: SIM115
        self.jobs[run_id] = Job(run_id, time.time(), proc=proc)

    def _start_ray(self, run_id: str, status: dict) -> None:
        import ray

        address = status.get("ray_address") or None
        if self._ray_ready != (address or "local"):
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False,
                     runtime_env={"py_modules": [str(PROJECT_ROOT / "core")]})
            self._ray_ready = address or "local"
        cfg = self.store.read_config(run_id)
        resources = {"num_gpus": 1} if cfg.device == "cuda" else {"num_cpus": int(os.environ.get("FREEZELAB_RAY_CPUS", "1"))}
        task = ray.remote(max_retries=0, **resources)(ray_train)
        self.store.update_status(run_id, state="running", pid=None, started_by_runner=os.getpid())
        ref = task.remote(str(self.store.root.resolve()), run_id, bool(status.get("resume")))
        self.jobs[run_id] = Job(run_id, time.time(), ray_ref=ref)

    def _reap(self) -> None:
        for run_id, job in list(self.jobs.items()):
            if job.proc is not None:
                code = job.proc.poll()
                if code is None:
                    continue
                reason = f"the training process exited with code {code}" if code >= 0 else \
                    f"the training process was killed by {signal.Signals(-code).name}"
            else:
                import ray

                done, _ = ray.wait([job.ray_ref], timeout=0)
                if not done:
                    continue
                try:
                    ray.get(done[0])
                    reason = "the Ray task ended"
                except Exception as exc:  # noqa: BLE001 - any task failure becomes the run's error
                    reason = f"the Ray task failed: {str(exc).splitlines()[0][:300]}"
            del self.jobs[run_id]
            _settle(self.store, run_id, reason, stopped=self.store.stop_requested(run_id))

    def _escalate(self, job: Job) -> None:
        """A stop asked more than a grace period ago and still running: SIGTERM, then SIGKILL."""
        flag = self.store.path(job.run_id) / "STOP"
        if not flag.exists():
            return
        waited = time.time() - flag.stat().st_mtime
        if job.ray_ref is not None:
            if waited > self.grace_seconds and "kill" not in job.signalled:
                import ray

                ray.cancel(job.ray_ref, force=True)
                job.signalled.add("kill")
            return
        if waited > 2 * self.grace_seconds and "kill" not in job.signalled:
            job.proc.kill()
            job.signalled.add("kill")
        elif waited > self.grace_seconds and "term" not in job.signalled:
            job.proc.terminate()
            job.signalled.add("term")


def ray_train(runs_dir: str, run_id: str, resume: bool) -> str:
    """The body of a Ray task: the same engine, writing to the same run store."""
    from core.train import train_run

    return train_run(RunStore(runs_dir), run_id, resume=resume)


def _settle(store: RunStore, run_id: str, reason: str, stopped: bool) -> None:
    """After a run's process ended: if it did not record its own end, record it now."""
    if not store.exists(run_id):
        return
    if store.read_status(run_id).get("state") != "running":
        return  # the run recorded its own end (or was already queued again by resume)
    if stopped:
        store.update_status(run_id, state="stopped", finished_at=time.time(), error=None, note=reason)
        store.clear_stop(run_id)
    else:
        store.update_status(run_id, state="failed", finished_at=time.time(),
                            error=f"{reason} before finishing; `python -m core resume {run_id}` continues it.")


# -- queries and reconciliation ------------------------------------------------------------------------
def queued_runs(store: RunStore) -> list[str]:
    queued = []
    for run_id in store.run_ids():
        status = store.read_status(run_id)
        if status.get("state") == "queued":
            queued.append((status.get("queued_at") or status.get("created_at") or 0, run_id))
    return [run_id for _, run_id in sorted(queued)]


def process_alive(pid: int | None, create_time: float | None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # The pid may have been reused by another process since: compare start times.
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def reconcile(store: RunStore, skip: set[str] | None = None, statuses: dict[str, dict] | None = None) -> list[str]:
    """Mark runs whose local training process is gone as failed. Returns their ids.

    ``statuses``: run id -> status.json already read by the caller (saves reading every file twice)."""
    failed = []
    host = socket.gethostname()
    for run_id in statuses if statuses is not None else store.run_ids():
        if skip and run_id in skip:
            continue
        status = statuses[run_id] if statuses is not None else store.read_status(run_id)
        if status.get("state") != "running" or status.get("host", host) != host or status.get("backend") == "ray":
            continue
        pid = status.get("pid")
        if pid is None:
            # Claimed by a runner, worker not reported yet. If that runner is gone and the worker never
            # wrote its pid, the run never started: put it back in the queue rather than fail it.
            if process_alive(status.get("started_by_runner"), None) or time.time() - status.get("updated_at", 0) < 15:
                continue
            store.update_status(run_id, state="queued", note="requeued: its runner died before starting it")
            continue
        if process_alive(pid, status.get("pid_create_time")):
            continue
        reason = f"its training process (pid {pid}) is gone (killed, out of memory, or the machine restarted)"
        store.update_status(run_id, state="failed", finished_at=time.time(),
                            error=f"{reason}; `python -m core resume {run_id}` continues it.")
        failed.append(run_id)
    return failed


def running_elsewhere(store: RunStore, skip: set[str]) -> list[str]:
    """Runs training on this host in a process this runner did not start (they count against concurrency)."""
    host = socket.gethostname()
    out = []
    for run_id in store.run_ids():
        if run_id in skip:
            continue
        st = store.read_status(run_id)
        if st.get("state") == "running" and st.get("backend") != "ray" and st.get("host", host) == host \
                and process_alive(st.get("pid"), st.get("pid_create_time")):
            out.append(run_id)
    return out


def runner_info(store: RunStore) -> dict | None:
    info = read_json(store.root / RUNNER_INFO)
    return info if info and runner_alive(store) else None


# -- cancel and resume ---------------------------------------------------------------------------------
def cancel(store: RunStore, run_id: str, *, wait_seconds: float = 0.0, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> str:
    """Drop a queued run or stop a running one; returns the state it is in now."""
    status = store.read_status(store.existing_path(run_id).name)
    state = status.get("state")
    if state == "queued":
        store.update_status(run_id, state="stopped", finished_at=time.time(), note="cancelled before it started")
        return "stopped"
    if state != "running":
        raise JobError(f"run {run_id} is {state}: only queued or running runs can be cancelled.")
    store.request_stop(run_id)
    deadline = time.time() + wait_seconds
    while time.time() < deadline:
        if store.read_status(run_id).get("state") != "running":
            break
        _escalate_local(store, run_id, grace_seconds)
        time.sleep(0.2)
    return store.read_status(run_id).get("state", "unknown")


def _escalate_local(store: RunStore, run_id: str, grace_seconds: float) -> None:
    status = store.read_status(run_id)
    flag = store.path(run_id) / "STOP"
    pid = status.get("pid")
    if not flag.exists() or not process_alive(pid, status.get("pid_create_time")):
        if status.get("state") == "running" and pid and not process_alive(pid, status.get("pid_create_time")):
            _settle(store, run_id, "the training process ended", stopped=True)
        return
    waited = time.time() - flag.stat().st_mtime
    if waited > grace_seconds:
        os.kill(pid, signal.SIGKILL if waited > 2 * grace_seconds else signal.SIGTERM)


def resume(store: RunStore, run_id: str, start_runner: bool = True) -> str:
    """Queue a stopped or failed run to continue from its last checkpoint (or from the start if none)."""
    state = store.read_status(store.existing_path(run_id).name).get("state")
    if state not in ("stopped", "failed"):
        raise JobError(f"run {run_id} is {state}: only stopped or failed runs can be resumed.")
    has_state = (store.checkpoint_dir(run_id) / "train_state.json").is_file()
    if not has_state:
        # Nothing to continue from: start over, so the curves hold one clean history.
        (store.path(run_id) / "metrics.jsonl").unlink(missing_ok=True)
        (store.path(run_id) / "summary.json").unlink(missing_ok=True)
    store.clear_stop(run_id)
    store.update_status(run_id, state="queued", resume=has_state, queued_at=time.time(), error=None, note=None)
    if start_runner:
        ensure_runner(store)
    return "resume" if has_state else "restart"
