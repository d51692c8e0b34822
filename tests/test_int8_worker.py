"""The worker measures int8 agreement when a run completes (the Playground only reads it); study runs skip
it and ``python -m core int8 RUN`` measures any run on demand. Real worker processes, real quantisation."""

from __future__ import annotations

from core.predict import INT8_MIN_AGREEMENT, read_int8_report
from core.records import RunState
from tests.conftest import run_cli, tiny_config


def test_a_completed_run_has_its_int8_agreement_and_a_study_run_gets_it_on_demand(store):
    plain = store.create_run(tiny_config(name="served"))
    in_study = store.create_run(tiny_config(name="studied", tags=["study:s-1"]))
    for run_id in (plain, in_study):
        done = run_cli("_work", run_id, runs_dir=store.root)
        assert done.returncode == 0, done.stderr[-2000:]
        assert store.read_status(run_id).state == RunState.COMPLETED

    report = read_int8_report(store, plain)
    assert report is not None, "the worker measured int8 when the run completed"
    assert 0 < report["n"] <= 40  # two tasks, a 20-sentence test split each
    assert 0.0 <= report["agreement"] <= 1.0
    assert report["allowed"] == (report["agreement"] >= INT8_MIN_AGREEMENT)

    assert read_int8_report(store, in_study) is None, "study runs are not served: no int8 pass"
    out = run_cli("int8", in_study, runs_dir=store.root)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = read_int8_report(store, in_study)
    assert measured is not None and f"{measured['n']:,} test sentences" in out.stdout


def test_int8_of_a_run_that_does_not_exist_is_a_message(store):
    out = run_cli("int8", "no-such-run", runs_dir=store.root)
    assert out.returncode == 2
    assert "no-such-run" in out.stderr and "Traceback" not in out.stderr
