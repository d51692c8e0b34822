"""The runner: one process per runs directory that trains the queued runs, each in its own OS process.

* It holds an exclusive lock on ``<runs>/.runner.lock``, so only one serves a directory; it is started
  detached (its own session) by ``ensure_runner`` and survives its caller, and it exits after a while
  with nothing to do (the next submit starts a new one). A submit writes its run before it looks for a
  runner, and an idle runner looks at the queue once more after releasing the lock: a submit that
  lands while a runner exits is served by one or the other, never by none.
* A write that fails (disk full, read-only folder) never ends the runner: the tick is retried, and a run
  whose worker cannot be started fails with the reason.
* Every tick it writes a heartbeat (``.runner.json``), reaps the processes that ended, marks runs whose
  process died as failed (core/supervise.py), escalates stops, and starts queued runs: as local worker
  processes (``python -m core _work RUN``), at most ``concurrency`` at once, or as Ray tasks.

The queue is simply the queued runs, oldest first. These root-level files belong to the runner; the
files inside run folders are named only by core/store.py.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConfigError, FreezeLabError, TransitionError
from core.ray_backend import RayBackend
from core.records import RecordError, RunState, RunStatus
from core.store import RunStore, read_json, write_json_atomic
from core.supervise import DEFAULT_GRACE_SECONDS, escalate, reconcile, running_elsewhere, settle

LOCK_FILE = ".runner.lock"
RUNNER_INFO_FILE = ".runner.json"
SETTINGS_FILE = ".queue.json"
RUNNER_LOG_FILE = "runner.log"
POLL_SECONDS = 0.5
HEARTBEAT_FRESH_SECONDS = 5.0
DEFAULT_IDLE_EXIT_SECONDS = 120.0
MAX_CONCURRENCY = 64
PROJECT_ROOT = Path(__file__).resolve().parents[1]


# -- the queue and its settings --------------------------------------------------------------------------
def _queued(store: RunStore, statuses: dict[str, RunStatus] | None = None) -> list[tuple[str, RunStatus]]:
    queued = []
    for run_id, status in (store.read_statuses() if statuses is None else statuses).items():
        if status.state == RunState.QUEUED:
            queued.append((status.queued_at or status.created_at or 0, run_id, status))
    return [(run_id, status) for _, run_id, status in sorted(queued, key=lambda q: q[:2])]


def queued_runs(store: RunStore, statuses: dict[str, RunStatus] | None = None) -> list[str]:
    """The queue: queued runs, oldest first (from ``statuses`` when the caller read them already)."""
    return [run_id for run_id, _ in _queued(store, statuses)]


THREADS_ENV = "FREEZELAB_TORCH_THREADS"  # the torch threads of a worker the runner starts


def set_concurrency(store: RunStore, concurrency: int) -> None:
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"concurrency={concurrency}: use 1 to {MAX_CONCURRENCY} runs at once (1 suits a 2-core CPU).")
    write_json_atomic(store.root / SETTINGS_FILE, {"concurrency": concurrency})


def get_concurrency(store: RunStore) -> int:
    env = os.environ.get("FREEZELAB_CONCURRENCY")
    if env and env.isdigit():
        return max(1, int(env))
    return int((read_json(store.root / SETTINGS_FILE, {}) or {}).get("concurrency", 1))


# -- starting and finding the runner ---------------------------------------------------------------------
def runner_alive(store: RunStore) -> bool:
    """True when some process holds the runner lock of this runs directory."""
    store.root.mkdir(parents=True, exist_ok=True)
    with open(store.root / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def runner_info(store: RunStore) -> dict | None:
    """The live runner's heartbeat (pid, host, concurrency, running runs), or None if none serves."""
    info = read_json(store.root / RUNNER_INFO_FILE)
    return info if info and runner_alive(store) else None


def ensure_runner(store: RunStore, concurrency: int | None = None) -> bool:
    """Start a detached runner unless one already serves this directory. True if one was started.

    The caller takes the lock and hands the locked file to the child (flock belongs to the open file,
    which the child inherits), so there is no moment in which a second caller could start another.
    """
    if concurrency is not None:
        set_concurrency(store, concurrency)
    store.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(store.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for attempt in range(10):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # Held by a runner, or only probed for a moment by runner_alive(): look again shortly.
                info = read_json(store.root / RUNNER_INFO_FILE) or {}
                if attempt == 9 or time.time() - info.get("heartbeat", 0) < HEARTBEAT_FRESH_SECONDS:
                    return False
                time.sleep(0.05)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        }
        with open(store.root / RUNNER_LOG_FILE, "a") as log:
            subprocess.Popen(
                [sys.executable, "-m", "core", "--runs-dir", str(store.root.resolve()), "runner", "--lock-fd", str(fd)],
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                pass_fds=(fd,),
            )
        return True
    finally:
        os.close(fd)  # the child's copy keeps the lock


