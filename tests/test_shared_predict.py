"""Side-by-side prediction: runs whose bottom layers are the same frozen pretrained weights compute them once.

Real tiny runs (MiniLM cut to two layers, so that freeze_lower k=1 shares less than the whole backbone), trained
a few steps each: the shared computation must give the probabilities each run gives alone, share exactly the
layers it should, and never share a run whose frozen weights are not the pretrained backbone's.
"""

from __future__ import annotations

import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import core.predict
import core.shared_predict
from core.config import TaskConfig
from core.files import write_json_atomic
from core.lean import LeanLayer
from core.predict import Predictor
from core.records import RunState
from core.shared_predict import (
    NO_PARTNER,
    frozen_claim,
    plan_sharing,
    predict_side_by_side,
    side_by_side_probabilities,
)
from core.store import RunStore
from core.train import train_run
from tests.conftest import tiny_config
from tests.dashboard_fixtures import app, no_problem, one

BACKBONE = "minilm-l6:2"
TEXTS = [
    "The central bank raised interest rates again.",
    "A warm, funny and beautifully acted film.",
    "ok",
    "Shares fell sharply on Wall Street after the announcement, and the dollar slid against the yen too.",
    "a dull , lifeless movie",
]
RUNS = {  # name -> (strategy, extra config)
    "frozen_backbone": ("frozen_backbone", {}),
    "frozen_all": ("frozen_all", {}),
    "freeze_lower_1": ("freeze_lower", {"freeze_layers": 1}),
    "full_finetune": ("full_finetune", {}),
    "lora": ("lora", {}),
}
SMALL = dict(  # one step on 8 examples per task: what is checked here is prediction, not learning
    tasks=[
        TaskConfig(name="topic", dataset="bbc_topics", max_train_examples=8),
        TaskConfig(name="sentiment", dataset="rt_sentiment", max_train_examples=8),
    ],
    max_eval_examples=10,
    max_test_examples=10,
    max_steps=1,
    backbone=BACKBONE,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    store = RunStore(tmp_path_factory.mktemp("shared") / "runs")
    ids = {}
    for name, (strategy, extra) in RUNS.items():
        cfg = tiny_config(name=name, strategy=strategy, **SMALL, **extra)
        ids[name] = store.create_run(cfg)
        assert train_run(store, ids[name]) == RunState.COMPLETED, store.read_status(ids[name])
    # A frozen backbone on top of the fine-tuned run: its "frozen" weights are not the pretrained ones.
    cfg = tiny_config(name="init_from", strategy="frozen_backbone", init_from=ids["full_finetune"], **SMALL)
    ids["init_from"] = store.create_run(cfg)
    assert train_run(store, ids["init_from"]) == RunState.COMPLETED
    return {"root": store.root, "ids": ids}


@pytest.fixture(scope="module")
def predictors(runs) -> dict[str, Predictor]:
    store = RunStore(runs["root"])
    return {name: Predictor.from_run(store, run_id, device="cpu") for name, run_id in runs["ids"].items()}


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[t] - b[t]).abs().max()) for t in a)


MIX = ["frozen_backbone", "frozen_all", "freeze_lower_1", "full_finetune", "lora"]


def test_the_plan_shares_exactly_the_frozen_pretrained_layers(runs, predictors):
    chosen = [predictors[n] for n in MIX]
    ids = runs["ids"]
    plan = plan_sharing(chosen)
    assert plan.labels == [ids[n] for n in MIX]
    assert len(plan.groups) == 1, plan.describe()
    group = plan.groups[0]
    # The deepest first: it computes the shared layers. Both full-backbone runs share both layers; k=1 branches
    # off after layer 0 and computes its own layer 1.
    assert group.run_ids[:2] == [ids["frozen_backbone"], ids["frozen_all"]]
    assert group.depths == {ids["frozen_backbone"]: 2, ids["frozen_all"]: 2, ids["freeze_lower_1"]: 1}
    assert group.shared_layers == 2
    # LoRA rides: its rows go through both layers' pretrained weights with the frozen stream's, plus its adapters.
    assert group.riders == [ids["lora"]] and group.run_ids[-1] == ids["lora"] and group.layers == 2
    assert group.layer_passes_saved == 5  # alone: 2 + 2 + 1 frozen layer passes + 2 LoRA passes; shared: 2
    assert set(plan.alone) == {ids["full_finetune"]}
    assert "full fine-tuning" in plan.alone[ids["full_finetune"]]
    assert "LoRA" in plan.note(ids["lora"]) and "bottom 1 layer(s)" in plan.note(ids["freeze_lower_1"])
    assert plan.note(ids["full_finetune"]) is None


