"""Predictions from a trained run: every task's label and class probabilities in one backbone pass.

int8: dynamic int8 quantization of the backbone's linear layers (LoRA adapters merged first; the small
heads stay in full precision). A run may predict in int8 only where int8 agreed with full precision on
at least ``INT8_MIN_AGREEMENT`` of its test labels; ``measure_int8`` measures that once, when training
ends, and stores it with the run (int8.json); the dashboard only reads it (``read_int8_report``).

Side by side (``predict_side_by_side``): runs whose bottom layers are the same frozen pretrained weights
compute those layers once per batch of sentences. frozen_backbone and frozen_all share the whole backbone,
freeze_lower k its embeddings and bottom k layers, freeze_embeddings its embeddings; each run then computes
its own remaining layers, pooling and heads. A run shares only when its configuration says those weights
were frozen from the pretrained backbone (no init_from, no LoRA, a delta checkpoint) AND its checkpoint holds
no tensor for them AND, checked once per predictor, their bytes equal the pretrained backbone's and the split
forward reproduces the model's own forward; anything else (int8, gradual unfreezing, LoRA, BitFit, full
fine-tuning, a tampered checkpoint) predicts alone, exactly as ``Predictor.probabilities`` does.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field

import torch

from core.checkpoint import load_model
from core.errors import CheckpointError, FreezeLabError, PredictError, RunNotFound
from core.model import num_backbone_layers, pool
from core.store import WEIGHTS_FILE, RunStore, read_json, safetensors_header, write_json_atomic


def checked_texts(texts: list[str]) -> list[str]:
    """``texts`` cleaned (``clean_text``) and stripped; a PredictError for no text or an empty one."""
    if not texts:
        raise PredictError(
            "no text given: type a sentence (one a line), or pick a column that has text, to get predictions."
        )
    cleaned = [clean_text(t).strip() if isinstance(t, str) else "" for t in texts]
    empty = [i for i, t in enumerate(cleaned) if not t]
    if empty:
        raise PredictError(
            f"text {empty[0] + 1} of {len(texts)} is empty: type a sentence (empty lines are skipped in the UI)."
        )
    return cleaned


def clean_text(text: str) -> str:
    """``text`` with every unpaired UTF-16 surrogate replaced by U+FFFD; a valid pair becomes its character.

    They reach us from bytes that are not UTF-8 (``python -m core predict RUN $'\\xff'`` gives '\\udcff':
    surrogateescape) or from JSON-escaped text ('\\ud800'); the tokenizer refuses them (TypeError)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # rare; text without surrogates costs only the encode above
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


