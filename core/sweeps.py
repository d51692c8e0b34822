"""Sweep expansion: one base config into the grid of runs a sweep trains. Pure: it queues nothing.

The grid is backbones x strategies x seeds, and for strategies that take a freeze depth (freeze_lower)
x depths, crossed with any ``vary`` dimension (``--vary KEY=V1,V2``: a config key, or ``task_a.FIELD`` /
``task_b.FIELD`` for the first or second task). With ``separate_models``, each two-task run also gets one partner per task trained alone
with the same settings, linked by ``separate_of``, so multi-task can be weighed against separate
models. Every config is validated before the caller queues any.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import time

from core.config import RunConfig
from core.errors import ConfigError
from core.store import slugify
from core.strategies import get_strategy


def new_sweep_id() -> str:
    return f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"


def sweep_run_id(sweep_id: str, index: int, cfg: RunConfig) -> str:
    """Run ids of a sweep sort in grid order and say what each run is."""
    return f"{sweep_id}-{index:03d}-{slugify(cfg.name or cfg.strategy, 60)}"


def _derive(cfg: RunConfig, **changes) -> RunConfig:
    """A copy of ``cfg`` with ``changes``; it shares no list (tasks, tags...) with ``cfg``."""
    return dataclasses.replace(copy.deepcopy(cfg), **changes)


def _default_depth(base: RunConfig, backbone: str) -> int:
    """No depth given: the base's, else the bottom half (the middle ground between the two extremes).
    A base depth of 0 counts as not given, as it always has."""
    if base.freeze_layers:
        return base.freeze_layers
    from core.backbones import load_backbone_config  # reads the model's config.json (imports transformers)

    return load_backbone_config(backbone).num_hidden_layers // 2


def parse_vary(items: list[str]) -> dict[str, list]:
    """``KEY=V1,V2`` options as {KEY: [V1, V2]}; values are JSON where they parse (numbers, true, null,
    {"negative": 0.1}), else strings. Keys are checked when the grid is built."""
    vary: dict[str, list] = {}
    for item in items:
        key, sep, raw = (x.strip() for x in item.partition("="))
        if not sep or not key or not raw:
            raise ConfigError(f"--vary {item!r}: write KEY=V1,V2, e.g. --vary task_b.class_weighting=none,inverse")
        if key in vary:
            raise ConfigError(f"--vary {key} is given twice: put all its values in one option, comma-separated.")
        try:
            values = json.loads(f"[{raw}]")
        except json.JSONDecodeError:
            values = [_json_or_text(v.strip()) for v in raw.split(",") if v.strip()]
        vary[key] = values
    return vary


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


OWN_OPTIONS = {
    "strategy": "--strategies",
    "seed": "--seeds",
    "backbone": "--backbones",
    "freeze_layers": "--freeze-layers-list",
}


def _vary_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(RunConfig)} - {"tasks", "sweep_id", "name", "separate_of", *OWN_OPTIONS}


def apply_setting(cfg: RunConfig, key: str, value) -> RunConfig:
    """A copy of ``cfg`` with one config key (or ``task_a.FIELD`` / ``task_b.FIELD``) set; ConfigError naming
    the key and the allowed ones if it is unknown. The caller validates the value."""
    from core.config import TaskConfig

    head, dot, field = key.partition(".")
    if dot:
        index = {"task_a": 0, "task_b": 1}.get(head)
        task_fields = {f.name for f in dataclasses.fields(TaskConfig)} - {"name"}
        if index is None or field not in task_fields:
            raise ConfigError(
                f"--vary {key}: a task key is task_a.FIELD or task_b.FIELD with FIELD one of {', '.join(sorted(task_fields))}."
            )
        if index >= len(cfg.tasks):
            raise ConfigError(f"--vary {key}: this sweep has {len(cfg.tasks)} task(s); there is no {head}.")
        tasks = [dataclasses.replace(t) for t in cfg.tasks]
        setattr(tasks[index], field, value)
        return _derive(cfg, tasks=tasks)
    if key in OWN_OPTIONS:
        raise ConfigError(f"--vary {key}: a sweep varies {key} with its own option, {OWN_OPTIONS[key]}.")
    if key not in _vary_fields():
        raise ConfigError(
            f"--vary {key}: not a config key; use one of {', '.join(sorted(_vary_fields()))}, "
            "or task_a.FIELD / task_b.FIELD."
        )
    return _derive(cfg, **{key: value})


def _label_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def expand_sweep(
    base: RunConfig,
    *,
    sweep_id: str,
    strategies: list[str],
    seeds: list[int],
    backbones: list[str] | None = None,
    freeze_layers: list[int] | None = None,
    separate_models: bool = False,
    vary: dict[str, list] | None = None,
) -> list[RunConfig]:
    """The validated configs of a sweep, in grid order (backbone, strategy, vary values, seed, depth;
    partners follow their multi-task run). ConfigError, naming the bad value, if any of them is invalid."""
    if not strategies or not seeds:
        raise ConfigError("a sweep needs at least one strategy and one seed.")
    vary = vary or {}
    for key, values in vary.items():
        if not values:
            raise ConfigError(f"--vary {key}: give at least one value.")
    configs = []
    combos = list(itertools.product(*vary.values()))
    for backbone, strategy, combo, seed in itertools.product(backbones or [base.backbone], strategies, combos, seeds):
        rule = get_strategy(strategy)
        varied = base
        for key, value in zip(vary, combo):
            varied = apply_setting(varied, key, value)
        depths = (freeze_layers or [_default_depth(base, backbone)]) if rule.uses_freeze_layers else [None]
        settings = "".join(f"-{key.removeprefix('task_')}={_label_value(v)}" for key, v in zip(vary, combo))
        for k in depths:
            label = f"{strategy}{'-k' + str(k) if k is not None else ''}{settings}-s{seed}"
            partners = separate_models and len(base.tasks) == 2 and rule.frozen_head_task is None
            cfg = _derive(
                varied,
                strategy=strategy,
                seed=seed,
                backbone=backbone,
                freeze_layers=k,
                sweep_id=sweep_id,
                name=f"{base.name}-{label}" if base.name else label,
                separate_of=f"{sweep_id}:{label}" if partners else base.separate_of,
            )
            configs.append(cfg.validate())
            for task in cfg.tasks if partners else []:
                configs.append(
                    _derive(cfg, tasks=[dataclasses.replace(task)], name=f"{cfg.name}-only-{task.name}").validate()
                )
    return configs
