"""The imbalance, augmentation and study options in real tiny runs: each trains end to end with a frozen and a
fully trained backbone, and does what it promises (weights, schedules, data, records)."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter

import numpy as np
import pytest
import torch

from core import checkpoint as ckpt
from core.config import TaskConfig
from core.data import load_task_data
from core.errors import ConfigError, DataError
from core.imbalance import class_weights, curriculum_weights, inverse_size_weights
from core.records import RunState
from core.strategies import STRATEGIES
from core.train import LOG_VARIANCES_KEY, Trainer, load_datasets, train_run
from tests.conftest import tiny_config

STRATEGIES_TESTED = ["frozen_backbone", "full_finetune"]


def config(topic: dict | None = None, sentiment: dict | None = None, **overrides):
    """tiny_config (32 training examples per task, 8 steps) with per-task options, scored on 20 test examples."""
    tasks = [
        TaskConfig(name="topic", dataset="bbc_topics", **{"max_train_examples": 32, **(topic or {})}),
        TaskConfig(name="sentiment", dataset="rt_sentiment", **{"max_train_examples": 32, **(sentiment or {})}),
    ]
    return tiny_config(**{"tasks": tasks, "max_test_examples": 20, **overrides})


def _trainer(store, cfg) -> Trainer:
    run_id = store.create_run(cfg)
    store.transition(run_id, RunState.RUNNING)
    return Trainer(store, run_id, logging.getLogger("test"))


def _records(store, run_id: str, kind: str) -> list[dict]:
    return [r for r in store.read_metrics(run_id) if r["kind"] == kind]


BUNDLES = {
    "uniform+inverse_size": dict(
        sentiment={"max_train_examples": 16}, task_sampling="uniform", loss_weighting="inverse_size"
    ),
    "curriculum+repeat_cap+uncertainty": dict(
        sentiment={"max_train_examples": 8},
        task_sampling="curriculum",
        curriculum_target="limited",
        max_task_repeats=1.5,
        loss_weighting="uncertainty",
    ),
    "class_ratio+class_weights+balanced": dict(
        topic={"class_weighting": "inverse"},
        sentiment={"class_ratio": {"negative": 0.25}, "class_weighting": "effective", "class_balanced_sampling": True},
    ),
    "augment": dict(topic={"augment": "embedding"}, sentiment={"augment": "eda", "augment_copies": 2}, max_steps=8),
    "train_sample+early_stopping": dict(train_eval_examples=10, early_stopping_patience=50),
}


@pytest.mark.parametrize("strategy", STRATEGIES_TESTED)
@pytest.mark.parametrize("bundle", list(BUNDLES))
def test_each_option_trains_end_to_end(store, strategy, bundle):
    trainer = _trainer(store, config(strategy=strategy, **BUNDLES[bundle]))
    heads_before = {n: p.detach().clone() for n, p in trainer.model.heads.named_parameters()}
    assert trainer.run() == RunState.COMPLETED
    run_id, plan = trainer.run_id, trainer.plan
    assert any(not torch.equal(heads_before[n], p) for n, p in trainer.model.heads.named_parameters())
    summary = store.read_summary(run_id)
    sizes = {t: summary.tasks[t].n_train for t in ("topic", "sentiment")}
    for task in ("topic", "sentiment"):
        t = summary.tasks[task]
        assert 0.0 <= t.test_balanced_accuracy <= 1.0 and t.n_test == 20
    evals = _records(store, run_id, "eval")
    validation = [r for r in evals if r["split"] == "validation"]
    assert {r["step"] for r in validation} == {*range(0, plan.total_steps, 3), plan.total_steps}
    assert all(set(r["recall"]) == set(summary.tasks[r["task"]].label_names) for r in validation)
    assert all(
        r["balanced_accuracy"] == pytest.approx(np.mean([v for v in r["recall"].values()])) for r in validation
    )  # every class is in the validation split, so balanced accuracy is the mean recall
    steps = Counter(plan.batch(s)[0] for s in range(plan.total_steps))

    if bundle == "uniform+inverse_size":
        weights = _records(store, run_id, "loss_weights")
        expected = inverse_size_weights(sizes)
        assert expected["sentiment"] == pytest.approx(4 / 3)  # 1/16 against 1/32, mean 1
        assert {(r["task"], r["weight"]) for r in weights} == set(expected.items())
        assert plan.schedule.task_weights(0) == {"topic": 0.5, "sentiment": 0.5}
    elif bundle == "curriculum+repeat_cap+uncertainty":
        schedule = _records(store, run_id, "schedule")
        assert [r["step"] for r in schedule] == list(range(0, plan.total_steps, 2))  # each log step but the last
        for r in schedule:
            assert r["weights"] == curriculum_weights(r["step"], plan.total_steps, sizes, target="limited")
        assert steps["sentiment"] <= math.floor(1.5 * 1)  # 8 examples: one batch a pass, 1.5 passes
        learned = _records(store, run_id, "loss_weights")
        assert {r["task"] for r in learned} == {"topic", "sentiment"}
        assert any(r["log_variance"] != 0.0 for r in learned if r["step"] == plan.total_steps)
        meta = ckpt.read_checkpoint_meta(store.checkpoint_dir(run_id))
        assert meta[LOG_VARIANCES_KEY] == trainer.loss.log_variances()
    elif bundle == "class_ratio+class_weights+balanced":
        sentiment = trainer.tasks["sentiment"]
        assert Counter(sentiment.train.labels) == {1: 16, 0: 4}  # 16 of each before, a quarter of the negatives kept
        assert torch.equal(trainer.loss.class_weights["sentiment"], class_weights([4, 16], "effective"))
        topic_counts = np.bincount(trainer.tasks["topic"].train.labels, minlength=5).tolist()
        assert torch.equal(trainer.loss.class_weights["topic"], class_weights(topic_counts, "inverse"))
        drawn = [
            sentiment.train.labels[i]
            for s in range(plan.total_steps)
            for i in plan.batch(s)[1]
            if plan.batch(s)[0] == "sentiment"
        ]
        assert Counter(drawn) == {0: 10, 1: 10}  # one balanced pass of 20: the 4 negatives drawn 10 times
    elif bundle == "augment":
        assert (sizes["topic"], sizes["sentiment"]) == (64, 96)
    else:
        train = [r for r in evals if r["split"] == "train"]
        assert {r["step"] for r in train} == {r["step"] for r in validation}
        for task in ("topic", "sentiment"):
            last = [r for r in train if r["task"] == task][-1]
            assert summary.tasks[task].train_accuracy == last["accuracy"]
            predictions = store.read_test_predictions(run_id)[task]
            assert len(predictions["labels"]) == len(predictions["predictions"]) == 20
            correct = np.mean(np.equal(predictions["labels"], predictions["predictions"]))
            assert correct == pytest.approx(summary.tasks[task].test_accuracy)
        assert "early_stopped" not in summary.to_dict()


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s not in STRATEGIES_TESTED])
def test_every_other_strategy_takes_every_option_at_once(store, strategy):
    extra = {
        "freeze_lower": {"freeze_layers": 1, "backbone": "minilm-l6:2"},
        "gradual_unfreeze": {"unfreeze_every_steps": 2},
    }
    cfg = config(
        topic={"class_weighting": "effective", "augment": "both"},
        sentiment={"class_ratio": {"negative": 0.5}, "class_balanced_sampling": True, "augment": "eda"},
        strategy=strategy,
        task_sampling="curriculum",
        max_task_repeats=2,
        loss_weighting="uncertainty",
        train_eval_examples=10,
        early_stopping_patience=3,
        max_steps=4,
        **extra.get(strategy, {}),
    )
    trainer = _trainer(store, cfg)
    assert trainer.run() == RunState.COMPLETED
    summary = store.read_summary(trainer.run_id)
    assert all(t.test_balanced_accuracy is not None and t.train_accuracy is not None for t in summary.tasks.values())
    assert set(store.read_test_predictions(trainer.run_id)) == {"topic", "sentiment"}


def test_uncertainty_log_variances_move_and_resume_continues_them(store, monkeypatch):
    cfg = config(strategy="frozen_backbone", loss_weighting="uncertainty", head_learning_rate=0.05)
    straight = _trainer(store, cfg)
    straight.run()
    interrupted = _trainer(store, cfg)
    monkeypatch.setattr(store, "stop_requested", lambda run_id: interrupted.step >= 4)
    assert interrupted.run() == RunState.STOPPED
    monkeypatch.undo()
    saved = ckpt.read_checkpoint_meta(store.checkpoint_dir(interrupted.run_id))[LOG_VARIANCES_KEY]
    assert all(v != 0.0 for v in saved.values())  # they moved in 4 steps, and the checkpoint holds them
    assert train_run(store, interrupted.run_id, resume=True) == RunState.COMPLETED

    def curve(run_id):
        return [(r["step"], r["task"], r["log_variance"], r["weight"]) for r in _records(store, run_id, "loss_weights")]

    assert curve(interrupted.run_id) == curve(straight.run_id)
    assert [r[0] for r in curve(straight.run_id)] == [0, 0, 2, 2, 4, 4, 6, 6, 8, 8]
    final = {t: s for step, t, s, _ in curve(straight.run_id) if step == 8}
    assert final == ckpt.read_checkpoint_meta(store.checkpoint_dir(interrupted.run_id))[LOG_VARIANCES_KEY]
    assert final == straight.loss.log_variances()


def test_weighted_loss_equals_a_hand_computation(store):
    cfg = config(
        strategy="frozen_backbone",
        sentiment={"class_ratio": {"negative": 0.25}, "class_weighting": "inverse", "loss_weight": 2.0},
        loss_weighting="inverse_size",
    )
    trainer = _trainer(store, cfg)
    task, idx = next(
        trainer.plan.batch(s) for s in range(trainer.plan.total_steps) if trainer.plan.batch(s)[0] == "sentiment"
    )
    trainer.model.eval()  # no head dropout: the same logits twice
    logits, _ = trainer.features.train_logits(task, idx)
    labels = [trainer.tasks[task].train.labels[i] for i in idx]
    ce, total = trainer.loss(task, logits, torch.tensor(labels))
    # class weights: 4 negatives, 16 positives -> 1/n normalised to sum 2: [1.6, 0.4]
    w = [1.6, 0.4]
    log_p = torch.log_softmax(logits.detach().double(), dim=1)
    by_hand = -sum(w[y] * log_p[i, y].item() for i, y in enumerate(labels)) / sum(w[y] for y in labels)
    assert ce.item() == pytest.approx(by_hand, rel=1e-5)
    # task weights: loss_weight 2 x inverse size (20 sentiment against 32 topic examples, mean 1)
    inverse = (1 / 20) / ((1 / 20 + 1 / 32) / 2)
    assert total.item() == pytest.approx(2.0 * inverse * by_hand, rel=1e-5)


def test_class_ratio_cuts_only_that_class_of_the_training_split():
    plain = load_datasets(config())
    cut = load_datasets(config(sentiment={"class_ratio": {"negative": 0.1}}))
    a, b = plain["sentiment"], cut["sentiment"]
    assert a.validation == b.validation and a.test == b.test and plain["topic"] == cut["topic"]
    positives = [t for t, y in zip(a.train.texts, a.train.labels) if y == 1]
    assert [t for t, y in zip(b.train.texts, b.train.labels) if y == 1] == positives
    negatives = {t for t, y in zip(b.train.texts, b.train.labels) if y == 0}
    assert len(negatives) == round(0.1 * 16) and negatives <= set(a.train.texts)
    with pytest.raises(DataError, match=r"'neutral'.*\['negative', 'positive'\]"):
        load_datasets(config(sentiment={"class_ratio": {"neutral": 0.5}}))


def test_an_unknown_class_in_class_ratio_fails_the_run_naming_the_labels(store):
    run_id = store.create_run(config(sentiment={"class_ratio": {"neg": 0.5}}))
    with pytest.raises(DataError):
        train_run(store, run_id)
    error = store.read_status(run_id).error
    assert "'neg'" in error and "['negative', 'positive']" in error and not error.startswith("Unexpected")


def test_test_split_is_whole_unless_capped_and_validation_keeps_its_cap():
    whole = load_datasets(config(max_test_examples=None))["sentiment"]
    assert len(whole.validation) == 20
    assert whole.test == load_task_data("sentiment", "rt_sentiment").test  # every test example
    assert len(load_datasets(config(max_test_examples=50))["sentiment"].test) == 50


def test_augmentation_changes_only_training_texts_and_follows_the_seed(store):
    options = dict(topic={"augment": "both", "augment_copies": 2}, sentiment={"augment": "embedding"})
    setup = dict(strategy="frozen_backbone", cache_frozen_backbone=False)
    plain = _trainer(store, config(**setup))
    first = _trainer(store, config(**options, **setup))
    again = _trainer(store, config(**options, **setup))
    other_seed = _trainer(store, config(**options, **setup, seed=1))
    for task, copies in (("topic", 2), ("sentiment", 1)):
        base, aug = plain.tasks[task].data, first.tasks[task].data
        assert aug.validation == base.validation and aug.test == base.test
        assert first.tasks[task].test.input_ids == plain.tasks[task].test.input_ids
        assert aug.train.texts[:32] == base.train.texts and len(aug.train) == 32 * (1 + copies)
        assert aug.train.labels == base.train.labels + [y for y in base.train.labels for _ in range(copies)]
        assert sum(t != base.train.texts[i // copies] for i, t in enumerate(aug.train.texts[32:])) > 32 * copies // 2
        assert again.tasks[task].data.train == aug.train
        assert other_seed.tasks[task].data.train != aug.train


def test_early_stopping_ends_a_plateaued_run_with_its_test(store):
    # A head learning rate this small changes no prediction: validation accuracy is flat from step 0.
    cfg = config(strategy="frozen_backbone", head_learning_rate=1e-7, eval_every_steps=1, early_stopping_patience=2)
    trainer = _trainer(store, cfg)
    assert trainer.run() == RunState.COMPLETED
    summary = store.read_summary(trainer.run_id)
    assert (summary.steps, summary.total_steps) == (2, 8)
    assert summary.extra["early_stopped"]["step"] == 2 and summary.extra["early_stopped"]["best_step"] == 0
    assert summary.tasks["topic"].test_accuracy is not None and store.read_test_predictions(trainer.run_id)
    assert sorted({r["step"] for r in _records(store, trainer.run_id, "eval")}) == [0, 1, 2]
    assert store.read_status(trainer.run_id).state == RunState.COMPLETED


def test_setup_reports_its_phases(store, monkeypatch):
    phases = []
    update = store.update_status

    def spy(run_id, **fields):
        progress = fields.get("progress")
        if progress is not None and progress.phase:
            phases.append((progress.phase, progress.phase_done, progress.phase_total))
        return update(run_id, **fields)

    monkeypatch.setattr(store, "update_status", spy)
    trainer = _trainer(
        store, config(strategy="frozen_backbone", sentiment={"augment": "eda"}, cache_frozen_backbone=False)
    )
    assert ("augmenting", 0, 1) in phases and ("tokenizing", 0, 2) in phases and ("tokenizing", 2, 2) in phases
    assert store.read_status(trainer.run_id).progress.phase is None  # training: no setup phase any more


# -- the options on the command line and in sweeps ------------------------------------------------------------
def test_cli_flags_set_the_imbalance_options(tmp_path):
    from core.cli import build_parser, config_from_args
    from core.store import RunStore

    args = build_parser().parse_args(
        ["train", "--task-sampling", "curriculum", "--curriculum-target", "limited", "--max-task-repeats", "4",
         "--loss-weighting", "uncertainty", "--task-a-class-weighting", "effective", "--task-b-class-balanced",
         "--task-b-class-ratio", "negative=0.1", "--task-b-augment", "both", "--task-b-augment-copies", "3"]
    )  # fmt: skip
    cfg = config_from_args(args, RunStore(tmp_path))
    assert (cfg.task_sampling, cfg.curriculum_target, cfg.max_task_repeats, cfg.loss_weighting) == (
        "curriculum", "limited", 4.0, "uncertainty",
    )  # fmt: skip
    a, b = cfg.tasks
    assert (a.class_weighting, a.class_balanced_sampling, a.class_ratio, a.augment) == (
        "effective",
        False,
        None,
        "none",
    )
    assert (b.class_balanced_sampling, b.class_ratio, b.augment, b.augment_copies) == (
        True,
        {"negative": 0.1},
        "both",
        3,
    )
    bad = build_parser().parse_args(["train", "--task-b-class-ratio", "negative"])
    with pytest.raises(ConfigError, match="--task-b-class-ratio 'negative'.*CLASS=FRACTION"):
        config_from_args(bad, RunStore(tmp_path))


def test_sweep_varies_any_key_crossed_with_strategies_and_seeds():
    from core.sweeps import expand_sweep, parse_vary

    vary = parse_vary(['task_b.class_ratio={"negative": 0.1},null', "loss_weighting=fixed,uncertainty"])
    assert vary == {"task_b.class_ratio": [{"negative": 0.1}, None], "loss_weighting": ["fixed", "uncertainty"]}
    configs = expand_sweep(
        config(), sweep_id="sw", strategies=["frozen_backbone", "full_finetune"], seeds=[0, 1], vary=vary
    )
    assert len(configs) == 2 * 2 * 2 * 2
    grid = Counter((c.strategy, json.dumps(c.tasks[1].class_ratio), c.loss_weighting, c.seed) for c in configs)
    assert len(grid) == 16 and all(c.tasks[0].class_ratio is None for c in configs)
    assert configs[0].name == 'frozen_backbone-b.class_ratio={"negative":0.1}-loss_weighting=fixed-s0'
    for bad, fragment in ((["seed=1,2"], "--seeds"), (["nope=1"], "not a config key"), (["task_c.augment=eda"], "task_a.FIELD"),
                          (["task_b.augment=bogus"], "augment='bogus'"), (["loss_weighting"], "KEY=V1,V2")):  # fmt: skip
        with pytest.raises(ConfigError, match=fragment):
            expand_sweep(config(), sweep_id="sw", strategies=["frozen_backbone"], seeds=[0], vary=parse_vary(bad))
