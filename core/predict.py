"""Predictions from a trained run: every task's label and class probabilities in one backbone pass.

int8: dynamic int8 quantization of the backbone's linear layers (LoRA adapters merged first; the small
heads stay in full precision). A run may predict in int8 only where int8 agreed with full precision on
at least ``INT8_MIN_AGREEMENT`` of its test labels; ``measure_int8`` measures that once, when training
ends, and stores it with the run (int8.json); the dashboard only reads it (``read_int8_report``).

The forward: a verified lean forward of the encoder (``core.lean``: the same arithmetic as the library's
BERT forward without its per-call machinery), else the model's own forward. Side by side, runs that hold the
same pretrained weights compute with them once: ``core.shared_predict``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from core.checkpoint import load_model
from core.errors import CheckpointError, FreezeLabError, PredictError, RunNotFound
from core.lean import LeanEncoder
from core.model import num_backbone_layers, pool
from core.store import RunStore, read_json, write_json_atomic

PROBE_TEXTS = ["a short probe .", "a second , somewhat longer probe sentence , so that the first one is padded ."]
LEAN_TOLERANCE = 1e-5  # the lean forward must give the model's own hidden states within this, or it is not used
# Prepacked weights are a second copy of the layers' weights: worth it for backbones up to MiniLM-L12's size
# (85 MB of layer weights; MiniLM-L6, one sentence on a quiet host: own forward 11.1-11.8 ms, plain lean 8.9-9.3,
# prepacked 6.4-6.7; BENCHMARKS.md), not for a BERT-base's 340 MB per run loaded side by side.
PACK_LIMIT_BYTES = 128 * 2**20


@dataclass(frozen=True)
class FrozenClaim:
    """What a run's configuration and checkpoint say: its embeddings and bottom ``layers`` transformer layers are
    the pretrained backbone's (None: it does not qualify, ``reason`` says why); ``adapters``: with LoRA
    adapters on them (the base weights are the pretrained ones)."""

    layers: int | None
    reason: str
    adapters: bool = False


@dataclass(frozen=True)
class SharedPrefix:
    """A verified claim: runs with the same ``key`` compute with the pretrained weights they hold together."""

    key: tuple  # backbone spec, architecture, tokenizer, max_length, device, dtype: what makes the inputs equal
    layers: int  # transformer layers above the embeddings, all equal to the pretrained backbone's
    adapters: bool = False  # LoRA adapters on those layers: the run rides with the frozen stream


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
    def __init__(
        self,
        model,
        tokenizer,
        meta: dict,
        device: torch.device,
        run_id: str | None = None,
        lean: bool = True,
        pack: bool = True,
    ) -> None:
        """``lean``: use the lean forward where it reproduces the model's own; ``pack``: with prepacked weights
        where they fit ``PACK_LIMIT_BYTES`` (both on by default; the benchmark turns them off to compare)."""
        self.model, self.tokenizer, self.meta, self.device, self.run_id = model, tokenizer, meta, device, run_id
        self.use_lean, self.use_pack = lean, pack
        self.max_length = int(meta.get("max_length", 128))
        self.model.eval()  # no dropout at prediction time
        # Side by side: how many bottom layers this run claims are the frozen pretrained backbone (set by
        # from_run from the run's config and checkpoint; None: it predicts alone, see ``shared_prefix``).
        self.frozen_claim: FrozenClaim = FrozenClaim(None, "not loaded from a run folder")
        self._prefix: SharedPrefix | None = None
        self._prefix_checked = False
        self._prefix_lock = threading.Lock()
        self._lean: LeanEncoder | None = None
        self._lean_checked = False
        self._lean_lock = threading.Lock()  # apart from the prefix lock: the prefix check asks for the lean forward
        self.lean_note = "not checked yet"
        self.packed_bytes = 0  # memory the prepacked weights of the lean forward add

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
        from core.shared_predict import frozen_claim

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
            lean = self.lean()
            if lean is None:
                logits = self.model.predict_all(input_ids, attention_mask)
            else:
                embedding = pool(lean.forward(input_ids, attention_mask), attention_mask, self.model.pooling)
                logits = self.model.logits(embedding)
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
        """The verified part of this predictor's backbone that holds the pretrained weights (frozen, or under
        LoRA adapters): what it may compute together with other runs. None when unsure (``share_note`` says
        why). Checked once, on first use (``core.shared_predict.verify_prefix``): the hashes of those tensors
        against the pretrained backbone's, and a lean forward that reproduces the model's own."""
        if not self._prefix_checked:
            with self._prefix_lock:
                if not self._prefix_checked:
                    from core.shared_predict import verify_prefix

                    self._prefix, self._share_note = verify_prefix(self)
                    self._prefix_checked = True
        return self._prefix

    def lean(self) -> LeanEncoder | None:
        """The lean forward of this predictor's backbone, checked once against the model's own forward on two
        probe sentences (one padded) to within ``LEAN_TOLERANCE``; None where it does not apply or did not
        match (``lean_note`` says why): then the model's own forward is used."""
        if not self._lean_checked:
            with self._lean_lock:
                if not self._lean_checked:
                    self._lean, self.lean_note = self._check_lean()
                    self._lean_checked = True
        return self._lean

    @torch.inference_mode()
    def _check_lean(self) -> tuple[LeanEncoder | None, str]:
        backbone = self.model.backbone
        if not self.use_lean:
            return None, "the lean forward is turned off for this predictor"
        lean = LeanEncoder.of(backbone)
        if lean is None:
            return None, "its architecture is not one the lean forward computes"
        input_ids, attention_mask = self.encode(PROBE_TEXTS)
        own = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keep = attention_mask.unsqueeze(-1).bool()  # padded positions are never read (pooling masks them out)

        def matches() -> bool:
            got = lean.forward(input_ids, attention_mask)
            return own.shape == got.shape and torch.allclose(own * keep, got * keep, atol=LEAN_TOLERANCE, rtol=0)

        if self.use_pack and lean.weight_bytes <= PACK_LIMIT_BYTES:
            try:
                packed = lean.pack()
                if packed and matches():
                    self.packed_bytes = packed
                    return lean, f"checked against its own forward; weights prepacked (+{packed / 2**20:.0f} MB)"
            except Exception:  # noqa: BLE001 - a torch build without these operators: plain matmuls
                pass
            lean.unpack()
        if not matches():
            return None, "the lean forward did not reproduce its own forward"
        return lean, "checked against its own forward"


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
