"""Studies: the seeds' questions as designed experiments, queued as runs and answered with intervals.

A *design* answers one question ("does freezing reduce overfitting on small data?") with *cells*: config
changes over a base config (a strategy, a freeze depth, a training size...). Every cell runs once per seed.
Cells are compared within their *group* (e.g. one training size) against the group's reference cell,
paired by seed (core/findings.py does the statistics). A *study* is a set of designs over one base config
and one list of seeds, stored as one folder (``runs/.studies/<id>/study.json``, written atomically) with
the run id of every (design, cell, seed).

Launching a study never trains anything twice: a planned run whose config and seed equal a run already in
the store (completed, queued or running) is reused, a stopped or failed one is resumed, and only the rest
is queued. Launching the same study again after a killed runner continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from core.config import RunConfig, group_key_of
from core.errors import ConfigError
from core.records import RunState
from core.store import RunStore, slugify, validate_run_id

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_THRESHOLD = 0.01  # a practical difference of 1 accuracy point


@dataclass(frozen=True)
class Cell:
    """One arm of a design: config changes over the base, run once per seed.

    ``overrides`` keys are RunConfig fields, or ``task_a.FIELD`` / ``task_b.FIELD`` for a task's fields, or
    ``only_task`` ("a"/"b") for a single-task run. ``start_from``: the label of another cell of the same design
    whose run (same seed) this one starts from (``init_from``); it waits until that run has completed."""

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    group: str = ""
    reference: bool = False
    series: str = ""
    x: float | None = None
    start_from: str | None = None


@dataclass(frozen=True)
class Design:
    id: str
    question: str
    title: str
    cells: tuple[Cell, ...]
    metrics: tuple[str, ...]
    chart: str = "bars"  # bars | curve_by_x | pareto
    note: str = ""

    def cell(self, label: str) -> Cell:
        for c in self.cells:
            if c.label == label:
                return c
        raise KeyError(label)


# -- the built-in designs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """How big the built-in designs are: the training examples per task and the size ladder."""

    name: str
    train_examples: int
    ladder: tuple[int, ...]
    limited_task_examples: int = 200
    rare_class: str = "negative"  # of the default Task B (Rotten Tomatoes sentiment)
    rare_class_fraction: float = 0.1
    # Run settings the scale brings, under any the user set on purpose (``scaled_base``).
    run_settings: dict[str, Any] = field(default_factory=dict)

    def describe_settings(self) -> str:
        """The run settings in words ("" when it brings none)."""
        words = {
            "max_length": "inputs cut at {} tokens",
            "max_eval_examples": "{} validation sentences per task",
            "max_test_examples": "{} test sentences per task",
            "eval_every_steps": "an evaluation every {} steps",
        }
        return ", ".join(
            words.get(k, f"{k}={{}}").format(f"{v:,}" if isinstance(v, int) else v)
            for k, v in self.run_settings.items()
        )


# lite: what fits a 2-core CPU in a session, the settings docs/findings.md was run with.
LITE_SETTINGS = {"max_length": 64, "max_eval_examples": 100, "max_test_examples": 500, "eval_every_steps": 10}
SCALES = {
    "quick": Scale("quick", 1000, (100, 300, 1000)),
    "lite": Scale("lite", 300, (100, 300), run_settings=LITE_SETTINGS),
    "full": Scale("full", 3000, (100, 300, 1000, 3000)),
}


def scaled_base(base: RunConfig, scale: str, given: set[str] | frozenset[str] = frozenset()) -> RunConfig:
    """``base`` with the scale's run settings, except the keys in ``given`` (what the user set on purpose: a
    command-line option, a ``--set``, a key of the config file)."""
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r}: choose one of {', '.join(SCALES)}.")
    changes = {k: v for k, v in SCALES[scale].run_settings.items() if k not in given}
    return dataclasses.replace(base, **changes).validate() if changes else base


ACC = ("test_accuracy:a", "test_accuracy:b")
COST = ("train_seconds", "wall_seconds")


TRAIN_SAMPLE = 100  # training examples per task scored at each evaluation: the train-validation gap


def _sized(n: int) -> dict[str, Any]:
    return {"task_a.max_train_examples": n, "task_b.max_train_examples": n, "train_eval_examples": TRAIN_SAMPLE}


def builtin_designs(scale: Scale, n_layers: int = 6) -> dict[str, Design]:
    """The questions of the seeds (``QUESTIONS``), each as a design over ``scale``."""
    k_mid = n_layers // 2
    size = _sized(scale.train_examples)
    ff = {"strategy": "full_finetune", **size}
    fl = {"strategy": "freeze_lower", "freeze_layers": k_mid, **size}
    fb = {"strategy": "frozen_backbone", **size}
    designs = [
        Design(
            "speed",
            "How much faster is freezing?",
            "Training cost of freezing",
            (
                Cell("full_finetune", ff, reference=True),
                Cell(f"freeze_lower k={k_mid}", fl),
                Cell("frozen_backbone", fb),
            ),
            ("train_seconds", "wall_seconds", "tokens_per_second", "time_to_val:a", "time_to_val:b", *ACC),
            chart="pareto",
            note="train_seconds counts training steps only; wall_seconds is the whole run (data, caches, evaluation).",
        ),
        Design(
            "overfitting",
            "Does freezing reduce overfitting on small data?",
            "Training-size ladder",
            tuple(
                Cell(
                    f"{name} n={n}",
                    {**over, **_sized(n)},
                    group=f"n={n}",
                    reference=name == "full_finetune",
                    series=name,
                    x=n,
                )
                for n in scale.ladder
                for name, over in (
                    ("full_finetune", {"strategy": "full_finetune"}),
                    (f"freeze_lower k={k_mid}", {"strategy": "freeze_lower", "freeze_layers": k_mid}),
                    ("frozen_backbone", {"strategy": "frozen_backbone"}),
                )
            ),
            (*ACC, "train_val_gap:a", "train_val_gap:b"),
            chart="curve_by_x",
            note="train_val_gap = accuracy on a fixed sample of the training split minus validation accuracy.",
        ),
        Design(
            "head_drift",
            "Does freezing one head bias the backbone toward the other task?",
            "Frozen-head drift",
            (
                Cell("two-task source", ff),
                Cell("control: keep training both tasks", {**ff}, reference=True, start_from="two-task source"),
                Cell("freeze head A, train B", {**ff, "strategy": "freeze_head_a"}, start_from="two-task source"),
            ),
            ("drift:a", "test_accuracy:b"),
            note="drift:a = Task A's test accuracy after the run minus the source run's (same seed).",
        ),
        Design(
            "freeze_depth",
            "Do lower layers hold general features?",
            "Freeze the bottom k layers",
            (
                Cell("full_finetune", ff, reference=True, x=-1, series="full_finetune"),
                *(
                    Cell(f"freeze_lower k={k}", {**fl, "freeze_layers": k}, x=k, series="freeze_lower")
                    for k in range(n_layers + 1)
                ),
            ),
            (*ACC, "share_kept:a", "share_kept:b", "train_seconds"),
            chart="curve_by_x",
            note="share_kept = accuracy at k / full fine-tuning accuracy (Lee et al. 2019 report about 90% "
            "when only the top quarter trains).",
        ),
        Design(
            "pretraining",
            "Does pretraining matter?",
            "Pretrained against from scratch",
            (
                Cell("pretrained minilm-l6", ff, reference=True),
                Cell("from scratch", {**ff, "backbone": "minilm-l6-scratch"}),
            ),
            (*ACC, "steps_to_val:a", "steps_to_val:b"),
        ),
        Design(
            "backbone",
            "Which backbone?",
            "MiniLM-L6 and its cuts",
            (
                Cell("minilm-l6", ff, reference=True, x=6),
                Cell("minilm-l6:4", {**ff, "backbone": "minilm-l6:4"}, x=4),
                Cell("minilm-l6:2", {**ff, "backbone": "minilm-l6:2"}, x=2),
            ),
            (*ACC, "train_seconds", "total_params"),
            chart="pareto",
        ),
        Design(
            "multitask",
            "One multi-task model or two separate ones?",
            "Multi-task against separate models",
            (
                Cell("multi-task", ff, reference=True),
                Cell("task A alone", {**ff, "only_task": "a"}),
                Cell("task B alone", {**ff, "only_task": "b"}),
            ),
            (*ACC, "train_seconds", "total_params"),
            note="Two separate models serve twice the parameters and run the backbone twice per sentence.",
        ),
        Design(
            "imbalance",
            "Little data in one task: what helps?",
            f"Task B cut to {scale.limited_task_examples} examples",
            tuple(
                Cell(
                    label,
                    {**fb, "task_b.max_train_examples": scale.limited_task_examples, **over},
                    reference=label == "plain (proportional)",
                )
                for label, over in (
                    ("plain (proportional)", {}),
                    ("uniform task sampling", {"task_sampling": "uniform"}),
                    ("temperature sampling T=2", {"task_sampling": "temperature"}),
                    ("inverse-size loss weights", {"loss_weighting": "inverse_size"}),
                    ("uncertainty loss weights", {"loss_weighting": "uncertainty"}),
                    ("curriculum", {"task_sampling": "curriculum"}),
                    ("augmentation (EDA x2)", {"task_b.augment": "eda", "task_b.augment_copies": 2}),
                )
            ),
            ("test_macro_f1:b", "test_accuracy:b", "test_accuracy:a"),
            note="frozen_backbone keeps these runs cheap; the options work with every strategy.",
        ),
        Design(
            "class_imbalance",
            "A rare class in one task: what helps?",
            f"Task B keeps {round(scale.rare_class_fraction * 100)}% of its {scale.rare_class} training examples",
            tuple(
                Cell(
                    label,
                    {**fb, "task_b.class_ratio": {scale.rare_class: scale.rare_class_fraction}, **over},
                    reference=label == "plain",
                )
                for label, over in (
                    ("plain", {}),
                    ("inverse-frequency class weights", {"task_b.class_weighting": "inverse"}),
                    ("effective-number class weights", {"task_b.class_weighting": "effective"}),
                    ("class-balanced sampler", {"task_b.class_balanced_sampling": True}),
                    ("augmentation (EDA x2)", {"task_b.augment": "eda", "task_b.augment_copies": 2}),
                )
            ),
            ("test_macro_f1:b", "test_balanced_accuracy:b", "test_accuracy:b", "test_accuracy:a"),
            note="Only the training split is made imbalanced; validation and test keep their balance, so the "
            "damage and the repair are both measured.",
        ),
    ]
    return {d.id: d for d in designs}


QUESTIONS = (
    "speed", "overfitting", "head_drift", "freeze_depth", "pretraining", "backbone", "multitask", "imbalance",
    "class_imbalance",
)  # fmt: skip


def custom_design(factors: dict[str, list[Any]], reference: dict[str, Any] | None = None) -> Design:
    """Any factors x levels (config keys, ``task_a.FIELD``...) as one design; the first level of each is the
    reference unless ``reference`` says otherwise."""
    import itertools

    if not factors or any(not levels for levels in factors.values()):
        raise ConfigError("a custom study needs at least one factor with at least one level, e.g. strategy=a,b.")
    reference = reference or {k: v[0] for k, v in factors.items()}
    cells = []
    for combo in itertools.product(*factors.values()):
        over = dict(zip(factors, combo, strict=True))
        label = ", ".join(f"{k}={v}" for k, v in over.items())
        cells.append(Cell(label, over, reference=over == reference))
    return Design("custom", "Custom study", "Custom factors", tuple(cells), (*ACC, "train_seconds"))


# -- planning -------------------------------------------------------------------------------------------
def apply_overrides(base: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A new config: ``base`` with a cell's overrides (task fields by position: task_a is the first task)."""
    data = base.to_dict()
    tasks = [dict(t) for t in data["tasks"]]
    for key, value in overrides.items():
        if key == "only_task":
            continue
        if key.startswith(("task_a.", "task_b.")):
            index = 0 if key.startswith("task_a.") else 1
            if index >= len(tasks):
                continue  # a one-task base has no task B: the override does not apply
            tasks[index][key.split(".", 1)[1]] = value
        else:
            data[key] = value
    if overrides.get("only_task") in ("a", "b") and len(tasks) == 2:
        tasks = tasks[:1] if overrides["only_task"] == "a" else tasks[1:]
    data["tasks"] = tasks
    return RunConfig.from_dict(data).validate()


