"""Typed records of a run: its state, its status, its summary and its user metadata.

A run folder holds small JSON files (see core/store.py); the store hydrates them into these records
and writes them back, so no other code reads or spells their keys by hand. Reading is tolerant in the
way old and damaged folders need: unknown keys are kept (``extra``) and written back untouched, and a
value of the wrong type raises ``RecordError`` naming the field, which the store turns into a run
marked *damaged* with that reason rather than a traceback.

The run lifecycle, the only state changes allowed (``RunStore.transition`` enforces them)::

    queued  -> running     a runner (or `train`) starts it
    queued  -> stopped     cancelled before it started
    queued  -> failed      it can never start (e.g. the run it starts from is gone)
    running -> running     the worker takes over a run its runner claimed
    running -> completed | failed | stopped
    running -> queued      its runner died before the worker started: back in the queue
    stopped -> queued      resume
    failed  -> queued      resume
    stopped -> running     resume in the foreground (`train_run(..., resume=True)`)
    failed  -> running     idem
    failed  -> failed      a failure recorded again (e.g. a damaged status.json, or a later reason)
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any


class RecordError(ValueError):
    """A run file whose content does not have the expected shape."""


class RunState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def live(self) -> bool:
        """Queued or running: the run can still change by itself."""
        return self in (RunState.QUEUED, RunState.RUNNING)

    @property
    def finished(self) -> bool:
        return not self.live


TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.STOPPED, RunState.FAILED}),
    RunState.RUNNING: frozenset(
        {RunState.RUNNING, RunState.COMPLETED, RunState.FAILED, RunState.STOPPED, RunState.QUEUED}
    ),
    RunState.STOPPED: frozenset({RunState.QUEUED, RunState.RUNNING}),
    RunState.FAILED: frozenset({RunState.QUEUED, RunState.RUNNING, RunState.FAILED}),
    RunState.COMPLETED: frozenset(),
}


def can_transition(current: RunState, target: RunState) -> bool:
    return target in TRANSITIONS[current]


# -- hydration helpers --------------------------------------------------------------------------------
_NUMBER = (int, float)


def _check(name: str, value: Any, types: tuple[type, ...], optional: bool = True) -> Any:
    """Return ``value`` if it has one of ``types`` (bools are not numbers here), else raise RecordError."""
    if value is None and optional:
        return None
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if isinstance(value, float) and math.isnan(value) and float in types:
        ok = True
    if not ok:
        expected = " or ".join(t.__name__ for t in types)
        raise RecordError(f"{name} is {value!r} ({type(value).__name__}); expected {expected}")
    return value


def _hydrate(cls, data: Any, what: str, types: dict[str, tuple[type, ...]]):
    """Build dataclass ``cls`` from a JSON object, checking the types of known keys, keeping the rest."""
    if not isinstance(data, dict):
        raise RecordError(f"{what} holds {type(data).__name__}, not a JSON object")
    known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    values = {k: _check(f"{what}.{k}", data[k], types[k]) for k in known if k in data and k in types}
    values.update({k: data[k] for k in known if k in data and k not in types})
    return cls(**values, extra={k: v for k, v in data.items() if k not in known})


def _dump(obj) -> dict[str, Any]:
    out = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "extra"}
    return {**obj.extra, **out}


# -- status -------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """Where a run stands: written every few seconds while it trains (and during its setup phases)."""

    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    eta_seconds: float | None = None
    examples_per_second: float | None = None
    tokens_per_second: float | None = None
    phase: str | None = None  # a setup phase in progress ("caching frozen layers"), None while training
    phase_done: int | None = None
    phase_total: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    TYPES = {
        "step": (int,),
        "total_steps": (int,),
        "epoch": _NUMBER,
        "eta_seconds": _NUMBER,
        "examples_per_second": _NUMBER,
        "tokens_per_second": _NUMBER,
        "phase": (str,),
        "phase_done": (int,),
        "phase_total": (int,),
    }

    @property
    def fraction(self) -> float | None:
        return self.step / self.total_steps if self.total_steps else None

    @classmethod
    def from_dict(cls, data: Any) -> Progress:
        return _hydrate(cls, data, "progress", cls.TYPES)

    def to_dict(self) -> dict[str, Any]:
        return _dump(self)


@dataclass
class RunStatus:
    """status.json: the run's state and everything about the process that trains it."""

    state: RunState = RunState.QUEUED
    created_at: float | None = None
    updated_at: float | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    backend: str | None = None  # local | ray
    ray_address: str | None = None
    host: str | None = None
    pid: int | None = None
    pid_create_time: float | None = None
    started_by_runner: int | None = None
    resume: bool | None = None  # queued to continue from its checkpoint
    error: str | None = None
    note: str | None = None
    progress: Progress | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    TYPES = {
        "created_at": _NUMBER,
        "updated_at": _NUMBER,
        "queued_at": _NUMBER,
        "started_at": _NUMBER,
        "finished_at": _NUMBER,
        "backend": (str,),
        "ray_address": (str,),
        "host": (str,),
        "pid": (int,),
        "pid_create_time": _NUMBER,
        "started_by_runner": (int,),
        "resume": (bool,),
        "error": (str,),
        "note": (str,),
        "trainable_params": (int,),
        "total_params": (int,),
    }

    @classmethod
    def from_dict(cls, data: Any) -> RunStatus:
        if not isinstance(data, dict):
            raise RecordError(f"status.json holds {type(data).__name__}, not a JSON object")
        raw_state = data.get("state")
        try:
            state = RunState(raw_state)
        except ValueError:
            raise RecordError(
                f"status.json state is {raw_state!r}; expected one of {[s.value for s in RunState]}"
            ) from None
        rest = {k: v for k, v in data.items() if k not in ("state", "progress")}
        status = _hydrate(cls, rest, "status.json", cls.TYPES)
        status.state = state
        if data.get("progress") is not None:
            status.progress = Progress.from_dict(data["progress"])
        return status

    def to_dict(self) -> dict[str, Any]:
        out = _dump(self)
        out["state"] = self.state.value
        out["progress"] = self.progress.to_dict() if self.progress else None
        return out