# -- the runner loop -------------------------------------------------------------------------------------
def log(message: str) -> None:
    """A line in runner.log (the runner's stderr); on a full disk it is dropped, never raised."""
    try:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} runner {os.getpid()}: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass


@dataclass
class Job:
    """A run this runner started: a local worker process or a Ray task."""

    run_id: str
    started: float
    proc: subprocess.Popen | None = None
    ray_ref: object | None = None
    signalled: set[signal.Signals] = field(default_factory=set)

    def send(self, sig: signal.Signals) -> None:
        """Deliver a stop signal. A Ray task has no signals: the first one due force-cancels it."""
        if self.proc is not None:
            self.proc.send_signal(sig)  # a no-op once the process has been reaped
        elif not self.signalled:
            RayBackend.cancel(self.ray_ref)


class Runner:
    def __init__(
        self,
        store: RunStore,
        idle_exit_seconds: float = DEFAULT_IDLE_EXIT_SECONDS,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        self.store, self.idle_exit_seconds, self.grace_seconds = store, idle_exit_seconds, grace_seconds
        self.jobs: dict[str, Job] = {}
        self._status_cache: dict = {}
        self.ray = RayBackend()
        self._serving = False  # holds the lock and owns the heartbeat file

    def serve(self, lock_fd: int | None = None) -> int:
        """Serve the queue until idle. ``lock_fd``: a lock already taken for us by ensure_runner."""
        self.store.root.mkdir(parents=True, exist_ok=True)
        if lock_fd is None:
            lock_fd = os.open(self.store.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a no-op on a lock we already hold
        except BlockingIOError:
            return 0  # another runner serves this directory
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        idle_since = time.time()
        self._serving = True
        try:
            while True:
                self._tick_safely()
                if self.jobs or queued_runs(self.store, self.store.read_statuses(self._status_cache)):
                    idle_since = time.time()
                elif time.time() - idle_since > self.idle_exit_seconds:
                    if self._leave(lock_fd):
                        return 0
                    idle_since = time.time()
                time.sleep(POLL_SECONDS)
        finally:
            if self._serving:  # never remove the heartbeat of a runner that took over
                (self.store.root / RUNNER_INFO_FILE).unlink(missing_ok=True)

    def _leave(self, lock_fd: int) -> bool:
        """Exit idle, or not: after the lock is released, a run queued meanwhile (by a submit that saw the lock
        taken, so started no runner) is served by taking the lock back; if another runner took it, that one
        serves. True: this runner may exit."""
        (self.store.root / RUNNER_INFO_FILE).unlink(missing_ok=True)
        self._serving = False
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        if not queued_runs(self.store):
            return True
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True  # a runner started since serves the queue
        self._serving = True
        self._status_cache.clear()  # read everything afresh
        log("a run was queued as this runner was leaving: serving it")
        return False

    def _tick_safely(self) -> None:
        """One tick; a write that fails (disk full...) or a run folder that vanished ends the tick, not the runner."""
        try:
            self.tick()
        except (OSError, FreezeLabError) as exc:
            log(f"tick interrupted: {exc}")

    def tick(self) -> None:
        concurrency = get_concurrency(self.store)
        heartbeat = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "heartbeat": time.time(),
            "concurrency": concurrency,
            "running": sorted(self.jobs),
        }
        try:
            write_json_atomic(self.store.root / RUNNER_INFO_FILE, heartbeat)
        except OSError as exc:  # the lock still says a runner serves: go on with the tick
            log(f"heartbeat not written: {exc}")
        self._reap()
        # Status files are read only when they changed (the cache): a tick over hundreds of runs is mostly stats.
        reconcile(self.store, skip=set(self.jobs), statuses=self.store.read_statuses(self._status_cache))
        statuses = self.store.read_statuses(self._status_cache)  # as reconcile left them
        orphans = running_elsewhere(self.store, skip=set(self.jobs), statuses=statuses)  # e.g. a killed runner's
        for job in list(self.jobs.values()):
            escalate(self.store, job.run_id, self.grace_seconds, job.send, job.signalled)
        for run_id, status in _queued(self.store, statuses):
            if run_id in self.jobs:  # resumed before its previous process was reaped: next tick
                continue
            if self.store.stop_requested(run_id):  # cancelled while queued
                try:
                    self.store.transition(
                        run_id, RunState.STOPPED, expect={RunState.QUEUED}, finished_at=time.time(), error=None
                    )
                    self.store.clear_stop(run_id)
                except TransitionError:  # it left the queue since we listed it
                    pass
                continue
            local_running = sum(1 for j in self.jobs.values() if j.proc is not None) + len(orphans)
            if status.backend != "ray" and local_running >= concurrency:
                continue  # no free slot (a queued Ray run may still start)
            if not self._source_ready(run_id):  # starts from another run's weights: wait until that one completed
                continue
            try:
                if status.backend == "ray":
                    self._start_ray(run_id, status)
                else:
                    self._start_local(run_id, bool(status.resume))
            except (OSError, FreezeLabError) as exc:  # this run cannot start; the others still may
                self._fail_unstarted(run_id, f"its training could not be started: {exc}")

    def _source_ready(self, run_id: str) -> bool:
        """A run with ``init_from`` waits while its source run is queued, running, stopped or failed (a study may
        resume the source); it fails with the reason if the source is gone."""
        try:
            source = self.store.read_config(run_id).init_from
        except FreezeLabError:
            return True  # the worker reports a bad config itself
        if not source:
            return True
        if not self.store.exists(source):
            try:
                self.store.transition(
                    run_id, RunState.FAILED, expect={RunState.QUEUED}, finished_at=time.time(),
                    error=f"it starts from run {source}, which no longer exists; restore it or queue a new run.",
                )  # fmt: skip
            except TransitionError:
                pass
            return False
        return self.store.state(source) == RunState.COMPLETED

    def _claim(self, run_id: str) -> bool:
        """queued -> running, ours; False if the run left the queue since it was listed (cancelled)."""
        try:
            self.store.transition(
                run_id, RunState.RUNNING, expect={RunState.QUEUED}, pid=None, started_by_runner=os.getpid()
            )
            return True
        except TransitionError:
            return False

    def _fail_unstarted(self, run_id: str, reason: str) -> None:
        """A run this runner claimed (or tried to) but could not start: failed, with the reason, if it is ours."""
        log(f"{run_id}: {reason}")
        try:
            status = self.store.read_status(run_id)
            if status.state == RunState.RUNNING and status.pid is None and status.started_by_runner == os.getpid():
                self.store.transition(
                    run_id,
                    RunState.FAILED,
                    expect={RunState.RUNNING},
                    finished_at=time.time(),
                    error=f"{reason}; `python -m core resume {run_id}` tries again.",
                )
        except (OSError, FreezeLabError, RecordError) as exc:  # nothing can be written now: reconcile will
            log(f"{run_id}: could not record that: {exc}")

    def _start_local(self, run_id: str, resume: bool) -> None:
        cmd = [sys.executable, "-m", "core", "--runs-dir", str(self.store.root.resolve()), "_work", run_id]
        if resume:
            cmd.append("--resume")
        if not self._claim(run_id):
            return
        # The cores are shared out: two runs at once on two cores train on one thread each, not on two each.
        threads = max(1, len(os.sched_getaffinity(0)) // get_concurrency(self.store))
        env = {**os.environ, THREADS_ENV: str(threads)}
        with open(self.store.worker_err_path(run_id), "a") as err:  # the child keeps its own copy
            proc = subprocess.Popen(
                cmd, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        self.jobs[run_id] = Job(run_id, time.time(), proc=proc)

    def _start_ray(self, run_id: str, status: RunStatus) -> None:
        self.ray.connect(status.ray_address or None)
        device = self.store.read_config(run_id).device
        if not self._claim(run_id):
            return
        ref = self.ray.submit(self.store, run_id, device, bool(status.resume))
        self.jobs[run_id] = Job(run_id, time.time(), ray_ref=ref)

    def _reap(self) -> None:
        for run_id, job in list(self.jobs.items()):
            if job.proc is not None:
                code = job.proc.poll()
                if code is None:
                    continue
                reason = (
                    f"the training process exited with code {code}"
                    if code >= 0
                    else f"the training process was killed by {signal.Signals(-code).name}"
                )
            else:
                reason = self.ray.finished(job.ray_ref)
                if reason is None:
                    continue
            del self.jobs[run_id]
            settle(self.store, run_id, reason, stopped=self.store.stop_requested(run_id))
