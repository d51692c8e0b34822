"""Studies: each built-in design plans the runs it promises; identical runs are reused; a relaunch continues."""

from __future__ import annotations

import dataclasses

import pytest

from core import studies
from core.errors import ConfigError
from core.records import RunState
from tests.conftest import TINY_BACKBONE, tiny_config

SEEDS = [0, 1, 2]


def _base():
    return tiny_config(backbone=TINY_BACKBONE)


def _cells(design_id: str, scale: str = "quick", n_layers: int = 6) -> list[studies.Cell]:
    return list(studies.builtin_designs(studies.SCALES[scale], n_layers)[design_id].cells)


@pytest.mark.parametrize(
    ("design_id", "n_cells"),
    [("speed", 3), ("overfitting", 9), ("head_drift", 3), ("freeze_depth", 8), ("pretraining", 2), ("backbone", 3),
     ("multitask", 3), ("imbalance", 7), ("class_imbalance", 5)],
)  # fmt: skip
def test_each_builtin_design_plans_cells_times_seeds(design_id, n_cells):
    design = studies.builtin_designs(studies.SCALES["quick"], 6)[design_id]
    planned = studies.plan([design], _base(), SEEDS)
    assert len(design.cells) == n_cells
    assert len(planned) == n_cells * len(SEEDS)
    assert {(p.cell, p.seed) for p in planned} == {(c.label, s) for c in design.cells for s in SEEDS}
    for p in planned:
        assert p.config.seed == p.seed
        p.config.validate()
    # every group has exactly one reference cell
    groups = {}
    for c in design.cells:
        groups.setdefault(c.group, []).append(c.reference)
    assert all(refs.count(True) == 1 for refs in groups.values())


def test_designs_set_what_their_question_varies():
    ladder = {
        (p.config.strategy, p.config.tasks[0].max_train_examples)
        for p in studies.plan([studies.builtin_designs(studies.SCALES["quick"])["overfitting"]], _base(), [0])
    }
    assert ladder == {(s, n) for s in ("full_finetune", "freeze_lower", "frozen_backbone") for n in (100, 300, 1000)}
    depth = [
        p.config.freeze_layers
        for p in studies.plan([studies.builtin_designs(studies.SCALES["quick"], 6)["freeze_depth"]], _base(), [0])
        if p.config.strategy == "freeze_lower"
    ]
    assert depth == list(range(7))
    multitask = studies.plan([studies.builtin_designs(studies.SCALES["quick"])["multitask"]], _base(), [0])
    assert sorted(len(p.config.tasks) for p in multitask) == [1, 1, 2]
    imbalance = studies.plan([studies.builtin_designs(studies.SCALES["quick"])["imbalance"]], _base(), [0])
    assert {p.config.tasks[1].max_train_examples for p in imbalance} == {200}
    drift = studies.plan([studies.builtin_designs(studies.SCALES["quick"])["head_drift"]], _base(), [0])
    assert [p.start_from is not None for p in drift] == [False, True, True]  # the source is planned first


def test_custom_design_crosses_factors():
    design = studies.custom_design({"strategy": ["full_finetune", "frozen_backbone"], "max_length": [16, 32]})
    assert len(design.cells) == 4 and [c.reference for c in design.cells].count(True) == 1
    with pytest.raises(ConfigError):
        studies.custom_design({"strategy": []})


def test_bad_study_settings_name_the_problem(store):
    with pytest.raises(ConfigError, match="unknown study designs"):
        studies.create_study(store, _base(), designs=["telepathy"])
    with pytest.raises(ConfigError, match="scale"):
        studies.create_study(store, _base(), scale="huge")
    with pytest.raises(ConfigError, match="seed"):
        studies.create_study(store, _base(), designs=["speed"], seeds=[])


def test_launch_reuses_identical_runs_and_relaunch_queues_nothing(store):
    study = studies.create_study(store, _base(), designs=["speed"], seeds=[0, 1], name="speed test")
    # A run that already exists with the same config and seed as one cell: the study must reuse it.
    existing_cfg = studies.apply_overrides(_base(), study.design_objects()[0].cell("frozen_backbone").overrides)
    existing = store.create_run(dataclasses.replace(existing_cfg, seed=1, name="made by hand"))
    store.transition(existing, RunState.RUNNING)
    store.transition(existing, RunState.COMPLETED)
    planned = studies.launch(store, study, start_runner=False)
    assert len(planned) == 6
    reused = [p for p in planned if p.action == "reuse"]
    assert [p.run_id for p in reused] == [existing]
    assert len(store.run_ids()) == 6  # five new runs + the one that existed
    assert all(store.state(p.run_id) == RunState.QUEUED for p in planned if p.action == "new")
    again = studies.launch(store, studies.load_study(store, study.id), start_runner=False)
    assert {p.run_id for p in again} == {p.run_id for p in planned}
    assert len(store.run_ids()) == 6  # nothing queued twice
    assert studies.progress(store, studies.load_study(store, study.id)) == {"queued": 5, "completed": 1}


