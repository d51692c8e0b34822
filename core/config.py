"""Run configuration: one dataclass that validates itself and round-trips through JSON.

A run folder's ``config.json`` is ``RunConfig.to_dict()``; ``RunConfig.from_dict`` of it rebuilds the
exact run. Every check names the field, the bad value and what is allowed, so the CLI and the
dashboard can show the message as it is.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.strategies import STRATEGIES

__all__ = ["ConfigError", "Device", "Pooling", "RunConfig", "TaskConfig", "TaskSampling", "group_key_of"]

EVALS_PER_RUN = 6


class TaskSampling(enum.StrEnum):
    """How each batch's task is chosen (core/batching.py)."""

    PROPORTIONAL = "proportional"  # by training-set size
    ROUND_ROBIN = "round_robin"  # alternate tasks
    TEMPERATURE = "temperature"  # size ** (1 / T): between proportional (T=1) and equal (T large)
    UNIFORM = "uniform"  # every task equally likely, drawn independently per batch
    CURRICULUM = "curriculum"  # starts on the abundant task, moves weight to curriculum_target by the end


class CurriculumTarget(enum.StrEnum):
    UNIFORM = "uniform"
    PROPORTIONAL = "proportional"
    LIMITED = "limited"  # all weight on the smallest task by the last step


class LossWeighting(enum.StrEnum):
    """How the tasks' losses are weighted against each other."""

    FIXED = "fixed"  # each task's loss_weight
    INVERSE_SIZE = "inverse_size"  # 1 / training size, normalised to mean 1
    UNCERTAINTY = "uncertainty"  # a learned log-variance per task (Kendall et al. 2018)


class ClassWeighting(enum.StrEnum):
    """Class weights in a task's cross-entropy, for a rare class."""

    NONE = "none"
    INVERSE = "inverse"  # 1 / class frequency
    EFFECTIVE = "effective"  # effective number of samples (Cui et al. 2019)


class Augment(enum.StrEnum):
    """Extra training copies of a task's examples (training split only; needs no download)."""

    NONE = "none"
    EDA = "eda"  # random deletion, swap and insertion of words (Wei & Zou 2019, without a thesaurus)
    EMBEDDING = "embedding"  # words replaced by nearest neighbours in the backbone's input-embedding table
    BOTH = "both"


class Pooling(enum.StrEnum):
    MEAN = "mean"
    CLS = "cls"


