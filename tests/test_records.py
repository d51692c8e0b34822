"""Typed run records and the run lifecycle: allowed transitions, refused ones, tolerant hydration."""

from __future__ import annotations

import json
import os

import pytest

from core.errors import FreezeLabError, JobError, TransitionError, user_message
from core.records import TRANSITIONS, Progress, RecordError, RunState, RunStatus, RunSummary, TaskSummary
from core.store import RunStore
from tests.conftest import tiny_config

# The lifecycle as the docs state it (core/records.py): written out again here, so a change to the table
# is a visible, deliberate change to this test too.
ALLOWED = {
    ("queued", "running"), ("queued", "stopped"), ("queued", "failed"),
    ("running", "running"), ("running", "completed"), ("running", "failed"), ("running", "stopped"),
    ("running", "queued"),
    ("stopped", "queued"), ("stopped", "running"),
    ("failed", "queued"), ("failed", "running"), ("failed", "failed"),
}  # fmt: skip


def test_transition_table_is_the_documented_lifecycle():
    table = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == ALLOWED
    assert not TRANSITIONS[RunState.COMPLETED]  # a completed run never changes state again


def _run_in_state(store: RunStore, state: RunState) -> str:
    """A real run folder walked through allowed transitions to ``state``."""
    run_id = store.create_run(tiny_config())
    path = {
        RunState.QUEUED: [],
        RunState.RUNNING: [RunState.RUNNING],
        RunState.COMPLETED: [RunState.RUNNING, RunState.COMPLETED],
        RunState.FAILED: [RunState.RUNNING, RunState.FAILED],
        RunState.STOPPED: [RunState.RUNNING, RunState.STOPPED],
    }[state]
    for step in path:
        store.transition(run_id, step)
    return run_id


@pytest.mark.parametrize("source", list(RunState))
@pytest.mark.parametrize("target", list(RunState))
def test_store_enforces_every_transition(store, source, target):
    run_id = _run_in_state(store, source)
    allowed = (source.value, target.value) in ALLOWED
    if allowed:
        status = store.transition(run_id, target, note="moved")
        assert store.read_status(run_id).state == target == status.state
        assert store.read_status(run_id).note == "moved"
    else:
        with pytest.raises(TransitionError, match=f"is {source.value}; it cannot become {target.value}"):
            store.transition(run_id, target)
        assert store.read_status(run_id).state == source  # nothing was written


def test_expect_guards_a_transition(store):
    run_id = _run_in_state(store, RunState.STOPPED)
    with pytest.raises(TransitionError):
        store.transition(run_id, RunState.FAILED, expect={RunState.RUNNING})
    assert store.read_status(run_id).state == RunState.STOPPED


def test_update_status_refuses_state_and_keeps_other_fields(store):
    run_id = store.create_run(tiny_config(), backend="local", queued_at=12.5)
    with pytest.raises(ValueError, match="transition"):
        store.update_status(run_id, state="completed")
    store.update_status(run_id, progress={"step": 3, "total_steps": 10}, pid=1234, custom_key="kept")
    status = store.read_status(run_id)
    assert status.state == RunState.QUEUED and status.backend == "local" and status.queued_at == 12.5
    assert status.progress == Progress(step=3, total_steps=10) and status.progress.fraction == 0.3
    assert status.pid == 1234 and status.extra == {"custom_key": "kept"}
    on_disk = json.loads((store.path(run_id) / "status.json").read_text())
    assert on_disk["state"] == "queued" and on_disk["custom_key"] == "kept" and on_disk["progress"]["step"] == 3


