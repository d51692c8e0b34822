"""Benchmark: ``python -m core bench``. Prints figures and ratios; asserts nothing.

Each comparison runs both sides in this one process on the default data (Rotten Tomatoes sentiment for
the single-task comparisons), so the ratios are measured under the same conditions.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from core.config import RunConfig, TaskConfig
from core.records import RunState, RunSummary, TaskSummary
from core.store import RunStore


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - tick)
    return 2 * n**3 / min(times) / 1e9


def shape_matmul_gflops(backbone, rows: int, repeats: int = 5) -> float:
    """GFLOP/s of one training step's dense-layer matmuls at the run's own shapes: ``rows`` tokens through each
    of a layer's projections (query, key, value, attention output: hidden -> hidden; feed-forward:
    hidden -> intermediate -> hidden), forward (X W^T) and backward (dY W and dY^T X), each timed at its best
    of ``repeats``. What a step's matmuls could reach on this machine with nothing else in the step."""
    hidden, inner = backbone.config.hidden_size, backbone.config.intermediate_size
    flops = seconds = 0.0
    for fan_in, fan_out, count in ((hidden, hidden, 4), (hidden, inner, 1), (inner, hidden, 1)):
        x, w, dy = torch.randn(rows, fan_in), torch.randn(fan_out, fan_in), torch.randn(rows, fan_out)
        for a, b in ((x, w.t()), (dy, w), (dy.t(), x)):
            a @ b
            times = []
            for _ in range(repeats):
                tick = time.perf_counter()
                a @ b
                times.append(time.perf_counter() - tick)
            flops += count * 2 * rows * fan_in * fan_out
            seconds += count * min(times)
    return flops / seconds / 1e9


def dropout_step_line(max_length: int, rounds: int = 12) -> str:
    """One full fine-tuning step on a real batch (32 Rotten Tomatoes sentences of similar length), with the
    CPU dropout of core/cpu_dropout.py and with torch's nn.Dropout: two copies of the same model, their steps
    interleaved so that a noisy host slows both alike. Whole runs differ by more than this from run to run."""
    from core.backbones import load_backbone, load_tokenizer
    from core.cpu_dropout import use_fast_dropout
    from core.data import load_task_data
    from core.model import MultiTaskModel

    data = load_task_data("sentiment", "rt_sentiment", max_train_examples=256, max_eval_examples=10)
    order = sorted(range(len(data.train.texts)), key=lambda i: len(data.train.texts[i]))[100:132]
    enc = load_tokenizer("minilm-l6")(
        [data.train.texts[i] for i in order], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    labels = torch.tensor([data.train.labels[i] for i in order])
    steps = {}
    for name in ("torch", "cpu"):
        torch.manual_seed(0)
        model = MultiTaskModel(load_backbone("minilm-l6"), {"sentiment": data.label_names}).train()
        if name == "cpu":
            use_fast_dropout(model)
        steps[name] = (model, torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True))

    def step(name: str) -> None:
        model, optimizer = steps[name]
        optimizer.zero_grad(set_to_none=True)
        logits = model(enc["input_ids"], enc["attention_mask"], "sentiment")
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()

    times = _interleaved({name: lambda n=name: step(n) for name in steps}, rounds)
    cpu, plain = statistics.median(times["cpu"]), statistics.median(times["torch"])
    return (
        f"   one step, batch 32 x {enc['input_ids'].shape[1]} tokens, medians of {rounds} interleaved: CPU dropout "
        f"(core/cpu_dropout.py) {cpu:.0f} ms, torch's nn.Dropout {plain:.0f} ms: {plain / cpu:.2f}x"
    )


def flops_per_training_token(backbone, seq_len: float) -> float:
    """~6 FLOPs per non-embedding parameter per token (forward + backward), plus attention scores."""
    cfg = backbone.config
    non_embedding = sum(p.numel() for n, p in backbone.named_parameters() if "embeddings" not in n)
    attention = 6 * 2 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
    return 6 * non_embedding + attention


def _freezelab_run(store: RunStore, **overrides) -> tuple[RunSummary, float]:
    from core.train import train_run

    # 200 validation and 200 test sentences: the product's default scores the whole test split, which the
    # Trainer scripts (no evaluation at all) would not pay for
    defaults = {"device": "auto", "max_eval_examples": 200, "max_test_examples": 200, "eval_every_steps": 10_000}
    cfg = RunConfig(**{**defaults, **overrides})
    run_id = store.create_run(cfg)
    tick = time.perf_counter()
    train_run(store, run_id)
    return store.read_summary(run_id), time.perf_counter() - tick