class Device(enum.StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def choices(enum_cls) -> list[str]:
    """The values of a choice enum, for CLI options and select boxes."""
    return [e.value for e in enum_cls]


# -- class ratio: "negative=0.1, positive=0.5" ----------------------------------------------------------
MIN_CLASS_RATIO = 0.001  # the smallest fraction of a class a class_ratio may keep
_GLUED_RE = re.compile(r"(.*?[^\d.\s:])[\s:]*(\d*\.?\d+)")  # negative0.1 or negative:0.1


def parse_class_ratio(text: str, labels: list[str] | None = None, dataset: str | None = None) -> dict[str, float]:
    """'negative=0.1, positive=0.5' as {class: fraction} ({} when empty), or a ConfigError in the user's words:
    the bad part and how to write it. Class names are checked against ``labels`` when they are known (the
    labels of ``dataset``); otherwise when the data loads."""
    ratio: dict[str, float] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        name, sep, value = (x.strip() for x in part.partition("="))
        example = f"{name}=0.1" if sep and name else f"{(labels or ['negative'])[0]}=0.1"
        if not sep and (glued := _GLUED_RE.fullmatch(part)):
            example = f"{glued[1]}={glued[2]}"
        if not sep or not name or not value:
            raise ConfigError(
                f"Class ratio part {part!r} is not CLASS=FRACTION: write e.g. {example} "
                "(several classes separated by commas)."
            )
        try:
            fraction = float(value)
        except ValueError:
            raise ConfigError(
                f"Class ratio part {part!r}: {value!r} is not a number; write the fraction to keep, e.g. {example}."
            ) from None
        if not math.isfinite(fraction) or not MIN_CLASS_RATIO <= fraction <= 1:
            raise ConfigError(
                f"Class ratio part {part!r}: the fraction of class {name!r} to keep must be between "
                f"{MIN_CLASS_RATIO:g} and 1 (0.1 keeps a tenth of it), e.g. {name}=0.1."
            )
        if name in ratio:
            raise ConfigError(f"Class ratio names class {name!r} twice: give each class once.")
        if labels is not None and name not in labels:
            close = difflib.get_close_matches(name, labels, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"Class ratio part {part!r}: {name!r} is not a class of {dataset or 'this dataset'}; its classes "
                f"are {', '.join(labels)}.{hint}"
            )
        ratio[name] = fraction
    return ratio


@dataclass
class TaskConfig:
    """One task: its name (the head's key), where its data comes from, and which columns to read."""

    name: str
    dataset: str
    text_column: str = "text"
    label_column: str = "label"
    max_train_examples: int | None = None
    loss_weight: float = 1.0
    class_weighting: str = "none"  # ClassWeighting
    class_balanced_sampling: bool = False  # draw each class equally often within this task's batches
    class_ratio: dict[str, float] | None = None  # keep this fraction of a class in the TRAINING split only
    augment: str = "none"  # Augment
    augment_copies: int = 1  # augmented copies per training example
    augment_alpha: float = 0.1  # share of words changed per copy

    def validate(self, prefix: str) -> None:
        check_types(self, f"{prefix}.")
        for column in ("text_column", "label_column"):
            if not getattr(self, column).strip():
                raise ConfigError(f"{prefix}.{column} is empty: give the name of a column of the dataset.")
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ConfigError(f"{prefix}.name={self.name!r}: use letters, digits and '_' only (e.g. 'topic').")
        if not self.dataset:
            raise ConfigError(f"{prefix}.dataset is empty: give a built-in name, a file path or hf:NAME.")
        if self.max_train_examples is not None and self.max_train_examples < 4:
            raise ConfigError(
                f"{prefix}.max_train_examples={self.max_train_examples}: needs at least 4 (or leave unset for all)."
            )
        if not (0.0 <= self.loss_weight <= 100.0) or math.isnan(self.loss_weight):
            raise ConfigError(f"{prefix}.loss_weight={self.loss_weight}: use a value between 0 and 100 (1 is neutral).")
        _check_choice(f"{prefix}.class_weighting", self.class_weighting, ClassWeighting)
        _check_choice(f"{prefix}.augment", self.augment, Augment)
        if not isinstance(self.class_balanced_sampling, bool):
            raise ConfigError(f"{prefix}.class_balanced_sampling={self.class_balanced_sampling!r}: use true or false.")
        _check_range(f"{prefix}.augment_copies", self.augment_copies, 1, 20, hint="copies per training example")
        _check_range(f"{prefix}.augment_alpha", self.augment_alpha, 0.01, 0.5, hint="share of words changed")
        if self.class_ratio is not None:
            if not isinstance(self.class_ratio, dict) or not self.class_ratio:
                raise ConfigError(
                    f"{prefix}.class_ratio={self.class_ratio!r}: give class=fraction pairs, e.g. negative=0.1."
                )
            for label, fraction in self.class_ratio.items():
                _check_range(
                    f"{prefix}.class_ratio[{label!r}]", fraction, MIN_CLASS_RATIO, 1.0, hint="a fraction to keep"
                )


def default_tasks() -> list[TaskConfig]:
    return [TaskConfig(name="topic", dataset="bbc_topics"), TaskConfig(name="sentiment", dataset="rt_sentiment")]


@dataclass
class RunConfig:
    """Everything needed to reproduce a training run."""

    strategy: str = "frozen_backbone"
    freeze_layers: int | None = None  # k for freeze_lower: embeddings + bottom k transformer layers frozen
    backbone: str = "minilm-l6"
    pooling: str = "mean"
    tasks: list[TaskConfig] = field(default_factory=default_tasks)
    init_from: str | None = None  # another run's id whose weights start this run

    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 128
    head_learning_rate: float = 3e-2  # measured: 1e-3 barely moves a fresh head in one short epoch
    backbone_learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    head_dropout: float = 0.1
    task_sampling: str = "proportional"
    sampling_temperature: float = 2.0
    curriculum_target: str = "uniform"  # CurriculumTarget: where task_sampling=curriculum ends
    max_task_repeats: float | None = None  # UniMax: at most this many passes over a task's data per run
    loss_weighting: str = "fixed"  # LossWeighting
    unfreeze_every_steps: int | None = None  # gradual_unfreeze: steps per stage (None: one epoch)
    layer_lr_decay: float | None = None  # discriminative rates: each layer's rate = the one above x decay
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])
    separate_of: str | None = None  # links single-task runs to the multi-task run they are compared with
    cache_frozen_backbone: bool = True  # a fully frozen backbone is computed once and cached on disk
    train_frozen_head_tasks: bool = False  # True: a frozen head's task still sends its loss into the backbone
    log_every_steps: int = 10
    eval_every_steps: int | None = None  # None: about EVALS_PER_RUN evaluations, whatever the run's length
    checkpoint_every_steps: int = 200
    max_eval_examples: int | None = 500  # validation examples per task: enough for +-2% accuracy, cheap to repeat
    max_test_examples: int | None = None  # the final test uses the whole test split unless capped here
    train_eval_examples: int | None = None  # also score a fixed sample of the training split (overfitting gap)
    early_stopping_patience: int | None = None  # stop after this many evaluations without a better validation
    seed: int = 0
    split_seed: int = 0
    device: str = "auto"  # auto | cpu | cuda

    name: str | None = None
    sweep_id: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.tasks, list):  # anything else is reported by validate(), naming the field
            self.tasks = [_task(i, t) for i, t in enumerate(self.tasks)]

    # -- validation -------------------------------------------------------------------------------
    def validate(self) -> RunConfig:
        check_types(self)  # first: every check below may then trust the types
        for name in ("seed", "split_seed"):
            _check_range(name, getattr(self, name), 0, MAX_SEED, hint="a whole number")
        if self.freeze_layers is not None:
            _check_range("freeze_layers", self.freeze_layers, 0, 1000, hint="layers to freeze from the bottom")
        if not self.backbone.strip():
            raise ConfigError(
                "backbone is empty: use minilm-l6 (default), minilm-l6:K, minilm-l6-scratch, a folder or a hub id."
            )
        if self.init_from is not None and not RUN_ID_RE.fullmatch(self.init_from):
            raise ConfigError(f"init_from={self.init_from!r}: give the id of a run, as `python -m core runs` lists it.")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy={self.strategy!r} is unknown; choose one of: {', '.join(STRATEGIES)}.")
        STRATEGIES[self.strategy].validate_config(self)
        if self.pooling not in choices(Pooling):
            raise ConfigError(f"pooling={self.pooling!r}: choose one of {', '.join(choices(Pooling))}.")
        if not self.tasks:
            raise ConfigError("tasks is empty: give at least one task (e.g. topic on bbc_topics).")
        for i, task in enumerate(self.tasks):
            task.validate(f"tasks[{i}]")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"tasks have duplicate names {names}: each task needs its own name.")
        _check_range("epochs", self.epochs, 0.01, 1000)
        if self.max_steps is not None:
            _check_range("max_steps", self.max_steps, 1, 10_000_000)
        _check_range("batch_size", self.batch_size, 1, 4096)
        _check_range("eval_batch_size", self.eval_batch_size, 1, 8192)
        _check_range("max_length", self.max_length, 8, 8192)
        _check_range("head_learning_rate", self.head_learning_rate, 1e-7, 1.0, hint="typical: 1e-3 to 3e-2")
        _check_range("backbone_learning_rate", self.backbone_learning_rate, 1e-8, 0.1, hint="typical: 2e-5 to 5e-5")
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("warmup_ratio", self.warmup_ratio, 0.0, 0.9)
        _check_range("max_grad_norm", self.max_grad_norm, 0.0, 1e6)
        _check_range("head_dropout", self.head_dropout, 0.0, 0.9)
        if self.task_sampling not in choices(TaskSampling):
            raise ConfigError(
                f"task_sampling={self.task_sampling!r}: choose one of {', '.join(choices(TaskSampling))}."
            )
        _check_range("sampling_temperature", self.sampling_temperature, 0.1, 100)
        _check_choice("curriculum_target", self.curriculum_target, CurriculumTarget)
        _check_choice("loss_weighting", self.loss_weighting, LossWeighting)
        if self.max_task_repeats is not None:
            _check_range("max_task_repeats", self.max_task_repeats, 1, 1000, hint="passes over a task's data")
        if self.max_test_examples is not None:
            _check_range("max_test_examples", self.max_test_examples, 10, 10_000_000)
        if self.train_eval_examples is not None:
            _check_range("train_eval_examples", self.train_eval_examples, 10, 100_000)
        if self.early_stopping_patience is not None:
            _check_range("early_stopping_patience", self.early_stopping_patience, 1, 1000, hint="evaluations")
        if self.eval_every_steps is not None:
            _check_range("eval_every_steps", self.eval_every_steps, 1, 10_000_000)
        _check_range("log_every_steps", self.log_every_steps, 1, 10_000_000)
        _check_range("checkpoint_every_steps", self.checkpoint_every_steps, 1, 10_000_000)
        if self.max_eval_examples is not None:
            _check_range("max_eval_examples", self.max_eval_examples, 10, 10_000_000)
        if self.unfreeze_every_steps is not None:
            _check_range("unfreeze_every_steps", self.unfreeze_every_steps, 1, 10_000_000)
        if self.layer_lr_decay is not None:
            _check_range("layer_lr_decay", self.layer_lr_decay, 0.1, 1.0, hint="e.g. 0.95 (Sun et al. 2019)")
        _check_range("lora_r", self.lora_r, 1, 1024)
        _check_range("lora_alpha", self.lora_alpha, 1, 4096)
        _check_range("lora_dropout", self.lora_dropout, 0.0, 0.9)
        if not self.lora_targets:
            raise ConfigError("lora_targets is empty: name the projections to adapt, e.g. query, value.")
        if self.device not in choices(Device):
            raise ConfigError(f"device={self.device!r}: choose one of {', '.join(choices(Device))}.")
        return self

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys: {', '.join(sorted(known))}.")
        if "max_test_examples" not in data and "max_eval_examples" in data:
            # Written before max_test_examples existed: its test split was capped by max_eval_examples.
            data = {**data, "max_test_examples": data["max_eval_examples"]}
        try:
            return cls(**data)
        except TypeError as exc:  # e.g. a task entry with a wrong key
            raise ConfigError(f"config does not match the expected shape: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist.") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON (line {exc.lineno}): {exc.msg}.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object of config keys.")
        return cls.from_dict(data)

    def group_key(self) -> str:
        return group_key_of(self.to_dict())

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


