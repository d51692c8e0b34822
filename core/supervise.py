"""Supervising training processes: are they alive, what happened to the dead ones, and how a stop escalates.

A run's status names the process that trains it (pid, its start time, host). Any reader can tell from
that whether the process still lives, so a run whose process died (kill -9, out of memory, reboot) is
marked failed with the reason by whoever looks first, runner or not: nothing stays running forever.

Stopping a run is one path, used by the runner and by ``cancel`` alike::

    stop flag (STOP, checked every step)  --grace-->  SIGTERM  --grace-->  SIGKILL

``escalate`` sends each signal at most once, when it is due; a Ray task has no signals and is
force-cancelled when the first one is due.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterable, Mapping

import psutil

from core.errors import TransitionError
from core.records import RecordError, RunState, RunStatus
from core.store import RunStore

DEFAULT_GRACE_SECONDS = 10.0
REQUEUE_AFTER_SECONDS = 15.0  # a run claimed by a dead runner whose worker never reported goes back to the queue


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


def _statuses(store: RunStore, statuses: Mapping[str, RunStatus] | None) -> Iterable[tuple[str, RunStatus]]:
    """Each run's status, from ``statuses`` when the caller already read them; unreadable ones are skipped."""
    if statuses is not None:
        yield from statuses.items()
        return
    for run_id in store.run_ids():
        try:
            yield run_id, store.read_status(run_id)
        except RecordError:  # damaged, or deleted since it was listed: nothing to supervise
            continue


def _local_process(status: RunStatus, host: str) -> bool:
    """A running run whose process lives on this host (not a Ray task)."""
    return status.state == RunState.RUNNING and status.backend != "ray" and (status.host or host) == host


def reconcile(
    store: RunStore, skip: set[str] | None = None, statuses: Mapping[str, RunStatus] | None = None
) -> list[str]:
    """Mark runs whose local training process is gone as failed. Returns their ids.

    ``statuses``: run id -> status already read by the caller (saves reading every file twice)."""
    failed = []
    host = socket.gethostname()
    for run_id, status in _statuses(store, statuses):
        if (skip and run_id in skip) or not _local_process(status, host):
            continue
        try:
            if status.pid is None:
                # Claimed by a runner, worker not reported yet. If that runner is gone and the worker never
                # wrote its pid, the run never started: put it back in the queue rather than fail it.
                if (
                    process_alive(status.started_by_runner, None)
                    or time.time() - (status.updated_at or 0) < REQUEUE_AFTER_SECONDS
                ):
                    continue
                store.transition(
                    run_id,
                    RunState.QUEUED,
                    expect={RunState.RUNNING},
                    note="requeued: its runner died before starting it",
                )
                continue
            if process_alive(status.pid, status.pid_create_time):
                continue
            reason = (
                f"its training process (pid {status.pid}) is gone (killed, out of memory, or the machine restarted)"
            )
            store.transition(
                run_id,
                RunState.FAILED,
                expect={RunState.RUNNING},
                finished_at=time.time(),
                error=f"{reason}; `python -m core resume {run_id}` continues it.",
            )
        except TransitionError:  # it recorded its own end (or was claimed) since we read it
            continue
        failed.append(run_id)
    return failed


def running_elsewhere(store: RunStore, skip: set[str], statuses: Mapping[str, RunStatus] | None = None) -> list[str]:
    """Runs training on this host in a process this runner did not start (they count against concurrency)."""
    host = socket.gethostname()
    return [
        run_id
        for run_id, status in _statuses(store, statuses)
        if run_id not in skip and _local_process(status, host) and process_alive(status.pid, status.pid_create_time)
    ]


def settle(store: RunStore, run_id: str, reason: str, stopped: bool) -> None:
    """After a run's process ended: if it did not record its own end, record it now."""
    if not store.exists(run_id) or store.state(run_id) != RunState.RUNNING:
        return  # deleted, or it recorded its own end (or was already queued again by resume)
    try:
        if stopped:
            store.transition(
                run_id, RunState.STOPPED, expect={RunState.RUNNING}, finished_at=time.time(), error=None, note=reason
            )
            store.clear_stop(run_id)
        else:
            store.transition(
                run_id,
                RunState.FAILED,
                expect={RunState.RUNNING},
                finished_at=time.time(),
                error=f"{reason} before finishing; `python -m core resume {run_id}` continues it.",
            )
    except TransitionError:  # it recorded its own end between our read and our write
        pass


# -- the one escalation path of a stop --------------------------------------------------------------------
def due_signal(waited_seconds: float | None, grace_seconds: float) -> signal.Signals | None:
    """The signal a stop asked ``waited_seconds`` ago calls for: none within one grace period (the run
    stops by itself at its next step), SIGTERM after one, SIGKILL after two."""
    if waited_seconds is None or waited_seconds <= grace_seconds:
        return None
    return signal.SIGKILL if waited_seconds > 2 * grace_seconds else signal.SIGTERM


def escalate(
    store: RunStore,
    run_id: str,
    grace_seconds: float,
    send: Callable[[signal.Signals], None],
    sent: set[signal.Signals],
) -> signal.Signals | None:
    """If the run was asked to stop long enough ago, send the signal now due (each at most once).

    ``send`` delivers a signal to whatever trains the run; ``sent`` remembers what was sent across calls.
    Returns the signal sent now, if any."""
    sig = due_signal(store.stop_requested_seconds_ago(run_id), grace_seconds)
    if sig is None or sig in sent:
        return None
    send(sig)
    sent.add(sig)
    return sig


def signal_pid(pid: int, create_time: float | None) -> Callable[[signal.Signals], None]:
    """A ``send`` for ``escalate`` that signals a process known only by its pid (not our child)."""

    def send(sig: signal.Signals) -> None:
        if process_alive(pid, create_time):  # never signal a pid that was reused by another process
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    return send


def supervise_stop(store: RunStore, run_id: str, grace_seconds: float, sent: set[signal.Signals]) -> None:
    """One look at a run asked to stop, from outside its runner (``cancel --wait``): escalate while its
    process lives, and once it is gone record the stop if the process could not."""
    status = store.read_status(run_id)
    if not process_alive(status.pid, status.pid_create_time):
        if status.state == RunState.RUNNING and status.pid:
            settle(store, run_id, "the training process ended", stopped=True)
        return
    escalate(store, run_id, grace_seconds, signal_pid(status.pid, status.pid_create_time), sent)