def test_a_lora_run_rides_past_the_frozen_stream_and_frozen_runs_alone_stop_lower(runs, predictors):
    """Two groups' edge cases: the LoRA run with only a freeze_lower run (the frozen stream goes to k=1, the
    rider on through layer 1 on its own base weights); and frozen runs with no rider stop at the second-deepest
    frozen layer."""
    ids = runs["ids"]
    plan = plan_sharing([predictors["freeze_lower_1"], predictors["lora"]])
    (group,) = plan.groups
    assert group.depths == {ids["freeze_lower_1"]: 1} and group.shared_layers == 1 and group.passes == 2
    assert group.layer_passes_saved == 1  # alone: 1 + 2; together: 2
    plan = plan_sharing([predictors["frozen_backbone"], predictors["freeze_lower_1"]])
    (group,) = plan.groups
    assert group.shared_layers == 1 and group.riders == [] and group.layer_passes_saved == 1
    chosen = [predictors[n] for n in ("freeze_lower_1", "lora", "full_finetune")]
    shared = side_by_side_probabilities(chosen, TEXTS, batch_size=2)
    for name in ("freeze_lower_1", "lora"):
        alone = predictors[name].probabilities(TEXTS, batch_size=2)
        assert _max_difference(shared[ids[name]], alone) <= 1e-5, name


def test_shared_prediction_gives_the_probabilities_of_each_run_alone(predictors, runs):
    def layer_1(name: str) -> torch.Tensor:
        return predictors[name].model.backbone.encoder.layer[1].output.dense.weight

    # Meaningful only because k=1's trained layer 1 is not the shared one: taking it from the shared pass would fail.
    assert not torch.equal(layer_1("freeze_lower_1"), layer_1("frozen_backbone"))
    assert torch.equal(layer_1("frozen_all"), layer_1("frozen_backbone"))
    chosen = [predictors[n] for n in MIX]
    shared = side_by_side_probabilities(chosen, TEXTS, batch_size=2)  # three batches, each padded differently
    for name in MIX:
        alone = predictors[name].probabilities(TEXTS, batch_size=2)
        assert _max_difference(shared[runs["ids"][name]], alone) <= 1e-5, name


def test_predict_side_by_side_answers_what_predict_answers(predictors, runs):
    chosen = [predictors[n] for n in MIX]
    together = predict_side_by_side(chosen, TEXTS[:2])
    assert list(together) == [runs["ids"][n] for n in MIX]
    for name in MIX:
        alone = predictors[name].predict(TEXTS[:2])
        got = together[runs["ids"][name]]
        assert [r["text"] for r in got] == [r["text"] for r in alone]
        assert [r["tokens"] for r in got] == [r["tokens"] for r in alone]
        for g, a in zip(got, alone):
            assert {t: v["label"] for t, v in g["tasks"].items()} == {t: v["label"] for t, v in a["tasks"].items()}
            for task in a["tasks"]:
                for label, p in a["tasks"][task]["probabilities"].items():
                    assert abs(g["tasks"][task]["probabilities"][label] - p) <= 1e-5


def _count_layer_rows(monkeypatch, predictors: list[Predictor]) -> dict[int, list[int]]:
    """Rows (sentences) each of these predictors' lean layers computes per call, by the id of its model."""
    owner = {id(layer): id(p.model) for p in predictors for layer in p.lean().layers}
    rows: dict[int, list[int]] = {id(p.model): [] for p in predictors}
    original = LeanLayer.forward

    def counted(self, hidden, *args, **kwargs):
        rows[owner[id(self)]].append(hidden.shape[0])
        return original(self, hidden, *args, **kwargs)

    monkeypatch.setattr(LeanLayer, "forward", counted)
    return rows


