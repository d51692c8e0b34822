"""Export a run as a sentence-transformers folder: the encoder, its tokenizer and the task heads.

``export_run`` writes a folder that ``sentence_transformers.SentenceTransformer(folder)`` loads offline,
with no code of FreezeLab and no ``trust_remote_code``::

    out/config.json, model.safetensors    the backbone (LoRA adapters merged into its weights), safetensors only
    out/tokenizer.json, tokenizer_config.json, ...
                                          the tokenizer; model_max_length is the run's max_length
    out/modules.json                      the module list: Transformer (this folder) then Pooling (1_Pooling/)
    out/sentence_bert_config.json         max_seq_length (the run's max_length) and do_lower_case
    out/1_Pooling/config.json             mean or CLS pooling, as the run pooled
    out/config_sentence_transformers.json library versions at export time, cosine similarity, no prompts
    out/heads.safetensors                 per task "<task>.weight" (n_labels x dim) and "<task>.bias" (n_labels)
    out/heads.json                        per task its label names in logit order; the pooling; the source run
    out/README.md                         where the model came from and how to use it

The module files are written in the long-standing format (``sentence_transformers.models.*`` types and
the ``pooling_mode_*_tokens`` flags) that every sentence-transformers release since 2.0 reads; newer ones
convert it on load. No normalisation module is added: FreezeLab's heads were trained on the raw pooled
embedding, so ``encode`` returns exactly what the heads expect.

``export_zip`` builds the same folder in a temporary directory and returns it as zip bytes (for a
download button). Nothing here is imported at CLI start-up: torch, safetensors and peft load on first use.
"""

from __future__ import annotations

import dataclasses
import io
import json
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import ExportError

__all__ = ["ExportError", "HEADS_FILE", "HEADS_JSON", "export_run", "export_zip", "merge_lora"]

HEADS_FILE = "heads.safetensors"
HEADS_JSON = "heads.json"
HEADS_FORMAT = 1
# Files a folder must hold to count as an earlier export, which overwrite=True may replace.
_EXPORT_MARKERS = ("modules.json", HEADS_JSON)
# Weight files that unpickle on load: an export never contains one.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


