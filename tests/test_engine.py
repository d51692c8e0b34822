"""The training engine on the real backbone and real data: what each strategy freezes, what it writes."""

from __future__ import annotations

import functools
import json
import logging

import pytest
import torch

from core import checkpoint as ckpt
from core.config import ConfigError
from core.errors import TransitionError
from core.predict import Predictor
from core.records import RunState
from core.runtime import StopRequested
from core.store import METRICS_FILE
from core.strategies import STRATEGIES
from core.train import Trainer, learning_rate, train_run
from tests.conftest import tiny_config as conftest_tiny_config


def tiny_config(**overrides):
    """The shared tiny run, scored on 20 test examples per task (the engine's default is the whole test split)."""
    return conftest_tiny_config(**{"max_test_examples": 20, **overrides})


# Which groups each strategy must train (True) or keep bit-identical (False); task A is topic.
EXPECTED = {
    "frozen_all": {"embeddings": False, "layer.0": False, "head.topic": False, "head.sentiment": False},
    "frozen_backbone": {"embeddings": False, "layer.0": False, "head.topic": True, "head.sentiment": True},
    "freeze_head_a": {"embeddings": True, "layer.0": True, "head.topic": False, "head.sentiment": True},
    "freeze_head_b": {"embeddings": True, "layer.0": True, "head.topic": True, "head.sentiment": False},
    "freeze_lower": {"embeddings": False, "layer.0": False, "head.topic": True, "head.sentiment": True},
    "freeze_embeddings": {"embeddings": False, "layer.0": True, "head.topic": True, "head.sentiment": True},
    # One layer, a stage every 2 of 8 steps: heads, then layer.0 (step 2), then the embeddings (step 4).
    "gradual_unfreeze": {"embeddings": True, "layer.0": True, "head.topic": True, "head.sentiment": True},
    # BitFit and LoRA train a part of each layer: checked per parameter in test_partial_strategies.
    "bitfit": {"head.topic": True, "head.sentiment": True},
    "lora": {"head.topic": True, "head.sentiment": True},
    "full_finetune": {"embeddings": True, "layer.0": True, "head.topic": True, "head.sentiment": True},
}
OVERRIDES = {
    "freeze_lower": {"freeze_layers": 1, "backbone": "minilm-l6:2"},
    "gradual_unfreeze": {"unfreeze_every_steps": 2},
}


def _trainer(store, cfg) -> Trainer:
    """A run set up and ready to train, as its worker holds it (running, after train_run's start)."""
    run_id = store.create_run(cfg)
    store.transition(run_id, RunState.RUNNING)
    return Trainer(store, run_id, logging.getLogger("test"))


def _group(name: str) -> str:
    from core.model import group_of

    return group_of(name)


def test_every_strategy_is_covered():
    assert set(EXPECTED) == set(STRATEGIES)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_strategy_freezes_exactly_what_it_says(store, strategy):
    # freeze_lower with k=1 on a one-layer backbone freezes the whole backbone; k=1 of 2 layers is the real case.
    trainer = _trainer(store, tiny_config(strategy=strategy, **OVERRIDES.get(strategy, {})))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert trainer.run() == RunState.COMPLETED

    expected = dict(EXPECTED[strategy])
    if strategy == "freeze_lower":
        expected["layer.1"] = True
    changed: dict[str, bool] = {}
    for name, param in trainer.model.named_parameters():
        group = _group(name)
        same = torch.equal(before[name], param.detach())
        if group in expected and not expected[group]:
            assert same, f"{strategy}: frozen parameter {name} changed"
        changed[group] = changed.get(group, False) or not same
    for group, trains in expected.items():
        if trains:
            assert changed[group], f"{strategy}: no parameter of trainable group {group} changed"

    summary = store.read_summary(trainer.run_id)
    report = {g["group"]: g for g in summary.layers}
    for group, trains in expected.items():
        assert (report[group]["trainable"] > 0) == trains, (strategy, group)
    assert summary.trainable_params == sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert summary.total_params == sum(p.numel() for p in trainer.model.parameters())
    assert store.read_status(trainer.run_id).state == RunState.COMPLETED
    for task in ("topic", "sentiment"):
        t = summary.tasks[task]
        assert 0.0 <= t.test_accuracy <= 1.0 and 0.0 <= t.test_macro_f1 <= 1.0
        assert len(t.confusion_matrix) == len(t.label_names)
        assert sum(map(sum, t.confusion_matrix)) == t.n_test
        assert set(t.per_class) == set(t.label_names)


