"""Freezing strategies: which parameters train, as small rules over the model's layer map.

Each strategy is a rule ``(parameter name, group, context) -> trainable``; ``apply_strategy`` flips
``requires_grad`` accordingly. Groups are ``embeddings``, ``layer.i``, ``other`` and ``head.<task>``
(see ``core.model.group_of``). Task A is the first configured task, Task B the second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import BackboneError, ConfigError

if TYPE_CHECKING:
    from core.config import RunConfig
    from core.model import MultiTaskModel


@dataclass(frozen=True)
class StrategyContext:
    n_layers: int
    tasks: list[str]
    freeze_layers: int | None
    unfrozen_layers: int | None = None  # gradual_unfreeze: transformer layers unfrozen so far, from the top


Rule = Callable[[str, str, StrategyContext], bool]


@dataclass(frozen=True)
class Strategy:
    id: str
    title: str
    when_to_use: str
    rule: Rule
    uses_freeze_layers: bool = False
    frozen_head_task: int | None = None  # index of the task whose head is frozen (0 = A, 1 = B)
    staged: bool = False  # what trains changes during training (gradual unfreezing)
    lora: bool = False  # adapters are injected into the backbone before training

    def validate_config(self, cfg: RunConfig) -> None:
        if self.uses_freeze_layers:
            if cfg.freeze_layers is None:
                raise ConfigError(
                    f"strategy {self.id} needs freeze_layers (the k bottom layers to freeze), e.g. --freeze-layers 4."
                )
            if cfg.freeze_layers < 0:
                raise ConfigError(
                    f"freeze_layers={cfg.freeze_layers}: use 0 (embeddings only) up to the backbone's layer count."
                )
        if self.frozen_head_task is not None and len(cfg.tasks) <= self.frozen_head_task:
            raise ConfigError(
                f"strategy {self.id} freezes the head of task {'AB'[self.frozen_head_task]}, but the run has "
                f"{len(cfg.tasks)} task(s); add the task or pick another strategy."
            )

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "title": self.title,
            "when_to_use": self.when_to_use,
            "uses_freeze_layers": self.uses_freeze_layers,
        }


def _is_head(group: str) -> bool:
    return group.startswith("head.")


def _head_task(group: str) -> str:
    return group.split(".", 1)[1]


def _frozen_all(name: str, group: str, ctx: StrategyContext) -> bool:
    return False


def _heads_only(name: str, group: str, ctx: StrategyContext) -> bool:
    return _is_head(group)


def _everything(name: str, group: str, ctx: StrategyContext) -> bool:
    return True


def _freeze_head(index: int) -> Rule:
    def rule(name: str, group: str, ctx: StrategyContext) -> bool:
        return not (_is_head(group) and _head_task(group) == ctx.tasks[index])

    return rule


def _bitfit(name: str, group: str, ctx: StrategyContext) -> bool:
    return _is_head(group) or name.endswith(".bias")


def _lora(name: str, group: str, ctx: StrategyContext) -> bool:
    return _is_head(group) or ".lora_" in name


def _freeze_embeddings(name: str, group: str, ctx: StrategyContext) -> bool:
    return group != "embeddings"


def _gradual(name: str, group: str, ctx: StrategyContext) -> bool:
    """Heads first; then one transformer layer more from the top per stage; the embeddings last."""
    n = ctx.n_layers + 1 if ctx.unfrozen_layers is None else ctx.unfrozen_layers  # None: the final stage
    if _is_head(group):
        return True
    if group.startswith("layer."):
        return int(group.split(".")[1]) >= ctx.n_layers - n
    return n > ctx.n_layers


def _freeze_lower(name: str, group: str, ctx: StrategyContext) -> bool:
    k = ctx.freeze_layers or 0
    if group == "embeddings":
        return False
    if group.startswith("layer."):
        return int(group.split(".")[1]) >= k
    return True


STRATEGIES: dict[str, Strategy] = {
    s.id: s
    for s in [
        Strategy(
            "frozen_all",
            "Freeze everything",
            "Nothing trains: the evaluation-only baseline, or a model (from --init-from) that already fits.",
            _frozen_all,
        ),
        Strategy(
            "frozen_backbone",
            "Freeze the backbone, train the heads",
            "Little data or embeddings that already suit the tasks: fastest, least overfitting, no domain adaptation.",
            _heads_only,
        ),
        Strategy(
            "freeze_head_a",
            "Freeze Task A's head",
            "Task A is already good (start from its run with --init-from): train the backbone and Task B; watch Task A drift.",
            _freeze_head(0),
            frozen_head_task=0,
        ),
        Strategy(
            "freeze_head_b",
            "Freeze Task B's head",
            "Task B is already good (start from its run with --init-from): train the backbone and Task A; watch Task B drift.",
            _freeze_head(1),
            frozen_head_task=1,
        ),
        Strategy(
            "freeze_lower",
            "Freeze the bottom k layers",
            "Keep general low-level features, adapt the upper layers to your domain; cheaper than full fine-tuning.",
            _freeze_lower,
            uses_freeze_layers=True,
        ),
        Strategy(
            "freeze_embeddings",
            "Freeze the embeddings only",
            "A common middle ground on small data: the 12M-parameter vocabulary table stays, every layer adapts.",
            _freeze_embeddings,
        ),
        Strategy(
            "gradual_unfreeze",
            "Unfreeze gradually (ULMFiT)",
            "Heads first, then one more layer from the top every N steps (or epoch): less forgetting on small data.",
            _gradual,
            staged=True,
        ),
        Strategy(
            "bitfit",
            "Train only the biases (BitFit)",
            "About 0.1% of the backbone trains: competitive with full fine-tuning on small data, tiny checkpoints.",
            _bitfit,
        ),
        Strategy(
            "lora",
            "LoRA adapters (peft)",
            "Low-rank adapters on the attention projections: ~0.3% of parameters train (r=8), the backbone stays intact.",
            _lora,
            lora=True,
        ),
        Strategy(
            "full_finetune",
            "Train everything",
            "Plenty of data or a domain far from the pretraining data: strongest, slowest, most prone to overfit small data.",
            _everything,
        ),
    ]
}


def get_strategy(strategy_id: str) -> Strategy:
    try:
        return STRATEGIES[strategy_id]
    except KeyError:
        raise ConfigError(f"strategy={strategy_id!r} is unknown; choose one of: {', '.join(STRATEGIES)}.") from None


def apply_strategy(model: MultiTaskModel, cfg: RunConfig, unfrozen_layers: int | None = None) -> None:
    """Set ``requires_grad`` on every parameter of ``model`` by the run's strategy.

    ``unfrozen_layers`` is the stage of a staged strategy (None: the final stage, where all that
    will ever train trains)."""
    from core.model import group_of, num_backbone_layers

    strategy = get_strategy(cfg.strategy)
    n_layers = num_backbone_layers(model)
    if strategy.uses_freeze_layers and (cfg.freeze_layers or 0) > n_layers:
        raise ConfigError(
            f"freeze_layers={cfg.freeze_layers} but the backbone has only {n_layers} layers; use 0 to {n_layers}."
        )
    ctx = StrategyContext(n_layers, model.tasks, cfg.freeze_layers, unfrozen_layers)
    for name, param in model.named_parameters():
        param.requires_grad_(strategy.rule(name, group_of(name), ctx))


def lora_settings(cfg: RunConfig) -> dict:
    return {
        "r": cfg.lora_r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": list(cfg.lora_targets),
    }


def inject_lora(backbone, settings: dict):
    """Add LoRA adapters to the backbone's attention projections in place (peft)."""
    from peft import LoraConfig, inject_adapter_in_model

    try:
        return inject_adapter_in_model(LoraConfig(bias="none", **settings), backbone)
    except ValueError as exc:
        raise ConfigError(
            f"LoRA could not find target modules {settings['target_modules']} in this backbone "
            f"({str(exc).splitlines()[0][:120]}); set lora_targets to its projection names."
        ) from None


