"""Fault injection with real processes, for tests/test_faults.py and the long stress run (tests/stress.py).

Starting a training worker costs seconds (torch, transformers, sklearn, the corpora), which would make
dozens of kill points slow. A *zygote* pays that once: it imports the engine and reads the corpora, then
forks a worker on request. Each worker is a real OS process running exactly what the runner starts
(``python -m core _work RUN [--resume]``: ``core.cli.main``); the test kills it with SIGKILL like any
other. A request can also ask the worker to kill itself at a chosen point (between a checkpoint's
weights and its training state), the moment a random delay rarely hits.

Run as ``python -m tests.faultkit`` it is the zygote: one JSON request a line on stdin, one JSON answer
(the worker's pid) a line on stdout.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.store import METRICS_FILE
from tests.processes import ROOT, wait_gone, wait_running  # test_faults.py and stress.py import these two here


def fault_config(**overrides):
    """bitfit on one real layer: the backbone runs forward and backward, checkpoints are small, one every
    2 of 24 steps, so kills land in setup, steps, checkpoint writes and the ending alike."""
    from tests.conftest import tiny_config

    base = dict(
        strategy="bitfit",
        max_steps=24,
        checkpoint_every_steps=2,
        log_every_steps=1,
        eval_every_steps=8,
        max_test_examples=20,
    )
    return tiny_config(**{**base, **overrides})


ZYGOTE_START_SECONDS = 180.0


# -- the zygote process ---------------------------------------------------------------------------------
def _inject(request: dict) -> None:
    """In a worker: arrange the fault the request asks for."""
    die_at = request.get("die_before_train_state_step")
    if die_at is not None:
        from core import checkpoint

        real = checkpoint.save_train_state

        def save_or_die(ckpt_dir, optimizer, scheduler, step, extra):
            if step == die_at:  # the new weights are on disk; their training state is not
                os.kill(os.getpid(), signal.SIGKILL)
            return real(ckpt_dir, optimizer, scheduler, step, extra)

        checkpoint.save_train_state = save_or_die


def _worker(request: dict) -> None:
    """The body of a forked worker: never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        err = os.open(
            Path(request["runs_dir"]) / request["run_id"] / "worker.err", os.O_WRONLY | os.O_CREAT | os.O_APPEND
        )
        os.dup2(err, 2)
        import torch

        torch.set_num_threads(1)  # the same arithmetic in every worker: resumed runs compare bit for bit
        _inject(request)
        from core.cli import main

        argv = ["--runs-dir", request["runs_dir"], "_work", request["run_id"]]
        code = main(argv + (["--resume"] if request.get("resume") else []))
    except BaseException:  # noqa: BLE001 - the worker's exit code says it; its stderr file has the traceback
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def zygote_main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import core.cli  # noqa: F401 - imported once here, inherited by every worker
    import core.train  # noqa: F401
    from core.data import load_task_data

    for name, dataset in (("topic", "bbc_topics"), ("sentiment", "rt_sentiment")):  # the corpora, read once
        load_task_data(name, dataset, max_train_examples=32, max_eval_examples=20)
    # transformers imports its model code lazily, on first use: import it here, once. Nothing here runs a torch
    # operation (a thread pool started before fork() would not exist in the workers).
    import transformers.models.bert.modeling_bert  # noqa: F401
    from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: F401

    from core.backbones import load_backbone_config

    load_backbone_config("minilm-l6")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel: no zombies
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _worker(request)
        print(json.dumps({"pid": pid}), flush=True)