@pytest.mark.parametrize("strategy", ["bitfit", "lora"])
def test_partial_strategies_train_only_their_parameters(store, strategy):
    trainer = _trainer(store, tiny_config(strategy=strategy, backbone="minilm-l6:2"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())}
    backbone_changed = {n for n in changed if n.startswith("backbone.")}
    if strategy == "bitfit":
        assert backbone_changed and all(n.endswith(".bias") for n in backbone_changed)
        assert any(".layer.1." in n for n in backbone_changed)
    else:
        assert backbone_changed and all(".lora_" in n for n in backbone_changed)
        assert any("lora_B" in n for n in backbone_changed)
    summary = store.read_summary(trainer.run_id)
    assert 0 < summary.trainable_percent < 1.0  # both train well under 1% of the parameters


def test_gradual_unfreeze_changes_a_layer_only_after_its_unfreeze_step(store):
    def layer_changes(max_steps: int) -> tuple[dict[str, bool], str]:
        trainer = _trainer(
            store,
            tiny_config(
                strategy="gradual_unfreeze", backbone="minilm-l6:2", unfreeze_every_steps=3, max_steps=max_steps
            ),
        )
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.run()
        out: dict[str, bool] = {}
        for n, p in trainer.model.named_parameters():
            out[_group(n)] = out.get(_group(n), False) or not torch.equal(before[n], p.detach())
        return out, trainer.run_id

    # Steps 0-2 train the heads only; layer.1 (the top one) unfreezes at step 3, layer.0 at step 6.
    at3, _ = layer_changes(3)
    assert at3["head.topic"] and not at3["layer.1"] and not at3["layer.0"] and not at3["embeddings"]
    at4, run_id = layer_changes(4)
    assert at4["layer.1"] and not at4["layer.0"] and not at4["embeddings"]
    stages = [r for r in store.read_metrics(run_id) if r["kind"] == "unfreeze"]
    assert [(r["step"], r["unfrozen_layers"]) for r in stages][:2] == [(0, 0), (3, 1)]


def test_layer_lr_decay_gives_each_layer_the_rate_above_times_decay(store):
    trainer = _trainer(
        store,
        tiny_config(strategy="full_finetune", backbone="minilm-l6:2", layer_lr_decay=0.5, backbone_learning_rate=1e-4),
    )
    rate = functools.partial(learning_rate, trainer.model, trainer.cfg)
    assert rate("backbone.encoder.layer.1.output.dense.weight") == pytest.approx(1e-4)
    assert rate("backbone.encoder.layer.0.output.dense.weight") == pytest.approx(5e-5)
    assert rate("backbone.embeddings.word_embeddings.weight") == pytest.approx(2.5e-5)
    assert rate("heads.topic.classifier.weight") == trainer.cfg.head_learning_rate
    assert sorted({round(g["lr"], 10) for g in trainer.optimizer.param_groups}) == [2.5e-5, 5e-5, 1e-4, 5e-3]


def test_metrics_file_parses_and_curves_are_ordered(store):
    trainer = _trainer(store, tiny_config(strategy="full_finetune"))
    trainer.run()
    lines = (store.path(trainer.run_id) / METRICS_FILE).read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is complete JSON
    evals = [r for r in records if r["kind"] == "eval"]
    steps = sorted({r["step"] for r in evals})
    assert steps[0] == 0 and steps[-1] == trainer.plan.total_steps
    assert {r["task"] for r in evals} == {"topic", "sentiment"}
    assert all({"loss", "accuracy", "macro_f1", "epoch", "wall_seconds"} <= set(r) for r in evals)
    train = [r for r in records if r["kind"] == "train"]
    assert train and all(r["loss"] > 0 for r in train)
    throughput = [r for r in records if r["kind"] == "throughput"]
    assert throughput and all(r["tokens_per_second"] > 0 for r in throughput)


def test_partial_last_metrics_line_is_skipped(store):
    run_id = store.create_run(tiny_config())
    store.append_metrics(run_id, {"kind": "eval", "step": 0})
    with open(store.path(run_id) / METRICS_FILE, "a") as fh:
        fh.write('{"kind": "eval", "st')  # a writer caught mid-line
    assert store.read_metrics(run_id) == [{"kind": "eval", "step": 0}]


