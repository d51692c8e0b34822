"""Side by side: runs that hold the same pretrained weights compute with them once per batch of sentences.

Which runs hold pretrained weights, and where:
- frozen_backbone and frozen_all: the embeddings and every layer; freeze_lower k: the embeddings and the
  bottom k layers; freeze_embeddings: the embeddings. Their hidden states are equal up to there, so those
  layers are computed once (the frozen stream) and each run takes it from the depth it holds.
- LoRA: the embeddings and every layer's base weights, with low-rank changes on some projections. Its hidden
  states differ from the first adapted layer on, but they can ride through the same weights: its rows are
  stacked under the frozen stream's in each matmul and add their own changes (``core.lean``). At one
  sentence on a CPU a second block of rows costs about a quarter of a pass (MiniLM-L6, prepacked: 7.4 ms
  for one block, 9.3 ms for two), not a whole one.

A run joins only when its configuration says those weights came frozen from the pretrained backbone (no
init_from, a delta checkpoint, no tensor for them in it: LoRA's adapters excepted) AND, checked once per
predictor, their bytes equal the pretrained backbone's AND its lean forward reproduces its own forward.
Anything else (int8, gradual unfreezing, BitFit, full fine-tuning, a tampered checkpoint) predicts alone,
exactly as ``Predictor.probabilities`` does.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field

import torch

from core.files import safetensors_header
from core.lean import attention_mask_for, stacked_mask
from core.model import pool
from core.predict import FrozenClaim, Predictor, SharedPrefix, checked_texts
from core.store import WEIGHTS_FILE, RunStore

SHARING_STRATEGIES = ("frozen_backbone", "frozen_all", "freeze_lower", "freeze_embeddings")
RIDING_STRATEGIES = ("lora",)  # pretrained weights plus adapters: rides with the frozen stream
_TRAINS_THE_BOTTOM = {
    "full_finetune": "full fine-tuning trains every layer",
    "freeze_head_a": "it trains the whole backbone",
    "freeze_head_b": "it trains the whole backbone",
    "bitfit": "BitFit trains every layer's biases",
    "gradual_unfreeze": "gradual unfreezing trains every layer by its last stage",
}
ADAPTER_MARK = ".lora_"  # tensors of LoRA adapters; a rider's checkpoint holds these and nothing else of layers


def frozen_claim(store: RunStore, run_id: str, meta: dict, n_layers: int) -> FrozenClaim:
    """How many bottom layers (with the embeddings) a run kept from the pretrained backbone, from its config
    (strategy, freeze_layers, init_from), its manifest (delta weights) and the names of the tensors its
    checkpoint holds (none may belong to those layers, LoRA adapters excepted). Cheap: no tensor is read."""
    from core.backbones import resolve_backbone
    from core.model import group_of

    try:
        cfg = store.read_config(run_id)
        resolved = resolve_backbone(cfg.backbone)
    except Exception as exc:  # noqa: BLE001 - unsure: predict alone
        return FrozenClaim(None, f"its configuration could not be read ({type(exc).__name__})")
    adapters = cfg.strategy in RIDING_STRATEGIES
    if cfg.strategy not in SHARING_STRATEGIES and not adapters:
        return FrozenClaim(None, _TRAINS_THE_BOTTOM.get(cfg.strategy, f"strategy {cfg.strategy} trains the backbone"))
    if cfg.init_from:
        return FrozenClaim(None, f"it started from run {cfg.init_from}, not from the pretrained backbone")
    if bool(meta.get("lora")) != adapters:
        return FrozenClaim(None, "its checkpoint and its configuration disagree about LoRA adapters")
    if not resolved.pretrained:
        return FrozenClaim(None, "its backbone was not pretrained (random weights)")
    if meta.get("weights") != "delta":
        return FrozenClaim(None, "its checkpoint holds the whole model, not changes over the pretrained backbone")
    if meta.get("backbone") != cfg.backbone:
        return FrozenClaim(None, "its checkpoint and its configuration name different backbones")
    if cfg.strategy == "freeze_lower":
        layers = min(int(cfg.freeze_layers or 0), n_layers)
    else:
        layers = 0 if cfg.strategy == "freeze_embeddings" else n_layers
    header, problem = safetensors_header(store.checkpoint_dir(run_id) / WEIGHTS_FILE)
    if problem or not isinstance(header, dict):
        return FrozenClaim(None, f"its weights file could not be checked ({problem})")
    frozen = {"embeddings", *[f"layer.{i}" for i in range(layers)]}
    if adapters and any(ADAPTER_MARK in k and group_of(k) == "embeddings" for k in header):
        return FrozenClaim(None, "its LoRA adapters change the embeddings, which every run sharing them reads")
    stored = [k for k in header if k.startswith("backbone.") and group_of(k) in frozen and ADAPTER_MARK not in k]
    if stored:
        return FrozenClaim(None, f"its checkpoint holds {len(stored)} tensor(s) of layers it should have kept frozen")
    if adapters:
        return FrozenClaim(layers, "its layers are the pretrained backbone's plus LoRA adapters", adapters=True)
    what = "the whole backbone" if layers == n_layers else f"the embeddings and bottom {layers} layer(s)"
    return FrozenClaim(layers, f"{what} frozen from the pretrained backbone")


def _fingerprint(module: torch.nn.Module) -> str:
    """A hash of every tensor of ``module`` (names, dtypes, shapes and bytes), LoRA adapters left out and their
    base layers named as the plain layers they wrap: a LoRA model hashes as the backbone under its adapters."""
    digest = hashlib.sha256()
    tensors = [
        (name.replace(".base_layer.", "."), tensor)
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]
        if ADAPTER_MARK not in f".{name}"
    ]
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def prefix_fingerprints(backbone: torch.nn.Module, layers: int | None = None) -> tuple[str, ...]:
    """Hashes of the embeddings and of each of the bottom ``layers`` transformer layers (None: all)."""
    blocks = list(backbone.encoder.layer)[: len(backbone.encoder.layer) if layers is None else layers]
    return tuple(_fingerprint(m) for m in [backbone.embeddings, *blocks])


_BASE_FINGERPRINTS: dict[str, tuple[str, ...]] = {}
_BASE_LOCK = threading.Lock()


def base_fingerprints(spec: str) -> tuple[str, ...]:
    """``prefix_fingerprints`` of the pretrained backbone ``spec`` as it loads from its spec (once a process)."""
    with _BASE_LOCK:
        if spec not in _BASE_FINGERPRINTS:
            from core.backbones import load_backbone

            _BASE_FINGERPRINTS[spec] = prefix_fingerprints(load_backbone(spec))
        return _BASE_FINGERPRINTS[spec]


def _tokenizer_fingerprint(tokenizer) -> str | None:
    """A hash of what decides a tokenizer's ids (vocabulary, normalizer, special tokens, padding side); None for
    a tokenizer without a serialisable backend. Per-call truncation and padding settings are left out."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        state = json.loads(backend.to_str())
    except Exception:  # noqa: BLE001
        return None
    state.pop("truncation", None)
    state.pop("padding", None)
    parts = [
        type(tokenizer).__name__,
        getattr(tokenizer, "padding_side", None),
        getattr(tokenizer, "truncation_side", None),
        list(getattr(tokenizer, "model_input_names", [])),
        tokenizer.pad_token_id,
        state,
    ]
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def _config_fingerprint(config) -> str:
    settings = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    settings["attention"] = getattr(config, "_attn_implementation", None)
    return hashlib.blake2b(json.dumps(settings, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


@torch.inference_mode()
def verify_prefix(predictor: Predictor) -> tuple[SharedPrefix | None, str]:
    """``Predictor.shared_prefix``'s check: the claim, the hashes of the claimed layers against the pretrained
    backbone's, and a lean forward that reproduces the model's own."""
    claim = predictor.frozen_claim
    if claim.layers is None:
        return None, claim.reason
    backbone = predictor.model.backbone
    if any(ADAPTER_MARK in f".{name}" for name, _ in backbone.embeddings.named_parameters()):
        return None, "its LoRA adapters change the embeddings, which every run sharing them reads"
    if predictor.lean() is None:
        return None, f"its layers cannot be computed apart from its own forward ({predictor.lean_note})"
    try:
        base = base_fingerprints(predictor.meta["backbone"])
    except Exception as exc:  # noqa: BLE001 - unsure: predict alone
        return None, f"the pretrained backbone could not be loaded to check against ({type(exc).__name__})"
    own = prefix_fingerprints(backbone, claim.layers)
    if own != base[: claim.layers + 1]:
        what = "base weights (under its adapters)" if claim.adapters else "frozen weights"
        return None, f"its {what} differ from the pretrained backbone's"
    tokens = _tokenizer_fingerprint(predictor.tokenizer)
    if tokens is None:
        return None, "its tokenizer cannot be compared with other runs'"
    dtype = next(backbone.parameters()).dtype
    key = (
        predictor.meta["backbone"],
        _config_fingerprint(backbone.config),
        tokens,
        predictor.max_length,
        str(predictor.device),
        str(dtype),
    )
    return SharedPrefix(key, claim.layers, claim.adapters), claim.reason


@dataclass
class ShareGroup:
    """Runs that compute with the same pretrained weights together. ``depths``: for each frozen run, the layers
    it takes from the frozen stream (0: the embeddings only) before its own; ``shared_layers``: the layers of
    the frozen stream computed in the shared pass; ``riders``: LoRA runs whose rows go through every layer's
    pretrained weights in the same matmuls, adding their adapters; ``layers``: the backbone's layers."""

    run_ids: list[str]
    depths: dict[str, int]
    shared_layers: int
    riders: list[str] = field(default_factory=list)
    layers: int = 0
    members: list[Predictor] = field(repr=False, default_factory=list)

    @property
    def passes(self) -> int:
        """Layers whose pretrained weights the shared pass reads (once each)."""
        return self.layers if self.riders else self.shared_layers

    @property
    def layer_passes_saved(self) -> int:
        """Passes over a layer's weights per batch saved against predicting each run alone."""
        return sum(self.depths.values()) + self.layers * len(self.riders) - self.passes


@dataclass
class SharePlan:
    groups: list[ShareGroup]
    alone: dict[str, str]  # run id -> why it predicts alone
    labels: list[str]  # one per predictor, in their order: the keys of the answers

    def describe(self) -> list[str]:
        lines = []
        for g in self.groups:
            line = f"{len(g.run_ids)} runs compute the embeddings and {g.passes} layer(s) once: " + ", ".join(
                f"{r} ({g.depths[r]} frozen layers shared)" if r in g.depths else f"{r} (LoRA, rides all layers)"
                for r in g.run_ids
            )
            lines.append(line)
        lines += [f"{r} predicts alone: {why}" for r, why in self.alone.items()]
        return lines

    def note(self, run_id: str) -> str | None:
        """How a run's predictions were computed with the others' (None: it predicted alone)."""
        for group in self.groups:
            others = len(group.run_ids) - 1
            if run_id in group.depths:
                depth = group.depths[run_id]
                what = "embeddings" + (f" and bottom {depth} layer(s)" if depth else "")
                return f"Shared: its frozen pretrained {what} were computed once for it and {others} other run(s)."
            if run_id in group.riders:
                return (
                    f"Shared: its sentences went through the pretrained weights of all {group.layers} layers in the "
                    f"same pass as {others} other run(s), adding its own LoRA adapters."
                )
        return None


def _labels(predictors: list[Predictor]) -> list[str]:
    labels = []
    for i, p in enumerate(predictors):
        label = p.run_id if p.run_id is not None else f"#{i}"
        labels.append(label if label not in labels else f"{label}#{i}")
    return labels


NO_PARTNER = "no other run here holds the same pretrained layers"


def _partner_key(predictor: Predictor) -> tuple:
    return (predictor.meta.get("backbone"), predictor.max_length, str(predictor.device))


def plan_sharing(predictors: list[Predictor]) -> SharePlan:
    """Which predictors compute together. Runs do when their verified prefixes have the same key (same backbone,
    architecture, tokenizer, max_length, device and dtype). The frozen stream goes up to the deepest frozen
    run when a LoRA run rides with it, else to the second-deepest (above, only one run would read the layer);
    runs that stop lower take their hidden states from the way up (freeze_lower k=2 branches off after
    layer 2)."""
    labels = _labels(predictors)
    alone: dict[str, str] = {}
    candidates: dict[tuple, list[tuple[str, Predictor, SharedPrefix]]] = {}
    partners: dict[tuple, int] = {}  # a run with no possible partner is not worth verifying (hashing its layers)
    for predictor in predictors:
        if predictor.frozen_claim.layers is not None:
            partners[_partner_key(predictor)] = partners.get(_partner_key(predictor), 0) + 1
    for label, predictor in zip(labels, predictors):
        if predictor.frozen_claim.layers is not None and partners[_partner_key(predictor)] < 2:
            alone[label] = NO_PARTNER
            continue
        prefix = predictor.shared_prefix()
        if prefix is None:
            alone[label] = predictor.share_note
        else:
            candidates.setdefault(prefix.key, []).append((label, predictor, prefix))
    groups = []
    for members in candidates.values():
        if len(members) < 2:
            alone[members[0][0]] = NO_PARTNER
            continue
        frozen = sorted([m for m in members if not m[2].adapters], key=lambda m: -m[2].layers)  # deepest first
        riders = [m for m in members if m[2].adapters]
        claims = [m[2].layers for m in frozen]
        if riders:
            shared = claims[0] if claims else 0
        else:
            shared = claims[1]  # at least two frozen runs: members >= 2
        depths = {label: min(prefix.layers, shared) for label, _, prefix in frozen}
        ordered = [*frozen, *riders]
        groups.append(
            ShareGroup(
                [m[0] for m in ordered],
                depths,
                shared,
                [m[0] for m in riders],
                len(ordered[0][1].model.backbone.encoder.layer),
                [m[1] for m in ordered],
            )
        )
    return SharePlan(groups, {label: alone[label] for label in labels if label in alone}, labels)


def _heads(model, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
    return {task: torch.softmax(value.float(), dim=-1).cpu() for task, value in model.logits(embedding).items()}


def _shared_pass(
    group: ShareGroup, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[dict[int, torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
    """One batch through the group's shared weights: the frozen stream's hidden states at the depths its runs
    take them from, each rider's last hidden state, and the lean attention mask."""
    leans = [member.lean() for member in group.members]
    n_frozen = len(group.depths)
    hidden = leans[0].embed(input_ids)
    mask = attention_mask_for(attention_mask)
    keep = set(group.depths.values())
    states = {0: hidden} if 0 in keep else {}
    frozen, riders = hidden, [hidden] * len(group.riders)
    rows = hidden.shape[0]
    for i in range(group.passes):
        frozen_here = i < group.shared_layers
        streams = ([frozen] if frozen_here else []) + riders
        first = rows if frozen_here else 0
        blocks = [
            (slice(first + j * rows, first + (j + 1) * rows), leans[n_frozen + j].layers[i].deltas)
            for j in range(len(riders))
        ]
        # The pretrained weights of layer i: the deepest frozen run's while it holds them, else the first rider's.
        holder = leans[0] if frozen_here else leans[n_frozen]
        stacked = torch.cat(streams) if len(streams) > 1 else streams[0]
        out = holder.layers[i].forward(stacked, stacked_mask(mask, len(streams)), blocks)
        if frozen_here:
            frozen = out[:rows]
            if i + 1 in keep:
                states[i + 1] = frozen
        riders = [out[first + j * rows : first + (j + 1) * rows] for j in range(len(riders))]
    return states, riders, mask


@torch.inference_mode()
def side_by_side_probabilities(
    predictors: list[Predictor],
    texts: list[str],
    batch_size: int = 64,
    plan: SharePlan | None = None,
    seconds: dict[str, float] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Every predictor's ``probabilities(texts)``, keyed by run id (``plan.labels``), computing with shared
    pretrained weights once per batch. ``seconds`` (if given) receives each run's time: the shared pass of its
    group plus its own layers and heads."""
    cleaned = checked_texts(texts)
    plan = plan or plan_sharing(predictors)
    if len(plan.labels) != len(predictors):
        raise ValueError(f"the plan is for {len(plan.labels)} predictors, not these {len(predictors)}")
    by_label = dict(zip(plan.labels, predictors))
    seconds = {} if seconds is None else seconds
    out: dict[str, dict[str, torch.Tensor]] = {}
    for label in plan.alone:
        tick = time.perf_counter()
        out[label] = by_label[label].probabilities(texts, batch_size)
        seconds[label] = time.perf_counter() - tick
    for group in plan.groups:
        leader = group.members[0]
        parts = {label: {t: [] for t in by_label[label].model.tasks} for label in group.run_ids}
        for label in group.run_ids:
            seconds[label] = 0.0
        for start in range(0, len(cleaned), batch_size):
            tick = time.perf_counter()
            input_ids, attention_mask = leader.encode(cleaned[start : start + batch_size])
            states, riders, mask = _shared_pass(group, input_ids, attention_mask)
            shared = time.perf_counter() - tick
            finals = dict(zip(group.riders, riders))
            # Runs that end on the same hidden states pool once; each entry keeps its hidden states alive, so that
            # no other tensor can take their id within this batch.
            pooled: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
            for label, member in zip(group.run_ids, group.members):
                tick = time.perf_counter()
                if label in finals:
                    hidden = finals[label]
                else:
                    depth = group.depths[label]
                    hidden = member.lean().run(states[depth], mask, depth)
                key = (id(hidden), member.model.pooling)
                if key not in pooled:
                    pooled[key] = (hidden, pool(hidden, attention_mask, member.model.pooling))
                for task, probs in _heads(member.model, pooled[key][1]).items():
                    parts[label][task].append(probs)
                seconds[label] += shared + time.perf_counter() - tick
        for label in group.run_ids:
            out[label] = {task: torch.cat(chunks) for task, chunks in parts[label].items()}
    return {label: out[label] for label in plan.labels}


@dataclass
class SideBySide:
    results: dict[str, list[dict]]  # run id -> Predictor.predict's answer
    seconds: dict[str, float]  # run id -> its time (shared part of its group included)
    total_seconds: float
    plan: SharePlan


def timed_side_by_side(predictors: list[Predictor], texts: list[str]) -> SideBySide:
    """``predict_side_by_side`` with each run's time, the whole time and the sharing plan."""
    tick = time.perf_counter()
    plan = plan_sharing(predictors)
    seconds: dict[str, float] = {}
    probs = side_by_side_probabilities(predictors, texts, plan=plan, seconds=seconds)
    counts: dict[tuple, list[int]] = {}  # runs of a group read the same tokens: count them once
    results = {}
    for label, predictor in zip(plan.labels, predictors):
        prefix = predictor.shared_prefix() if label not in plan.alone else None
        if prefix is None:
            results[label] = predictor.results(texts, probs[label])
        else:
            if prefix.key not in counts:
                counts[prefix.key] = predictor.token_counts(texts)
            results[label] = predictor.results(texts, probs[label], counts[prefix.key])
    return SideBySide(results, seconds, time.perf_counter() - tick, plan)


def predict_side_by_side(predictors: list[Predictor], texts: list[str]) -> dict[str, list[dict]]:
    """{run id: ``Predictor.predict(texts)``} for every predictor, computing with the pretrained weights that
    runs share once per batch (``plan_sharing``); the same probabilities as predicting each run alone."""
    return timed_side_by_side(predictors, texts).results
