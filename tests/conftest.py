"""Shared fixtures: the real packaged MiniLM cut to one layer, and a few dozen real examples per task."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import RunConfig, TaskConfig
from core.store import RunStore
from tests.processes import ROOT, kill_everything_for

TINY_BACKBONE = "minilm-l6:1"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_config(**overrides) -> RunConfig:
    """A run that takes a couple of seconds: one layer, 32 training examples per task."""
    base = dict(
        backbone=TINY_BACKBONE,
        tasks=[
            TaskConfig(name="topic", dataset="bbc_topics", max_train_examples=32),
            TaskConfig(name="sentiment", dataset="rt_sentiment", max_train_examples=32),
        ],
        max_eval_examples=20,
        max_test_examples=20,  # tests stay fast; real runs test on the whole split
        batch_size=8,
        eval_batch_size=32,
        max_length=32,
        epochs=1,
        eval_every_steps=3,
        log_every_steps=2,
        checkpoint_every_steps=4,
        head_learning_rate=5e-3,
        backbone_learning_rate=1e-3,  # large on purpose: every trained weight visibly moves in a few steps
        warmup_ratio=0.0,
        device="cpu",
    )
    base.update(overrides)
    return RunConfig(**base)


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs")


@pytest.fixture
def jstore(tmp_path):
    """A runs folder for tests that start runners and workers: none of them outlives the test."""
    store = RunStore(tmp_path / "runs")
    yield store
    kill_everything_for(store)


def run_cli(*args: str, runs_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI in a real subprocess."""
    env = {**os.environ, "FREEZELAB_RUNS_DIR": str(runs_dir), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


TINY_CLI_ARGS = (
    "--backbone",
    TINY_BACKBONE,
    "--max-train-examples",
    "32",
    "--max-eval-examples",
    "20",
    "--batch-size",
    "8",
    "--max-length",
    "32",
    "--eval-every-steps",
    "3",
    "--device",
    "cpu",
    "--set",
    "max_test_examples=20",
)
