"""Background jobs, as the CLI and the dashboard use them: submit, sweep, cancel, resume, and queue queries.

* ``submit`` checks what can be known before training (``check_runnable``: the config, its values
  against the backbone, the datasets, the run it starts from), writes a run folder in state queued and
  makes sure a runner serves the directory; it returns at once. ``sweep`` does the same for a grid of configs sharing one sweep id.
* ``cancel`` drops a queued run, or asks a running one to stop: the stop flag is checked every step,
  then SIGTERM, then SIGKILL after a grace period each (one path, core/supervise.py).
* ``resume`` queues a stopped or failed run to continue from its last checkpoint.

Where the work is done: core/sweeps.py expands grids, core/runner.py is the runner process and its
queue, core/supervise.py watches training processes and escalates stops, core/ray_backend.py runs on
Ray. This module only ties them together; the names below are its public surface.
"""

from __future__ import annotations

import functools
import time

from core.config import RunConfig, check_against_backbone
from core.errors import JobError, TransitionError
from core.records import RecordError, RunState, RunStatus
from core.runner import (
    Runner,
    ensure_runner,
    get_concurrency,
    queued_runs,
    runner_alive,
    runner_info,
    set_concurrency,
)
from core.store import RunStore
from core.supervise import DEFAULT_GRACE_SECONDS, process_alive, reconcile, supervise_stop
from core.sweeps import expand_sweep, new_sweep_id, sweep_run_id

__all__ = [
    "BACKENDS",
    "Runner",
    "cancel",
    "check_runnable",
    "runnable_warnings",
    "ensure_runner",
    "get_concurrency",
    "process_alive",
    "queued_runs",
    "reconcile",
    "resume",
    "runner_alive",
    "runner_info",
    "set_concurrency",
    "submit",
    "sweep",
]

BACKENDS = ("local", "ray")
CANCEL_POLL_SECONDS = 0.2


def submit(
    store: RunStore,
    cfg: RunConfig,
    *,
    backend: str = "local",
    address: str | None = None,
    start_runner: bool = True,
    run_id: str | None = None,
) -> str:
    """Queue one run; returns its id at once (a runner trains it)."""
    if backend not in BACKENDS:
        raise JobError(f"backend={backend!r}: choose {' or '.join(BACKENDS)}.")
    check_runnable(store, cfg)
    return _queue(store, cfg, backend=backend, address=address, start_runner=start_runner, run_id=run_id)


def check_runnable(store: RunStore, cfg: RunConfig) -> RunConfig:
    """Everything that can be checked before a run is queued, so a mistake is said now, not by a failed run:
    the config, max_length and freeze_layers against the backbone, each dataset (a file exists, an hf: id
    is a hub id), and the run it starts from. Raises the FreezeLabError that names the problem."""
    from core.data import resolve_dataset_kind  # imports pandas: only when something is queued

    cfg.validate()
    check_against_backbone(cfg, _backbone_config(cfg.backbone))
    for task in cfg.tasks:
        resolve_dataset_kind(task.dataset)
    if cfg.init_from:
        store.existing_path(cfg.init_from)
    return cfg


def runnable_warnings(cfg: RunConfig) -> list[str]:
    """What may make a valid run useless, said before it is queued (e.g. 1,000 classes in 1,200 rows)."""
    from core.data import file_class_warning, resolve_dataset_kind

    found = []
    for task in cfg.tasks:
        if resolve_dataset_kind(task.dataset) == "file" and (w := file_class_warning(task.dataset, task.label_column)):
            found.append(f"task {task.name}: {w}")
    return found


@functools.lru_cache(maxsize=32)
def _backbone_config(spec: str):
    from core.backbones import load_backbone_config  # imports transformers; reads one small JSON file

    return load_backbone_config(spec)


def _queue(
    store: RunStore, cfg: RunConfig, *, backend: str, address: str | None, start_runner: bool, run_id: str | None
) -> str:
    run_id = store.create_run(cfg, run_id=run_id, backend=backend, ray_address=address, queued_at=time.time())
    if start_runner:
        ensure_runner(store)
    return run_id


