"""Tokenize once, pad per batch, group similar lengths, and mix tasks into a deterministic schedule.

Every batch holds one task's examples. The order of an epoch depends only on (seed, epoch), so a
resumed run regenerates its epoch and skips the batches it already did: no sampler state to save.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

GROUP_CHUNK_BATCHES = 50  # sort by length inside chunks of 50 batches: little padding, still random


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(tokenizer, texts: list[str], labels: list[int], max_length: int) -> Encoded:
    ids = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False, return_attention_mask=False)[
        "input_ids"
    ]
    return Encoded(list(ids), list(labels))


def collate(enc: Encoded, indices, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Pad to the longest sentence of this batch only; return ids, mask, labels and the real token count."""
    rows = [enc.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    labels = torch.tensor([enc.labels[i] for i in indices], dtype=torch.long)
    return ids, mask, labels, int(mask.sum())


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    perm = rng.permutation(len(lengths))
    chunk = batch_size * GROUP_CHUNK_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(perm), chunk):
        part = perm[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size].tolist() for i in range(0, len(part), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def steps_per_epoch(sizes: dict[str, int], batch_size: int, sampling: str) -> int:
    counts = [math.ceil(n / batch_size) for n in sizes.values() if n > 0]
    if not counts:
        return 0
    if sampling == "round_robin":
        return len(counts) * min(counts)
    return sum(counts)


def task_probabilities(sizes: dict[str, int], sampling: str, temperature: float) -> dict[str, float]:
    """How often each task's batches come up: proportional to size, equal, or size^(1/T) (T5)."""
    power = {"proportional": 1.0, "round_robin": 0.0, "temperature": 1.0 / temperature}[sampling]
    weights = {t: float(n) ** power for t, n in sizes.items() if n > 0}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def epoch_schedule(
    lengths: dict[str, np.ndarray], batch_size: int, sampling: str, temperature: float, seed: int, epoch: int
) -> list[tuple[str, list[int]]]:
    """The ordered (task, example indices) batches of one epoch."""
    rng = np.random.default_rng([seed, epoch])
    tasks = [t for t, lens in lengths.items() if len(lens) > 0]
    per_task = {t: length_grouped_batches(lengths[t], batch_size, rng) for t in tasks}
    n_steps = steps_per_epoch({t: len(lengths[t]) for t in tasks}, batch_size, sampling)
    if sampling == "proportional":
        # Every batch of every task exactly once, in a random interleaving.
        flat = [(t, b) for t in tasks for b in per_task[t]]
        return [flat[i] for i in rng.permutation(len(flat))]
    if sampling == "round_robin":
        return [(t, per_task[t][i]) for i in range(n_steps // len(tasks)) for t in tasks]
    probs = task_probabilities({t: len(lengths[t]) for t in tasks}, sampling, temperature)
    drawn = rng.choice(len(tasks), size=n_steps, p=[probs[t] for t in tasks])
    cursor = dict.fromkeys(tasks, 0)
    schedule = []
    for k in drawn:
        t = tasks[k]
        if cursor[t] == len(per_task[t]):  # a small task repeats: reshuffle it for the next pass
            per_task[t] = length_grouped_batches(lengths[t], batch_size, rng)
            cursor[t] = 0
        schedule.append((t, per_task[t][cursor[t]]))
        cursor[t] += 1
    return schedule
