"""The one set of process helpers the tests share: wait for a run's state, start a runner, kill what a test left.

Tests use real processes (runners, workers, Streamlit); these helpers make sure each one is waited for
with a named reason and none outlives its test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from core import jobs
from core.records import RecordError, RunState
from core.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns something true (which is returned); AssertionError naming ``what``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_for_state(store: RunStore, run_id: str, *states: RunState, timeout: float) -> RunState:
    """Wait until the run is in one of ``states``; returns the state it reached."""
    names = " or ".join(s.value for s in states)
    return wait_for(lambda: (s := store.state(run_id)) in states and s, timeout, f"{run_id} to be {names}")


def wait_for_pid(store: RunStore, run_id: str, timeout: float) -> int:
    """The pid of the worker training the run, once it has reported it."""
    return wait_for(
        lambda: store.state(run_id) == RunState.RUNNING and store.read_status(run_id).pid,
        timeout,
        f"{run_id}'s worker to report its pid",
    )


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def alive(pid: int) -> bool:
    """A process with this pid exists (signal 0; unlike ``gone``, a zombie still counts)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_gone(pid: int, timeout: float) -> None:
    """Wait until ``alive(pid)`` is false; AssertionError after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while alive(pid):
        if time.time() > deadline:
            raise AssertionError(f"worker {pid} did not exit within {timeout:.0f}s")
        time.sleep(0.02)


def wait_running(store: RunStore, run_id: str, pid: int, timeout: float) -> bool:
    """Wait until the worker ``pid`` has made the run running; False if the worker ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status = store.read_status(run_id)
            if status.state == RunState.RUNNING and status.pid == pid:
                return True
        except RecordError:
            pass
        if not alive(pid):
            return False
        time.sleep(0.01)
    raise AssertionError(f"{run_id}: worker {pid} did not start within {timeout:.0f}s")


def start_runner(store: RunStore, *, grace_seconds: float, idle_exit_seconds: float = 30.0) -> subprocess.Popen:
    """A runner serving ``store`` as its own process, with a grace period of the test's choosing
    (``ensure_runner`` starts one with the default grace). It takes the lock itself."""
    store.root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "core", "--runs-dir", str(store.root.resolve()), "runner"]
    cmd += ["--grace", str(grace_seconds), "--idle-exit", str(idle_exit_seconds)]
    with open(store.root / "test-runner.log", "a") as log:  # the child keeps its own copy
        return subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def kill(pid: int | None) -> None:
    """SIGKILL one process if it still exists."""
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_tree(pid: int | None) -> None:
    """SIGKILL a process and every descendant of it (children are collected before the parent dies)."""
    if not pid:
        return
    try:
        proc = psutil.Process(pid)
        procs = [*proc.children(recursive=True), proc]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def kill_background(store: RunStore) -> None:
    """The runner that serves ``store`` with its workers, then any live training pid a status records."""
    info = jobs.runner_info(store)
    if info:
        kill_tree(info["pid"])
    for record in store.list_runs():
        pid = record.status.pid
        if pid and record.state == RunState.RUNNING and jobs.process_alive(pid, record.status.pid_create_time):
            kill_tree(pid)


def runner_pids(store: RunStore) -> list[int]:
    """Every process started for this runs directory (found by its command line, so none is missed)."""
    root = str(store.root.resolve())
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        if "core" in cmd and root in cmd and p.info["pid"] != os.getpid():
            found.append(p.info["pid"])
    return found


def kill_everything_for(store: RunStore) -> None:
    """Leave nothing behind: the runner, its workers, and any other process started for this runs folder."""
    kill_background(store)
    for pid in runner_pids(store):
        kill_tree(pid)
