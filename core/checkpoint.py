"""Checkpoints: safetensors weights plus small JSON files; never pickle.

    checkpoint/model.safetensors      weights: every tensor ("full"), or only what training can have
                                      changed ("delta": heads and trained parameters over a pretrained
                                      backbone that reloads from its spec)
    checkpoint/checkpoint.json        backbone spec, weights mode, label names, pooling, step
    checkpoint/backbone_config/       the backbone's config.json (rebuilds the architecture offline)
    checkpoint/tokenizer/             the tokenizer files
    checkpoint/train_state.*          optimizer, scheduler, RNG and step: what resume needs
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from core.model import MultiTaskModel
from core.store import read_json, write_json_atomic

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


def _tensors(model: MultiTaskModel, names: set[str] | None) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    keep = state if names is None else {k: v for k, v in state.items() if k in names or k.startswith("heads.")}
    return {k: v.detach().to("cpu").contiguous() for k, v in keep.items()}


def save_checkpoint(
    ckpt_dir: Path, model: MultiTaskModel, tokenizer, *, backbone: str, delta_names: set[str] | None, step: int,
    extra: dict | None = None,
) -> None:
    """Write weights and metadata. ``delta_names`` None means a full checkpoint."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / "model.safetensors.tmp"
    save_file(_tensors(model, delta_names), str(tmp), metadata={"format": str(FORMAT_VERSION)})
    tmp.replace(ckpt_dir / "model.safetensors")
    if not (ckpt_dir / "backbone_config" / "config.json").exists():
        model.backbone.config.save_pretrained(ckpt_dir / "backbone_config")
    if not (ckpt_dir / "tokenizer").exists():
        tokenizer.save_pretrained(ckpt_dir / "tokenizer")
    meta = {
        "format": FORMAT_VERSION,
        "backbone": backbone,
        "weights": "full" if delta_names is None else "delta",
        "label_names": model.label_names,
        "pooling": model.pooling,
        "head_dropout": model.heads[model.tasks[0]].dropout.p,
        "step": step,
        **(extra or {}),
    }
    write_json_atomic(ckpt_dir / "checkpoint.json", meta)


def read_checkpoint_meta(ckpt_dir: Path) -> dict:
    meta = read_json(ckpt_dir / "checkpoint.json")
    if not meta or not (ckpt_dir / "model.safetensors").is_file():
        raise CheckpointError(f"no checkpoint in {ckpt_dir}: the run has not saved weights yet (or they were deleted).")
    return meta


def load_model(ckpt_dir: Path, device: str | torch.device = "cpu") -> tuple[MultiTaskModel, object, dict]:
    """Rebuild model and tokenizer from a checkpoint folder alone (plus the base backbone for deltas)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from core.backbones import _quiet_transformers, load_backbone

    _quiet_transformers()
    meta = read_checkpoint_meta(ckpt_dir)
    if meta["weights"] == "delta":
        backbone = load_backbone(meta["backbone"])
    else:
        config = AutoConfig.from_pretrained(ckpt_dir / "backbone_config", trust_remote_code=False)
        try:
            backbone = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            backbone = AutoModel.from_config(config)
    if meta.get("lora"):
        from core.strategies import inject_lora

        backbone = inject_lora(backbone, meta["lora"])
    model = MultiTaskModel(backbone, meta["label_names"], meta["pooling"], meta.get("head_dropout", 0.1))
    state = load_file(str(ckpt_dir / "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"checkpoint {ckpt_dir} has weights the model does not: {result.unexpected_keys[:5]}")
    if meta["weights"] == "full" and result.missing_keys:
        raise CheckpointError(f"checkpoint {ckpt_dir} lacks weights: {result.missing_keys[:5]}")
    tokenizer = AutoTokenizer.from_pretrained(ckpt_dir / "tokenizer", trust_remote_code=False)
    model.to(device).eval()
    return model, tokenizer, meta


# -- training state, for resume ----------------------------------------------------------------------
def save_train_state(ckpt_dir: Path, optimizer, scheduler, step: int, extra: dict) -> None:
    opt_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    scalars: dict[str, dict] = {}
    for idx, entry in opt_state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    save_file(tensors, str(ckpt_dir / "train_state.safetensors.tmp"))
    (ckpt_dir / "train_state.safetensors.tmp").replace(ckpt_dir / "train_state.safetensors")
    write_json_atomic(
        ckpt_dir / "train_state.json",
        {"step": step, "param_groups": opt_state["param_groups"], "scalars": scalars, "scheduler": sched, **extra},
    )


def load_train_state(ckpt_dir: Path, optimizer, scheduler) -> dict:
    info = read_json(ckpt_dir / "train_state.json")
    if info is None or not (ckpt_dir / "train_state.safetensors").is_file():
        raise CheckpointError(f"no training state in {ckpt_dir}: this run cannot be resumed, start a new one.")
    tensors = load_file(str(ckpt_dir / "train_state.safetensors"))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in info["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    scheduler.load_state_dict({**info["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return info


def drop_train_state(ckpt_dir: Path) -> None:
    for name in ("train_state.safetensors", "train_state.json"):
        (ckpt_dir / name).unlink(missing_ok=True)


def checkpoint_size_bytes(ckpt_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(ckpt_dir).rglob("*") if p.is_file())