class Zygote:
    """The test side: start workers for runs of a store, each a forked real process."""

    def __init__(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faultkit"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        line = self.proc.stdout.readline()
        if not line or "ready" not in json.loads(line):
            self.close()
            raise RuntimeError("the fault-injection zygote did not start")

    def start(self, store, run_id: str, *, resume: bool = False, die_before_train_state_step: int | None = None) -> int:
        """Fork a worker for ``run_id``; returns its pid."""
        request = {
            "runs_dir": str(store.root.resolve()),
            "run_id": run_id,
            "resume": resume,
            "die_before_train_state_step": die_before_train_state_step,
        }
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["pid"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# -- kill points ----------------------------------------------------------------------------------------
def metrics_problem(store, run_id: str) -> str | None:
    """None when every whole line of the metrics file is a JSON object (only a partial last line may not be)."""
    path = store.path(run_id) / METRICS_FILE
    if not path.exists():
        return None
    data = path.read_bytes()
    lines = data.split(b"\n")
    whole = lines[:-1]  # what follows the last newline is a write the kill cut short
    for i, line in enumerate(whole):
        try:
            if not isinstance(json.loads(line), dict):
                return f"line {i + 1} is not an object"
        except ValueError:
            return f"line {i + 1} does not parse: {line[:80]!r}"
    if len(store.read_metrics(run_id)) != len(whole):
        return "the reader did not return every whole line"
    return None


@dataclass
class KillReport:
    """What a series of kill points did: the delays, and every check that failed (none, when all survived)."""

    delays: list[float] = field(default_factory=list)
    phases: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    completed: int = 0

    @property
    def kills(self) -> int:
        return len(self.delays)


def _phase(store, run_id: str) -> str:
    progress = store.read_status(run_id).progress
    if progress is None or not progress.total_steps:
        return "setup"
    return "training" if progress.step < progress.total_steps else "ending"


def check_after_kill(store, run_id: str, pid: int) -> list[str]:
    """The run's state tells the truth, its metrics parse, its checkpoint is whole: the problems found."""
    from core import checkpoint, jobs
    from core.records import RunState

    problems = []
    jobs.reconcile(store)  # what any reader (runner, `queue`, the Runs page) does
    status = store.read_status(run_id)
    if status.state != RunState.FAILED or f"pid {pid}" not in (status.error or "") or "resume" not in status.error:
        problems.append(f"{run_id}: after kill -9 of {pid} the run is {status.state} ({status.error!r})")
    if problem := metrics_problem(store, run_id):
        problems.append(f"{run_id}: {METRICS_FILE} {problem}")
    if problem := store.checkpoint_problem(run_id):
        problems.append(f"{run_id}: {problem}")
    if store.has_checkpoint(run_id):
        try:
            checkpoint.load_model(store.checkpoint_dir(run_id))
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            problems.append(f"{run_id}: the last checkpoint does not load: {exc}")
    return problems


def kill_series(zygote: Zygote, store, make_run, n_kills: int, max_delay: float, seed: int, log=None) -> KillReport:
    """Kill workers at ``n_kills`` random moments (0 to ``max_delay`` s after they report running).

    A run killed is checked (``check_after_kill``), resumed with ``jobs.resume`` and started again,
    until it completes; a run that completes before its kill lands is replaced by a new one
    (``make_run()`` gives its id). Every run is left completed."""
    from core import jobs
    from core.records import RunState

    rng = random.Random(seed)
    report = KillReport()
    run_id, resume = make_run(), False
    report.runs.append(run_id)
    while True:
        pid = zygote.start(store, run_id, resume=resume)
        wants_kill = report.kills < n_kills
        if not wait_running(store, run_id, pid, timeout=120):
            wait_gone(pid, 5)
        elif wants_kill:
            delay = rng.uniform(0.0, max_delay)
            time.sleep(delay)
            phase = _phase(store, run_id)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_gone(pid, 10)
            if store.state(run_id) == RunState.RUNNING:  # the kill landed before the run recorded its end
                report.delays.append(round(delay, 3))
                report.phases[phase] = report.phases.get(phase, 0) + 1
                report.failures += check_after_kill(store, run_id, pid)
                if log:
                    log(f"kill {report.kills:3d}: {run_id} after {delay:.2f}s ({phase})")
                resume = jobs.resume(store, run_id, start_runner=False) == "resume"
                continue
        else:
            wait_gone(pid, 300)
        state = store.state(run_id)
        if state != RunState.COMPLETED:
            report.failures.append(f"{run_id}: ended {state} ({store.read_status(run_id).error})")
            return report
        report.completed += 1
        if report.kills >= n_kills:
            return report
        run_id, resume = make_run(), False
        report.runs.append(run_id)


if __name__ == "__main__":
    zygote_main()
