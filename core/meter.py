"""Throughput bookkeeping of a training run, kept out of the loop: time, examples, tokens and losses.

``Meter`` holds two views of the same counts: the run's totals (saved with the training state, so a
resumed run keeps counting where it stopped) and the window since the last ``train`` log line, which
``flush`` turns into metrics records. Only time spent inside training steps counts as training time;
data loading, caches and evaluation show in the wall clock only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np


def per_second(count: float, seconds: float) -> float | None:
    return count / seconds if seconds else None


@dataclass(frozen=True)
class Totals:
    """What a run has consumed so far; the train state stores these four numbers for resume."""

    train_seconds: float = 0.0  # inside training steps only
    wall_seconds: float = 0.0  # since the run started: data, caches, evaluation included
    examples_seen: int = 0
    tokens_seen: int = 0

    @property
    def examples_per_second(self) -> float | None:
        return per_second(self.examples_seen, self.train_seconds)

    @property
    def tokens_per_second(self) -> float | None:
        return per_second(self.tokens_seen, self.train_seconds)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Totals:
        """From a saved train state; a missing number (an older state file) counts from zero."""
        return cls(
            train_seconds=float(data.get("train_seconds", 0.0)),
            wall_seconds=float(data.get("wall_seconds", 0.0)),
            examples_seen=int(data.get("examples_seen", 0)),
            tokens_seen=int(data.get("tokens_seen", 0)),
        )


@dataclass
class _Window:
    losses: dict[str, list[float]]
    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class Meter:
    """Counts every training step; ``tasks`` fixes the order of the per-task loss records."""

    tasks: list[str]
    started: float = field(default_factory=time.time)  # the wall clock's origin
    train_seconds: float = 0.0
    examples_seen: int = 0
    tokens_seen: int = 0

    def __post_init__(self) -> None:
        self._window = self._empty_window()

    @classmethod
    def resumed(cls, tasks: list[str], saved: Totals) -> Meter:
        """Continue the counts of a checkpoint: the wall clock goes on from the saved wall time."""
        return cls(
            tasks,
            started=time.time() - saved.wall_seconds,
            train_seconds=saved.train_seconds,
            examples_seen=saved.examples_seen,
            tokens_seen=saved.tokens_seen,
        )

    def _empty_window(self) -> _Window:
        return _Window({t: [] for t in self.tasks})

    @property
    def wall_seconds(self) -> float:
        return time.time() - self.started

    def add(self, task: str, loss: float, examples: int, tokens: int, seconds: float) -> None:
        """One training step: its task's loss, its batch size, its real (unpadded) tokens, its duration."""
        self.train_seconds += seconds
        self.examples_seen += examples
        self.tokens_seen += tokens
        w = self._window
        w.losses[task].append(loss)
        w.examples += examples
        w.tokens += tokens
        w.seconds += seconds

    def totals(self) -> Totals:
        return Totals(self.train_seconds, self.wall_seconds, self.examples_seen, self.tokens_seen)

    def eta_seconds(self, step: int, total_steps: int) -> float | None:
        """Remaining training time at the run's average step rate so far."""
        rate = per_second(step, self.train_seconds)
        return round((total_steps - step) / rate, 1) if rate else None

    def flush(self, position: dict, lr: float) -> list[dict]:
        """The window as metrics records (mean loss per task that trained in it, then throughput); resets it."""
        w, self._window = self._window, self._empty_window()
        records = [
            {"kind": "train", **position, "task": t, "loss": float(np.mean(v)), "lr": lr}
            for t, v in w.losses.items()
            if v
        ]
        records.append(
            {
                "kind": "throughput",
                **position,
                "examples_per_second": per_second(w.examples, w.seconds),
                "tokens_per_second": per_second(w.tokens, w.seconds),
            }
        )
        return records