def test_shared_layers_are_computed_once_per_batch(predictors, monkeypatch):
    chosen = [predictors[n] for n in MIX]
    rows = _count_layer_rows(monkeypatch, chosen)
    side_by_side_probabilities(chosen, TEXTS, batch_size=64)  # one batch of 5 sentences
    shared = {key: list(v) for key, v in rows.items()}
    for v in rows.values():
        v.clear()
    for p in chosen:
        p.probabilities(TEXTS)
    by = {n: id(predictors[n].model) for n in MIX}
    assert rows == {key: [5, 5] for key in by.values()}  # two layers each, every run alone
    # The deepest frozen run's weights carry the frozen stream (5 rows) and LoRA's rows (5 more) through both
    # layers, once; LoRA's own base weights are never read.
    assert shared[by["frozen_backbone"]] == [10, 10], "both layers once, frozen stream and LoRA rows together"
    assert shared[by["frozen_all"]] == [], "frozen_all takes every layer from the shared computation"
    assert shared[by["lora"]] == [], "LoRA rides the pretrained weights of the shared pass"
    assert shared[by["freeze_lower_1"]] == [5], "k=1 computes only its own (trained) layer 1"
    assert shared[by["full_finetune"]] == [5, 5], "a run that shares nothing computes everything"


def test_a_run_started_from_another_run_is_not_shared(predictors, runs):
    chosen = [predictors[n] for n in ("frozen_backbone", "frozen_all", "init_from")]
    plan = plan_sharing(chosen)
    init_from = runs["ids"]["init_from"]
    assert "started from run" in plan.alone[init_from]
    assert [set(g.run_ids) for g in plan.groups] == [{runs["ids"]["frozen_backbone"], runs["ids"]["frozen_all"]}]
    shared = side_by_side_probabilities(chosen, TEXTS)
    assert _max_difference(shared[init_from], predictors["init_from"].probabilities(TEXTS)) <= 1e-5


def test_a_checkpoint_holding_frozen_layers_is_not_shared(runs, tmp_path):
    """A delta checkpoint with a tensor for a layer the strategy keeps frozen: it was tampered with (or written by
    something else); what it holds is loaded over the pretrained weights, so it must predict alone."""
    root = tmp_path / "runs"
    shutil.copytree(runs["root"], root)
    store = RunStore(root)
    run_id = runs["ids"]["frozen_backbone"]
    weights = store.checkpoint_dir(run_id) / "model.safetensors"
    tensors = load_file(str(weights))
    name = "backbone.encoder.layer.0.output.dense.bias"
    tensors[name] = torch.full((384,), 0.5)
    save_file(tensors, str(weights), metadata={"format": "1", "step": "1"})
    tampered = Predictor.from_run(store, run_id, device="cpu")
    assert torch.equal(tampered.model.backbone.encoder.layer[0].output.dense.bias, tensors[name])
    others = [Predictor.from_run(store, runs["ids"][n], device="cpu") for n in ("frozen_all", "freeze_lower_1")]
    plan = plan_sharing([tampered, *others])
    assert "kept frozen" in plan.alone[run_id], plan.describe()
    assert [len(g.run_ids) for g in plan.groups] == [2] and run_id not in plan.groups[0].depths


def test_frozen_weights_that_differ_from_the_pretrained_ones_are_not_shared(runs, predictors):
    """Checkpoint and config say "frozen and pretrained", but the weights in memory differ (a changed package,
    a hand-edited model): the hashes checked against the pretrained backbone catch it."""
    store = RunStore(runs["root"])
    changed = Predictor.from_run(store, runs["ids"]["frozen_backbone"], device="cpu")
    with torch.no_grad():
        changed.model.backbone.encoder.layer[1].attention.self.query.weight[0, 0] += 1e-3
    assert changed.frozen_claim.layers == 2, "the configuration and the checkpoint alone would share it"
    plan = plan_sharing([predictors["frozen_all"], changed])
    assert plan.groups == [] and "differ from the pretrained" in plan.alone[runs["ids"]["frozen_backbone"]]
    assert plan.alone[runs["ids"]["frozen_all"]] == NO_PARTNER
    assert plan_sharing([predictors["frozen_all"], predictors["frozen_backbone"]]).groups, "the sound ones share"


