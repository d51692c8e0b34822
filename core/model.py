"""The multi-task sentence transformer: one backbone, pooled sentence embeddings, one head per task."""

from __future__ import annotations

import re

import torch
from torch import nn

_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|block|h)\.(\d+)\.")


class TaskHead(nn.Module):
    """Dropout then a linear classifier over the sentence embedding."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(embedding))


class MultiTaskModel(nn.Module):
    def __init__(
        self, backbone: nn.Module, label_names: dict[str, list[str]], pooling: str = "mean", head_dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.label_names = {task: list(names) for task, names in label_names.items()}
        hidden = backbone.config.hidden_size
        self.heads = nn.ModuleDict(
            {task: TaskHead(hidden, len(names), head_dropout) for task, names in self.label_names.items()}
        )

    @property
    def tasks(self) -> list[str]:
        return list(self.heads.keys())

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task: str) -> torch.Tensor:
        if task not in self.heads:
            raise KeyError(f"no head for task {task!r}; heads: {self.tasks}")
        return self.heads[task](self.embed(input_ids, attention_mask))

    def predict_all(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head from one backbone pass (what a multi-task model buys at serving time)."""
        return self.logits(self.embed(input_ids, attention_mask))

    def logits(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's logits for pooled sentence embeddings."""
        return {task: head(embedding) for task, head in self.heads.items()}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def group_of(param_name: str) -> str:
    """The layer-map group of a parameter: embeddings, layer.i, head.<task> or other."""
    if param_name.startswith("heads."):
        return "head." + param_name.split(".")[1]
    match = _LAYER_RE.search(param_name)
    if match:
        return f"layer.{match.group(1)}"
    if "embed" in param_name:
        return "embeddings"
    return "other"


def num_backbone_layers(model: nn.Module) -> int:
    config = model.backbone.config if isinstance(model, MultiTaskModel) else model.config
    return int(getattr(config, "num_hidden_layers", getattr(config, "n_layer", 0)))


def group_order(n_layers: int, tasks: list[str]) -> list[str]:
    """Bottom-to-top order of groups, for tables and the network diagram."""
    return ["embeddings", *[f"layer.{i}" for i in range(n_layers)], "other", *[f"head.{t}" for t in tasks]]


def parameter_report(model: MultiTaskModel) -> dict:
    """Trainable and total parameter counts, overall and per group, in bottom-to-top order."""
    groups: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():
        g = groups.setdefault(group_of(name), {"trainable": 0, "total": 0})
        g["total"] += param.numel()
        if param.requires_grad:
            g["trainable"] += param.numel()
    order = [g for g in group_order(num_backbone_layers(model), model.tasks) if g in groups]
    layers = [{"group": g, **groups[g]} for g in order]
    trainable = sum(g["trainable"] for g in groups.values())
    total = sum(g["total"] for g in groups.values())
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100.0 * trainable / total, 4) if total else 0.0,
        "layers": layers,
    }


def format_parameter_line(report: dict) -> str:
    return (
        f"trainable params: {report['trainable_params']:,} || all params: {report['total_params']:,} "
        f"|| trainable%: {report['trainable_percent']:.4f}"
    )