def group_key_of(config: dict[str, Any]) -> str:
    """The config without seed, name, tags and sweep id: runs sharing it differ only by seed."""
    rest = {k: v for k, v in config.items() if k not in ("seed", "name", "tags", "sweep_id")}
    return json.dumps(rest, sort_keys=True, default=str)


MAX_SEED = 2**32 - 1  # what NumPy's seeding accepts
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # as core.store validates run ids
_TYPE_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "str": "text",
    "bool": "true or false",
    "list": "a list",
    "dict": "an object of key: value pairs",
    "None": "null (unset)",
}
_ITEM_TYPES = {"list[str]": str}  # lists whose items are checked too


def _task(index: int, value: Any) -> TaskConfig:
    """One entry of ``tasks`` as a TaskConfig; a ConfigError naming ``tasks[i]`` if it cannot be one."""
    if isinstance(value, TaskConfig):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f"tasks[{index}]={value!r}: each task is an object with a name and a dataset, "
            'e.g. {"name": "topic", "dataset": "bbc_topics"}.'
        )
    known = {name for name, _, _ in _field_specs(TaskConfig)}
    unknown, missing = sorted(set(value) - known), sorted({"name", "dataset"} - set(value))
    if unknown or missing:
        what = f"unknown keys {unknown}" if unknown else f"no {' and no '.join(missing)}"
        raise ConfigError(f"tasks[{index}] has {what}; a task's keys are: {', '.join(sorted(known))}.")
    return TaskConfig(**value)