def prepare_backbone(backbone, cfg: RunConfig):
    """Structural changes a strategy needs before training (LoRA adapters); a no-op for the rest."""
    return inject_lora(backbone, lora_settings(cfg)) if get_strategy(cfg.strategy).lora else backbone


def frozen_head_tasks(cfg: RunConfig) -> list[str]:
    """Tasks whose head this strategy freezes: their batches are evaluated, not trained on by default."""
    strategy = get_strategy(cfg.strategy)
    if strategy.frozen_head_task is None:
        return []
    return [cfg.tasks[strategy.frozen_head_task].name]


def plan(cfg: RunConfig, num_labels: dict[str, int] | None = None) -> dict:
    """Trainable/total parameter counts and the per-layer map for a config, without loading weights.

    The model is built on PyTorch's meta device from the backbone's config.json alone, so this is
    cheap enough for the dashboard to call on every change of an option.
    """
    import torch

    from core.backbones import _quiet_transformers, load_backbone_config

    _quiet_transformers()  # the first import of transformers, once, under a lock (pages run in threads)
    from transformers import AutoModel

    from core.model import MultiTaskModel, parameter_report

    config = load_backbone_config(cfg.backbone)
    labels = {t.name: ["?"] * (num_labels or {}).get(t.name, 2) for t in cfg.tasks}
    with torch.device("meta"):
        try:
            try:
                backbone = AutoModel.from_config(config, add_pooling_layer=False)
            except TypeError:
                backbone = AutoModel.from_config(config)
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            # a config.json that reads but describes no buildable model (hidden size not divisible by the heads...)
            raise BackboneError(
                f"backbone {cfg.backbone!r}: its config.json does not describe a model transformers can build "
                f"({str(exc).splitlines()[0][:200]}). Fix the file or choose another backbone."
            ) from None
        model = MultiTaskModel(prepare_backbone(backbone, cfg), labels, cfg.pooling, cfg.head_dropout)
    apply_strategy(model, cfg)
    report = parameter_report(model)
    if get_strategy(cfg.strategy).staged:
        apply_strategy(model, cfg, unfrozen_layers=0)
        report["initial_trainable_params"] = parameter_report(model)["trainable_params"]
    return report
