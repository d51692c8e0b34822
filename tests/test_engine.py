"""The training engine on the real backbone and real data: what each strategy freezes, what it writes."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from core import checkpoint as ckpt
from core.config import ConfigError
from core.predict import Predictor
from core.strategies import STRATEGIES
from core.train import Trainer, train_run
from tests.conftest import tiny_config

# Which groups each strategy must train (True) or keep bit-identical (False); task A is topic.
EXPECTED = {
    "frozen_all": {"embeddings": False, "layer.0": False, "head.topic": False, "head.sentiment": False},
    "frozen_backbone": {"embeddings": False, "layer.0": False, "head.topic": True, "head.sentiment": True},
    "freeze_head_a": {"embeddings": True, "layer.0": True, "head.topic": False, "head.sentiment": True},
    "freeze_head_b": {"embeddings": True, "layer.0": True, "head.topic": True, "head.sentiment": False},
    "freeze_lower": {"embeddings": False, "layer.0": False, "head.topic": True, "head.sentiment": True},
    "full_finetune": {"embeddings": True, "layer.0": True, "head.topic": True, "head.sentiment": True},
}


def _trainer(store, cfg) -> Trainer:
    run_id = store.create_run(cfg)
    return Trainer(store, run_id, logging.getLogger("test"), resume=False, show_progress=False)


def _group(name: str) -> str:
    from core.model import group_of

    return group_of(name)


def test_every_strategy_is_covered():
    assert set(EXPECTED) == set(STRATEGIES)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_strategy_freezes_exactly_what_it_says(store, strategy):
    # freeze_lower with k=1 on a one-layer backbone freezes the whole backbone; k=1 of 2 layers is the real case.
    overrides = {"freeze_layers": 1, "backbone": "minilm-l6:2"} if strategy == "freeze_lower" else {}
    trainer = _trainer(store, tiny_config(strategy=strategy, **overrides))
    trainer.setup()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert trainer.run() == "completed"

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
    report = {g["group"]: g for g in summary["layers"]}
    for group, trains in expected.items():
        assert (report[group]["trainable"] > 0) == trains, (strategy, group)
    assert summary["trainable_params"] == sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert summary["total_params"] == sum(p.numel() for p in trainer.model.parameters())
    assert store.read_status(trainer.run_id)["state"] == "completed"
    for task in ("topic", "sentiment"):
        t = summary["tasks"][task]
        assert 0.0 <= t["test_accuracy"] <= 1.0 and 0.0 <= t["test_macro_f1"] <= 1.0
        assert len(t["confusion_matrix"]) == len(t["label_names"])
        assert sum(map(sum, t["confusion_matrix"])) == t["n_test"]
        assert set(t["per_class"]) == set(t["label_names"])


def test_metrics_file_parses_and_curves_are_ordered(store):
    trainer = _trainer(store, tiny_config(strategy="full_finetune"))
    trainer.run()
    lines = (store.path(trainer.run_id) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is complete JSON
    evals = [r for r in records if r["kind"] == "eval"]
    steps = sorted({r["step"] for r in evals})
    assert steps[0] == 0 and steps[-1] == trainer.total_steps
    assert {r["task"] for r in evals} == {"topic", "sentiment"}
    assert all({"loss", "accuracy", "macro_f1", "epoch", "wall_seconds"} <= set(r) for r in evals)
    train = [r for r in records if r["kind"] == "train"]
    assert train and all(r["loss"] > 0 for r in train)
    throughput = [r for r in records if r["kind"] == "throughput"]
    assert throughput and all(r["tokens_per_second"] > 0 for r in throughput)


def test_partial_last_metrics_line_is_skipped(store):
    run_id = store.create_run(tiny_config())
    store.append_metrics(run_id, {"kind": "eval", "step": 0})
    with open(store.path(run_id) / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "eval", "st')  # a writer caught mid-line
    assert store.read_metrics(run_id) == [{"kind": "eval", "step": 0}]


@pytest.mark.parametrize("strategy", ["frozen_backbone", "full_finetune"])
def test_reloaded_checkpoint_predicts_exactly_like_the_trained_model(store, strategy):
    trainer = _trainer(store, tiny_config(strategy=strategy))
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
    if strategy == "frozen_backbone":
        assert size < 2_000_000
    assert not (store.checkpoint_dir(trainer.run_id) / "train_state.json").exists()


def test_scratch_backbone_saves_full_weights_and_reloads(store):
    trainer = _trainer(store, tiny_config(strategy="frozen_backbone", backbone="minilm-l6-scratch:1"))
    trainer.run()
    assert ckpt.read_checkpoint_meta(store.checkpoint_dir(trainer.run_id))["weights"] == "full"
    texts = ["markets fell sharply"]
    in_memory = Predictor(trainer.model, trainer.tokenizer, {"max_length": 32}, torch.device("cpu")).probabilities(texts)
    reloaded = Predictor.from_run(store, trainer.run_id, device="cpu").probabilities(texts)
    assert all(torch.equal(in_memory[t], reloaded[t]) for t in in_memory)


def test_init_from_keeps_the_source_head_and_freeze_head_a_leaves_it_untouched(store):
    first = _trainer(store, tiny_config(strategy="full_finetune"))
    first.run()
    second = _trainer(store, tiny_config(strategy="freeze_head_a", init_from=first.run_id))
    second.setup()
    src = first.model.heads["topic"].classifier.weight.detach()
    assert torch.equal(second.model.heads["topic"].classifier.weight.detach(), src)
    second.run()
    assert torch.equal(second.model.heads["topic"].classifier.weight.detach(), src)
    summary = store.read_summary(second.run_id)
    topic = summary["tasks"]["topic"]
    assert topic["head_frozen"] and not topic["trained"]
    assert topic["val_accuracy_change"] is not None  # the drift of the frozen task is recorded


def test_stop_flag_stops_and_keeps_a_checkpoint(store):
    run_id = store.create_run(tiny_config(strategy="full_finetune"))
    store.request_stop(run_id)
    assert train_run(store, run_id) == "stopped"
    assert store.read_status(run_id)["state"] == "stopped"
    assert (store.checkpoint_dir(run_id) / "model.safetensors").is_file()
    assert (store.checkpoint_dir(run_id) / "train_state.json").is_file()


def test_freeze_layers_beyond_depth_fails_the_run_with_a_clear_message(store):
    run_id = store.create_run(tiny_config(strategy="freeze_lower", freeze_layers=5))
    with pytest.raises(ConfigError):
        train_run(store, run_id)
    status = store.read_status(run_id)
    assert status["state"] == "failed"
    assert "freeze_layers=5" in status["error"] and "only 1 layers" in status["error"]


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