def test_status_round_trips_unknown_keys():
    raw = {"state": "running", "pid": 7, "progress": {"step": 1, "future_key": [1, 2]}, "from_the_future": True}
    status = RunStatus.from_dict(raw)
    assert status.state is RunState.RUNNING and status.progress.extra == {"future_key": [1, 2]}
    again = status.to_dict()
    assert again["from_the_future"] is True and again["progress"]["future_key"] == [1, 2] and again["pid"] == 7


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('"just a string"', "not a JSON object"),
        ("[1, 2]", "not a JSON object"),
        ('{"state": "exploded"}', "state is 'exploded'"),
        ('{"state": "running", "pid": "seven"}', "pid is 'seven'"),
        ('{"state": "running", "progress": {"step": "x"}}', "progress.step"),
        ('{"state": "running", "created', "not valid JSON"),
    ],
)
def test_damaged_status_marks_the_run_and_keeps_the_listing(store, content, reason):
    good = _run_in_state(store, RunState.COMPLETED)
    bad = store.create_run(tiny_config())
    (store.path(bad) / "status.json").write_text(content)
    records = {r.id: r for r in store.list_runs()}
    assert records[good].damaged is None and records[good].state == RunState.COMPLETED
    assert reason in records[bad].damaged
    assert store.state(bad) is None
    # A damaged run can always be deleted (it is not running), and restored.
    store.delete_run(bad)
    assert bad not in store.run_ids()
    store.restore_run(bad)
    assert bad in store.run_ids()


def test_damaged_summary_and_meta_are_reported_not_raised(store):
    run_id = _run_in_state(store, RunState.COMPLETED)
    (store.path(run_id) / "summary.json").write_text('{"tasks": {"topic": {"test_accuracy": "high"}}}')
    (store.path(run_id) / "meta.json").write_bytes(b"\xff\xfe not utf-8")
    record = store.record(run_id)
    assert "tasks.topic.test_accuracy" in record.damaged and "meta.json is not UTF-8" in record.damaged
    assert record.state == RunState.COMPLETED  # the status itself was fine
    store.update_meta(run_id, tags=["rescued"])  # saving tags repairs a damaged meta.json
    assert store.read_meta(run_id).tags == ["rescued"]


def test_metrics_reader_skips_lines_that_are_not_objects(store):
    run_id = store.create_run(tiny_config())
    store.append_metrics(run_id, {"kind": "eval", "step": 1})
    with open(store.path(run_id) / "metrics.jsonl", "ab") as fh:
        fh.write(b"null\n\xff\xfe\n[1]\n")
    store.append_metrics(run_id, {"kind": "eval", "step": 2})
    with open(store.path(run_id) / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "ev')  # a write in progress
    assert [r["step"] for r in store.read_metrics(run_id)] == [1, 2]
    store.truncate_metrics_after(run_id, 1)
    assert [r["step"] for r in store.read_metrics(run_id)] == [1]


def test_summary_round_trip_keeps_old_keys_and_omits_test_metrics_of_stopped_runs():
    stopped = RunSummary(run_id="r", state="stopped", tasks={"topic": TaskSummary(label_names=["a", "b"], n_train=4)})
    as_json = stopped.to_dict()
    assert "test_accuracy" not in as_json["tasks"]["topic"]
    assert RunSummary.from_dict(json.loads(json.dumps(as_json))) == stopped
    with pytest.raises(RecordError, match="summary.json holds list"):
        RunSummary.from_dict([])


def test_one_error_family_and_one_message_rule():
    assert issubclass(TransitionError, JobError) and issubclass(JobError, FreezeLabError)
    assert user_message(JobError("run x is running: cancel it first.")) == "run x is running: cancel it first."
    bug = user_message(KeyError("oops"))
    assert bug.startswith("Unexpected error (KeyError") and "bug" in bug


def test_read_statuses_with_a_cache_sees_every_change_and_forgets_deleted_runs(store):
    a, b = store.create_run(tiny_config(name="a")), store.create_run(tiny_config(name="b"))
    for run_id in (a, b):  # written a while ago: a file written in the last 2 s is always read again
        path = store.path(run_id) / "status.json"
        os.utime(path, (path.stat().st_atime - 10, path.stat().st_mtime - 10))
    cache: dict = {}
    first = store.read_statuses(cache)
    assert {first[a].state, first[b].state} == {RunState.QUEUED}
    store.transition(a, RunState.RUNNING)
    again = store.read_statuses(cache)
    assert again[a].state == RunState.RUNNING and again[b] is first[b]  # b unchanged: served from the cache
    store.delete_run(b)
    assert set(store.read_statuses(cache)) == {a} and set(cache) == {a}
    assert store.read_statuses() == store.read_statuses(cache)