def _accepts(kind: str, value: Any) -> bool:
    if kind == "None":
        return value is None
    if isinstance(value, bool):
        return kind == "bool"
    if kind == "float":
        return isinstance(value, (int, float))
    return isinstance(value, {"int": int, "str": str, "bool": bool, "list": list, "dict": dict}[kind])


@functools.cache
def _field_specs(cls) -> tuple[tuple[str, tuple[str, ...], type | None], ...]:
    """(field, accepted kinds, item type of a checked list) for each field of a config dataclass: parsed once."""
    specs = []
    for f in dataclasses.fields(cls):
        parts = [part.strip() for part in str(f.type).split("|")]
        item = next((_ITEM_TYPES[p] for p in parts if p in _ITEM_TYPES), None)
        specs.append((f.name, tuple(part.split("[")[0] for part in parts), item))
    return tuple(specs)


def check_types(obj: Any, prefix: str = "") -> None:
    """Every field of a config dataclass holds a value of its annotated type (a JSON file or ``--set`` can
    put anything there); a ConfigError names the field, the value and the type it needs."""
    for name, kinds, item in _field_specs(type(obj)):
        value = getattr(obj, name)
        ok = any(_accepts(kind, value) for kind in kinds)
        if ok and item is not None and isinstance(value, list) and not all(isinstance(v, item) for v in value):
            ok, kinds = False, (f"list of {_TYPE_WORDS[item.__name__]}",)
        if not ok:
            wanted = " or ".join(_TYPE_WORDS.get(k, k) for k in kinds)
            raise ConfigError(f"{prefix}{name}={value!r} ({type(value).__name__}): use {wanted}.")


