"""The run store: one folder per run under a runs directory, small JSON files, append-only metrics.

    runs/<run_id>/config.json     the full RunConfig (enough to re-run it)
                  status.json     state, times, pid, progress, error (atomic writes)   -> RunStatus
                  metrics.jsonl   one JSON object a line, appended as training goes
                  summary.json    final results (atomic write)                        -> RunSummary
                  meta.json       user-editable tags and notes                        -> RunMeta
                  checkpoint/     safetensors weights, tokenizer, label names (core/checkpoint.py)
                  int8.json       measured int8 agreement (core/predict.py)
                  test_predictions.json   per task: true and predicted label of every test example
                  train.log       the run's log
                  worker.err      the worker process's stderr
                  STOP            present when someone asked the run to stop
    runs/.trash/<run_id>/         deleted runs, recoverable (a second copy of an id: <run_id>.deleted-2, ...)
    runs/.studies/<study_id>/study.json   a study: its design, seeds and the run of every cell (core/studies.py)

This module is the only code that names the files of a run folder; everything else asks it for a
path by purpose. State changes go through ``transition``, which allows only the lifecycle written in
core/records.py. Readers tolerate missing files and a partial last metrics line: a run being written,
or one whose folder was deleted, never breaks a listing; a file with the wrong shape (a checkpoint file
included) marks its run *damaged* with the reason instead of raising. A run folder is always a real
directory directly under the runs folder: ids with paths, and symbolic links, are refused. A write that
fails (disk full, read-only folder) raises StorageError naming the file, never a bare OSError. Those file-level
rules (atomic writes, tolerant and strict JSON reads, safetensors checks) live in core/files.py.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig
from core.errors import ConfigError, InvalidRunId, JobError, RunNotFound, TransitionError
from core.files import (
    MISSING,
    file_version,
    read_json,
    read_json_or_problem,
    read_json_strict,
    safetensors_header,
    storage_error,
    write_json_atomic,
)
from core.records import Progress, RecordError, RunMeta, RunState, RunStatus, RunSummary, can_transition

__all__ = ["RunRecord", "RunStore", "default_runs_dir", "validate_run_id"]

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TRASH = ".trash"
TRASH_COPY_RE = re.compile(r"^(?P<id>.+)\.deleted-(?P<n>[0-9]+)$")  # a later copy of an id already in the trash
CACHE = ".cache"
STUDIES = ".studies"
STUDY_FILE = "study.json"

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
META_FILE = "meta.json"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_MANIFEST = "checkpoint.json"  # written last inside checkpoint/: its presence means weights exist
WEIGHTS_FILE = "model.safetensors"  # inside checkpoint/: the weights the manifest describes
TOKENIZER_DIR = "tokenizer"  # inside checkpoint/
TRAIN_STATE_FILE = "train_state.json"  # inside checkpoint/: what resume needs, written last of its unit
INT8_FILE = "int8.json"
TEST_PREDICTIONS_FILE = "test_predictions.json"
LOG_FILE = "train.log"
WORKER_ERR_FILE = "worker.err"
STOP_FILE = "STOP"


def default_runs_dir() -> Path:
    return Path(os.environ.get("FREEZELAB_RUNS_DIR", "runs"))


def validate_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id) or ".." in run_id:
        name = run_id.rstrip("/").rsplit("/", 1)[-1] if isinstance(run_id, str) else ""
        path_like = "/" in str(run_id) and ".." not in str(run_id)
        hint = f" (the folder's name alone: {name!r}?)" if path_like and RUN_ID_RE.fullmatch(name) else ""
        raise InvalidRunId(
            f"run id {run_id!r} is not valid: use letters, digits, '.', '_' and '-' only (no paths), "
            f"as listed by `python -m core runs`{hint}."
        )
    return run_id


_PROBLEM_CACHE: dict[Path, tuple[tuple, str | None]] = {}
_CONFIG_CACHE: dict[tuple, str | None] = {}


UNIT_FILE_RE = re.compile(r"[A-Za-z0-9_.-]+\.safetensors")  # files a train_state.json may name: plain names


@functools.cache
def _config_keys() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(RunConfig))


def _config_problem(config: dict) -> str | None:
    """What makes a run's config.json unreadable as a config: a value of the wrong type (an old run's unknown
    keys and out-of-date ranges are not problems: they describe how it was trained)."""
    from core.config import check_types

    known = _config_keys()
    try:
        cfg = RunConfig(**{k: v for k, v in config.items() if k in known})
        check_types(cfg)
        for i, task in enumerate(cfg.tasks if isinstance(cfg.tasks, list) else []):
            check_types(task, f"tasks[{i}].")
    except ConfigError as exc:
        return str(exc)
    except TypeError as exc:
        return f"does not have the shape of a config ({exc})"
    return None


def slugify(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:limit].strip("-")


@dataclass
class RunRecord:
    """A run as listings see it, hydrated from its small JSON files.

    ``config`` is config.json as written (a dict: old runs may predate today's keys); ``damaged`` holds
    the reason when one of the files could not be read, in which case the other fields hold defaults."""

    id: str
    config: dict
    status: RunStatus
    summary: RunSummary | None
    meta: RunMeta = field(default_factory=RunMeta)
    damaged: str | None = None

    @property
    def state(self) -> RunState:
        return self.status.state

    @property
    def progress(self) -> Progress:
        return self.status.progress or Progress()

    def run_config(self) -> RunConfig:
        return RunConfig.from_dict(self.config)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "config": self.config,
            "status": self.status.to_dict(),
            "summary": self.summary.to_dict() if self.summary else None,
            "meta": self.meta.to_dict(),
            "damaged": self.damaged,
        }


class RunStore:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()

    # -- paths ------------------------------------------------------------------------------------
    def path(self, run_id: str) -> Path:
        """The folder of a run (validated: it is always a direct child of the runs directory, never a link)."""
        validate_run_id(run_id)
        path = self.root / run_id
        if path.is_symlink():
            raise InvalidRunId(
                f"run {run_id!r} is a symbolic link in {self.root}, not a run folder: links are refused so that no "
                "command reads, moves or deletes anything outside the runs folder. Remove the link."
            )
        return path

    def existing_path(self, run_id: str) -> Path:
        path = self.path(run_id)
        if not (path / CONFIG_FILE).is_file():
            raise RunNotFound(
                f"run {run_id!r} was not found in {self.root} (deleted, or a typo?); `python -m core runs` lists runs."
            )
        return path

    def exists(self, run_id: str) -> bool:
        try:
            self.existing_path(run_id)
            return True
        except (RunNotFound, InvalidRunId):
            return False

    def cache_dir(self) -> Path:
        """Where frozen computations shared across runs are cached."""
        return self.root / CACHE

    def checkpoint_dir(self, run_id: str) -> Path:
        return self.path(run_id) / CHECKPOINT_DIR

    def has_checkpoint(self, run_id: str) -> bool:
        """It has weights that can predict: a manifest, whole weights and a tokenizer (its training state may
        be damaged: that only stops a resume)."""
        ckpt = self.checkpoint_dir(run_id)
        return (
            (ckpt / CHECKPOINT_MANIFEST).is_file()
            and (ckpt / TOKENIZER_DIR).is_dir()
            and safetensors_header(ckpt / WEIGHTS_FILE)[1] is None
        )

    def checkpoint_problem(self, run_id: str) -> str | None:
        """Why the run's checkpoint cannot be used (a missing, truncated or unreadable file), or None.

        No manifest means no checkpoint yet, which is no problem. Only headers are read, and only when the
        folder changed since the last look (listings of 1,000 runs ask for every run; every file of a checkpoint
        is written by a rename, which changes the folder). The loaders check again, fully, when they load."""
        ckpt = self.checkpoint_dir(run_id)
        key = file_version(ckpt)
        if _PROBLEM_CACHE.get(ckpt) is not None and _PROBLEM_CACHE[ckpt][0] == key:
            return _PROBLEM_CACHE[ckpt][1]
        problem = self._checkpoint_problem(ckpt)
        if len(_PROBLEM_CACHE) > 4096:
            _PROBLEM_CACHE.clear()
        _PROBLEM_CACHE[ckpt] = (key, problem)
        return problem

    def _checkpoint_problem(self, ckpt: Path) -> str | None:
        manifest = read_json_or_problem(ckpt / CHECKPOINT_MANIFEST)
        if manifest is MISSING:
            return None
        problems = [] if isinstance(manifest, dict) else [f"{CHECKPOINT_MANIFEST} {manifest}"]
        problems.append(safetensors_header(ckpt / WEIGHTS_FILE)[1])
        if not (ckpt / TOKENIZER_DIR).is_dir():
            problems.append(f"{TOKENIZER_DIR}/ is missing")
        state = read_json_or_problem(ckpt / TRAIN_STATE_FILE)
        if isinstance(state, dict):
            files = [state.get(k) for k in ("weights_file", "tensors_file")] if "tensors_file" in state else []
            for name in files:
                if not isinstance(name, str) or not UNIT_FILE_RE.fullmatch(name):
                    problems.append(f"{TRAIN_STATE_FILE} names an invalid file {name!r}")
                    continue
                header, problem = safetensors_header(ckpt / name)
                step = ((header or {}).get("__metadata__") or {}).get("step")
                if problem is None and step != str(state.get("step")):
                    problem = f"{TRAIN_STATE_FILE} is for step {state.get('step')} but {name} holds step {step}"
                problems.append(problem)
        elif state is not MISSING:
            problems.append(f"{TRAIN_STATE_FILE} {state}")
        found = [f"checkpoint/{p}" for p in problems if p]
        return "; ".join(found) or None

    def checkpoint_mtime(self, run_id: str) -> float | None:
        """When the last checkpoint was written (its manifest is written last): a cache key for loaded models."""
        try:
            return (self.checkpoint_dir(run_id) / CHECKPOINT_MANIFEST).stat().st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None

    def has_train_state(self, run_id: str) -> bool:
        return (self.checkpoint_dir(run_id) / TRAIN_STATE_FILE).is_file()

    def int8_path(self, run_id: str) -> Path:
        return self.path(run_id) / INT8_FILE

    def log_path(self, run_id: str) -> Path:
        return self.path(run_id) / LOG_FILE

    def worker_err_path(self, run_id: str) -> Path:
        return self.path(run_id) / WORKER_ERR_FILE

    # -- creation ---------------------------------------------------------------------------------
    def new_run_id(self, cfg: RunConfig) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        label = slugify(cfg.name) if cfg.name else slugify(cfg.strategy)
        return f"{stamp}-{label or 'run'}-{secrets.token_hex(2)}"

    def create_run(self, cfg: RunConfig, run_id: str | None = None, **status: Any) -> str:
        """A new run folder in state queued; ``status``: more status fields (backend, queued_at...)."""
        cfg.validate()
        run_id = validate_run_id(run_id or self.new_run_id(cfg))
        path = self.path(run_id)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            path.mkdir(parents=False, exist_ok=False)
        except FileExistsError:
            raise JobError(f"a run {run_id!r} already exists in {self.root}; choose another id.") from None
        except OSError as exc:
            raise storage_error(path, exc) from None
        try:
            # status.json before config.json: listings see a run once its config exists, and then it has a status.
            now = time.time()
            self._write_status(run_id, RunStatus(state=RunState.QUEUED, created_at=now, updated_at=now, **status))
            write_json_atomic(path / CONFIG_FILE, cfg.to_dict())
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # no half-made run folder is left behind
            raise
        return run_id

    # -- config -----------------------------------------------------------------------------------
    def read_config(self, run_id: str) -> RunConfig:
        data = read_json(self.existing_path(run_id) / CONFIG_FILE)
        if not isinstance(data, dict):
            raise ConfigError(f"run {run_id}: its config.json is damaged (not a JSON object); it cannot be trained.")
        return RunConfig.from_dict(data)

    # -- status -----------------------------------------------------------------------------------
    def read_status(self, run_id: str) -> RunStatus:
        """The run's status; a missing or damaged status.json reads as RecordError."""
        data = read_json_strict(self.path(run_id) / STATUS_FILE)
        if data is MISSING:
            raise RecordError("status.json is missing")
        return RunStatus.from_dict(data)

    def read_statuses(self, cache: dict | None = None) -> dict[str, RunStatus]:
        """Every readable run's status. ``cache`` (a dict the caller keeps between calls) skips the files that
        did not change since the last call: a runner polling twice a second over hundreds of runs then only
        stats them (status.json is replaced atomically, so a new write is a new inode)."""
        out: dict[str, RunStatus] = {}
        for run_id in self.run_ids():
            path = self.path(run_id) / STATUS_FILE
            try:
                st = path.stat()
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                hit = cache.get(run_id) if cache is not None else None
                # A file written in the last 2 s is read again: two same-size writes within the clock's
                # resolution can reuse the freed inode and look unchanged.
                if hit is not None and hit[0] == key and time.time() - st.st_mtime > 2.0:
                    out[run_id] = hit[1]
                    continue
                status = self.read_status(run_id)
            except (OSError, RecordError):  # deleted since listed, or damaged: nothing to supervise
                continue
            if cache is not None:
                cache[run_id] = (key, status)
            out[run_id] = status
        if cache is not None:
            for gone in set(cache) - set(out):
                del cache[gone]
        return out

    def state(self, run_id: str) -> RunState | None:
        """The run's state, or None when its status cannot be read."""
        try:
            return self.read_status(run_id).state
        except RecordError:
            return None

    def _write_status(self, run_id: str, status: RunStatus) -> RunStatus:
        status.updated_at = time.time()
        write_json_atomic(self.path(run_id) / STATUS_FILE, status.to_dict())
        return status

    def update_status(self, run_id: str, **updates: Any) -> RunStatus:
        """Change status fields other than the state (progress, pid, parameter counts...)."""
        if "state" in updates:
            raise ValueError("the state changes through RunStore.transition, which checks the lifecycle")
        self.existing_path(run_id)
        status = self.read_status(run_id)
        for key, value in updates.items():
            if key == "progress" and isinstance(value, dict):
                value = Progress.from_dict(value)
            if hasattr(status, key) and key != "extra":
                setattr(status, key, value)
            else:
                status.extra[key] = value
        return self._write_status(run_id, status)

    def transition(
        self, run_id: str, target: RunState, *, expect: set[RunState] | None = None, **updates: Any
    ) -> RunStatus:
        """Move a run to ``target`` (plus field updates), if the lifecycle allows it from where it is.

        ``expect``: also require the current state to be one of these (e.g. settle only a run that is
        still running); TransitionError otherwise. A damaged status.json may always become failed."""
        self.existing_path(run_id)
        try:
            status = self.read_status(run_id)
        except RecordError:
            if target != RunState.FAILED:
                raise
            status = RunStatus(state=RunState.FAILED)
        current = status.state
        if (expect is not None and current not in expect) or not can_transition(current, target):
            raise TransitionError(f"run {run_id} is {current.value}; it cannot become {target.value}.")
        status.state = RunState(target)
        for key, value in updates.items():
            if key == "progress" and isinstance(value, dict):
                value = Progress.from_dict(value)
            if hasattr(status, key) and key != "extra":
                setattr(status, key, value)
            else:
                status.extra[key] = value
        return self._write_status(run_id, status)

    # -- summary / meta ---------------------------------------------------------------------------
    def read_summary(self, run_id: str) -> RunSummary | None:
        data = read_json_strict(self.path(run_id) / SUMMARY_FILE)
        return None if data is MISSING or data is None else RunSummary.from_dict(data)

    def write_summary(self, run_id: str, summary: RunSummary) -> None:
        write_json_atomic(self.existing_path(run_id) / SUMMARY_FILE, summary.to_dict())

    def read_meta(self, run_id: str) -> RunMeta:
        data = read_json_strict(self.path(run_id) / META_FILE)
        return RunMeta() if data is MISSING or data is None else RunMeta.from_dict(data)

    def update_meta(self, run_id: str, tags: list[str] | None = None, notes: str | None = None) -> RunMeta:
        """Change tags and notes; they live in their own file, so no training write can undo them."""
        self.existing_path(run_id)
        try:
            meta = self.read_meta(run_id)
        except RecordError:  # a damaged meta.json is replaced by what the user saves now
            meta = RunMeta()
        if tags is not None:
            meta.tags = sorted({t.strip() for t in tags if t.strip()})
        if notes is not None:
            meta.notes = notes
        write_json_atomic(self.path(run_id) / META_FILE, meta.to_dict())
        return meta

    def write_test_predictions(self, run_id: str, predictions: dict[str, dict[str, list[int]]]) -> None:
        """Per task {"labels": [...], "predictions": [...]} over the whole test split: what a bootstrap over
        test examples needs when a study has only one seed."""
        write_json_atomic(self.existing_path(run_id) / TEST_PREDICTIONS_FILE, predictions)

    def read_test_predictions(self, run_id: str) -> dict[str, dict[str, list[int]]]:
        data = read_json(self.path(run_id) / TEST_PREDICTIONS_FILE, {})
        return data if isinstance(data, dict) else {}

    # -- metrics ----------------------------------------------------------------------------------
    def append_metrics(self, run_id: str, *records: dict) -> None:
        """Append whole lines in one write: a crash leaves at most one partial last line, which readers skip."""
        path = self.existing_path(run_id) / METRICS_FILE
        text = "".join(json.dumps(record) + "\n" for record in records)
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
        except OSError as exc:
            raise storage_error(path, exc) from None

    def read_metrics(self, run_id: str) -> list[dict]:
        """Every complete metrics line that holds a JSON object; a partial or damaged line is skipped."""
        try:
            text = (self.path(run_id) / METRICS_FILE).read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            return []
        records = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def truncate_metrics_after(self, run_id: str, step: int) -> None:
        """Drop records logged after ``step`` (the checkpoint a resume starts from): curves never repeat a step."""
        kept = [r for r in self.read_metrics(run_id) if isinstance(r.get("step", 0), int) and r.get("step", 0) <= step]
        path = self.path(run_id) / METRICS_FILE
        tmp = path.with_suffix(".jsonl.tmp")
        try:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise storage_error(path, exc) from None

    def clear_results(self, run_id: str) -> None:
        """Forget metrics and summary: a run restarting from scratch keeps one clean history."""
        for name in (METRICS_FILE, SUMMARY_FILE):
            (self.path(run_id) / name).unlink(missing_ok=True)

    # -- listing ----------------------------------------------------------------------------------
    def run_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        ids = [
            p.name
            for p in self.root.iterdir()
            if RUN_ID_RE.fullmatch(p.name) and not p.is_symlink() and p.is_dir() and (p / CONFIG_FILE).is_file()
        ]
        return sorted(ids, reverse=True)

    def record(self, run_id: str) -> RunRecord:
        """Hydrate a run folder; a damaged file gives a record marked damaged, never an exception."""
        path = self.existing_path(run_id)
        record = RunRecord(id=run_id, config={}, status=RunStatus(state=RunState.FAILED), summary=None)
        problems = []
        config = read_json(path / CONFIG_FILE)
        if isinstance(config, dict):
            record.config = config
            key = (path / CONFIG_FILE, file_version(path / CONFIG_FILE))  # config.json is written once: check it once
            if key not in _CONFIG_CACHE:
                if len(_CONFIG_CACHE) > 4096:
                    _CONFIG_CACHE.clear()
                _CONFIG_CACHE[key] = _config_problem(config)
            if problem := _CONFIG_CACHE[key]:
                problems.append(f"config.json {problem}")
                record.config = {k: v for k, v in config.items() if _config_problem({k: v}) is None}
        else:
            problems.append("config.json is not a JSON object")
        for load, attr in ((self.read_status, "status"), (self.read_summary, "summary"), (self.read_meta, "meta")):
            try:
                setattr(record, attr, load(run_id))
            except RecordError as exc:
                problems.append(str(exc))
        if record.status.state != RunState.RUNNING:  # a running run rewrites its checkpoint as we look
            if problem := self.checkpoint_problem(run_id):
                problems.append(problem)
        if problems:
            record.damaged = "; ".join(problems)
            if record.status.error is None and "status" in record.damaged:
                record.status.error = f"damaged run folder: {record.damaged}"
        return record

    def list_runs(self) -> list[RunRecord]:
        records = []
        for run_id in self.run_ids():
            try:
                records.append(self.record(run_id))
            except RunNotFound:  # deleted between listing and reading
                continue
        return records

    def live_run_ids(self) -> list[str]:
        """Runs that are queued or running (their status says so)."""
        return [rid for rid in self.run_ids() if (s := self.state(rid)) is not None and s.live]

    # -- stop, delete, restore --------------------------------------------------------------------
    def request_stop(self, run_id: str) -> None:
        (self.existing_path(run_id) / STOP_FILE).write_text(str(time.time()))

    def stop_requested(self, run_id: str) -> bool:
        return (self.path(run_id) / STOP_FILE).exists()

    def stop_requested_seconds_ago(self, run_id: str) -> float | None:
        """How long ago a stop was asked, or None if none was."""
        try:
            return time.time() - (self.path(run_id) / STOP_FILE).stat().st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None

    def clear_stop(self, run_id: str) -> None:
        (self.path(run_id) / STOP_FILE).unlink(missing_ok=True)

    def delete_run(self, run_id: str) -> Path:
        """Move a run to the trash folder (recoverable with restore_run); returns where it went.

        Nothing in the trash is ever overwritten: a second deleted copy of an id is kept beside the first
        as ``<run_id>.deleted-2`` (then -3...)."""
        path = self.existing_path(run_id)
        if self.state(run_id) == RunState.RUNNING:
            raise JobError(
                f"run {run_id} is running: cancel it first (`python -m core cancel {run_id}`), then delete it."
            )
        trash = self.root / TRASH
        copies = self._trash_copies(run_id)
        target = trash / (run_id if not copies else f"{run_id}.deleted-{max(copies) + 1}")
        try:
            trash.mkdir(exist_ok=True)
            os.rename(path, target)  # same filesystem: one step, and it never replaces a non-empty folder
        except OSError as exc:
            raise storage_error(target, exc) from None
        return target

    def _trash_copies(self, run_id: str) -> dict[int, Path]:
        """The copies of ``run_id`` in the trash by number: 1 for ``<id>``, n for ``<id>.deleted-n``."""
        trash = self.root / TRASH
        first = trash / run_id
        copies = {1: first} if first.is_dir() and not first.is_symlink() else {}
        if trash.is_dir():
            for p in trash.glob(f"{glob.escape(run_id)}.deleted-*"):
                m = TRASH_COPY_RE.fullmatch(p.name)
                if m and m["id"] == run_id and p.is_dir() and not p.is_symlink():
                    copies[int(m["n"])] = p
        return copies

    def trashed_run_ids(self) -> list[str]:
        """The entries of the trash: run ids, and ``<run_id>.deleted-n`` for later copies of the same id."""
        trash = self.root / TRASH
        if not trash.is_dir():
            return []
        return sorted((p.name for p in trash.iterdir() if p.is_dir() and not p.is_symlink()), reverse=True)

    def restore_run(self, name: str) -> str:
        """Bring a run back from the trash under its id; returns that id.

        ``name`` is a run id (its most recently deleted copy comes back) or a trash entry as listed by
        ``trashed_run_ids`` (``<run_id>.deleted-n``: that copy comes back, as ``<run_id>``)."""
        copy = TRASH_COPY_RE.fullmatch(name) if isinstance(name, str) else None
        run_id = validate_run_id(copy["id"] if copy else name)
        copies = self._trash_copies(run_id)
        source = copies.get(int(copy["n"])) if copy else copies.get(max(copies, default=0))
        if source is None:
            raise RunNotFound(
                f"run {name!r} is not in the trash of {self.root}; the trash holds {self.trashed_run_ids()}."
            )
        target = self.path(run_id)
        if target.exists():
            raise JobError(
                f"a run {run_id!r} already exists in {self.root}; restoring would replace it. Delete that run first "
                "(it goes to the trash too), then restore this one."
            )
        try:
            os.rename(source, target)
        except OSError as exc:
            raise storage_error(target, exc) from None
        return run_id

    # -- studies ----------------------------------------------------------------------------------
    def study_path(self, study_id: str) -> Path:
        return self.root / STUDIES / validate_run_id(study_id)

    def write_study(self, study_id: str, data: dict) -> None:
        write_json_atomic(self.study_path(study_id) / STUDY_FILE, data)

    def read_study(self, study_id: str) -> dict:
        data = read_json(self.study_path(study_id) / STUDY_FILE)
        if not isinstance(data, dict):
            raise RunNotFound(
                f"study {study_id!r} was not found in {self.root / STUDIES}; `python -m core study list` lists studies."
            )
        return data

    def study_ids(self) -> list[str]:
        root = self.root / STUDIES
        if not root.is_dir():
            return []
        return sorted((p.name for p in root.iterdir() if (p / STUDY_FILE).is_file()), reverse=True)

    def study_report_dir(self, study_id: str) -> Path:
        """Where a study's report and its charts are written."""
        return self.study_path(study_id) / "report"

    # -- log --------------------------------------------------------------------------------------
    def read_log_tail(self, run_id: str, max_lines: int = 50) -> str:
        try:
            lines = self.log_path(run_id).read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-max_lines:])