class Predictor:
    def __init__(self, model, tokenizer, meta: dict, device: torch.device, run_id: str | None = None) -> None:
        self.model, self.tokenizer, self.meta, self.device, self.run_id = model, tokenizer, meta, device, run_id
        self.max_length = int(meta.get("max_length", 128))
        self.model.eval()  # no dropout at prediction time
        # Side by side: how many bottom layers this run claims are the frozen pretrained backbone (set by
        # from_run from the run's config and checkpoint; None: it predicts alone, see ``shared_prefix``).
        self.frozen_claim: FrozenClaim = FrozenClaim(None, "not loaded from a run folder")
        self._prefix: SharedPrefix | None = None
        self._prefix_checked = False
        self._prefix_lock = threading.Lock()

    @classmethod
    def from_run(cls, store: RunStore, run_id: str, device: str = "auto", int8: bool = False) -> Predictor:
        """``int8``: dynamic int8 quantization of the linear layers (CPU), allowed only where it agreed with
        full precision on at least 99.5% of the run's test labels (see ``int8_agreement``)."""
        store.existing_path(run_id)
        dev = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        try:
            model, tokenizer, meta = load_model(store.checkpoint_dir(run_id), dev)
        except FreezeLabError:
            raise
        except Exception as exc:  # a damaged weight or tokenizer file: say which run, not a stack trace
            raise CheckpointError(
                f"the checkpoint of run {run_id} cannot be read ({type(exc).__name__}: {str(exc)[:160]}); "
                "resume or retrain the run."
            ) from None
        predictor = cls(model, tokenizer, meta, dev, run_id)
        predictor.frozen_claim = frozen_claim(store, run_id, meta, num_backbone_layers(model))
        if int8:
            report = int8_agreement(store, run_id, predictor)
            if not report["allowed"]:
                raise PredictError(
                    f"int8 prediction for {run_id} agrees with full precision on only "
                    f"{100 * report['agreement']:.2f}% of its test set (< 99.5%): use full precision."
                )
            predictor = cls(quantize(model), tokenizer, meta, torch.device("cpu"), run_id)
            predictor.frozen_claim = FrozenClaim(None, "int8: its quantized layers are not the pretrained weights")
        return predictor

    @property
    def label_names(self) -> dict[str, list[str]]:
        return self.model.label_names

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text before truncation (special tokens included): more than ``max_length`` were cut."""
        cleaned = [clean_text(t).strip() for t in texts]
        return [len(ids) for ids in self.tokenizer(cleaned, truncation=False)["input_ids"]] if cleaned else []

    @torch.inference_mode()
    def probabilities(self, texts: list[str], batch_size: int = 64) -> dict[str, torch.Tensor]:
        """Per task, a (len(texts), n_labels) tensor of class probabilities."""
        cleaned = checked_texts(texts)
        out: dict[str, list[torch.Tensor]] = {t: [] for t in self.model.tasks}
        for start in range(0, len(cleaned), batch_size):
            input_ids, attention_mask = self.encode(cleaned[start : start + batch_size])
            logits = self.model.predict_all(input_ids, attention_mask)
            for task, value in logits.items():
                out[task].append(torch.softmax(value.float(), dim=-1).cpu())
        return {task: torch.cat(parts) for task, parts in out.items()}

    def encode(self, cleaned: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of one batch of cleaned texts, padded to its longest, on the device."""
        enc = self.tokenizer(cleaned, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def predict(self, texts: list[str]) -> list[dict]:
        """[{text, tokens, truncated, tasks: {task: {label, probabilities: {label: p}}}}] in the order of ``texts``;
        ``tokens``: the text's length in tokens, ``truncated``: the model read only the first ``max_length``."""
        return self.results(texts, self.probabilities(texts))

    def results(self, texts: list[str], probs: dict[str, torch.Tensor], counts: list[int] | None = None) -> list[dict]:
        """``predict``'s answer from probabilities already computed (``counts``: ``token_counts(texts)``)."""
        counts = self.token_counts(texts) if counts is None else counts
        results = []
        for i, text in enumerate(texts):
            tasks = {}
            for task, names in self.label_names.items():
                row = probs[task][i].tolist()
                tasks[task] = {
                    "label": names[max(range(len(row)), key=row.__getitem__)],
                    "probabilities": dict(zip(names, row)),
                }
            truncated = counts[i] > self.max_length
            shown = clean_text(text)  # as the model read it: a lone surrogate cannot be shown or written as UTF-8
            results.append({"text": shown, "tokens": counts[i], "truncated": truncated, "tasks": tasks})
        return results

    def timed_predict(self, texts: list[str]) -> tuple[list[dict], float]:
        tick = time.perf_counter()
        results = self.predict(texts)
        return results, time.perf_counter() - tick

    @property
    def share_note(self) -> str:
        """Why this predictor shares (or does not share) its bottom layers with other runs side by side."""
        return self._share_note if self._prefix_checked else self.frozen_claim.reason

    def shared_prefix(self) -> SharedPrefix | None:
        """The verified bottom of this predictor's backbone that is the pretrained backbone, unchanged: what it
        may compute together with other runs. None when unsure (``share_note`` says why). Checked once, on
        first use: the hashes of the frozen tensors against the pretrained backbone's, and the split forward
        against the model's own forward on two probe sentences."""
        if not self._prefix_checked:
            with self._prefix_lock:
                if not self._prefix_checked:
                    self._prefix, self._share_note = _verify_prefix(self)
                    self._prefix_checked = True
        return self._prefix


# -- side by side: frozen bottom layers computed once for the runs that share them ------------------------------
SHARING_STRATEGIES = ("frozen_backbone", "frozen_all", "freeze_lower", "freeze_embeddings")
_TRAINS_THE_BOTTOM = {
    "full_finetune": "full fine-tuning trains every layer",
    "freeze_head_a": "it trains the whole backbone",
    "freeze_head_b": "it trains the whole backbone",
    "bitfit": "BitFit trains every layer's biases",
    "lora": "its LoRA adapters change every layer they sit in",
    "gradual_unfreeze": "gradual unfreezing trains every layer by its last stage",
}
SPLITTABLE_MODEL_TYPES = ("bert",)  # encoders whose forward is embeddings, then encoder.layer[i] with one mask
PROBE_TEXTS = ["a short probe .", "a second , somewhat longer probe sentence , so that the first one is padded ."]


@dataclass(frozen=True)
class FrozenClaim:
    """What a run's configuration and checkpoint say: its embeddings and bottom ``layers`` transformer layers are
    the pretrained backbone, frozen (None: it does not qualify, ``reason`` says why)."""

    layers: int | None
    reason: str


@dataclass(frozen=True)
class SharedPrefix:
    """A verified frozen bottom: runs with the same ``key`` compute their embeddings and the layers they both
    hold (``layers`` each) once."""

    key: tuple  # backbone spec, architecture, tokenizer, max_length, device, dtype: what makes the inputs equal
    layers: int  # transformer layers above the embeddings, all equal to the pretrained backbone's
    fingerprints: tuple[str, ...]  # hashes of the embeddings' and of each of those layers' tensors


def frozen_claim(store: RunStore, run_id: str, meta: dict, n_layers: int) -> FrozenClaim:
    """How many bottom layers (with the embeddings) a run kept frozen from the pretrained backbone, from its
    config (strategy, freeze_layers, init_from), its manifest (delta weights, no LoRA) and the names of the
    tensors its checkpoint holds (none may belong to those layers). Cheap: no tensor is read."""
    from core.backbones import resolve_backbone
    from core.model import group_of

    try:
        cfg = store.read_config(run_id)
        resolved = resolve_backbone(cfg.backbone)
    except Exception as exc:  # noqa: BLE001 - unsure: predict alone
        return FrozenClaim(None, f"its configuration could not be read ({type(exc).__name__})")
    if cfg.strategy not in SHARING_STRATEGIES:
        return FrozenClaim(None, _TRAINS_THE_BOTTOM.get(cfg.strategy, f"strategy {cfg.strategy} trains the backbone"))
    if cfg.init_from:
        return FrozenClaim(None, f"it started from run {cfg.init_from}, not from the pretrained backbone")
    if meta.get("lora"):
        return FrozenClaim(None, "it has LoRA adapters")
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
    stored = [k for k in header if k.startswith("backbone.") and group_of(k) in frozen]
    if stored:
        return FrozenClaim(None, f"its checkpoint holds {len(stored)} tensor(s) of layers it should have kept frozen")
    what = "the whole backbone" if layers == n_layers else f"the embeddings and bottom {layers} layer(s)"
    return FrozenClaim(layers, f"{what} frozen from the pretrained backbone")


def _fingerprint(module: torch.nn.Module) -> str:
    """A hash of every tensor of ``module`` (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted([*module.named_parameters(), *module.named_buffers()], key=lambda item: item[0]):
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


def _splittable(backbone) -> bool:
    config = getattr(backbone, "config", None)
    return (
        getattr(config, "model_type", None) in SPLITTABLE_MODEL_TYPES
        and not getattr(config, "is_decoder", False)
        and not getattr(config, "add_cross_attention", False)
        and isinstance(getattr(getattr(backbone, "encoder", None), "layer", None), torch.nn.ModuleList)
        and hasattr(backbone, "embeddings")
    )


def embed_tokens(backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, object]:
    """The embeddings' output and the attention mask the layers take, as the backbone's own forward builds them
    (HF BertModel: embeddings(input_ids), then a bidirectional mask for its attention implementation)."""
    from transformers.masking_utils import create_bidirectional_mask

    hidden = backbone.embeddings(input_ids=input_ids)
    mask = create_bidirectional_mask(config=backbone.config, inputs_embeds=hidden, attention_mask=attention_mask)
    return hidden, mask


def run_layers(backbone, hidden: torch.Tensor, mask, start: int, stop: int | None = None) -> torch.Tensor:
    """Transformer layers ``start`` to ``stop`` (None: the top) of ``backbone`` over ``hidden``."""
    for layer in backbone.encoder.layer[start:stop]:
        hidden = layer(hidden, mask)
    return hidden


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
def _verify_prefix(predictor: Predictor) -> tuple[SharedPrefix | None, str]:
    claim = predictor.frozen_claim
    if claim.layers is None:
        return None, claim.reason
    backbone = predictor.model.backbone
    if not _splittable(backbone):
        return None, "its backbone is not an encoder whose forward can be split here"
    try:
        base = base_fingerprints(predictor.meta["backbone"])
    except Exception as exc:  # noqa: BLE001 - unsure: predict alone
        return None, f"the pretrained backbone could not be loaded to check against ({type(exc).__name__})"
    own = prefix_fingerprints(backbone, claim.layers)
    if own != base[: claim.layers + 1]:
        return None, "its frozen weights differ from the pretrained backbone's"
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
    if not _split_reproduces_forward(predictor, key):
        return None, "computing its layers one by one did not reproduce its own forward"
    return SharedPrefix(key, claim.layers, own), claim.reason


_SPLIT_CHECKED: dict[tuple, bool] = {}


def _split_reproduces_forward(predictor: Predictor, key: tuple) -> bool:
    """Whether embeddings + mask + layer by layer (``embed_tokens``, ``run_layers``) gives the backbone's own
    forward on two probe sentences (one padded). That depends on the architecture, its config and this
    transformers version, not on the weights: checked once a process per ``key``, on the first such run."""
    if key not in _SPLIT_CHECKED:
        backbone = predictor.model.backbone
        input_ids, attention_mask = predictor.encode(PROBE_TEXTS)
        whole = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden, mask = embed_tokens(backbone, input_ids, attention_mask)
        split = run_layers(backbone, hidden, mask, 0)
        _SPLIT_CHECKED[key] = split.shape == whole.shape and torch.allclose(split, whole, atol=1e-5, rtol=0)
    return _SPLIT_CHECKED[key]


@dataclass
class ShareGroup:
    """Runs that compute their embeddings and bottom layers once, together. ``depths``: the transformer layers
    each takes from that shared computation (0: the embeddings only) before its own; ``shared_layers``: the
    layers computed once (a layer is shared when at least two runs hold it frozen)."""

    run_ids: list[str]
    depths: dict[str, int]
    shared_layers: int
    members: list[Predictor] = field(repr=False, default_factory=list)

    @property
    def layer_passes_saved(self) -> int:
        """Transformer layer computations per batch saved against predicting each run alone."""
        return sum(self.depths.values()) - self.shared_layers


@dataclass
class SharePlan:
    groups: list[ShareGroup]
    alone: dict[str, str]  # run id -> why it predicts alone
    labels: list[str]  # one per predictor, in their order: the keys of the answers

    def describe(self) -> list[str]:
        lines = []
        for g in self.groups:
            lines.append(
                f"{len(g.run_ids)} runs compute the embeddings and {g.shared_layers} layer(s) once: "
                + ", ".join(f"{r} ({g.depths[r]} shared)" for r in g.run_ids)
            )
        lines += [f"{r} predicts alone: {why}" for r, why in self.alone.items()]
        return lines


def _labels(predictors: list[Predictor]) -> list[str]:
    labels = []
    for i, p in enumerate(predictors):
        label = p.run_id if p.run_id is not None else f"#{i}"
        labels.append(label if label not in labels else f"{label}#{i}")
    return labels


NO_PARTNER = "no other run here holds the same frozen pretrained layers"


def _partner_key(predictor: Predictor) -> tuple:
    return (predictor.meta.get("backbone"), predictor.max_length, str(predictor.device))


def plan_sharing(predictors: list[Predictor]) -> SharePlan:
    """Which predictors share which frozen layers. Runs share when their verified prefixes have the same key
    (same backbone, architecture, tokenizer, max_length, device and dtype); every verified prefix equals the
    pretrained backbone's, so a layer is computed once for all runs that hold it, and the runs that stop
    lower take their hidden states from the way up (freeze_lower k=2 branches off after layer 2)."""
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
        members.sort(key=lambda m: -m[2].layers)  # the deepest first: it holds every shared layer
        shared = members[1][2].layers  # the second-deepest claim: deeper layers belong to one run only
        depths = {label: min(prefix.layers, shared) for label, _, prefix in members}
        groups.append(ShareGroup([m[0] for m in members], depths, shared, [m[1] for m in members]))
    return SharePlan(groups, {label: alone[label] for label in labels if label in alone}, labels)


@torch.inference_mode()
def side_by_side_probabilities(
    predictors: list[Predictor],
    texts: list[str],
    batch_size: int = 64,
    plan: SharePlan | None = None,
    seconds: dict[str, float] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Every predictor's ``probabilities(texts)``, keyed by run id (``plan.labels``), computing shared frozen
    layers once per batch. ``seconds`` (if given) receives each run's time: the shared part of its group
    plus its own layers and heads."""
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
        keep = set(group.depths.values())
        for start in range(0, len(cleaned), batch_size):
            tick = time.perf_counter()
            input_ids, attention_mask = leader.encode(cleaned[start : start + batch_size])
            hidden, mask = embed_tokens(leader.model.backbone, input_ids, attention_mask)
            states = {0: hidden}
            for i in range(group.shared_layers):
                hidden = leader.model.backbone.encoder.layer[i](hidden, mask)
                if i + 1 in keep:
                    states[i + 1] = hidden
            shared = time.perf_counter() - tick
            for label, member in zip(group.run_ids, group.members):
                tick = time.perf_counter()
                model, depth = member.model, group.depths[label]
                embedding = pool(run_layers(model.backbone, states[depth], mask, depth), attention_mask, model.pooling)
                for task, head in model.heads.items():
                    parts[label][task].append(torch.softmax(head(embedding).float(), dim=-1).cpu())
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
    """{run id: ``Predictor.predict(texts)``} for every predictor, with the frozen pretrained layers that runs
    share computed once per batch (``plan_sharing``); the same probabilities as predicting each run alone."""
    return timed_side_by_side(predictors, texts).results


def median_latency(predictors: list[Predictor], texts: list[str], repeats: int = 7) -> float:
    """Median seconds to get every task's prediction for ``texts`` from all ``predictors`` in turn."""
    for p in predictors:  # warm-up: first calls pay for allocation
        p.probabilities(texts)
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        for p in predictors:
            p.probabilities(texts)
        times.append(time.perf_counter() - tick)
    return sorted(times)[len(times) // 2]


INT8_MIN_AGREEMENT = 0.995
INT8_MAX_PER_TASK = 1000  # test sentences per task the agreement is measured on (enough to resolve 0.5%)


def quantize(model):
    """An int8 copy of ``model`` for CPU inference: LoRA adapters merged into their base layers (peft's adapter
    layers read ``.weight.dtype``, which a quantized linear layer does not have), then the backbone's linear
    layers quantized dynamically, per output channel. The heads stay in full precision: they are tiny."""
    import copy
    import warnings

    fast = copy.deepcopy(model).cpu().eval()
    if any(".lora_" in name for name, _ in fast.named_parameters()):
        from core.export import merge_lora

        merge_lora(fast)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization prints a deprecation notice
        from torch.ao.quantization import per_channel_dynamic_qconfig

        # Per output channel: on a MiniLM-L6 frozen-backbone run (400 examples per task, 1,000 test sentences)
        # it agreed with full precision on 93.4% of labels against 90.6% per tensor.
        fast.backbone = torch.ao.quantization.quantize_dynamic(
            fast.backbone, {torch.nn.Linear: per_channel_dynamic_qconfig}
        )
    return fast


def read_int8_report(store: RunStore, run_id: str) -> dict | None:
    """The measured int8 agreement of a run ({agreement, n, allowed}), or None if it was never measured."""
    report = read_json(store.int8_path(run_id))
    return report if isinstance(report, dict) and {"agreement", "n", "allowed"} <= report.keys() else None


def write_int8_report(store: RunStore, run_id: str, report: dict) -> None:
    if not store.exists(run_id):  # deleted while it was measured: never recreate its folder
        raise RunNotFound(f"run {run_id} was deleted while its int8 agreement was measured; nothing was written.")
    write_json_atomic(store.int8_path(run_id), report)


def measure_int8(store: RunStore, run_id: str, predictor: Predictor | None = None) -> dict:
    """Measure, once, how often int8 predicts the same label as full precision on the run's test splits (every
    task, at most INT8_MAX_PER_TASK sentences each) and store it with the run. The worker calls this when a run
    completes; it takes a few seconds to a minute on a CPU, so no page ever does."""
    from core.data import load_task_data

    predictor = predictor or Predictor.from_run(store, run_id, device="cpu")
    fast = Predictor(quantize(predictor.model), predictor.tokenizer, predictor.meta, torch.device("cpu"), run_id)
    cfg = store.read_config(run_id)
    same = total = 0
    for task in cfg.tasks:
        data = load_task_data(
            task.name,
            task.dataset,
            text_column=task.text_column,
            label_column=task.label_column,
            split_seed=cfg.split_seed,
            max_eval_examples=cfg.max_eval_examples,
            max_test_examples=cfg.max_test_examples,  # the test split the run was scored on
        )
        texts = data.test.texts[:INT8_MAX_PER_TASK]
        if task.name not in predictor.label_names or not texts:
            continue
        full, small = predictor.probabilities(texts)[task.name], fast.probabilities(texts)[task.name]
        same += int((full.argmax(1) == small.argmax(1)).sum())
        total += len(texts)
    agreement = same / total if total else 0.0
    report = {"agreement": agreement, "n": total, "allowed": bool(total) and agreement >= INT8_MIN_AGREEMENT}
    write_int8_report(store, run_id, report)
    return report


def int8_agreement(store: RunStore, run_id: str, predictor: Predictor | None = None) -> dict:
    """The run's int8 agreement: as stored, or measured now (``measure_int8``) if it never was."""
    return read_int8_report(store, run_id) or measure_int8(store, run_id, predictor)