@pytest.mark.parametrize("strategy", ["frozen_backbone", "full_finetune", "bitfit", "lora", "gradual_unfreeze"])
def test_reloaded_checkpoint_predicts_exactly_like_the_trained_model(store, strategy):
    trainer = _trainer(store, tiny_config(strategy=strategy, **OVERRIDES.get(strategy, {})))
    trainer.run()
    texts = ["the central bank raised interest rates again", "a dull , lifeless film", "the striker scored twice"]
    in_memory = Predictor(trainer.model, trainer.tokenizer, {"max_length": 32}, torch.device("cpu"))
    reloaded = Predictor.from_run(store, trainer.run_id, device="cpu")
    a, b = in_memory.probabilities(texts), reloaded.probabilities(texts)
    for task in a:
        assert torch.equal(a[task], b[task]), task
    meta = ckpt.read_checkpoint_meta(store.checkpoint_dir(trainer.run_id))
    # Heads-only runs save a delta over the packaged backbone: a few KB instead of ~60 MB.
    assert meta["weights"] == "delta"
    size = ckpt.checkpoint_size_bytes(store.checkpoint_dir(trainer.run_id))
    if strategy in ("frozen_backbone", "bitfit", "lora"):
        assert size < 2_000_000
    assert store.has_checkpoint(trainer.run_id) and not store.has_train_state(trainer.run_id)


def test_scratch_backbone_saves_full_weights_and_reloads(store):
    trainer = _trainer(store, tiny_config(strategy="frozen_backbone", backbone="minilm-l6-scratch:1"))
    trainer.run()
    assert ckpt.read_checkpoint_meta(store.checkpoint_dir(trainer.run_id))["weights"] == "full"
    texts = ["markets fell sharply"]
    in_memory = Predictor(trainer.model, trainer.tokenizer, {"max_length": 32}, torch.device("cpu")).probabilities(
        texts
    )
    reloaded = Predictor.from_run(store, trainer.run_id, device="cpu").probabilities(texts)
    assert all(torch.equal(in_memory[t], reloaded[t]) for t in in_memory)


def test_init_from_keeps_the_source_head_and_freeze_head_a_leaves_it_untouched(store):
    first = _trainer(store, tiny_config(strategy="full_finetune"))
    first.run()
    second = _trainer(store, tiny_config(strategy="freeze_head_a", init_from=first.run_id))
    src = first.model.heads["topic"].classifier.weight.detach()
    assert torch.equal(second.model.heads["topic"].classifier.weight.detach(), src)
    second.run()
    assert torch.equal(second.model.heads["topic"].classifier.weight.detach(), src)
    summary = store.read_summary(second.run_id)
    topic = summary.tasks["topic"]
    assert topic.head_frozen and not topic.trained
    assert topic.val_accuracy_change is not None  # the drift of the frozen task is recorded


def test_stop_flag_stops_and_keeps_a_checkpoint(store):
    run_id = store.create_run(tiny_config(strategy="full_finetune"))
    store.request_stop(run_id)
    assert train_run(store, run_id) == RunState.STOPPED
    assert store.read_status(run_id).state == RunState.STOPPED
    assert (store.checkpoint_dir(run_id) / ckpt.WEIGHTS_FILE).is_file() and store.has_checkpoint(run_id)
    assert store.has_train_state(run_id)
    assert not store.stop_requested(run_id)
    summary = store.read_summary(run_id)
    assert summary.state == "stopped" and summary.steps == 0
    assert summary.tasks["topic"].test_accuracy is None and "test_accuracy" not in summary.to_dict()["tasks"]["topic"]


