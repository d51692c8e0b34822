"""Tokenize once, pad per batch, group similar lengths, and mix tasks into a deterministic schedule.

Every batch holds one task's examples. The order of an epoch depends only on (seed, epoch), so a
resumed run regenerates its epoch and skips the batches it already did: no sampler state to save.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from core import imbalance
from core.config import TaskSampling
from core.imbalance import class_balanced_indices

GROUP_CHUNK_BATCHES = 50  # sort by length inside chunks of 50 batches: little padding, still random
CURRICULUM_STREAM = 2**32 - 1  # seeds the capped curriculum's run-level draws apart from any (seed, epoch)
PASS_STREAM = 2**32 - 2  # seeds a capped task's passes: (seed, PASS_STREAM, task, pass)


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def subset(self, indices) -> Encoded:
        return Encoded([self.input_ids[i] for i in indices], [self.labels[i] for i in indices])


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
    return _grouped(rng.permutation(len(lengths)), lengths, batch_size, rng)


def _grouped(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Batches of ``order`` (example indices), sorted by length inside chunks, in a random batch order."""
    chunk = batch_size * GROUP_CHUNK_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size].tolist() for i in range(0, len(part), batch_size))
    batch_order = rng.permutation(len(batches))
    return [batches[i] for i in batch_order]


def task_pass(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, balanced_labels: np.ndarray | None = None
) -> list[list[int]]:
    """One pass over a task's training data: every example once, or with ``balanced_labels`` as many
    examples drawn with every class equally often (a rare class repeats, a common one is subsampled)."""
    if balanced_labels is None:
        return length_grouped_batches(lengths, batch_size, rng)
    return _grouped(class_balanced_indices(balanced_labels, len(lengths), rng), lengths, batch_size, rng)


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def steps_per_epoch(sizes: dict[str, int], batch_size: int, sampling: str) -> int:
    counts = [math.ceil(n / batch_size) for n in sizes.values() if n > 0]
    if not counts:
        return 0
    if sampling == TaskSampling.ROUND_ROBIN:
        return len(counts) * min(counts)
    return sum(counts)


def task_probabilities(sizes: dict[str, int], sampling: str, temperature: float) -> dict[str, float]:
    """How often each task's batches come up: proportional to size, equal, or size^(1/T) (T5)."""
    return imbalance.task_probabilities(sizes, sampling, temperature)


