"""Checkpoints: safetensors weights plus small JSON files; never pickle.

A checkpoint folder holds two units, each written so that a kill at any moment leaves either the previous
or the new one whole, never a mix:

    checkpoint/model.safetensors          weights: every tensor ("full"), or only what training can have
                                          changed ("delta": heads and trained parameters over a pretrained
                                          backbone that reloads from its spec); its metadata holds the step
    checkpoint/backbone_config/           the backbone's config.json (rebuilds the architecture offline)
    checkpoint/tokenizer/                 the tokenizer files
    checkpoint/checkpoint.json            the manifest: backbone spec, weights mode, label names, pooling,
                                          step; written last, so its presence means the weights are whole

    the resume unit (what resume needs), written right after the weights of the same step:
    checkpoint/weights-<step>-<tag>.safetensors       those weights again (a hard link: no second copy)
    checkpoint/train_state-<step>-<tag>.safetensors   optimizer tensors and RNG states
    checkpoint/train_state.json                       step, the two file names above, optimizer scalars,
                                                      scheduler, time and token counts; written last

Every file is written under a temporary name and renamed into place; folders (tokenizer, backbone config)
are written as a temporary folder and renamed. ``train_state.json`` names the files of its unit, so the
weights a run resumes from always belong to the optimizer state it resumes with: a run killed between
the new weights and the new optimizer state resumes from the previous unit. A unit whose parts disagree
(an older layout, or files changed by hand) is refused with a message instead of being trained on.

The store names the checkpoint folder, the weights file and the two JSON files it checks; the files only
this module reads are named here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from core.errors import CheckpointError, StorageError
from core.files import read_json, safetensors_header, storage_error, write_json_atomic
from core.model import MultiTaskModel
from core.store import CHECKPOINT_MANIFEST, TOKENIZER_DIR, TRAIN_STATE_FILE, UNIT_FILE_RE, WEIGHTS_FILE

FORMAT_VERSION = 1
LEGACY_TRAIN_TENSORS_FILE = "train_state.safetensors"  # before resume units named their files
BACKBONE_CONFIG_DIR = "backbone_config"
TMP_MARK = ".tmp-"  # in the name of anything half-written: removed by the next save


def _tensors(model: MultiTaskModel, names: set[str] | None) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    keep = state if names is None else {k: v for k, v in state.items() if k in names or k.startswith("heads.")}
    return {k: v.detach().to("cpu").contiguous() for k, v in keep.items()}


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], step: int) -> None:
    """Write a safetensors file under a temporary name, flush it to disk, then rename it into place."""
    tmp = path.with_name(f"{path.name}{TMP_MARK}{secrets.token_hex(4)}")
    try:
        save_file(tensors, str(tmp), metadata={"format": str(FORMAT_VERSION), "step": str(step)})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_folder_once(target: Path, save) -> None:
    """``save(folder)`` into a temporary folder renamed to ``target``: it exists whole, or not at all."""
    if target.is_dir():
        return
    tmp = target.with_name(f"{target.name}{TMP_MARK}{secrets.token_hex(4)}")
    try:
        save(tmp)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_leftovers(ckpt_dir: Path, keep: set[str]) -> None:
    """Half-written files of an interrupted save, and resume units older than the one ``keep`` names."""
    for path in ckpt_dir.iterdir():
        stale_unit = path.name.startswith(("weights-", "train_state-")) and path.name not in keep
        if TMP_MARK in path.name or stale_unit:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def _writing(ckpt_dir: Path):
    """Turn a failed write (disk full, read-only folder) into a StorageError that names the folder."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(ckpt_dir, exc) from None


def save_checkpoint(
    ckpt_dir: Path,
    model: MultiTaskModel,
    tokenizer,
    *,
    backbone: str,
    delta_names: set[str] | None,
    step: int,
    extra: dict | None = None,
) -> None:
    """Write weights and metadata. ``delta_names`` None means a full checkpoint."""
    with _writing(ckpt_dir):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _write_tensors(ckpt_dir / WEIGHTS_FILE, _tensors(model, delta_names), step)
        _save_folder_once(ckpt_dir / BACKBONE_CONFIG_DIR, model.backbone.config.save_pretrained)
        _save_folder_once(ckpt_dir / TOKENIZER_DIR, tokenizer.save_pretrained)
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
        write_json_atomic(ckpt_dir / CHECKPOINT_MANIFEST, meta)  # last: the weights above are complete


