"""The run store: one folder per run under a runs directory, small JSON files, append-only metrics.

    runs/<run_id>/config.json     the full RunConfig (enough to re-run it)
                  status.json     state, times, pid, progress, error (atomic writes)
                  metrics.jsonl   one JSON object a line, appended as training goes
                  summary.json    final results (atomic write)
                  meta.json       user-editable tags and notes
                  checkpoint/     safetensors weights, tokenizer, label names
                  train.log       the run's log
                  STOP            present when someone asked the run to stop
    runs/.trash/<run_id>/         deleted runs, recoverable

Readers tolerate missing files and a partial last metrics line: a run being written, or one whose
folder was deleted, never breaks a listing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TRASH = ".trash"


class RunNotFound(LookupError):
    pass


class InvalidRunId(ValueError):
    pass


def default_runs_dir() -> Path:
    return Path(os.environ.get("FREEZELAB_RUNS_DIR", "runs"))


def validate_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or ".." in run_id:
        raise InvalidRunId(
            f"run id {run_id!r} is not valid: use letters, digits, '.', '_' and '-' only (no paths), "
            "as listed by `python -m core runs`."
        )
    return run_id


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file in the same folder, then rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def slugify(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:limit].strip("-")


@dataclass
class RunRecord:
    """What listings need about a run, read from its small JSON files."""

    id: str
    config: dict
    status: dict
    summary: dict | None
    meta: dict = field(default_factory=dict)

    @property
    def state(self) -> str:
        return self.status.get("state", "unknown")

    def as_dict(self) -> dict:
        return {"id": self.id, "config": self.config, "status": self.status, "summary": self.summary, "meta": self.meta}


class RunStore:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()

    # -- paths ------------------------------------------------------------------------------------
    def path(self, run_id: str) -> Path:
        """The folder of a run (validated: it is always a direct child of the runs directory)."""
        validate_run_id(run_id)
        return self.root / run_id

    def existing_path(self, run_id: str) -> Path:
        path = self.path(run_id)
        if not (path / "config.json").is_file():
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

    # -- creation ---------------------------------------------------------------------------------
    def new_run_id(self, cfg: RunConfig) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        label = slugify(cfg.name) if cfg.name else slugify(cfg.strategy)
        return f"{stamp}-{label or 'run'}-{secrets.token_hex(2)}"

    def create_run(self, cfg: RunConfig, state: str = "queued", run_id: str | None = None) -> str:
        cfg.validate()
        self.root.mkdir(parents=True, exist_ok=True)
        run_id = validate_run_id(run_id or self.new_run_id(cfg))
        path = self.path(run_id)
        path.mkdir(parents=False, exist_ok=False)
        write_json_atomic(path / "config.json", cfg.to_dict())
        now = time.time()
        write_json_atomic(path / "status.json", {"state": state, "created_at": now, "updated_at": now})
        return run_id

    # -- status / summary / meta ------------------------------------------------------------------
    def read_config(self, run_id: str) -> RunConfig:
        return RunConfig.from_dict(read_json(self.existing_path(run_id) / "config.json"))

    def read_status(self, run_id: str) -> dict:
        return read_json(self.path(run_id) / "status.json", {}) or {}

    def update_status(self, run_id: str, **updates: Any) -> dict:
        path = self.existing_path(run_id) / "status.json"
        status = read_json(path, {}) or {}
        status.update(updates)
        status["updated_at"] = time.time()
        write_json_atomic(path, status)
        return status

    def read_summary(self, run_id: str) -> dict | None:
        return read_json(self.path(run_id) / "summary.json")

    def write_summary(self, run_id: str, summary: dict) -> None:
        write_json_atomic(self.existing_path(run_id) / "summary.json", summary)

    def read_meta(self, run_id: str) -> dict:
        return read_json(self.path(run_id) / "meta.json", {}) or {}

    def update_meta(self, run_id: str, tags: list[str] | None = None, notes: str | None = None) -> dict:
        meta = self.read_meta(run_id)
        if tags is not None:
            meta["tags"] = sorted({t.strip() for t in tags if t.strip()})
        if notes is not None:
            meta["notes"] = notes
        write_json_atomic(self.existing_path(run_id) / "meta.json", meta)
        return meta

    # -- metrics ----------------------------------------------------------------------------------
    def append_metrics(self, run_id: str, *records: dict) -> None:
        with open(self.existing_path(run_id) / "metrics.jsonl", "a", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record) + "\n")
            fh.flush()

    def read_metrics(self, run_id: str) -> list[dict]:
        """Every complete metrics line; a partial last line (a write in progress) is skipped."""
        try:
            text = (self.path(run_id) / "metrics.jsonl").read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        records = []
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    # -- listing ----------------------------------------------------------------------------------
    def run_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        ids = [p.name for p in self.root.iterdir() if p.is_dir() and RUN_ID_RE.match(p.name) and (p / "config.json").is_file()]
        return sorted(ids, reverse=True)

    def record(self, run_id: str) -> RunRecord:
        path = self.existing_path(run_id)
        return RunRecord(
            id=run_id,
            config=read_json(path / "config.json", {}) or {},
            status=read_json(path / "status.json", {}) or {},
            summary=read_json(path / "summary.json"),
            meta=read_json(path / "meta.json", {}) or {},
        )

    def list_runs(self) -> list[RunRecord]:
        records = []
        for run_id in self.run_ids():
            try:
                records.append(self.record(run_id))
            except RunNotFound:  # deleted between listing and reading
                continue
        return records

    # -- stop, delete, restore --------------------------------------------------------------------
    def request_stop(self, run_id: str) -> None:
        (self.existing_path(run_id) / "STOP").write_text(str(time.time()))

    def stop_requested(self, run_id: str) -> bool:
        return (self.path(run_id) / "STOP").exists()

    def clear_stop(self, run_id: str) -> None:
        (self.path(run_id) / "STOP").unlink(missing_ok=True)

    def delete_run(self, run_id: str) -> Path:
        """Move a run to the trash folder (recoverable with restore_run)."""
        path = self.existing_path(run_id)
        if self.read_status(run_id).get("state") == "running":
            raise ValueError(f"run {run_id} is running: cancel it first, then delete it.")
        trash = self.root / TRASH
        trash.mkdir(exist_ok=True)
        target = trash / run_id
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(path), str(target))
        return target

    def trashed_run_ids(self) -> list[str]:
        trash = self.root / TRASH
        return sorted((p.name for p in trash.iterdir() if p.is_dir()), reverse=True) if trash.is_dir() else []

    def restore_run(self, run_id: str) -> None:
        validate_run_id(run_id)
        source = self.root / TRASH / run_id
        if not source.is_dir():
            raise RunNotFound(f"run {run_id!r} is not in the trash of {self.root}.")
        if self.path(run_id).exists():
            raise ValueError(f"a run {run_id!r} already exists; cannot restore over it.")
        shutil.move(str(source), str(self.path(run_id)))

    # -- files ------------------------------------------------------------------------------------
    def checkpoint_dir(self, run_id: str) -> Path:
        return self.path(run_id) / "checkpoint"

    def log_path(self, run_id: str) -> Path:
        return self.path(run_id) / "train.log"

    def read_log_tail(self, run_id: str, max_lines: int = 50) -> str:
        try:
            lines = self.log_path(run_id).read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-max_lines:])
