"""Runs as Ray tasks: on a local Ray instance or an existing cluster, writing to the same run store.

Each run becomes one task that reserves 1 CPU (``FREEZELAB_RAY_CPUS``) or, for ``device=cuda``, a GPU.
The ``core`` package travels with the task (``py_modules``); the runs folder must be one path every node
can read and write. Ray is imported only here, and only when a Ray run is started.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.config import Device
from core.store import RunStore

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def ray_train(runs_dir: str, run_id: str, resume: bool) -> str:
    """The body of a Ray task: the same engine, writing to the same run store."""
    from core.train import train_run

    return train_run(RunStore(runs_dir), run_id, resume=resume)


class RayBackend:
    """Starts, polls and cancels the Ray tasks of one runner (which connects to Ray once per address)."""

    def __init__(self) -> None:
        self._connected: str | None = None

    def connect(self, address: str | None) -> None:
        """Connect to Ray at ``address`` (None: start a local instance), once per address."""
        import ray

        if self._connected != (address or "local"):
            ray.init(
                address=address,
                ignore_reinit_error=True,
                log_to_driver=False,
                include_dashboard=False,
                runtime_env={"py_modules": [str(PROJECT_ROOT / "core")]},
            )
            self._connected = address or "local"

    @staticmethod
    def submit(store: RunStore, run_id: str, device: str, resume: bool):
        """Hand the run to Ray (after ``connect``); returns the task's reference."""
        import ray

        resources = (
            {"num_gpus": 1} if device == Device.CUDA else {"num_cpus": int(os.environ.get("FREEZELAB_RAY_CPUS", "1"))}
        )
        task = ray.remote(max_retries=0, **resources)(ray_train)
        return task.remote(str(store.root.resolve()), run_id, resume)

    @staticmethod
    def finished(ref) -> str | None:
        """None while the task runs; once it ended, how (the reason a run that did not record its end gets)."""
        import ray

        done, _ = ray.wait([ref], timeout=0)
        if not done:
            return None
        try:
            ray.get(done[0])
            return "the Ray task ended"
        except Exception as exc:  # noqa: BLE001 - any task failure becomes the run's error
            return f"the Ray task failed: {str(exc).splitlines()[0][:300]}"

    @staticmethod
    def cancel(ref) -> None:
        import ray

        ray.cancel(ref, force=True)