def _weights_step(path: Path) -> int | None:
    """The step a weights file says it holds (None for files written before steps were recorded)."""
    header, problem = safetensors_header(path)
    if problem:
        raise CheckpointError(
            f"checkpoint file {path} is damaged: {problem}. Resume from an earlier run or train this run again."
        )
    step = (header.get("__metadata__") or {}).get("step")
    return int(step) if isinstance(step, str) and step.isdigit() else None


def read_checkpoint_meta(ckpt_dir: Path) -> dict:
    """The manifest, with ``step`` the step of the weights it describes."""
    meta = read_json(ckpt_dir / CHECKPOINT_MANIFEST)
    if not isinstance(meta, dict) or not (ckpt_dir / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"no checkpoint in {ckpt_dir}: the run has not saved weights yet (or they were deleted).")
    # A kill between the new weights and the new manifest leaves whole weights one save ahead of the manifest;
    # every other field of the manifest is the same for every save of a run.
    step = _weights_step(ckpt_dir / WEIGHTS_FILE)
    return {**meta, "step": step if step is not None else meta.get("step", 0)}


def load_model(ckpt_dir: Path, device: str | torch.device = "cpu") -> tuple[MultiTaskModel, object, dict]:
    """Rebuild model and tokenizer from a checkpoint folder alone (plus the base backbone for deltas)."""
    from core.backbones import _quiet_transformers, load_backbone

    _quiet_transformers()  # the first import of transformers, once, under a lock (pages run in threads)
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    meta = read_checkpoint_meta(ckpt_dir)
    if meta["weights"] == "delta":
        backbone = load_backbone(meta["backbone"])
    else:
        config = AutoConfig.from_pretrained(ckpt_dir / BACKBONE_CONFIG_DIR, trust_remote_code=False)
        try:
            backbone = AutoModel.from_config(config, add_pooling_layer=False, trust_remote_code=False)
        except TypeError:
            backbone = AutoModel.from_config(config, trust_remote_code=False)
    if meta.get("lora"):
        from core.strategies import inject_lora

        backbone = inject_lora(backbone, meta["lora"])
    model = MultiTaskModel(backbone, meta["label_names"], meta["pooling"], meta.get("head_dropout", 0.1))
    result = model.load_state_dict(load_file(str(ckpt_dir / WEIGHTS_FILE)), strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"checkpoint {ckpt_dir} has weights the model does not: {result.unexpected_keys[:5]}")
    if meta["weights"] == "full" and result.missing_keys:
        raise CheckpointError(f"checkpoint {ckpt_dir} lacks weights: {result.missing_keys[:5]}")
    tokenizer = AutoTokenizer.from_pretrained(ckpt_dir / TOKENIZER_DIR, trust_remote_code=False)
    # A run configured beyond its backbone's positions (allowed before they were checked) must not crash
    # on long text: truncate to what the position embeddings hold.
    limit = getattr(backbone.config, "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0:
        pad = getattr(backbone.config, "pad_token_id", None) or 0
        offset = pad + 1 if getattr(backbone.config, "model_type", "") in ("roberta", "xlm-roberta") else 0
        meta["max_length"] = min(int(meta.get("max_length", 128)), limit - offset)
    model.to(device).eval()
    return model, tokenizer, meta


def _resume_unit(ckpt_dir: Path) -> tuple[dict, Path, Path] | None:
    """(train_state.json, its weights file, its tensors file), or None when there is no training state."""
    info = read_json(ckpt_dir / TRAIN_STATE_FILE)
    if info is None:
        return None
    if not isinstance(info, dict) or not isinstance(info.get("step"), int):
        raise CheckpointError(
            f"the training state in {ckpt_dir} is damaged ({TRAIN_STATE_FILE} does not hold a step): this run cannot "
            "be resumed exactly. Delete that file, and `resume` starts the run again from step 0."
        )
    if "tensors_file" not in info:  # the older layout: fixed names, no link to the weights of its step
        return info, ckpt_dir / WEIGHTS_FILE, ckpt_dir / LEGACY_TRAIN_TENSORS_FILE
    names = [info.get("weights_file"), info.get("tensors_file")]
    if not all(isinstance(n, str) and UNIT_FILE_RE.fullmatch(n) for n in names):
        raise CheckpointError(f"{ckpt_dir / TRAIN_STATE_FILE} names files outside its folder ({names}): refused.")
    return info, ckpt_dir / names[0], ckpt_dir / names[1]


def load_weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The weights a run resumes from, on the CPU: those of its training state when it has one (so they
    always match the optimizer state), else the checkpoint's weights."""
    unit = _resume_unit(ckpt_dir)
    path = unit[1] if unit else ckpt_dir / WEIGHTS_FILE
    _weights_step(path)  # a damaged file is a CheckpointError naming it, not a library error
    return load_file(str(path))


# -- training state, for resume ----------------------------------------------------------------------
def save_train_state(ckpt_dir: Path, optimizer, scheduler, step: int, extra: dict) -> None:
    """The resume unit of ``step``: the weights just saved by ``save_checkpoint`` for that step, the
    optimizer, scheduler and RNG state, and last the JSON that names them."""
    with _writing(ckpt_dir):
        weights_step = _weights_step(ckpt_dir / WEIGHTS_FILE)
        if weights_step != step:
            raise CheckpointError(
                f"the weights in {ckpt_dir} are from step {weights_step}, not {step}: save_checkpoint must come first."
            )
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
        tag = f"{step:08d}-{secrets.token_hex(3)}"
        weights_name, tensors_name = f"weights-{tag}.safetensors", f"train_state-{tag}.safetensors"
        try:
            os.link(ckpt_dir / WEIGHTS_FILE, ckpt_dir / weights_name)  # the same bytes under a name of this unit
        except OSError:  # a filesystem without hard links: a copy
            shutil.copyfile(ckpt_dir / WEIGHTS_FILE, ckpt_dir / weights_name)
        _write_tensors(ckpt_dir / tensors_name, tensors, step)
        state = {"step": step, "param_groups": opt_state["param_groups"], "scalars": scalars, "scheduler": sched}
        files = {"weights_file": weights_name, "tensors_file": tensors_name}
        write_json_atomic(ckpt_dir / TRAIN_STATE_FILE, {**state, **files, **extra})  # last: the unit is whole
        _remove_leftovers(ckpt_dir, keep={weights_name, tensors_name})
        (ckpt_dir / LEGACY_TRAIN_TENSORS_FILE).unlink(missing_ok=True)


def load_train_state(ckpt_dir: Path, optimizer, scheduler) -> dict:
    """Restore optimizer, scheduler and RNG from the resume unit; refuses a unit whose parts disagree."""
    unit = _resume_unit(ckpt_dir)
    if unit is None:
        raise CheckpointError(f"no training state in {ckpt_dir}: this run cannot be resumed, start a new one.")
    info, weights_path, tensors_path = unit
    if not tensors_path.is_file():
        raise CheckpointError(
            f"the training state in {ckpt_dir} lacks {tensors_path.name}: this run cannot be resumed exactly. "
            f"Delete {TRAIN_STATE_FILE} there, and `resume` starts the run again from step 0."
        )
    steps = {"optimizer state": info["step"], "weights": _weights_step(weights_path)}
    if "tensors_file" in info:
        steps["optimizer tensors"] = _weights_step(tensors_path)
    else:  # the older layout recorded the weights' step only in the manifest
        manifest = read_json(ckpt_dir / CHECKPOINT_MANIFEST) or {}
        steps["weights"] = steps["weights"] if steps["weights"] is not None else manifest.get("step")
    if len(set(steps.values())) != 1:
        found = ", ".join(f"{what} from step {s}" for what, s in steps.items())
        raise CheckpointError(
            f"the checkpoint in {ckpt_dir} does not match itself ({found}): it was interrupted while being "
            "written. Resuming would train on the mismatch, so it is refused. Delete "
            f"{TRAIN_STATE_FILE} there, and `resume` starts the run again from step 0."
        )
    tensors = load_file(str(tensors_path))
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
    """Forget the resume unit (a completed run keeps only its final weights): its JSON first."""
    with _writing(ckpt_dir):
        (ckpt_dir / TRAIN_STATE_FILE).unlink(missing_ok=True)
        (ckpt_dir / LEGACY_TRAIN_TENSORS_FILE).unlink(missing_ok=True)
        _remove_leftovers(ckpt_dir, keep=set())


def checkpoint_size_bytes(ckpt_dir: Path) -> int:
    """Bytes on disk (a resume unit's hard-linked weights are counted once)."""
    seen, total = set(), 0
    for p in Path(ckpt_dir).rglob("*"):
        if p.is_file():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total