def _length_grouping() -> dict:
    """The TrainingArguments option that batches examples of similar length together, in this transformers
    version: ``train_sampling_strategy="group_by_length"`` (5.x), ``group_by_length=True`` before."""
    import inspect

    from transformers import TrainingArguments

    names = inspect.signature(TrainingArguments).parameters
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def _trainer_run(
    n_train: int, epochs: float, max_length: int, freeze_backbone: bool, group_by_length: bool = False
) -> tuple[float, int, float]:
    """A plain transformers.Trainer script on the same model: returns train seconds, real tokens, wall s.
    ``group_by_length``: the Trainer's own length-grouped sampler (less padding), the fair baseline."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from core.backbones import load_backbone, load_tokenizer
    from core.data import load_task_data
    from core.model import MultiTaskModel

    tick = time.perf_counter()
    data = load_task_data("sentiment", "rt_sentiment", max_train_examples=n_train, max_eval_examples=200)
    tok = load_tokenizer("minilm-l6")
    enc = tok(data.train.texts, truncation=True, max_length=max_length)
    rows = [
        {"input_ids": i, "attention_mask": m, "labels": y}
        for i, m, y in zip(enc["input_ids"], enc["attention_mask"], data.train.labels)
    ]
    model = MultiTaskModel(load_backbone("minilm-l6"), {"sentiment": data.label_names})

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, labels=None):
            logits = self.inner(input_ids, attention_mask, "sentiment")
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    if freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    out = tempfile.mkdtemp(prefix="hf-trainer-")
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=32,
        num_train_epochs=epochs,
        learning_rate=5e-5,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **(_length_grouping() if group_by_length else {}),
    )
    trainer = Trainer(model=Wrapped(model), args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tok))
    result = trainer.train()
    tokens = int(sum(len(i) for i in enc["input_ids"]) * epochs)
    return float(result.metrics["train_runtime"]), tokens, time.perf_counter() - tick


def bench_training(quick: bool) -> list[str]:
    lines = []
    n_train, max_length = (256, 64) if quick else (1000, 64)
    single = [TaskConfig(name="sentiment", dataset="rt_sentiment", max_train_examples=n_train)]
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "runs")
        # 1. full fine-tuning, one task
        ours, ours_full_wall = _freezelab_run(
            store,
            strategy="full_finetune",
            tasks=single,
            epochs=1,
            batch_size=32,
            max_length=max_length,
            backbone_learning_rate=5e-5,
        )
        hf_seconds, hf_tokens, _ = _trainer_run(n_train, 1, max_length, freeze_backbone=False)
        grouped_seconds, grouped_tokens, _ = _trainer_run(n_train, 1, max_length, False, group_by_length=True)
        ours_tps, hf_tps = ours.tokens_per_second, hf_tokens / hf_seconds
        grouped_tps = grouped_tokens / grouped_seconds
        option = ", ".join(f"{k}={v!r}" for k, v in _length_grouping().items())
        from core.backbones import load_backbone

        seq = ours.tokens_seen / max(1, ours.examples_seen)
        gflops = matmul_gflops()
        backbone = load_backbone("minilm-l6")
        per_token = flops_per_training_token(backbone, seq)
        ceiling = gflops * 1e9 / per_token
        shaped = shape_matmul_gflops(backbone, round(32 * seq))
        lines += [
            f"1. full fine-tuning, sentiment, {n_train} examples, batch 32, max length {max_length}, 1 epoch",
            f"   FreezeLab {ours_tps:,.0f} real tokens/s; transformers.Trainer {hf_tps:,.0f} real tokens/s; "
            f"ratio {ours_tps / hf_tps:.2f}x (target >= 1.3x)",
            f"   transformers.Trainer with length grouping ({option}) {grouped_tps:,.0f} real tokens/s; "
            f"FreezeLab ratio {ours_tps / grouped_tps:.2f}x",
            dropout_step_line(max_length),
            f"   matmul {gflops:.0f} GFLOP/s -> ceiling {ceiling:,.0f} tokens/s at {seq:.1f} tokens/sentence; "
            f"FreezeLab at {100 * ours_tps / ceiling:.0f}% of it (target >= 70%, the issue's)",
            f"   the same matmuls at this run's shapes ({round(32 * seq)} tokens a batch): {shaped:.0f} GFLOP/s = "
            f"{100 * shaped / gflops:.0f}% of the square figure; FreezeLab's step at {100 * ours_tps / ceiling * gflops / shaped:.0f}% "
            f"of that (the rest is attention, dropout, GELU, LayerNorm, padding, the embedding gradient, AdamW)",
        ]
        # 2. frozen backbone, 3 epochs, then a sweep of 5 reusing the cache
        _, ours_wall = _freezelab_run(store, strategy="frozen_backbone", tasks=single, epochs=3, max_length=max_length)
        _, _, hf_wall = _trainer_run(n_train, 3, max_length, freeze_backbone=True)
        sweep_tick = time.perf_counter()
        for seed in range(1, 6):
            _freezelab_run(store, strategy="frozen_backbone", tasks=single, epochs=3, max_length=max_length, seed=seed)
        sweep_wall = time.perf_counter() - sweep_tick
        lines += [
            "2. frozen backbone, 3 epochs (wall time incl. data, model load, training; FreezeLab also evaluates "
            "200 validation and 200 test sentences, the Trainer nothing)",
            f"   FreezeLab {ours_wall:.1f} s (cold cache); Trainer {hf_wall:.1f} s; {hf_wall / ours_wall:.2f}x faster "
            f"(target >= 2.5x)",
            f"   sweep of 5 more seeds {sweep_wall:.1f} s = {sweep_wall / ours_wall:.2f}x one cold run (target <= 1.5x)",
        ]
        # 3. freeze the bottom 4 of 6 layers against full fine-tuning, per epoch
        lower, lower_wall = _freezelab_run(
            store, strategy="freeze_lower", freeze_layers=4, tasks=single, epochs=1, max_length=max_length
        )
        lines += [
            "3. freeze_lower k=4 of 6 against full_finetune, training seconds per epoch",
            f"   freeze_lower {lower.train_seconds:.1f} s; full_finetune {ours.train_seconds:.1f} s; "
            f"{ours.train_seconds / lower.train_seconds:.2f}x faster (target >= 2.5x)",
            f"   whole 1-epoch run incl. the one-time cache of the bottom 4 layers: freeze_lower {lower_wall:.1f} s, "
            f"full_finetune {ours_full_wall:.1f} s ({ours_full_wall / lower_wall:.2f}x)",
        ]
    return lines


def bench_heads() -> list[str]:
    """Heads on cached frozen features: seconds per epoch over the whole default training data.

    The features come from MiniLM-L6's bottom layer at 16 tokens, which makes the one-time cache cheap: a
    head's step reads a 384-wide sentence embedding whatever the depth and length that produced it."""
    from core.config import default_tasks

    tasks = default_tasks()  # the whole training splits, quick or not: the target is an epoch over all of them
    epochs = 3
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "runs")
        for label, batch in (("cold", 32), (32, 32), (512, 512)):  # "cold" fills the embedding cache
            runs[label] = _freezelab_run(
                store,
                strategy="frozen_backbone",
                backbone="minilm-l6:1",
                tasks=tasks,
                max_length=16,
                epochs=epochs,
                batch_size=batch,
                max_eval_examples=500,
                max_test_examples=100,
                log_every_steps=50,
            )
    runs.pop("cold")
    lines = []
    for batch, (run, wall) in runs.items():
        sentences = sum(t.n_train for t in run.tasks.values())
        val = ", ".join(f"{name} {100 * t.val_accuracy:.1f}" for name, t in run.tasks.items())
        lines.append(
            f"   batch {batch}: {run.steps // epochs} steps an epoch, {run.train_seconds / epochs:.2f} s an epoch in training "
            f"steps ({1000 * run.train_seconds / run.steps:.2f} ms a step; target < 1 s); validation accuracy "
            f"after {epochs} epochs {val} (500 sentences a task); the whole run {wall:.1f} s"
        )
    return [
        f"4b. heads on cached frozen features (frozen_backbone), both tasks, {sentences:,} training sentences, "
        "embeddings of MiniLM-L6's bottom layer at 16 tokens (a head's step costs the same for any depth)",
        *lines,
    ]