def test_a_stopped_run_resumes_from_its_checkpoint_as_if_never_stopped(store, monkeypatch):
    cfg = tiny_config(strategy="full_finetune")  # 8 steps: evaluate every 3, log every 2, checkpoint every 4
    straight = _trainer(store, cfg)
    straight.run()
    interrupted = _trainer(store, cfg)
    monkeypatch.setattr(store, "stop_requested", lambda run_id: interrupted.step >= 4)
    assert interrupted.run() == RunState.STOPPED
    monkeypatch.undo()
    run_id = interrupted.run_id
    # A record logged after the checkpoint (by a process that then died) is dropped on resume.
    store.append_metrics(run_id, {"kind": "train", "step": 5, "epoch": 0.625, "task": "topic", "loss": 9.9, "lr": 0})
    assert train_run(store, run_id, resume=True) == RunState.COMPLETED

    def records(rid: str, kind: str, *keys: str) -> list[tuple]:
        return [tuple(r[k] for k in keys) for r in store.read_metrics(rid) if r["kind"] == kind]

    a, b = straight.run_id, run_id
    assert records(b, "train", "step", "task", "loss", "lr") == records(a, "train", "step", "task", "loss", "lr")
    assert records(b, "throughput", "step") == records(a, "throughput", "step") == [(2,), (4,), (6,), (8,)]
    evals = records(b, "eval", "step", "task", "accuracy", "loss")
    assert [e for e in evals if e[0] != 4] == records(a, "eval", "step", "task", "accuracy", "loss")
    assert {e[0] for e in evals} == {0, 3, 4, 6, 8}  # the stop evaluated where it stopped
    sa, sb = store.read_summary(a), store.read_summary(b)
    assert (sb.steps, sb.examples_seen, sb.tokens_seen) == (sa.steps, sa.examples_seen, sa.tokens_seen)
    assert (sa.steps, sa.examples_seen) == (8, 64)  # the counts went on from the checkpoint's
    assert all(sb.tasks[t].test_loss == sa.tasks[t].test_loss for t in ("topic", "sentiment"))
    wa, wb = ckpt.load_weights(store.checkpoint_dir(a)), ckpt.load_weights(store.checkpoint_dir(b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    status = store.read_status(b)
    assert status.state == RunState.COMPLETED and status.progress.step == 8 and not store.has_train_state(b)


def test_a_completed_run_is_not_trained_again(store):
    trainer = _trainer(store, tiny_config(strategy="frozen_all"))  # nothing trains: zero steps
    assert trainer.run() == RunState.COMPLETED
    with pytest.raises(TransitionError, match="completed"):
        train_run(store, trainer.run_id)
    assert store.read_status(trainer.run_id).state == RunState.COMPLETED


@pytest.mark.parametrize("error", [StopRequested("stopped by SIGTERM"), RuntimeError("boom")], ids=["sigterm", "bug"])
def test_a_signal_or_a_bug_mid_run_is_recorded_by_train_run(store, monkeypatch, error):
    run_id = store.create_run(tiny_config(strategy="frozen_backbone"))  # 8 steps, a checkpoint every 4
    train_step = Trainer._train_step

    def step_then_fail(self, task, idx):
        if self.step == 5:
            raise error
        return train_step(self, task, idx)

    monkeypatch.setattr(Trainer, "_train_step", step_then_fail)
    status_before = store.read_status(run_id)
    if isinstance(error, StopRequested):
        assert train_run(store, run_id) == RunState.STOPPED
        status = store.read_status(run_id)
        assert status.state == RunState.STOPPED and status.note == "stopped by SIGTERM"
        assert store.has_train_state(run_id)
        assert ckpt.read_checkpoint_meta(store.checkpoint_dir(run_id))["step"] == 4  # the last periodic one
        assert "stopped: stopped by SIGTERM" in store.read_log_tail(run_id)
    else:
        with pytest.raises(RuntimeError, match="boom"):
            train_run(store, run_id)
        status = store.read_status(run_id)
        assert status.state == RunState.FAILED
        assert status.error == (
            "Unexpected error (RuntimeError: boom). This is a bug in FreezeLab; please report it. (details in train.log)"
        )
        assert "run failed" in store.read_log_tail(run_id, 200)
    assert status.finished_at >= status.started_at > status_before.created_at


def test_freeze_layers_beyond_depth_fails_the_run_with_a_clear_message(store):
    run_id = store.create_run(tiny_config(strategy="freeze_lower", freeze_layers=5))
    with pytest.raises(ConfigError):
        train_run(store, run_id)
    status = store.read_status(run_id)
    assert status.state == RunState.FAILED
    assert "freeze_layers=5" in status.error and "has 1 layer" in status.error
    assert not status.error.startswith("Unexpected error")  # a user error is shown as it is


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"head_learning_rate": 50.0}, "head_learning_rate=50.0 is out of range"),
        ({"backbone_learning_rate": -1e-5}, "backbone_learning_rate"),
        ({"strategy": "freeze_everything"}, "choose one of"),
        ({"strategy": "freeze_lower"}, "needs freeze_layers"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"epochs": float("nan")}, "epochs"),
    ],
)
def test_bad_config_is_named(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        tiny_config(**overrides).validate()


def test_config_round_trips_through_json(store):
    cfg = tiny_config(strategy="freeze_lower", freeze_layers=1, tags=["x"])
    run_id = store.create_run(cfg)
    assert store.read_config(run_id) == cfg


def test_embedding_cache_changes_speed_not_results(store):
    plain = _trainer(store, tiny_config(strategy="frozen_backbone", cache_frozen_backbone=False))
    plain.run()
    assert not plain.features.active
    first = _trainer(store, tiny_config(strategy="frozen_backbone"))
    assert first.features.heads_only and (first.features.hits, first.features.misses) == (0, 6)  # 2 tasks x 3 splits
    first.run()
    for name, param in plain.model.heads.named_parameters():
        assert torch.allclose(param, dict(first.model.heads.named_parameters())[name], atol=1e-5), name
    a, b = store.read_summary(plain.run_id), store.read_summary(first.run_id)
    for task in ("topic", "sentiment"):
        assert a.tasks[task].test_accuracy == b.tasks[task].test_accuracy
        assert a.tasks[task].confusion_matrix == b.tasks[task].confusion_matrix
    # Another seed on the same backbone and data reuses every split; another max length does not.
    again = _trainer(store, tiny_config(strategy="frozen_backbone", seed=1))
    assert (again.features.hits, again.features.misses) == (6, 0)
    other = _trainer(store, tiny_config(strategy="frozen_backbone", max_length=16))
    assert other.features.misses == 6
    # The cached run's checkpoint predicts like the uncached one's.
    texts = ["stocks rallied after the earnings report", "a tedious mess"]
    pa = Predictor.from_run(store, plain.run_id, device="cpu").probabilities(texts)
    pb = Predictor.from_run(store, first.run_id, device="cpu").probabilities(texts)
    assert all(torch.allclose(pa[t], pb[t], atol=1e-5) for t in pa)


def test_hidden_state_cache_for_freeze_lower_changes_speed_not_results(store):
    cfg = dict(strategy="freeze_lower", freeze_layers=1, backbone="minilm-l6:2")
    plain = _trainer(store, tiny_config(cache_frozen_backbone=False, **cfg))
    plain.run()
    assert plain.features.lower_k == 0
    cached = _trainer(store, tiny_config(**cfg))
    assert cached.features.lower_k == 1 and cached.features.misses == 6
    cached.run()
    for name, param in plain.model.named_parameters():
        other = dict(cached.model.named_parameters())[name]
        assert torch.allclose(param, other, atol=1e-4), name
    a, b = store.read_summary(plain.run_id), store.read_summary(cached.run_id)
    for task in ("topic", "sentiment"):
        assert a.tasks[task].confusion_matrix == b.tasks[task].confusion_matrix
    again = _trainer(store, tiny_config(seed=3, **cfg))
    assert (again.features.hits, again.features.misses) == (6, 0)


def test_int8_prediction_is_gated_by_measured_agreement(store):
    from core.predict import INT8_MIN_AGREEMENT, PredictError, int8_agreement

    trainer = _trainer(store, tiny_config(strategy="frozen_backbone"))
    trainer.run()
    report = int8_agreement(store, trainer.run_id)
    assert report["n"] == 40 and 0.0 <= report["agreement"] <= 1.0  # 20 test sentences per task
    assert store.int8_path(trainer.run_id).is_file()
    if report["agreement"] >= INT8_MIN_AGREEMENT:
        fast = Predictor.from_run(store, trainer.run_id, int8=True)
        assert set(fast.predict(["markets fell"])[0]["tasks"]) == {"topic", "sentiment"}
    else:
        with pytest.raises(PredictError, match="use full precision"):
            Predictor.from_run(store, trainer.run_id, int8=True)


def test_every_strategy_starts_from_the_same_heads(store):
    """Comparable runs: the same seed gives the same initial heads, adapters or not."""
    heads = {}
    for strategy in ("frozen_backbone", "lora", "full_finetune"):
        trainer = _trainer(store, tiny_config(strategy=strategy))
        heads[strategy] = trainer.model.heads["topic"].classifier.weight.detach().clone()
    assert torch.equal(heads["frozen_backbone"], heads["lora"])
    assert torch.equal(heads["frozen_backbone"], heads["full_finetune"])