def test_relaunch_resumes_failed_runs_and_chains_start_from(store):
    study = studies.create_study(store, _base(), designs=["head_drift"], seeds=[0], name="drift")
    planned = studies.launch(store, study, start_runner=False)
    by_cell = {p.cell: p for p in planned}
    source = by_cell["two-task source"].run_id
    for label in ("control: keep training both tasks", "freeze head A, train B"):
        assert store.read_config(by_cell[label].run_id).init_from == source
    store.transition(source, RunState.RUNNING)
    store.transition(source, RunState.FAILED, error="killed")
    again = {p.cell: p for p in studies.launch(store, studies.load_study(store, study.id), start_runner=False)}
    assert again["two-task source"].action == "resume" and again["two-task source"].run_id == source
    assert store.state(source) == RunState.QUEUED
    assert len(store.run_ids()) == 3


def test_the_lite_scale_brings_its_run_settings_under_what_the_user_set():
    base = _base()
    lite = studies.scaled_base(base, "lite")
    assert {k: getattr(lite, k) for k in studies.LITE_SETTINGS} == studies.LITE_SETTINGS
    assert lite.tasks == base.tasks and lite.backbone == base.backbone
    kept = studies.scaled_base(dataclasses.replace(base, max_test_examples=200), "lite", {"max_test_examples"})
    assert kept.max_test_examples == 200 and kept.max_length == studies.LITE_SETTINGS["max_length"]
    assert studies.scaled_base(base, "quick") == base, "quick and full bring no settings"
    assert "500 test sentences per task" in studies.SCALES["lite"].describe_settings()
    with pytest.raises(ConfigError, match="scale"):
        studies.scaled_base(base, "huge")


def test_study_run_on_the_lite_scale_keeps_the_options_given(tmp_path):
    """The real CLI: ``--scale lite`` brings its settings; an option or a ``--set`` given on purpose wins."""
    from core.store import RunStore
    from tests.conftest import run_cli

    runs = tmp_path / "runs"
    args = ("study", "run", "--questions", "speed", "--scale", "lite", "--seeds", "0", "--no-runner")
    done = run_cli(*args, "--backbone", TINY_BACKBONE, "--max-length", "32", "--set", "max_test_examples=200",
                   runs_dir=runs)  # fmt: skip
    assert done.returncode == 0, done.stderr
    base = studies.load_study(RunStore(runs), done.stdout.strip().splitlines()[-1]).base_config
    assert base["max_length"] == 32 and base["max_test_examples"] == 200, "given on purpose: kept"
    assert base["max_eval_examples"] == 100 and base["eval_every_steps"] == 10, "not given: the scale's"
    assert "scale lite: 300 training examples per task" in done.stderr
    assert "kept your own max_length, max_test_examples" in done.stderr


@pytest.mark.parametrize("option", ["--max-train-examples", "--task-b-max-train-examples"])
def test_study_run_refuses_a_training_size_the_scale_would_overwrite(tmp_path, option):
    from core.store import RunStore
    from tests.conftest import run_cli

    runs = tmp_path / "runs"
    done = run_cli(
        "study", "run", "--questions", "speed", "--scale", "lite", option, "60", "--no-runner", runs_dir=runs
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{option} would have no effect" in done.stderr and "lite 300" in done.stderr
    assert RunStore(runs).study_ids() == [], "nothing created"


def test_a_config_file_counts_as_given_including_an_older_files_test_cap(tmp_path):
    """Keys of a ``--config`` file were set on purpose; a file from before ``max_test_examples`` existed caps
    its test split with ``max_eval_examples``, so that cap counts as given too."""
    import json

    from core.cli import build_parser, given_keys

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"max_eval_examples": 50, "strategy": "frozen_backbone"}))
    args = build_parser().parse_args(["study", "run", "--config", str(old), "--scale", "lite", "--set", "seed=3"])
    assert given_keys(args) == {"max_eval_examples", "max_test_examples", "strategy", "seed"}
    args = build_parser().parse_args(["study", "run", "--scale", "lite", "--max-length", "32"])
    assert given_keys(args) == {"max_length"}


def test_the_estimate_counts_distinct_runs_and_says_none_are_in_an_empty_store(tmp_path):
    """Cells of two questions can be the same run (full fine-tuning at the same size): they train once, and in an
    empty store none of them is "already in the store"."""
    from core.store import RunStore

    table = studies.builtin_designs(studies.SCALES["lite"], 6)
    planned = studies.plan([table["speed"], table["freeze_depth"]], _base(), [0, 1])
    store = RunStore(tmp_path / "runs")
    studies.match_existing(store, planned)
    est = studies.estimate(store, planned)
    distinct = {studies.run_key(p.config) for p in planned}
    assert est["runs_reused"] == 0
    assert est["runs"] == est["runs_to_train"] == len(distinct) < len(planned)
    assert est["cells_shared"] == len(planned) - len(distinct)