PREDICTION_RUNS = {  # name -> (strategy, freeze_layers, seed): tiny runs on the default backbone, MiniLM-L6
    "frozen_backbone": ("frozen_backbone", None, 0),
    "frozen_backbone s1": ("frozen_backbone", None, 1),
    "frozen_backbone s2": ("frozen_backbone", None, 2),
    "frozen_all": ("frozen_all", None, 0),
    "freeze_lower k=4": ("freeze_lower", 4, 0),
    "freeze_lower k=2": ("freeze_lower", 2, 0),
    "full_finetune": ("full_finetune", None, 0),
    "lora": ("lora", None, 0),
}
# Six runs side by side: four share the whole frozen backbone, LoRA rides their pretrained weights with its
# adapters, full fine-tuning shares nothing (the mix: four sharing a frozen backbone).
SIX_SHARING_FOUR = [
    "frozen_backbone",
    "frozen_backbone s1",
    "frozen_backbone s2",
    "frozen_all",
    "full_finetune",
    "lora",
]
# Six runs, the same four and two whose frozen layers nest inside theirs (a tree over k): freeze_lower k=4 and
# k=2 branch off after layers 4 and 2.
SIX_NESTED = [*SIX_SHARING_FOUR[:4], "freeze_lower k=4", "freeze_lower k=2"]


