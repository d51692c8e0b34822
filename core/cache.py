"""A frozen backbone is computed once: pooled sentence embeddings cached on disk, shared by runs.

The key covers everything the embeddings depend on: the backbone spec and a fingerprint of its weight
files (or the seed of a from-scratch backbone), the pooling, and a hash of the split's exact token ids,
which already encodes the data, the split, the tokenizer and the max length. Change any of them and the
key changes, so a stale cache is never read. Files are safetensors, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from core.backbones import resolve_backbone
from core.batching import Encoded


def token_digest(enc: Encoded) -> str:
    h = hashlib.sha256()
    for ids in enc.input_ids:
        h.update(np.asarray(ids, dtype=np.int32).tobytes())
        h.update(b"|")
    return h.hexdigest()


def backbone_fingerprint(spec: str, seed: int) -> str:
    """What identifies the backbone's weights: the files' sizes and times, or the seed for scratch."""
    resolved = resolve_backbone(spec)
    if not resolved.pretrained:
        return f"scratch:{spec}:seed={seed}"
    source = Path(resolved.source)
    files = sorted(source.glob("*.safetensors")) + sorted(source.glob("*.bin")) if source.is_dir() else []
    stats = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]
    return json.dumps([spec, stats])


def cache_key(spec: str, seed: int, pooling: str, enc: Encoded) -> str:
    raw = json.dumps([backbone_fingerprint(spec, seed), pooling, token_digest(enc)])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class EmbeddingCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def get_or_compute_tensors(self, key: str, compute) -> dict[str, torch.Tensor]:
        """The tensors stored under ``key``; on a miss, ``compute()`` them and store them atomically."""
        path = self.root / f"{key}.safetensors"
        if path.is_file():
            try:
                tensors = load_file(str(path))
                self.hits += 1
                return tensors
            except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
                path.unlink(missing_ok=True)
        self.misses += 1
        tensors = {name: t.contiguous() for name, t in compute().items()}
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path)
        return tensors


class LowerStates:
    """Token hidden states after the frozen bottom k layers, one ragged row per sentence."""

    def __init__(self, flat: torch.Tensor, offsets: torch.Tensor) -> None:
        self.flat, self.offsets = flat, offsets

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.flat[self.offsets[i] : self.offsets[i + 1]] for i in idx]
        width = max(r.shape[0] for r in rows)
        hidden = torch.zeros((len(rows), width, self.flat.shape[1]), dtype=self.flat.dtype)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            hidden[j, : r.shape[0]] = r
            mask[j, : r.shape[0]] = 1
        return hidden, mask

    def as_tensors(self) -> dict[str, torch.Tensor]:
        return {"flat": self.flat.contiguous(), "offsets": self.offsets.contiguous()}


def supports_layer_split(backbone) -> bool:
    return hasattr(backbone, "embeddings") and hasattr(getattr(backbone, "encoder", None), "layer")


def layer_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """The (batch, 1, 1, length) boolean mask BERT-style layers take: True where a real token is."""
    return attention_mask[:, None, None, :].bool()


@torch.inference_mode()
def compute_lower_states(backbone, enc: Encoded, k: int, batch_size: int, pad_id: int, device) -> LowerStates:
    from core.batching import collate, eval_batches

    was_training = backbone.training
    backbone.eval()
    rows: list[torch.Tensor | None] = [None] * len(enc)
    for idx in eval_batches(enc.lengths(), batch_size):
        ids, mask, _, _ = collate(enc, idx, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        hidden = backbone.embeddings(input_ids=ids)
        for layer in backbone.encoder.layer[:k]:
            hidden = layer(hidden, attention_mask=layer_mask(mask))
        for j, i in enumerate(idx):
            rows[i] = hidden[j, : int(mask[j].sum())].float().cpu()
    backbone.train(was_training)
    lengths = torch.tensor([r.shape[0] for r in rows])
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(lengths, 0)
    return LowerStates(torch.cat(rows), offsets)


def top_forward(backbone, states: LowerStates, idx: list[int], k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Run only the layers above k on cached states; returns the last hidden states and the mask."""
    hidden, mask = states.batch(idx)
    hidden, mask = hidden.to(device), mask.to(device)
    for layer in backbone.encoder.layer[k:]:
        hidden = layer(hidden, attention_mask=layer_mask(mask))
    return hidden, mask