def test_int8_gradual_unfreeze_and_bitfit_never_share(runs, predictors, tmp_path):
    store = RunStore(runs["root"])
    run_id = runs["ids"]["frozen_all"]
    write_json_atomic(store.int8_path(run_id), {"agreement": 1.0, "n": 40, "allowed": True})
    try:
        fast = Predictor.from_run(store, run_id, int8=True)
    finally:
        store.int8_path(run_id).unlink()
    plan = plan_sharing([predictors["frozen_backbone"], fast])
    assert plan.groups == [] and "int8" in plan.alone[run_id]
    other = RunStore(tmp_path / "runs")
    meta = {"weights": "delta", "backbone": BACKBONE}
    for strategy in ("gradual_unfreeze", "bitfit"):
        claim = frozen_claim(other, other.create_run(tiny_config(strategy=strategy, backbone=BACKBONE)), meta, 2)
        assert claim.layers is None and claim.reason, strategy
    claim = frozen_claim(other, other.create_run(tiny_config(strategy="frozen_backbone", backbone=BACKBONE)), meta, 2)
    assert claim.layers is None, "no checkpoint to check: unsure, so not shared"


def test_one_verification_per_predictor(predictors, monkeypatch):
    """Hashing the frozen layers happens once per predictor, not on every prediction."""
    chosen = [predictors[n] for n in ("frozen_backbone", "frozen_all")]
    plan_sharing(chosen)
    hashed = []
    monkeypatch.setattr(core.shared_predict, "_fingerprint", lambda module: hashed.append(module) or "x")
    plan = plan_sharing(chosen)
    side_by_side_probabilities(chosen, TEXTS[:1], plan=plan)
    assert not hashed and len(plan.groups) == 1


def test_playground_computes_the_shared_layers_once(monkeypatch, runs):
    """The Playground's side-by-side columns come from one shared computation, with a note saying so."""
    calls = []
    original = core.predict.Predictor.probabilities

    def counted(self, texts_, *args, **kwargs):
        calls.append(self.run_id)
        return original(self, texts_, *args, **kwargs)

    monkeypatch.setattr(core.predict.Predictor, "probabilities", counted)
    ids = runs["ids"]
    chosen = [ids["frozen_backbone"], ids["frozen_all"], ids["freeze_lower_1"], ids["lora"]]
    at = app(monkeypatch, runs["root"], "pages/playground.py")
    one(at.multiselect, "Runs").set_value(chosen).run()
    first = f"Shared layers, computed once ({time.time()})."
    calls.clear()
    one(at.text_area, "Sentences, one a line").set_value(f"{first}\nA second line.").run()
    no_problem(at)
    assert calls == [], "every run computes with the others: LoRA rides the pretrained weights"
    notes = [c.value for c in at.caption if c.value.startswith("Shared:")]
    assert len(notes) == 4 and sum("bottom 1 layer(s)" in n for n in notes) == 1, notes
    assert sum("LoRA adapters" in n for n in notes) == 1, notes
    lines = [m.value for m in at.markdown if ": **" in m.value]
    assert len(lines) == 4 * 2 * 2, "every run, both sentences, both tasks"
    predictor = Predictor.from_run(RunStore(runs["root"]), ids["freeze_lower_1"], device="cpu")
    alone = predictor.predict([first, "A second line."])
    column = [c for c in at.columns if any(m.value == "**freeze_lower_1**" for m in c.markdown)][-1]
    shown = [m.value for m in column.markdown if ": **" in m.value]
    assert shown == [f"{t}: **{r['tasks'][t]['label']}**" for r in alone for t in r["tasks"]]


def test_lora_adapters_on_the_embeddings_are_never_shared(runs, predictors, tmp_path):
    """Every run in a group reads one embeddings output: a LoRA run that adapted the embeddings predicts alone."""
    store = RunStore(tmp_path / "runs")
    cfg = tiny_config(name="lora_emb", strategy="lora", lora_targets=["word_embeddings", "query"], **SMALL)
    run_id = store.create_run(cfg)
    assert train_run(store, run_id) == RunState.COMPLETED
    predictor = Predictor.from_run(store, run_id, device="cpu")
    assert predictor.frozen_claim.layers is None and "embeddings" in predictor.frozen_claim.reason
    plan = plan_sharing([predictors["frozen_backbone"], predictor])
    assert plan.groups == [] and "embeddings" in plan.alone[run_id]
    shared = side_by_side_probabilities([predictors["frozen_backbone"], predictor], TEXTS)
    assert _max_difference(shared[run_id], predictor.probabilities(TEXTS)) <= 1e-5