@dataclass
class PlannedRun:
    design: str
    cell: str
    seed: int
    config: RunConfig
    start_from: tuple[str, str] | None = None  # (design, cell) whose run of the same seed this one starts from
    run_id: str | None = None
    action: str = "new"  # new | reuse | resume


def plan(designs: list[Design], base: RunConfig, seeds: list[int]) -> list[PlannedRun]:
    """Every (design, cell, seed) as a config; cells that start from another cell come after it."""
    if not seeds:
        raise ConfigError("a study needs at least one seed (3 or more give intervals).")
    planned = []
    for design in designs:
        ordered = sorted(design.cells, key=lambda c: c.start_from is not None)
        for cell in ordered:
            for seed in seeds:
                cfg = dataclasses.replace(apply_overrides(base, cell.overrides), seed=seed)
                src = (design.id, cell.start_from) if cell.start_from else None
                planned.append(PlannedRun(design.id, cell.label, seed, cfg, start_from=src))
    return planned


def run_key(cfg: RunConfig) -> str:
    """Two runs with the same key train the same thing: the config without name, tags and sweep id."""
    data = cfg.to_dict()
    return group_key_of(data) + f"|seed={data['seed']}"


def match_existing(store: RunStore, planned: list[PlannedRun]) -> None:
    """Point planned runs at runs already in the store with the same config and seed (reuse or resume)."""
    by_key: dict[str, tuple[str, RunState | None]] = {}
    for record in store.list_runs():
        if record.damaged or not record.config:
            continue
        try:
            key = run_key(record.run_config())
        except ConfigError:
            continue
        previous = by_key.get(key)
        rank = {RunState.COMPLETED: 3, RunState.RUNNING: 2, RunState.QUEUED: 2}.get(record.state, 1)
        if previous is None or rank > {RunState.COMPLETED: 3, RunState.RUNNING: 2, RunState.QUEUED: 2}.get(
            previous[1], 1
        ):
            by_key[key] = (record.id, record.state)
    for p in planned:
        if p.start_from:  # its init_from is a concrete run id, known only once the source is placed
            continue
        found = by_key.get(run_key(p.config))
        if found:
            p.run_id, state = found
            p.action = "reuse" if state in (RunState.COMPLETED, RunState.RUNNING, RunState.QUEUED) else "resume"