def sweep(
    store: RunStore,
    base: RunConfig,
    *,
    strategies: list[str],
    seeds: list[int],
    backbones: list[str] | None = None,
    freeze_layers: list[int] | None = None,
    backend: str = "local",
    address: str | None = None,
    start_runner: bool = True,
    separate_models: bool = False,
    vary: dict[str, list] | None = None,
) -> tuple[str, list[str]]:
    """Queue strategies x seeds (x backbones x freeze depths x ``vary`` values) sharing one sweep id
    (see core/sweeps.py).

    Every config is validated before any run is queued. Returns the sweep id and the run ids."""
    sweep_id = new_sweep_id()
    configs = expand_sweep(
        base,
        sweep_id=sweep_id,
        strategies=strategies,
        seeds=seeds,
        backbones=backbones,
        freeze_layers=freeze_layers,
        separate_models=separate_models,
        vary=vary,
    )
    if backend not in BACKENDS:
        raise JobError(f"backend={backend!r}: choose {' or '.join(BACKENDS)}.")
    for cfg in configs:  # all of them before any is queued
        check_runnable(store, cfg)
    run_ids = [
        _queue(store, cfg, backend=backend, address=address, start_runner=False, run_id=sweep_run_id(sweep_id, i, cfg))
        for i, cfg in enumerate(configs)
    ]
    if start_runner:
        ensure_runner(store)
    return sweep_id, run_ids


def _status(store: RunStore, run_id: str, action: str) -> RunStatus:
    try:
        return store.read_status(store.existing_path(run_id).name)
    except RecordError as exc:
        raise JobError(f"run {run_id} cannot be {action}: its folder is damaged ({exc}).") from None


def cancel(
    store: RunStore, run_id: str, *, wait_seconds: float = 0.0, grace_seconds: float = DEFAULT_GRACE_SECONDS
) -> RunState | None:
    """Drop a queued run or stop a running one; returns the state it is in now (None if unreadable).

    ``wait_seconds``: wait that long for a running run to stop, escalating like the runner does."""
    status = _status(store, run_id, "cancelled")
    if status.state == RunState.QUEUED:
        try:
            store.transition(
                run_id,
                RunState.STOPPED,
                expect={RunState.QUEUED},
                finished_at=time.time(),
                note="cancelled before it started",
            )
            return RunState.STOPPED
        except TransitionError:  # a runner started it meanwhile: stop it like any running run
            status = _status(store, run_id, "cancelled")
    if status.state != RunState.RUNNING:
        raise JobError(f"run {run_id} is {status.state}: only queued or running runs can be cancelled.")
    store.request_stop(run_id)
    sent: set = set()
    deadline = time.time() + wait_seconds
    while time.time() < deadline and store.state(run_id) == RunState.RUNNING:
        supervise_stop(store, run_id, grace_seconds, sent)
        time.sleep(CANCEL_POLL_SECONDS)
    return store.state(run_id)


def resume(store: RunStore, run_id: str, start_runner: bool = True) -> str:
    """Queue a stopped or failed run to continue from its last checkpoint (or from the start if none).

    Returns "resume" or "restart"."""
    state = _status(store, run_id, "resumed").state
    if state not in (RunState.STOPPED, RunState.FAILED):
        raise JobError(f"run {run_id} is {state}: only stopped or failed runs can be resumed.")
    has_state = store.has_train_state(run_id)
    if has_state and (problem := store.checkpoint_problem(run_id)):
        raise JobError(
            f"run {run_id} cannot be resumed: its checkpoint is damaged ({problem}). Resuming from it could train "
            f"on a mismatch, so it is refused; delete {store.checkpoint_dir(run_id)} and resume to start it again."
        )
    if not has_state:
        store.clear_results(run_id)  # nothing to continue from: start over, one clean history
    store.clear_stop(run_id)
    store.transition(
        run_id,
        RunState.QUEUED,
        expect={RunState.STOPPED, RunState.FAILED},
        resume=has_state,
        queued_at=time.time(),
        error=None,
        note=None,
    )
    if start_runner:
        ensure_runner(store)
    return "resume" if has_state else "restart"
