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
    trainer = _trainer(store, tiny_config(strategy=strategy, **OVERRIDES.get(strategy, {})))
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


@pytest.mark.parametrize("strategy", ["bitfit", "lora"])
def test_partial_strategies_train_only_their_parameters(store, strategy):
    trainer = _trainer(store, tiny_config(strategy=strategy, backbone="minilm-l6:2"))
    trainer.setup()
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
    assert 0 < summary["trainable_percent"] < 1.0  # both train well under 1% of the parameters


def test_gradual_unfreeze_changes_a_layer_only_after_its_unfreeze_step(store):
    def layer_changes(max_steps: int) -> tuple[dict[str, bool], str]:
        trainer = _trainer(store, tiny_config(strategy="gradual_unfreeze", backbone="minilm-l6:2",
                                              unfreeze_every_steps=3, max_steps=max_steps))
        trainer.setup()
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
    trainer = _trainer(store, tiny_config(strategy="full_finetune", backbone="minilm-l6:2", layer_lr_decay=0.5,
                                          backbone_learning_rate=1e-4))
    trainer.setup()
    rate = trainer._learning_rate
    assert rate("backbone.encoder.layer.1.output.dense.weight") == pytest.approx(1e-4)
    assert rate("backbone.encoder.layer.0.output.dense.weight") == pytest.approx(5e-5)
    assert rate("backbone.embeddings.word_embeddings.weight") == pytest.approx(2.5e-5)
    assert rate("heads.topic.classifier.weight") == trainer.cfg.head_learning_rate
    assert sorted({round(g["lr"], 10) for g in trainer.optimizer.param_groups}) == [2.5e-5, 5e-5, 1e-4, 5e-3]


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


def test_embedding_cache_changes_speed_not_results(store):
    plain = _trainer(store, tiny_config(strategy="frozen_backbone", cache_frozen_backbone=False))
    plain.run()
    assert not plain.features.active
    first = _trainer(store, tiny_config(strategy="frozen_backbone"))
    first.setup()
    assert first.features.heads_only and (first.features.hits, first.features.misses) == (0, 6)  # 2 tasks x 3 splits
    first.run()
    for name, param in plain.model.heads.named_parameters():
        assert torch.allclose(param, dict(first.model.heads.named_parameters())[name], atol=1e-5), name
    a, b = store.read_summary(plain.run_id), store.read_summary(first.run_id)
    for task in ("topic", "sentiment"):
        assert a["tasks"][task]["test_accuracy"] == b["tasks"][task]["test_accuracy"]
        assert a["tasks"][task]["confusion_matrix"] == b["tasks"][task]["confusion_matrix"]
    # Another seed on the same backbone and data reuses every split; another max length does not.
    again = _trainer(store, tiny_config(strategy="frozen_backbone", seed=1))
    again.setup()
    assert (again.features.hits, again.features.misses) == (6, 0)
    other = _trainer(store, tiny_config(strategy="frozen_backbone", max_length=16))
    other.setup()
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
    cached.setup()
    assert cached.features.lower_k == 1 and cached.features.misses == 6
    cached.run()
    for name, param in plain.model.named_parameters():
        other = dict(cached.model.named_parameters())[name]
        assert torch.allclose(param, other, atol=1e-4), name
    a, b = store.read_summary(plain.run_id), store.read_summary(cached.run_id)
    for task in ("topic", "sentiment"):
        assert a["tasks"][task]["confusion_matrix"] == b["tasks"][task]["confusion_matrix"]
    again = _trainer(store, tiny_config(seed=3, **cfg))
    again.setup()
    assert (again.features.hits, again.features.misses) == (6, 0)


def test_int8_prediction_is_gated_by_measured_agreement(store):
    from core.predict import INT8_MIN_AGREEMENT, PredictError, int8_agreement

    trainer = _trainer(store, tiny_config(strategy="frozen_backbone"))
    trainer.run()
    report = int8_agreement(store, trainer.run_id)
    assert report["n"] == 40 and 0.0 <= report["agreement"] <= 1.0  # 20 test sentences per task
    assert (store.path(trainer.run_id) / "int8.json").is_file()
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
        trainer.setup()
        heads[strategy] = trainer.model.heads["topic"].classifier.weight.detach().clone()
    assert torch.equal(heads["frozen_backbone"], heads["lora"])
    assert torch.equal(heads["frozen_backbone"], heads["full_finetune"])