def epoch_schedule(
    lengths: dict[str, np.ndarray],
    batch_size: int,
    sampling: str,
    temperature: float,
    seed: int,
    epoch: int,
    *,
    task_order: Callable[[np.random.Generator], list[str]] | None = None,
    balanced: dict[str, np.ndarray] | None = None,
) -> list[tuple[str, list[int]]]:
    """The ordered (task, example indices) batches of one epoch.

    ``task_order``: the task of each step, drawn from the epoch's generator (curriculum, a repeat cap);
    None: from ``sampling``. ``balanced``: the training labels of tasks whose batches draw classes equally."""
    rng = np.random.default_rng([seed, epoch])
    balanced = balanced or {}
    tasks = [t for t, lens in lengths.items() if len(lens) > 0]
    per_task = {t: task_pass(lengths[t], batch_size, rng, balanced.get(t)) for t in tasks}
    if task_order is not None:
        order = task_order(rng)
    else:
        n_steps = steps_per_epoch({t: len(lengths[t]) for t in tasks}, batch_size, sampling)
        if sampling == TaskSampling.PROPORTIONAL:
            # Every batch of every task exactly once, in a random interleaving.
            flat = [(t, b) for t in tasks for b in per_task[t]]
            return [flat[i] for i in rng.permutation(len(flat))]
        if sampling == TaskSampling.ROUND_ROBIN:
            return [(t, per_task[t][i]) for i in range(n_steps // len(tasks)) for t in tasks]
        probs = task_probabilities({t: len(lengths[t]) for t in tasks}, sampling, temperature)
        order = imbalance.draw_tasks(probs, n_steps, rng)
    cursor = dict.fromkeys(tasks, 0)
    schedule = []
    for t in order:
        if cursor[t] == len(per_task[t]):  # a small task repeats: reshuffle it for the next pass
            per_task[t] = task_pass(lengths[t], batch_size, rng, balanced.get(t))
            cursor[t] = 0
        schedule.append((t, per_task[t][cursor[t]]))
        cursor[t] += 1
    return schedule


@dataclass
class Schedule:
    """Which batch each training step of a run takes: a pure function of these settings and the step.

    The run is cut into epochs; an epoch's batches come from ``epoch_schedule`` with a generator seeded
    by (seed, epoch), so any step's batch can be found again and a resumed run needs no sampler state.
    How the tasks of an epoch are chosen:

    * proportional / round_robin / temperature / uniform: as ``epoch_schedule`` draws them.
    * curriculum: one draw per step from ``imbalance.curriculum_weights(step)`` (abundant task first,
      ``curriculum_target`` at the last step), so the mix depends on the step, not the epoch.
    * ``max_task_repeats`` R (UniMax): task t gets at most floor(R * ceil(n_t / batch_size)) batches in the
      run. The sampler's planned batch counts are capped by ``imbalance.cap_task_batches`` (the excess goes
      to the other tasks), spread over the epochs by ``imbalance.epoch_batches`` and shuffled per epoch;
      with curriculum the draws skip a task at its cap (``imbalance.capped_curriculum_order``). A capped
      task's batches run through whole passes across epochs, so no example repeats more than ceil(R)
      times. When every task reaches its cap the run is shorter than planned.
    """

    lengths: dict[str, np.ndarray]  # token counts of each trained task's training examples
    batch_size: int
    sampling: str
    seed: int
    epochs: float = 1.0
    max_steps: int | None = None
    temperature: float = 2.0
    curriculum_target: str = "uniform"
    max_task_repeats: float | None = None
    balanced: dict[str, np.ndarray] = field(default_factory=dict)  # labels of class-balanced tasks

    def __post_init__(self) -> None:
        self.sizes = {t: len(v) for t, v in self.lengths.items() if len(v) > 0}
        self.curriculum = self.sampling == TaskSampling.CURRICULUM
        self.steps_per_epoch = steps_per_epoch(self.sizes, self.batch_size, self.sampling)
        spe = self.steps_per_epoch
        planned = 0 if spe == 0 else self.max_steps or max(1, math.ceil(self.epochs * spe))
        self.n_epochs = math.ceil(planned / spe) if spe else 0
        self.task_batches: dict[str, int] | None = None  # the run's batches per task, under a repeat cap
        self._run_order: list[str] | None = None
        self._epoch_starts: list[int] | None = None  # where each epoch starts, when epochs differ in length
        self.total_steps = planned
        if self.max_task_repeats is not None and planned:
            self._apply_repeat_cap(planned)
        self._cached_epoch, self._cached = -1, []
        self._passes: dict[tuple[str, int], list[list[int]]] = {}

    def _apply_repeat_cap(self, planned: int) -> None:
        sizes, cap = self.sizes, self.max_task_repeats
        if self.curriculum:
            caps = {t: math.floor(cap * math.ceil(n / self.batch_size)) for t, n in sizes.items()}
            self.total_steps = min(planned, sum(caps.values()))
            self._run_order = imbalance.capped_curriculum_order(
                self.total_steps, sizes, caps, np.random.default_rng([self.seed, CURRICULUM_STREAM]),
                target=self.curriculum_target,
            )  # fmt: skip
            self.task_batches = {t: self._run_order.count(t) for t in sizes}
            return
        if self.sampling == TaskSampling.PROPORTIONAL:  # every batch once per epoch: shares of batches, not examples
            shares = {t: math.ceil(n / self.batch_size) for t, n in sizes.items()}
        else:
            shares = imbalance.task_probabilities(sizes, self.sampling, self.temperature)
        planned_batches = imbalance.split_budget(planned, shares)
        self.task_batches = imbalance.cap_task_batches(sizes, planned_batches, self.batch_size, cap)
        self.total_steps = sum(self.task_batches.values())
        per_epoch = [self._epoch_counts(e) for e in range(self.n_epochs)]
        self._epoch_starts = [0, *itertools.accumulate(sum(c.values()) for c in per_epoch)]

    def _epoch_counts(self, epoch: int) -> dict[str, int]:
        return imbalance.epoch_batches(self.task_batches, self.n_epochs, epoch)

    def _locate(self, step: int) -> tuple[int, int]:
        """(epoch, offset in it) of a step."""
        if self._epoch_starts is None:
            return divmod(step, self.steps_per_epoch)
        epoch = min(bisect.bisect_right(self._epoch_starts, step) - 1, self.n_epochs - 1)
        return epoch, step - self._epoch_starts[epoch]

    def epoch(self, step: int) -> float:
        """The run's position in epochs (fractional)."""
        if not self.steps_per_epoch:
            return 0.0
        if self._epoch_starts is None:
            return step / self.steps_per_epoch
        epoch, offset = self._locate(step)
        length = self._epoch_starts[epoch + 1] - self._epoch_starts[epoch]
        return epoch + (offset / length if length else 0.0)

    def task_weights(self, step: int) -> dict[str, float]:
        """The sampling weight of each task at ``step``: the curriculum's formula, else the sampler's shares."""
        if self.curriculum:
            return imbalance.curriculum_weights(step, self.total_steps, self.sizes, target=self.curriculum_target)
        if self.task_batches is not None:
            total = sum(self.task_batches.values())
            return {t: b / total for t, b in self.task_batches.items()}
        if self.sampling == TaskSampling.PROPORTIONAL:
            counts = {t: math.ceil(n / self.batch_size) for t, n in self.sizes.items()}
            return {t: c / sum(counts.values()) for t, c in counts.items()}
        return imbalance.task_probabilities(self.sizes, self.sampling, self.temperature)

    def batch(self, step: int) -> tuple[str, list[int]]:
        """The (task, example indices) of training step ``step`` (0-based)."""
        epoch, offset = self._locate(step)
        if epoch != self._cached_epoch:
            self._cached = self._epoch(epoch)
            self._cached_epoch = epoch
        return self._cached[offset]

    def _epoch(self, epoch: int) -> list[tuple[str, list[int]]]:
        spe = self.steps_per_epoch
        if self._run_order is not None:  # capped curriculum: the run's task order, drawn once
            return self._capped_epoch(epoch, self._run_order[epoch * spe : (epoch + 1) * spe])
        if self.task_batches is not None:
            order = imbalance.epoch_task_order(
                self._epoch_counts(epoch), self.sampling, np.random.default_rng([self.seed, epoch])
            )
            return self._capped_epoch(epoch, order)
        order = None
        if self.curriculum:
            total, sizes, target = self.total_steps, self.sizes, self.curriculum_target

            def order(rng):
                return imbalance.curriculum_task_order(epoch * spe, spe, total, sizes, rng, target=target)

        return epoch_schedule(
            self.lengths, self.batch_size, self.sampling, self.temperature, self.seed, epoch,
            task_order=order, balanced=self.balanced,
        )  # fmt: skip

    def _capped_epoch(self, epoch: int, order: list[str]) -> list[tuple[str, list[int]]]:
        """Under a repeat cap each task's batches are one stream of passes across the whole run (pass p of task
        t shuffled by (seed, t, p)), so R passes' worth of batches shows every example at most ceil(R) times."""
        if self._run_order is not None:
            done = Counter(self._run_order[: epoch * self.steps_per_epoch])
        else:
            done = Counter()
            for e in range(epoch):
                done.update(self._epoch_counts(e))
        schedule = []
        for t in order:
            per_pass = math.ceil(self.sizes[t] / self.batch_size)
            k = done[t]
            schedule.append((t, self._pass(t, k // per_pass)[k % per_pass]))
            done[t] += 1
        return schedule

    def _pass(self, task: str, index: int) -> list[list[int]]:
        key = (task, index)
        if key not in self._passes:
            rng = np.random.default_rng([self.seed, PASS_STREAM, list(self.sizes).index(task), index])
            self._passes = {k: v for k, v in self._passes.items() if k[0] != task or k[1] >= index - 1}
            self._passes[key] = task_pass(self.lengths[task], self.batch_size, rng, self.balanced.get(task))
        return self._passes[key]
