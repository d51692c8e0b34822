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

    def get_or_compute(self, key: str, compute) -> torch.Tensor:
        path = self.root / f"{key}.safetensors"
        if path.is_file():
            try:
                self.hits += 1
                return load_file(str(path))["embeddings"]
            except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
                path.unlink(missing_ok=True)
                self.hits -= 1
        self.misses += 1
        emb = compute().contiguous()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({"embeddings": emb}, str(tmp))
        tmp.replace(path)
        return emb