def positions_limit(backbone_config) -> int | None:
    """How many tokens the backbone's position embeddings hold (RoBERTa-style models reserve pad + 1)."""
    limit = getattr(backbone_config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if getattr(backbone_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (getattr(backbone_config, "pad_token_id", None) or 0) + 1
    return limit


def check_against_backbone(cfg: RunConfig, backbone_config=None) -> None:
    """The checks that need the backbone's config.json (read here unless given): max_length within its
    position embeddings, freeze_layers within its layers. ConfigError naming the value and the limit."""
    if backbone_config is None:
        from core.backbones import load_backbone_config  # reads a small JSON file (imports transformers)

        backbone_config = load_backbone_config(cfg.backbone)
    limit = positions_limit(backbone_config)
    if limit is not None and cfg.max_length > limit:
        raise ConfigError(
            f"max_length={cfg.max_length} is more than backbone {cfg.backbone!r} can read: its position "
            f"embeddings hold {limit} tokens. Use max_length <= {limit}."
        )
    layers = getattr(backbone_config, "num_hidden_layers", None)
    if cfg.freeze_layers is not None and isinstance(layers, int) and cfg.freeze_layers > layers:
        unit = "layer" if layers == 1 else "layers"
        raise ConfigError(
            f"freeze_layers={cfg.freeze_layers}: backbone {cfg.backbone!r} has {layers} {unit}; "
            f"use 0 to {layers} (embeddings plus the bottom k layers are frozen)."
        )


def _check_choice(name: str, value: Any, enum_cls) -> None:
    if value not in choices(enum_cls):
        raise ConfigError(f"{name}={value!r}: choose one of {', '.join(choices(enum_cls))}.")


def _check_range(name: str, value: float, lo: float, hi: float, hint: str = "") -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value) and lo <= value <= hi
    if not ok:
        extra = f" ({hint})" if hint else ""
        raise ConfigError(
            f"{name}={value!r} is out of range: use a value between {_bound(lo)} and {_bound(hi)}{extra}."
        )


def _bound(x: float) -> str:
    """A range's end as people write it: 10,000,000 rather than 1e+07, 5e-05 as it is."""
    return f"{int(x):,}" if float(x).is_integer() and abs(x) >= 1 else f"{x:g}"