def _prediction_runs(store: RunStore) -> dict:
    """PREDICTION_RUNS trained one step each on 16 examples per task: speed does not depend on what they learnt."""
    from core.predict import Predictor
    from core.train import train_run

    tasks = [
        TaskConfig(name="topic", dataset="bbc_topics", max_train_examples=16),
        TaskConfig(name="sentiment", dataset="rt_sentiment", max_train_examples=16),
    ]
    predictors = {}
    for name, (strategy, k, seed) in PREDICTION_RUNS.items():
        cfg = RunConfig(
            strategy=strategy,
            freeze_layers=k,
            seed=seed,
            tasks=tasks,
            max_steps=1,
            batch_size=8,
            max_eval_examples=10,
            max_test_examples=10,
            eval_every_steps=10_000,
            device="cpu",
            name=name,
        )
        run_id = store.create_run(cfg)
        train_run(store, run_id)
        predictors[name] = Predictor.from_run(store, run_id, device="cpu")
    return predictors


def _interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Milliseconds of each function, called in turn round after round (a loaded host slows all of them alike)."""
    for fn in fns.values():  # warm-up: first calls pay for allocation (and the one-time check of shared layers)
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            tick = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - tick))
    return {name: sorted(t) for name, t in times.items()}


def bench_prediction(quick: bool) -> list[str]:
    """One sentence through one run, and through six runs side by side, shared against separate."""
    from core.predict import Predictor, quantize
    from core.shared_predict import plan_sharing, side_by_side_probabilities

    sentence = ["a gorgeous , witty , seductive movie ."]
    with tempfile.TemporaryDirectory() as tmp:
        ps = _prediction_runs(RunStore(Path(tmp) / "runs"))
    one = ps["frozen_backbone"]
    model, tok = one.model, one.tokenizer
    mixes = {"four": [ps[n] for n in SIX_SHARING_FOUR], "nested": [ps[n] for n in SIX_NESTED]}
    plans = {name: plan_sharing(mix) for name, mix in mixes.items()}

    def naive() -> None:  # what a first script does: pad to the max length, no inference mode
        enc = tok(sentence, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            model.predict_all(enc["input_ids"], enc["attention_mask"])

    def separate(mix: str):
        return lambda: [p.probabilities(sentence) for p in mixes[mix]]

    def shared(mix: str):
        return lambda: side_by_side_probabilities(mixes[mix], sentence, plan=plans[mix])

    one_int8 = Predictor(quantize(one.model), tok, one.meta, torch.device("cpu"))
    unpacked = Predictor(model, tok, one.meta, torch.device("cpu"), pack=False)
    own = Predictor(model, tok, one.meta, torch.device("cpu"), lean=False)
    fns = {
        "one": lambda: one.probabilities(sentence),
        "one unpacked": lambda: unpacked.probabilities(sentence),
        "one own": lambda: own.probabilities(sentence),
        "one int8": lambda: one_int8.probabilities(sentence),
        "naive": naive,
        "four separate": separate("four"),
        "four shared": shared("four"),
        "nested separate": separate("nested"),
        "nested shared": shared("nested"),
    }
    rounds = 20 if quick else 60
    t = _interleaved(fns, rounds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t1 = _interleaved({k: fns[k] for k in ("one", "four separate", "four shared")}, rounds)
    finally:
        torch.set_num_threads(threads)
    med = {k: statistics.median(v) for k, v in t.items()}
    med1 = {k: statistics.median(v) for k, v in t1.items()}

    def p95(v: list[float]) -> float:
        return v[int(0.95 * (len(v) - 1))]

    def passes(mix: str) -> tuple[int, int]:
        """Transformer layer passes per batch: shared, and every run alone."""
        plan = plans[mix]
        alone = sum(len(p.model.backbone.encoder.layer) for p in mixes[mix])
        return alone - sum(g.layer_passes_saved for g in plan.groups), alone

    def sharing(mix: str) -> str:
        return "; ".join(
            f"{len(g.run_ids) - len(g.riders)} frozen runs share the embeddings and {g.shared_layers} layers"
            + (f", {len(g.riders)} LoRA run(s) riding all {g.layers} layers with them" if g.riders else "")
            for g in plans[mix].groups
        )

    four, nested = passes("four"), passes("nested")
    return [
        f"4. prediction, one sentence, MiniLM-L6 (6 layers), full precision, CPU; medians of {rounds} interleaved "
        f"rounds, torch threads {threads}",
        f"   one run (Predictor.probabilities): median {med['one']:.1f} ms, p95 {p95(t['one']):.1f} ms (target <= 8 ms); "
        f"naive script (pad to 128, no_grad) {med['naive']:.1f} ms: ratio {med['one'] / med['naive']:.2f}x",
        f"   the same run computed by the model's own forward (transformers' BertModel) {med['one own']:.1f} ms; "
        f"by the lean forward with plain weights {med['one unpacked']:.1f} ms; with prepacked weights (above, "
        f"+{one.packed_bytes / 2**20:.0f} MB per run) {med['one']:.1f} ms",
        f"   one run in int8 (the Playground's option, allowed where int8 agrees with full precision on >= 99.5% "
        f"of the run's test labels): median {med['one int8']:.1f} ms = {med['one int8'] / med['one']:.2f}x full precision",
        f"   six runs side by side, 4 sharing the frozen backbone ({', '.join(SIX_SHARING_FOUR)}; {sharing('four')}):",
        f"     shared {med['four shared']:.1f} ms = {med['four shared'] / med['one']:.2f}x one run (target <= 2.5x); "
        f"separate {med['four separate']:.1f} ms = {med['four separate'] / med['one']:.2f}x; "
        f"separate/shared {med['four separate'] / med['four shared']:.2f}x; layer passes {four[0]} vs {four[1]}",
        f"   six runs, the same 4 and two whose frozen layers nest in theirs (freeze_lower k=4, k=2; "
        f"{sharing('nested')}):",
        f"     shared {med['nested shared']:.1f} ms = {med['nested shared'] / med['one']:.2f}x one run; "
        f"separate {med['nested separate']:.1f} ms = {med['nested separate'] / med['one']:.2f}x; "
        f"separate/shared {med['nested separate'] / med['nested shared']:.2f}x; layer passes {nested[0]} vs "
        f"{nested[1]}",
        f"   with torch threads 1: one run {med1['one']:.1f} ms; six (4 sharing) shared {med1['four shared']:.1f} ms "
        f"= {med1['four shared'] / med1['one']:.2f}x, separate {med1['four separate']:.1f} ms = "
        f"{med1['four separate'] / med1['one']:.2f}x",
    ]


def synthetic_runs(root: Path, n: int, points: int = 100) -> None:
    """Completed runs with realistic curves and summaries, for timing the pages (no training)."""
    import random

    store = RunStore(root)
    rng = random.Random(0)
    strategies = ["frozen_backbone", "full_finetune", "freeze_lower", "bitfit", "lora"]
    for i in range(n):
        cfg = RunConfig(
            strategy=strategies[i % 5],
            freeze_layers=3 if i % 5 == 2 else None,
            seed=i // 5 % 3,
            sweep_id=f"sweep-{i // 50:03d}",
            name=f"run-{i:04d}",
        )
        run_id = store.create_run(cfg, run_id=f"synthetic-{i:04d}")
        store.transition(run_id, RunState.RUNNING)
        evals = []
        for k in range(points):
            for task in ("topic", "sentiment"):
                acc = min(1.0, 0.3 + 0.6 * k / points + rng.random() * 0.05)
                evals.append(
                    {
                        "kind": "eval",
                        "split": "validation",
                        "step": k * 10,
                        "epoch": k / 10,
                        "wall_seconds": k * 2.0,
                        "task": task,
                        "loss": 1 - acc,
                        "accuracy": acc,
                        "macro_f1": acc - 0.02,
                    }
                )
        store.append_metrics(run_id, *evals)
        tasks = {
            t: TaskSummary(
                test_accuracy=rng.random(),
                test_macro_f1=rng.random(),
                label_names=["a", "b"],
                confusion_matrix=[[5, 1], [2, 6]],
                per_class={"a": {"f1": 0.8}, "b": {"f1": 0.7}},
                val_accuracy_change=0.1,
            )
            for t in ("topic", "sentiment")
        }
        summary = RunSummary(
            run_id=run_id,
            state=RunState.COMPLETED.value,
            trainable_params=rng.randint(1000, 22_000_000),
            total_params=22_568_071,
            train_seconds=rng.random() * 100,
            tokens_per_second=1000.0,
            tasks=tasks,
        )
        store.write_summary(run_id, summary)
        store.transition(run_id, RunState.COMPLETED, finished_at=time.time())


def bench_dashboard() -> list[str]:
    from streamlit.testing.v1 import AppTest

    lines = ["5. dashboard render time (AppTest, synthetic runs with 100 eval points x 2 tasks each)"]
    root = Path(__file__).resolve().parents[1]
    for n, page in (
        (200, "pages/compare.py"),
        (200, "pages/runs.py"),
        (1000, "pages/runs.py"),
        (1000, "pages/compare.py"),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            synthetic_runs(Path(tmp) / "runs", n)
            os.environ["FREEZELAB_RUNS_DIR"] = str(Path(tmp) / "runs")
            at = AppTest.from_file(str(root / "app.py"), default_timeout=120)
            at.switch_page(page)
            at.run()  # first run imports and warms caches
            times = []
            for _ in range(3):
                tick = time.perf_counter()
                at.run()
                times.append(time.perf_counter() - tick)
            ok = "ok" if not at.exception else f"EXCEPTION {at.exception[0].value}"
            lines.append(f"   {page} with {n} runs: {min(times):.2f} s ({ok})")
    lines.append("   targets: Compare with 200 runs < 1.5 s, Runs with 1,000 runs < 1 s")
    return lines


def _peak_rss_mb(code: str, env: dict, root: Path) -> tuple[float, str]:
    """Run Python code in a child that reports its own peak RSS on its last stderr line."""
    wrapper = (
        f"import resource, sys\ntry:\n    exec({code!r})\nexcept SystemExit:\n    pass\n"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper], cwd=root, env=env, capture_output=True, text=True)
    peak = [line for line in proc.stderr.splitlines() if line.startswith("PEAK ")]
    return (int(peak[-1].split()[1]) / 1024 if peak else float("nan")), proc.stdout


def bench_memory() -> list[str]:
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        runs = str(Path(tmp) / "runs")
        env = {**os.environ, "FREEZELAB_RUNS_DIR": runs}
        train = (
            "import sys; from core.cli import main; sys.exit(main(['train', '--strategy', 'full_finetune', "
            "'--max-train-examples', '300', '--epochs', '1', '--max-eval-examples', '200']))"
        )
        train_peak, out = _peak_rss_mb(train, env, root)
        run_id = out.strip().splitlines()[-1]
        four = (
            "import streamlit, plotly, pandas\nfrom core.store import RunStore\nfrom core.predict import Predictor\n"
            f"ps = [Predictor.from_run(RunStore({runs!r}), {run_id!r}) for _ in range(4)]\n"
            "[p.probabilities(['a fine film']) for p in ps]"
        )
        four_peak, _ = _peak_rss_mb(four, env, root)
    return [
        "6. peak memory (RSS)",
        f"   full fine-tuning run (two tasks, MiniLM-L6, batch 32): {train_peak:,.0f} MB (target < 2,500 MB)",
        f"   dashboard libraries + four MiniLM-L6 models loaded and predicting: {four_peak:,.0f} MB (target < 1,500 MB)",
    ]


def main(quick: bool = False, sections: str = "training,dashboard,memory") -> list[str]:
    torch.manual_seed(0)
    header = [
        f"FreezeLab benchmark, {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPU cores, threads {torch.get_num_threads()}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}"
    ]
    lines = header
    chosen = sections.split(",")
    if "memory" in chosen:  # first: its children must not inherit a large parent peak
        lines += bench_memory()
    if "training" in chosen:
        lines += bench_training(quick)
    if "training" in chosen or "prediction" in chosen:
        lines += bench_prediction(quick)
    if "training" in chosen or "heads" in chosen:
        lines += bench_heads()
    if "dashboard" in chosen:
        lines += bench_dashboard()
    return lines