# -- summary ------------------------------------------------------------------------------------------
@dataclass
class TaskSummary:
    """One task's final numbers: sizes, validation curve landmarks and, for a completed run, test metrics."""

    label_names: list[str] = field(default_factory=list)
    n_train: int | None = None
    n_validation: int | None = None
    n_test: int | None = None
    trained: bool | None = None
    head_frozen: bool | None = None
    val_accuracy: float | None = None
    val_macro_f1: float | None = None
    best_val_accuracy: float | None = None
    best_val_step: int | None = None
    initial_val_accuracy: float | None = None
    val_accuracy_change: float | None = None  # for a frozen head: how far the shared backbone moved it
    train_accuracy: float | None = None  # last accuracy on a fixed sample of the training split (overfitting gap)
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    test_balanced_accuracy: float | None = None  # mean per-class recall on the test split
    test_loss: float | None = None
    per_class: dict[str, Any] | None = None
    confusion_matrix: list[list[int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    TYPES = {
        "label_names": (list,),
        "n_train": (int,),
        "n_validation": (int,),
        "n_test": (int,),
        "trained": (bool,),
        "head_frozen": (bool,),
        "val_accuracy": _NUMBER,
        "val_macro_f1": _NUMBER,
        "best_val_accuracy": _NUMBER,
        "best_val_step": (int,),
        "initial_val_accuracy": _NUMBER,
        "val_accuracy_change": _NUMBER,
        "train_accuracy": _NUMBER,
        "test_accuracy": _NUMBER,
        "test_macro_f1": _NUMBER,
        "test_balanced_accuracy": _NUMBER,
        "test_loss": _NUMBER,
        "per_class": (dict,),
        "confusion_matrix": (list,),
    }

    @classmethod
    def from_dict(cls, data: Any, task: str = "task") -> TaskSummary:
        return _hydrate(cls, data, f"summary.json tasks.{task}", cls.TYPES)

    def to_dict(self) -> dict[str, Any]:
        out = _dump(self)
        if self.train_accuracy is None:  # only runs that score a training sample have it
            out.pop("train_accuracy")
        if self.test_balanced_accuracy is None:  # summaries written before it existed, and stopped runs
            out.pop("test_balanced_accuracy")
        if self.test_accuracy is None:  # a stopped run has no test metrics: leave the keys out, as always
            for key in ("test_accuracy", "test_macro_f1", "test_loss", "per_class", "confusion_matrix"):
                out.pop(key)
        return out


@dataclass
class RunSummary:
    """summary.json: what a finished (or stopped) run achieved and what it cost."""

    run_id: str = ""
    state: str | None = None
    strategy: str | None = None
    backbone: str | None = None
    device: str | None = None
    steps: int | None = None
    total_steps: int | None = None
    epochs: float | None = None
    train_seconds: float | None = None  # time inside training steps only
    wall_seconds: float | None = None  # the whole run: data, caches, evaluation, test
    examples_seen: int | None = None
    tokens_seen: int | None = None
    examples_per_second: float | None = None
    tokens_per_second: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_percent: float | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    embedding_cache: bool | None = None
    cached_bottom_layers: int | None = None
    tasks: dict[str, TaskSummary] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    TYPES = {
        "run_id": (str,),
        "state": (str,),
        "strategy": (str,),
        "backbone": (str,),
        "device": (str,),
        "steps": (int,),
        "total_steps": (int,),
        "epochs": _NUMBER,
        "train_seconds": _NUMBER,
        "wall_seconds": _NUMBER,
        "examples_seen": (int,),
        "tokens_seen": (int,),
        "examples_per_second": _NUMBER,
        "tokens_per_second": _NUMBER,
        "trainable_params": (int,),
        "total_params": (int,),
        "trainable_percent": _NUMBER,
        "layers": (list,),
        "embedding_cache": (bool,),
        "cached_bottom_layers": (int,),
    }

    @classmethod
    def from_dict(cls, data: Any) -> RunSummary:
        if not isinstance(data, dict):
            raise RecordError(f"summary.json holds {type(data).__name__}, not a JSON object")
        tasks = data.get("tasks") or {}
        if not isinstance(tasks, dict):
            raise RecordError(f"summary.json tasks is {type(tasks).__name__}, not a JSON object")
        summary = _hydrate(cls, {k: v for k, v in data.items() if k != "tasks"}, "summary.json", cls.TYPES)
        summary.tasks = {name: TaskSummary.from_dict(t, name) for name, t in tasks.items()}
        return summary

    def to_dict(self) -> dict[str, Any]:
        out = _dump(self)
        out["tasks"] = {name: t.to_dict() for name, t in self.tasks.items()}
        return out

    def test_accuracy(self, task: str) -> float | None:
        t = self.tasks.get(task)
        return t.test_accuracy if t else None


# -- user metadata ------------------------------------------------------------------------------------
@dataclass
class RunMeta:
    """meta.json: what the user wrote about a run (tags and notes); training never touches it."""

    tags: list[str] = field(default_factory=list)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    TYPES = {"tags": (list,), "notes": (str,)}

    @classmethod
    def from_dict(cls, data: Any) -> RunMeta:
        meta = _hydrate(cls, data, "meta.json", cls.TYPES)
        if not all(isinstance(t, str) for t in meta.tags):
            raise RecordError("meta.json tags must be a list of strings")
        return meta

    def to_dict(self) -> dict[str, Any]:
        return _dump(self)
