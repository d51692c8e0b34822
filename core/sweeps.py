"""Sweep expansion: one base config into the grid of runs a sweep trains. Pure: it queues nothing.

The grid is backbones x strategies x seeds, and for strategies that take a freeze depth (freeze_lower)
x depths. With ``separate_models``, each two-task run also gets one partner per task trained alone
with the same settings, linked by ``separate_of``, so multi-task can be weighed against separate
models. Every config is validated before the caller queues any.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import time

from core.config import ConfigError, RunConfig
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


def expand_sweep(
    base: RunConfig,
    *,
    sweep_id: str,
    strategies: list[str],
    seeds: list[int],
    backbones: list[str] | None = None,
    freeze_layers: list[int] | None = None,
    separate_models: bool = False,
) -> list[RunConfig]:
    """The validated configs of a sweep, in grid order (backbone, strategy, seed, depth; partners follow
    their multi-task run). ConfigError, naming the bad value, if any of them is invalid."""
    if not strategies or not seeds:
        raise ConfigError("a sweep needs at least one strategy and one seed.")
    configs = []
    for backbone, strategy, seed in itertools.product(backbones or [base.backbone], strategies, seeds):
        rule = get_strategy(strategy)
        depths = (freeze_layers or [_default_depth(base, backbone)]) if rule.uses_freeze_layers else [None]
        for k in depths:
            label = f"{strategy}{'-k' + str(k) if k is not None else ''}-s{seed}"
            partners = separate_models and len(base.tasks) == 2 and rule.frozen_head_task is None
            cfg = _derive(
                base,
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
