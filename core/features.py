"""Never pay twice for a frozen layer: what a run computes once and reuses, on disk, across runs.

* Nothing below the heads ever trains (``frozen_backbone``, ``frozen_all``): pooled sentence embeddings
  of every split are computed once and cached; the heads train on them.
* The embeddings and the bottom k layers never train (``freeze_lower``): token hidden states after
  layer k are cached; each step runs only the layers above k.

Frozen layers run in evaluation mode (no dropout) whether cached or not, so both paths compute the same
function; tests check that the cache changes speed, not results.

Computing a cache can take minutes on the full data (38,000 sentences through MiniLM-L6 on a laptop CPU):
``on_progress(done, total)`` hears about every batch, and ``status_progress`` turns that into the run's
status (a setup phase with its own count and ETA) so the dashboard and the CLI can show it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from core.batching import Encoded, eval_batches
from core.cache import (
    EmbeddingCache,
    LowerStates,
    cache_key,
    compute_lower_states,
    supports_layer_split,
    top_forward,
)
from core.config import RunConfig
from core.evaluate import embed_split, head_logits
from core.model import MultiTaskModel, group_of, num_backbone_layers, pool
from core.records import Progress

if TYPE_CHECKING:
    from core.store import RunStore

SPLITS = ("train", "validation", "test")
MAX_CACHED_BYTES = 2.5e9  # token hidden states bigger than this are recomputed each step instead
PHASE = "caching frozen layers"
ProgressCallback = Callable[[int, int], None]  # (sentences done, sentences in all splits)


class FrozenFeatures:
    def __init__(
        self,
        model: MultiTaskModel,
        encoded: dict[str, dict[str, Encoded]],
        cfg: RunConfig,
        trained_names: set[str],
        reusable: bool,
        cache_root: Path,
        device: torch.device,
        pad_id: int,
        log: logging.Logger,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """``reusable``: the frozen part is a deterministic function of the backbone spec (no init_from,
        no staged unfreezing, no adapters inside the layers). ``on_progress(done, total)``: called after every
        batch of sentences the frozen layers compute (and once per split read from the cache)."""
        self.model, self.encoded, self.cfg, self.device, self.pad_id = model, encoded, cfg, device, pad_id
        self.log, self.on_progress = log, on_progress
        self.hits = self.misses = 0
        self.embeddings: dict[tuple[str, str], torch.Tensor] = {}
        self.lower: dict[tuple[str, str], LowerStates] = {}
        self.train_lengths = {t: torch.from_numpy(splits["train"].lengths()) for t, splits in encoded.items()}
        enabled = cfg.cache_frozen_backbone and reusable
        self.heads_only = enabled and all(n.startswith("heads.") for n in trained_names)
        self.lower_k = 0 if self.heads_only or not enabled else self._frozen_bottom_layers(trained_names, log)
        if self.heads_only:
            self._load(cache_root / "embeddings", cfg.pooling, self._embed)
            log.info("frozen backbone: embeddings from cache %d, computed %d", self.hits, self.misses)
        elif self.lower_k:
            self._load(cache_root / f"layer{self.lower_k}", f"lower{self.lower_k}", self._states)
            log.info("bottom %d layers: hidden states from cache %d, computed %d", self.lower_k, self.hits, self.misses)

    @property
    def active(self) -> bool:
        return self.heads_only or bool(self.lower_k)

    def _frozen_bottom_layers(self, trained_names: set[str], log: logging.Logger) -> int:
        """k when the embeddings and exactly the bottom k layers never train."""
        if not supports_layer_split(self.model.backbone):
            return 0
        groups = {group_of(n) for n in trained_names}
        layers = [int(g.split(".")[1]) for g in groups if g.startswith("layer.")]
        if "embeddings" in groups or "other" in groups or not layers:
            return 0
        k = min(layers)
        tokens = sum(sum(map(len, enc.input_ids)) for splits in self.encoded.values() for enc in splits.values())
        if tokens * self.model.backbone.config.hidden_size * 4 > MAX_CACHED_BYTES:
            log.info(
                "hidden-state cache skipped: %d tokens would need more than %.1f GB", tokens, MAX_CACHED_BYTES / 1e9
            )
            return 0
        return k if 0 < k < num_backbone_layers(self.model) else 0

    def _load(self, folder: Path, kind: str, compute) -> None:
        cache = EmbeddingCache(folder)
        total = sum(len(enc) for splits in self.encoded.values() for enc in splits.values())
        counter = _SentenceCounter(total, self.on_progress, self.log)
        with counter.counting(self.model.backbone):
            for task, splits in self.encoded.items():
                for split, enc in splits.items():
                    key = cache_key(self.cfg.backbone, self.cfg.seed, kind, enc)
                    tensors = cache.get_or_compute_tensors(key, lambda enc=enc: compute(enc))
                    counter.split_done(len(enc))
                    self._keep(task, split, tensors)
        self.hits, self.misses = cache.hits, cache.misses

    def _keep(self, task: str, split: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.heads_only:
            self.embeddings[task, split] = tensors["embeddings"]
        else:
            self.lower[task, split] = LowerStates(tensors["flat"], tensors["offsets"])

    def _embed(self, enc: Encoded) -> dict[str, torch.Tensor]:
        return {"embeddings": embed_split(self.model, enc, self.cfg.eval_batch_size, self.pad_id, self.device)}

    def _states(self, enc: Encoded) -> dict[str, torch.Tensor]:
        return compute_lower_states(
            self.model.backbone, enc, self.lower_k, self.cfg.eval_batch_size, self.pad_id, self.device
        ).as_tensors()

    def _top_embed(self, task: str, split: str, idx: list[int]) -> tuple[torch.Tensor, int]:
        hidden, mask = top_forward(self.model.backbone, self.lower[task, split], idx, self.lower_k, self.device)
        return pool(hidden, mask, self.cfg.pooling), int(mask.sum())

    def train_logits(self, task: str, idx: list[int]) -> tuple[torch.Tensor, int]:
        """Logits of a training batch (with grad where the model trains) and its real token count."""
        if self.heads_only:
            rows = torch.as_tensor(idx)
            n_tokens = int(self.train_lengths[task][rows].sum())
            return self.model.heads[task](self.embeddings[task, "train"][rows].to(self.device)), n_tokens
        emb, n_tokens = self._top_embed(task, "train", idx)
        return self.model.heads[task](emb), n_tokens

    def logits(self, task: str, split: str) -> np.ndarray:
        if self.heads_only:
            return head_logits(self.model, task, self.embeddings[task, split], self.device)
        enc = self.encoded[task][split]
        out = np.zeros((len(enc), len(self.model.label_names[task])), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            for idx in eval_batches(enc.lengths(), self.cfg.eval_batch_size):
                out[idx] = self.model.heads[task](self._top_embed(task, split, idx)[0]).float().cpu().numpy()
        self.model.train(was_training)
        return out


class _SentenceCounter:
    """Counts the sentences the frozen layers compute, batch by batch, without touching the computation: a
    forward hook on the embedding layer (every batch passes through it, whole backbone or bottom layers only)."""

    def __init__(self, total: int, on_progress: ProgressCallback | None, log: logging.Logger) -> None:
        self.total, self.on_progress, self.log = total, on_progress, log
        self.finished = 0  # sentences of completed splits
        self.in_split = 0
        self.logged_tenths = 0

    @contextlib.contextmanager
    def counting(self, backbone: torch.nn.Module):
        module = getattr(backbone, "embeddings", None)
        module = backbone if module is None else module
        handle = module.register_forward_hook(self._batch)
        try:
            yield self
        finally:
            handle.remove()

    def _batch(self, module, args, output) -> None:
        hidden = output if torch.is_tensor(output) else output[0]
        self.in_split += int(hidden.shape[0])
        self._report(self.finished + self.in_split)

    def split_done(self, n: int) -> None:
        self.finished += n
        self.in_split = 0
        self._report(self.finished)

    def _report(self, done: int) -> None:
        done = min(done, self.total)
        tenths = math.floor(10 * done / self.total) if self.total else 10
        if tenths > self.logged_tenths and self.in_split:  # what was computed, not what came from the cache
            self.log.info("%s: %s of %s sentences", PHASE, f"{done:,}", f"{self.total:,}")
            self.logged_tenths = tenths
        if self.on_progress is not None:
            self.on_progress(done, self.total)


def status_progress(store: RunStore, run_id: str, phase: str = PHASE, every_seconds: float = 2.0) -> ProgressCallback:
    """An ``on_progress`` that writes the phase into the run's status.json (at most every ``every_seconds``, and
    always at the end), with an ETA from the rate so far: what the Runs page and the CLI bar show during setup."""
    started = time.monotonic()
    last = -math.inf

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done < total and now - last < every_seconds:
            return
        last = now
        eta = (now - started) / done * (total - done) if done else None
        progress = Progress(
            phase=phase, phase_done=done, phase_total=total, eta_seconds=None if eta is None else round(eta, 1)
        )
        store.update_status(run_id, progress=progress)

    return report