# -- public API ---------------------------------------------------------------------------------------
def export_run(
    ckpt_dir: Path,
    out_dir: Path,
    *,
    config: Any = None,
    summary: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write the run whose checkpoint is ``ckpt_dir`` to ``out_dir`` as a sentence-transformers folder.

    ``config`` and ``summary`` (the run's RunConfig / RunSummary, or their dicts) only feed the README and
    the provenance in heads.json: run id, strategy, backbone and test accuracy per task.
    ``out_dir`` must be absent or empty; with ``overwrite`` it may also hold an earlier export, which is
    replaced only once the new one is complete (any other non-empty folder is refused, never deleted).
    Returns ``out_dir``.
    """
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    _check_target(out_dir, overwrite)
    model, tokenizer, meta = _load(ckpt_dir)
    cfg, summ = _as_dict(config), _as_dict(summary)

    backbone = model.backbone
    merged_layers = merge_lora(model) if _has_lora(model) or meta.get("lora") else 0

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.export-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
        max_length = int(meta.get("max_length") or cfg.get("max_length") or tokenizer.model_max_length)
        _save_encoder(backbone, tokenizer, staging, max_length)
        hidden = int(backbone.config.hidden_size)
        _write_json(staging / "modules.json", _modules())
        _write_json(staging / "sentence_bert_config.json", _sentence_bert_config(backbone, max_length))
        (staging / "1_Pooling").mkdir()
        _write_json(staging / "1_Pooling" / "config.json", _pooling_config(model.pooling, hidden))
        _write_json(staging / "config_sentence_transformers.json", _st_config())
        source = _source(ckpt_dir, meta, cfg, summ, merged_layers)
        _save_heads(model, staging, hidden, source)
        (staging / "README.md").write_text(_readme(model, meta, source, summ, max_length, hidden), encoding="utf-8")
        _check_no_pickle(staging)
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def export_zip(ckpt_dir: Path, *, config: Any = None, summary: Any = None, root: str | None = None) -> bytes:
    """The export folder of ``ckpt_dir`` as zip bytes, built in a temporary directory.

    Entries sit under one top folder, ``root`` (default ``<run id>-sentence-transformer``), so unzipping
    gives one folder to hand to ``SentenceTransformer``; ``root=""`` puts the files at the top level.
    """
    summ, cfg = _as_dict(summary), _as_dict(config)
    if root is None:
        root = f"{_run_id(Path(ckpt_dir), summ, cfg)}-sentence-transformer"
    root = root.strip("/")
    with tempfile.TemporaryDirectory(prefix="freezelab-export-") as tmp:
        folder = export_run(Path(ckpt_dir), Path(tmp) / "export", config=config, summary=summary)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                rel = path.relative_to(folder).as_posix()
                # Weights barely compress: store them (fast); deflate the JSON, text and tokenizer files.
                method = zipfile.ZIP_STORED if path.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
                archive.write(path, f"{root}/{rel}" if root else rel, compress_type=method)
        return buffer.getvalue()


def merge_lora(model) -> int:
    """Merge every LoRA adapter of ``model`` (injected with ``peft.inject_adapter_in_model``) into its
    base layer's weights and put the plain base layer back in its place; returns how many were merged.

    This is what ``PeftModel.merge_and_unload`` does, done by hand because an injected model has no
    PeftModel around it: for each outermost peft tuner layer, ``merge()`` adds ``B @ A * scaling`` to the
    base weight, then the tuner layer is replaced by ``get_base_layer()``. The model must be in eval mode
    for the self-check: the pooled embeddings of two fixed token sequences before and after must agree.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    probe = _probe(model)
    tuner_names = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    outermost = [n for n in tuner_names if not any(n.startswith(other + ".") for other in tuner_names)]
    for name in outermost:
        layer = model.get_submodule(name)
        try:
            layer.merge(safe_merge=True)  # safe: refuses NaN/inf weights instead of writing them
        except (ValueError, RuntimeError) as exc:
            raise ExportError(f"LoRA layer {name} cannot be merged ({exc}); the export was stopped.") from None
        if not layer.merged:
            raise ExportError(f"LoRA layer {name} did not merge (is its adapter disabled?); the export was stopped.")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.get_base_layer())
    for holder in (model, getattr(model, "backbone", None)):
        if holder is not None and hasattr(holder, "peft_config"):
            del holder.peft_config  # the injected model's adapter bookkeeping; it has no adapters any more
    left = [k for k in model.state_dict() if "lora_" in k]
    if left:
        raise ExportError(f"LoRA weights remain after merging ({left[:3]}); this adapter type cannot be exported.")
    if probe is not None:
        after = _probe(model)
        if after is None or not _close(probe, after):
            raise ExportError("merging the LoRA adapters changed the embeddings; the export was stopped.")
    return len(outermost)


# -- loading ------------------------------------------------------------------------------------------
def _load(ckpt_dir: Path):
    from core.checkpoint import CheckpointError, load_model, read_checkpoint_meta

    if not ckpt_dir.is_dir():
        raise ExportError(f"no checkpoint folder at {ckpt_dir}: the run has not saved weights (or they were deleted).")
    try:
        read_checkpoint_meta(ckpt_dir)
        return load_model(ckpt_dir, "cpu")
    except CheckpointError as exc:
        raise ExportError(f"cannot export: {exc}") from None


def _has_lora(model) -> bool:
    return any(".lora_" in name for name, _ in model.named_parameters())


def _as_dict(value: Any) -> dict:
    """A RunConfig / RunSummary / plain mapping as a dict; None as {}."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if callable(getattr(value, "to_dict", None)):
        return dict(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise ExportError(f"config/summary must be a mapping or a FreezeLab record, not {type(value).__name__}.")


def _run_id(ckpt_dir: Path, summary: dict, config: dict) -> str:
    """The run id from the summary, else the config's name, else the folder holding the checkpoint."""
    return str(summary.get("run_id") or config.get("name") or ckpt_dir.resolve().parent.name or "freezelab-run")


# -- the target folder --------------------------------------------------------------------------------
def _check_target(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is a file: choose a folder path for the export.")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty: choose a new folder, or pass overwrite to replace it.")
    if not all((out_dir / name).is_file() for name in _EXPORT_MARKERS):
        raise ExportError(
            f"{out_dir} is not empty and is not an earlier export (no {' / '.join(_EXPORT_MARKERS)}): "
            "overwrite only replaces exports; empty or delete that folder yourself, or choose another."
        )


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Move the finished export into place; an earlier export there is removed only after the move."""
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
        staging.rename(out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.replaced-{secrets.token_hex(4)}"
    out_dir.rename(old)
    try:
        staging.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


# -- writing ------------------------------------------------------------------------------------------
def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _save_encoder(backbone, tokenizer, folder: Path, max_length: int) -> None:
    import inspect

    params = inspect.signature(backbone.save_pretrained).parameters
    # transformers 4.x takes safe_serialization (default True since 4.35); 5.x always writes safetensors.
    kwargs = {"safe_serialization": True} if "safe_serialization" in params else {}
    backbone.save_pretrained(folder, **kwargs)
    if not list(folder.glob("*.safetensors")):
        raise ExportError(f"the encoder was not saved as safetensors in {folder}; the export was stopped.")
    tokenizer.model_max_length = max_length  # what FreezeLab truncated to; newer sentence-transformers read it here
    tokenizer.save_pretrained(folder)


def _modules() -> list[dict]:
    return [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]


def _sentence_bert_config(backbone, max_length: int) -> dict:
    config: dict[str, Any] = {"max_seq_length": max_length, "do_lower_case": False}
    if getattr(backbone, "pooler", "absent") is None:
        # FreezeLab builds BERT-like backbones without their pooler layer (unused by mean/CLS pooling of the
        # hidden states); ask for the same on load, so no randomly initialised pooler is created or warned about.
        config["model_args"] = {"add_pooling_layer": False}
    return config


def _pooling_config(pooling: str, hidden: int) -> dict:
    if pooling not in ("mean", "cls"):
        raise ExportError(f"pooling {pooling!r} has no sentence-transformers equivalent here (mean or cls only).")
    return {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _st_config() -> dict:
    return {
        "__version__": {
            "sentence_transformers": _version("sentence-transformers"),
            "transformers": _version("transformers"),
            "pytorch": _version("torch"),
        },
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }


def _source(ckpt_dir: Path, meta: dict, cfg: dict, summ: dict, merged_layers: int) -> dict:
    return {
        "run_id": _run_id(ckpt_dir, summ, cfg),
        "strategy": summ.get("strategy") or cfg.get("strategy"),
        "backbone": meta.get("backbone") or cfg.get("backbone"),
        "step": meta.get("step"),
        "lora": meta.get("lora") or None,
        "lora_layers_merged": merged_layers,
    }


def _save_heads(model, folder: Path, hidden: int, source: dict) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for task, head in model.heads.items():
        tensors[f"{task}.weight"] = head.classifier.weight.detach().to("cpu").contiguous()
        tensors[f"{task}.bias"] = head.classifier.bias.detach().to("cpu").contiguous()
    save_file(tensors, str(folder / HEADS_FILE), metadata={"format": str(HEADS_FORMAT), "pooling": model.pooling})
    _write_json(
        folder / HEADS_JSON,
        {
            "format": HEADS_FORMAT,
            "pooling": model.pooling,
            "embedding_dimension": hidden,
            "normalized": False,
            "usage": "logits = embedding @ heads['<task>.weight'].T + heads['<task>.bias']; label = labels[argmax]",
            "tasks": {task: list(names) for task, names in model.label_names.items()},
            "source": source,
        },
    )


def _check_no_pickle(folder: Path) -> None:
    bad = [p.name for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _PICKLE_SUFFIXES]
    if bad:
        raise ExportError(f"the export would contain pickle files {bad}; it was stopped.")


def _readme(model, meta: dict, source: dict, summ: dict, max_length: int, hidden: int) -> str:
    tasks_summary = summ.get("tasks") or {}
    first_task = model.tasks[0]
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, feature-extraction, freezelab]",
        "---",
        "",
        f"# {source['run_id']}",
        "",
        "A sentence encoder and its task heads, exported from a FreezeLab multi-task run.",
        "",
        f"- run: `{source['run_id']}` (checkpoint step {source['step']})",
        f"- strategy: `{source['strategy'] or 'unknown'}`",
        f"- backbone: `{source['backbone'] or 'unknown'}`",
        f"- embedding: {model.pooling} pooling of the last hidden states, {hidden} dimensions, not normalised",
        f"- max sequence length: {max_length} tokens (longer inputs are truncated, as in training)",
    ]
    if source["lora_layers_merged"]:
        lines.append(
            f"- LoRA: the adapters of {source['lora_layers_merged']} layers are merged into the encoder weights "
            "(a plain model: no peft needed)"
        )
    lines += ["", "## Tasks", "", "| task | labels | test accuracy |", "|---|---|---|"]
    for task, names in model.label_names.items():
        acc = (tasks_summary.get(task) or {}).get("test_accuracy")
        acc_text = f"{100 * acc:.1f}%" if isinstance(acc, int | float) else "n/a"
        lines.append(f"| {task} | {', '.join(names)} | {acc_text} |")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("path/to/this/folder")',
        'embeddings = model.encode(["The striker scored twice."], convert_to_tensor=True)',
        "print(embeddings.shape)",
        "```",
        "",
        "The heads are linear layers applied to that pooled embedding (the output of `encode`):",
        "",
        "```python",
        "import json",
        "from safetensors.torch import load_file",
        "",
        'heads = load_file("path/to/this/folder/heads.safetensors", device=str(embeddings.device))',
        'labels = json.load(open("path/to/this/folder/heads.json"))["tasks"]',
        f'logits = embeddings @ heads["{first_task}.weight"].T + heads["{first_task}.bias"]',
        f'print([labels["{first_task}"][i] for i in logits.argmax(-1).tolist()])',
        "```",
        "",
        "`heads.json` lists each task's labels in logit order. Do not normalise the embeddings before",
        "applying a head: the heads were trained on the raw pooled embedding.",
        "",
    ]
    return "\n".join(lines)


# -- the LoRA merge check -----------------------------------------------------------------------------
def _probe(model):
    """Pooled embeddings of two fixed inputs (token ids from the vocabulary range), or None if not applicable."""
    import torch

    embed = getattr(model, "embed", None)
    config = getattr(getattr(model, "backbone", None), "config", None)
    if embed is None or config is None or model.training:
        return None
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 200:
        return None
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2178, 3231, 102, 0, 0]]) % vocab
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    device = next(model.parameters()).device
    with torch.inference_mode():
        return embed(ids.to(device), mask.to(device)).float().cpu()


def _close(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, atol=1e-4, rtol=1e-4))
