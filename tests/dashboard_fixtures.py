"""Helpers shared by the dashboard tests (AppTest) and the browser test: real runs, real processes."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from core import jobs
from core.config import TaskConfig
from core.store import RunStore
from core.train import train_run
from tests.conftest import ROOT, tiny_config

APP = str(ROOT / "app.py")
SEED_STRATEGIES = ["frozen_backbone", "full_finetune"]
SEEDS = [0, 1]
FAILED_NAME = "broken-data"


def seed_runs(root: Path) -> dict:
    """Really train a 2 strategies x 2 seeds sweep in-process, plus one run that fails on missing data."""
    store = RunStore(root)
    sweep_id, ids = jobs.sweep(store, tiny_config(checkpoint_every_steps=1000), strategies=SEED_STRATEGIES, seeds=SEEDS, start_runner=False)
    for run_id in ids:
        assert train_run(store, run_id) == "completed", store.read_status(run_id)
    failed = store.create_run(tiny_config(
        name=FAILED_NAME, tasks=[TaskConfig(name="topic", dataset=str(root / "no-such-file.csv"))]))
    with pytest.raises(ValueError, match="does not exist"):
        train_run(store, failed)
    assert store.read_status(failed)["state"] == "failed"
    names = {run_id: store.record(run_id).config["name"] for run_id in [*ids, failed]}
    return {"root": root, "sweep_id": sweep_id, "completed": ids, "failed": failed, "names": names}


def parse_params(text: str) -> float:
    """The inverse of pages.common.fmt_params: '2.7k' -> 2700, '22.57M' -> 22570000."""
    m = re.fullmatch(r"([0-9.]+)([kM]?)", text.strip())
    assert m, f"not a parameter count: {text!r}"
    return float(m.group(1)) * {"": 1, "k": 1e3, "M": 1e6}[m.group(2)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _kill_tree(pid: int | None) -> None:
    """SIGKILL a process and every descendant of it (children first are collected before the parent dies)."""
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
    """Leave nothing behind: the runner that serves ``store`` with its workers, then any training pid recorded."""
    info = jobs.runner_info(store)
    if info:
        _kill_tree(info["pid"])
    for record in store.list_runs():
        pid = record.status.get("pid")
        if pid and record.state == "running" and jobs.process_alive(pid, record.status.get("pid_create_time")):
            _kill_tree(pid)


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
    kill_background(store)
    for pid in runner_pids(store):
        _kill_tree(pid)