# -- the study folder -----------------------------------------------------------------------------------
@dataclass
class Study:
    id: str
    name: str
    designs: list[str]
    scale: str
    seeds: list[int]
    base_config: dict[str, Any]
    threshold: float = DEFAULT_THRESHOLD
    created_at: float = 0.0
    runs: list[dict[str, Any]] = field(default_factory=list)  # {design, cell, seed, run_id, action}
    custom_factors: dict[str, list[Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Study:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def design_objects(self) -> list[Design]:
        if self.custom_factors:
            return [custom_design(self.custom_factors)]
        from core.backbones import load_backbone_config

        n_layers = load_backbone_config(self.base_config.get("backbone", "minilm-l6")).num_hidden_layers
        table = builtin_designs(SCALES[self.scale], n_layers)
        return [table[d] for d in self.designs]

    def run_ids(self) -> list[str]:
        return sorted({r["run_id"] for r in self.runs if r.get("run_id")})

    def run_of(self, design: str, cell: str, seed: int) -> str | None:
        for r in self.runs:
            if r["design"] == design and r["cell"] == cell and r["seed"] == seed:
                return r.get("run_id")
        return None


def new_study_id(name: str) -> str:
    label = slugify(name, 30) or "study"
    return validate_run_id(f"study-{time.strftime('%Y%m%d-%H%M%S')}-{label}-{secrets.token_hex(2)}")


def create_study(
    store: RunStore,
    base: RunConfig,
    *,
    designs: list[str] | None = None,
    scale: str = "quick",
    seeds: list[int] | None = None,
    name: str = "",
    threshold: float = DEFAULT_THRESHOLD,
    custom_factors: dict[str, list[Any]] | None = None,
) -> Study:
    """A study folder with its design (nothing queued yet: ``launch`` does that)."""
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r}: choose one of {', '.join(SCALES)}.")
    if not custom_factors:
        designs = list(designs or QUESTIONS)
        unknown = [d for d in designs if d not in QUESTIONS]
        if unknown:
            raise ConfigError(f"unknown study designs {unknown}; choose from {', '.join(QUESTIONS)} (or all).")
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold={threshold}: give a practical difference between 0 and 1 (0.01 = 1 point).")
    study = Study(
        id=new_study_id(name or _default_name(designs, custom_factors)),
        name=name or ("custom" if custom_factors else ", ".join(designs or [])),
        designs=designs or [],
        scale=scale,
        seeds=list(seeds if seeds is not None else DEFAULT_SEEDS),
        base_config=base.validate().to_dict(),
        threshold=threshold,
        created_at=time.time(),
        custom_factors=custom_factors,
    )
    plan(study.design_objects(), base, study.seeds)  # every config valid before anything is stored
    store.write_study(study.id, study.to_dict())
    return study


def _default_name(designs: list[str] | None, custom_factors) -> str:
    if custom_factors:
        return "custom"
    if designs and set(designs) == set(QUESTIONS):
        return "all-questions"
    return "-".join(designs or []) or "study"


def load_study(store: RunStore, study_id: str) -> Study:
    return Study.from_dict(store.read_study(study_id))


def launch(store: RunStore, study: Study, *, start_runner: bool = True) -> list[PlannedRun]:
    """Queue what the study still needs; reuse identical runs; resume stopped or failed ones. Idempotent."""
    from core import jobs

    base = RunConfig.from_dict(study.base_config)
    planned = plan(study.design_objects(), base, study.seeds)
    known = {(r["design"], r["cell"], r["seed"]): r.get("run_id") for r in study.runs}
    for p in planned:  # runs this study placed before (a relaunch after a killed runner)
        rid = known.get((p.design, p.cell, p.seed))
        if rid and store.exists(rid):
            p.run_id, p.action = rid, "reuse"
    match_existing(store, [p for p in planned if p.run_id is None])
    placed: dict[tuple[str, str, int], str] = {}
    same: dict[str, str] = {}  # run_key -> run id placed in this launch: designs share identical cells
    for p in planned:
        if p.start_from and p.run_id is None:
            source = placed.get((*p.start_from, p.seed))
            p.config = dataclasses.replace(p.config, init_from=source)
            probe = dataclasses.replace(p, start_from=None)
            match_existing(store, [probe])
            p.run_id, p.action = probe.run_id, probe.action
        if p.run_id is None and run_key(p.config) in same:
            p.run_id, p.action = same[run_key(p.config)], "reuse"
        if p.run_id is None:
            name = slugify(f"{study.name}-{p.design}-{p.cell}-s{p.seed}", 90)
            cfg = dataclasses.replace(p.config, name=name, tags=sorted({*p.config.tags, f"study:{study.id}"}))
            p.run_id = jobs.submit(store, cfg, start_runner=False)
            p.action = "new"
        else:
            state = store.state(p.run_id)
            if state in (RunState.STOPPED, RunState.FAILED):
                jobs.resume(store, p.run_id, start_runner=False)
                p.action = "resume"
        placed[(p.design, p.cell, p.seed)] = p.run_id
        same.setdefault(run_key(p.config), p.run_id)
    study.runs = [
        {"design": p.design, "cell": p.cell, "seed": p.seed, "run_id": p.run_id, "action": p.action} for p in planned
    ]
    store.write_study(study.id, study.to_dict())
    if start_runner:
        jobs.ensure_runner(store)
    return planned


def progress(store: RunStore, study: Study) -> dict[str, int]:
    """How many of the study's runs are in each state (a deleted run counts as missing)."""
    counts: dict[str, int] = {}
    for run_id in study.run_ids():
        state = store.state(run_id) if store.exists(run_id) else None
        key = state.value if state else "missing"
        counts[key] = counts.get(key, 0) + 1
    return counts


# -- estimates ------------------------------------------------------------------------------------------
# Seconds per training example and epoch on this project's 2-core CPU reference machine (BENCHMARKS.md), for
# when the store has no finished run to learn from; scaled by the backbone's depth. Overhead: process start,
# data and model load, evaluation.
FALLBACK_SECONDS_PER_EXAMPLE = {"full": 0.025, "partial": 0.014, "frozen": 0.017}
FALLBACK_OVERHEAD_SECONDS = 25.0


def _cost_class(cfg: RunConfig) -> str:
    if cfg.strategy in ("frozen_backbone", "frozen_all"):
        return "frozen"
    return "partial" if cfg.strategy in ("freeze_lower", "lora", "bitfit") else "full"


def _examples(cfg: RunConfig, sizes: dict[str, int]) -> float:
    n = sum(t.max_train_examples or sizes.get(t.dataset, 5000) for t in cfg.tasks)
    return n * cfg.epochs


def _frozen_data_key(cfg: RunConfig) -> str:
    """What a frozen backbone's cached embeddings depend on (the training split aside): shared across seeds."""
    return f"{cfg.backbone}|{cfg.pooling}|{cfg.max_length}|{cfg.split_seed}|" + "|".join(t.dataset for t in cfg.tasks)


def estimate(store: RunStore, planned: list[PlannedRun]) -> dict[str, Any]:
    """Seconds the still-needed runs of a plan should take here, learnt from finished runs where possible.

    Returns total_seconds, per_design seconds, the number of distinct runs, of those to train and of those
    already in the store, how many cells share a run with another question's, the basis of the estimate, and
    which frozen-backbone data sets already have cached embeddings (those runs cost little more than start-up)."""
    rates: dict[str, list[float]] = {}
    overheads: list[float] = []
    cached: set[str] = set()
    for record in store.list_runs():
        s = record.summary
        if record.state != RunState.COMPLETED or not s or not s.wall_seconds or record.damaged:
            continue
        try:
            cfg = record.run_config()
        except ConfigError:
            continue
        if s.embedding_cache:
            cached.add(_frozen_data_key(cfg))
            continue  # a cache-hit run says nothing about the cost of computing embeddings
        n = sum(t.n_train or 0 for t in s.tasks.values()) * cfg.epochs
        if n:
            depth = _depth(cfg.backbone)
            rates.setdefault(_cost_class(cfg), []).append(max(0.0, s.wall_seconds - 10) / n / depth)
            overheads.append(min(s.wall_seconds, 30.0))
    per_design: dict[str, float] = {}
    todo, seen, reused = [], set(), set()
    for p in planned:  # identical cells of different designs train once
        key = run_key(p.config) + f"|{p.start_from}"
        if p.action in ("new", "resume") and key not in seen:
            todo.append(p)
        elif p.action == "reuse":
            reused.add(key)
        seen.add(key)
    warm = set(cached)
    for p in todo:
        cls = _cost_class(p.config)
        rate = sorted(rates[cls])[len(rates[cls]) // 2] if rates.get(cls) else FALLBACK_SECONDS_PER_EXAMPLE[cls]
        seconds = FALLBACK_OVERHEAD_SECONDS + rate * _depth(p.config.backbone) * _examples(p.config, {})
        if cls == "frozen":
            key = _frozen_data_key(p.config)
            if key in warm:
                seconds = FALLBACK_OVERHEAD_SECONDS
            warm.add(key)
        per_design[p.design] = per_design.get(p.design, 0.0) + seconds
    basis = ", ".join(f"{k}: {len(v)} finished runs" for k, v in sorted(rates.items())) or "no finished runs yet"
    return {
        "runs_to_train": len(todo), "runs_reused": len(reused), "runs": len(seen),
        "cells_shared": len(planned) - len(seen),  # the same run serving cells of several questions
        "total_seconds": sum(per_design.values()), "per_design": per_design,
        "basis": f"measured on this machine ({basis}); built-in defaults (core/studies.py) otherwise",
        "frozen_cached": sorted(cached),
    }  # fmt: skip


def _depth(backbone: str) -> float:
    """Relative cost of a backbone against the 6-layer MiniLM (cut variants ``minilm-l6:K``)."""
    if ":" in backbone and backbone.rsplit(":", 1)[1].isdigit():
        return int(backbone.rsplit(":", 1)[1]) / 6
    return 1.0
