"""Options for uneven data: one task far smaller than the other, or one class rare inside a task.

Everything is a pure function of its arguments (a numpy Generator where randomness is needed), so a schedule
built from (seed, epoch) or (seed, step) is regenerated on resume: no sampler state to save.
"""

from __future__ import annotations

import bisect
import itertools
import math
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from core import config
from core.config import CurriculumTarget, TaskSampling, choices
from core.errors import ClassRatioError, ConfigError, ImbalanceError

# The samplings drawn per batch here; curriculum has its own functions below (curriculum_weights...).
SAMPLINGS = tuple(v for v in choices(TaskSampling) if v != TaskSampling.CURRICULUM)
CURRICULUM_STARTS = ("abundant", "proportional")
CURRICULUM_TARGETS = tuple(choices(CurriculumTarget))


# -- which task each batch comes from ---------------------------------------------------------------
def _check_sampling(sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise ImbalanceError(f"task sampling {sampling!r} is unknown: choose one of {', '.join(SAMPLINGS)}.")


def task_probabilities(sizes: dict[str, int], sampling: str, temperature: float = 1.0) -> dict[str, float]:
    """Share of batches per task: p_t ∝ n_t^power, power 1 (proportional), 1/T (temperature, as in T5),
    0 (round_robin and uniform). Same numbers as ``core.batching.task_probabilities`` for the old three;
    "uniform" differs from round_robin only in *order* (independent draws, not a fixed alternation).
    Empty tasks get no entry."""
    _check_sampling(sampling)
    if sampling == "temperature" and not temperature > 0:
        raise ImbalanceError(f"sampling temperature={temperature} must be > 0 (1 = proportional, large = uniform).")
    power = {"proportional": 1.0, "temperature": 1.0 / temperature}.get(sampling, 0.0)
    weights = {t: float(n) ** power for t, n in sizes.items() if n > 0}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def split_budget(total: int, shares: dict[str, float | Fraction]) -> dict[str, int]:
    """Whole batch counts summing exactly to ``total`` in the given shares (largest remainder, ties by order)."""
    weight = sum(Fraction(s) for s in shares.values())
    if total <= 0 or weight == 0:
        return dict.fromkeys(shares, 0)
    exact = {t: total * Fraction(s) / weight for t, s in shares.items()}
    counts = {t: math.floor(x) for t, x in exact.items()}
    by_remainder = sorted(exact, key=lambda t: exact[t] - counts[t], reverse=True)  # stable: ties keep order
    for t in by_remainder[: total - sum(counts.values())]:
        counts[t] += 1
    return counts


def cap_task_batches(
    sizes: dict[str, int], planned_batches_per_task: dict[str, int], batch_size: int, max_repeats: float
) -> dict[str, int]:
    """UniMax-style repeat cap (Chung et al. 2023, "UniMax: Fairer and more effective language sampling").

    Why: up-sampling a small task (round_robin, uniform, high temperature) shows its few examples many times
    and it overfits. Rule: task t may have at most cap_t = floor(max_repeats * ceil(n_t / batch_size)) batches
    in the run (max_repeats passes over its data). The batches removed from capped tasks go to the uncapped
    ones in proportion to their planned counts (so the sampler's own mix is kept among them; for uniform
    sampling this is exactly UniMax's uniform redistribution); if that lifts another task over its cap it is
    capped too and the pass repeats. When every task is capped the run simply gets shorter.
    """
    if not max_repeats > 0 or batch_size < 1:
        raise ImbalanceError(
            f"max_repeats={max_repeats} must be > 0 passes over a task's data (e.g. 4), batch_size >= 1."
        )
    unknown = sorted(set(planned_batches_per_task) - set(sizes))
    if unknown:
        raise ImbalanceError(f"planned batches name tasks {unknown} that have no size; tasks: {sorted(sizes)}.")
    caps = {t: math.floor(max_repeats * math.ceil(sizes[t] / batch_size)) for t in planned_batches_per_task}
    remaining = sum(planned_batches_per_task.values())
    result = dict.fromkeys(planned_batches_per_task, 0)
    free = [t for t, b in planned_batches_per_task.items() if b > 0]
    while free:
        weight = sum(planned_batches_per_task[t] for t in free)
        over = [t for t in free if Fraction(remaining * planned_batches_per_task[t], weight) > caps[t]]
        if not over:
            result.update(split_budget(remaining, {t: planned_batches_per_task[t] for t in free}))
            break
        for t in over:
            result[t] = caps[t]
            remaining -= caps[t]
        free = [t for t in free if t not in over]
    return result


def epoch_batches(run_batches_per_task: dict[str, int], epochs: int, epoch: int) -> dict[str, int]:
    """Epoch ``epoch``'s share of a run-level allocation: floor((e+1)B/E) - floor(eB/E); sums to B over epochs."""
    return {t: (b * (epoch + 1)) // epochs - (b * epoch) // epochs for t, b in run_batches_per_task.items()}


def epoch_task_order(batches_per_task: dict[str, int], sampling: str, rng: np.random.Generator) -> list[str]:
    """The task of each step, using every task's count exactly (so a repeat cap is never broken by chance).

    round_robin alternates tasks in dict order (a task that runs out drops out of the cycle); every other
    sampling shuffles the multiset with ``rng``, as ``core.batching.epoch_schedule`` does for proportional.
    """
    _check_sampling(sampling)
    if sampling == "round_robin":
        rounds = max(batches_per_task.values(), default=0)
        return [t for r in range(rounds) for t, b in batches_per_task.items() if r < b]
    flat = [t for t, b in batches_per_task.items() for _ in range(b)]
    return [flat[i] for i in rng.permutation(len(flat))]


def draw_tasks(probabilities: dict[str, float], n: int, rng: np.random.Generator) -> list[str]:
    """n independent draws (the temperature/uniform branch of ``epoch_schedule``: same ``rng.choice`` call)."""
    tasks = list(probabilities)
    return [tasks[k] for k in rng.choice(len(tasks), size=n, p=[probabilities[t] for t in tasks])]


# -- curriculum: abundant task first, then move weight to the limited one ---------------------------
def curriculum_weights(
    step: int, total_steps: int, sizes: dict[str, int], start="abundant", target="uniform", warm_fraction=0.0
) -> dict[str, float]:
    """Task sampling weights at ``step`` (0-based) of ``total_steps``; a pure function of step, so log it freely.

    Why: a tiny task learned from the first step overfits before the shared encoder has adapted; learning
    the abundant task first and shifting weight later is the "curriculum" fix. Formula:
        u = step / (total_steps - 1),  p = clip((u - warm_fraction) / (1 - warm_fraction), 0, 1)
        w_t(step) = (1 - p) * start_t + p * target_t
    start: "abundant" (all weight on the largest task) or "proportional" (n_t / N). target: "uniform" (1/K),
    "proportional", "limited" (all weight on the smallest task) or a dict of weights (normalised).
    The start weights are held for the first warm_fraction of the run, then moved linearly to reach the
    target exactly at the last step.
    """
    tasks = [t for t, n in sizes.items() if n > 0]
    if not tasks:
        raise ImbalanceError("curriculum needs at least one task with training data.")
    if not 0 <= warm_fraction < 1:
        raise ImbalanceError(f"curriculum warm_fraction={warm_fraction} must be in [0, 1), e.g. 0.2.")
    if start not in CURRICULUM_STARTS or (isinstance(target, str) and target not in CURRICULUM_TARGETS):
        raise ImbalanceError(
            f"curriculum start={start!r}, target={target!r}: start is one of {', '.join(CURRICULUM_STARTS)}; "
            f"target is one of {', '.join(CURRICULUM_TARGETS)} or a dict of task weights."
        )
    ends = {
        "abundant": {max(tasks, key=lambda t: sizes[t]): 1.0},  # ties: the first task in dict order
        "limited": {min(tasks, key=lambda t: sizes[t]): 1.0},
        "uniform": dict.fromkeys(tasks, 1.0),
        "proportional": {t: float(sizes[t]) for t in tasks},
    }
    a, b = ends[start], ends[target] if isinstance(target, str) else dict(target)
    if set(b) - set(tasks) or sum(b.values()) <= 0 or min(b.values()) < 0:
        raise ImbalanceError(f"curriculum target {target!r} must give non-negative weights to tasks among {tasks}.")
    u = min(max(step, 0), total_steps - 1) / max(total_steps - 1, 1)
    p = min(max((u - warm_fraction) / (1 - warm_fraction), 0.0), 1.0)
    sa, sb = sum(a.values()), sum(b.values())
    return {t: (1 - p) * a.get(t, 0.0) / sa + p * b.get(t, 0.0) / sb for t in tasks}


def curriculum_task_order(
    first_step: int, n_steps: int, total_steps: int, sizes: dict[str, int], rng: np.random.Generator, **kwargs
) -> list[str]:
    """One independent task draw per step from that step's curriculum weights (rng from (seed, epoch))."""
    order = []
    for step, x in zip(range(first_step, first_step + n_steps), rng.random(n_steps)):
        w = curriculum_weights(step, total_steps, sizes, **kwargs)
        cumulative = list(itertools.accumulate(w.values()))
        order.append(list(w)[min(bisect.bisect_right(cumulative, x * cumulative[-1]), len(w) - 1)])
    return order


def capped_curriculum_order(
    total_steps: int, sizes: dict[str, int], caps: dict[str, int], rng: np.random.Generator, **kwargs
) -> list[str]:
    """The task of every step of a curriculum run in which task t may have at most caps[t] batches.

    Each step draws from ``curriculum_weights(step)`` restricted to the tasks still under their cap
    (renormalised; equal weights among them if the curriculum gives them none). The order depends on the
    counts so far, so it is drawn once for the whole run from one generator: still a pure function of
    the seed. Needs total_steps <= sum(caps)."""
    if total_steps > sum(caps.values()):
        raise ImbalanceError(
            f"{total_steps} steps do not fit under the repeat caps {caps} (at most {sum(caps.values())})."
        )
    used = dict.fromkeys(caps, 0)
    order = []
    for step, x in zip(range(total_steps), rng.random(total_steps)):
        w = {t: v for t, v in curriculum_weights(step, total_steps, sizes, **kwargs).items() if used[t] < caps[t]}
        if sum(w.values()) <= 0:
            w = {t: 1.0 for t in caps if used[t] < caps[t]}
        cumulative = list(itertools.accumulate(w.values()))
        task = list(w)[min(bisect.bisect_right(cumulative, x * cumulative[-1]), len(w) - 1)]
        used[task] += 1
        order.append(task)
    return order


# -- loss weighting between tasks -------------------------------------------------------------------
def inverse_size_weights(sizes: dict[str, int]) -> dict[str, float]:
    """w_t ∝ 1 / n_t, scaled so the mean weight is 1 (the average loss scale, hence learning rate, is kept)."""
    inv = {t: 1.0 / n for t, n in sizes.items() if n > 0}
    mean = sum(inv.values()) / len(inv) if inv else 1.0
    return {t: v / mean for t, v in inv.items()}


class UncertaintyWeighting(nn.Module):
    """Learned task weights, Kendall, Gal & Cipolla 2018 ("Multi-task learning using uncertainty to weigh losses").

    One learned s_t = log(sigma_t^2) per task. Variant used (the paper's classification form, eq. 10, where
    1/sigma^2 scales the logits): total = sum_t exp(-s_t) * L_t + s_t / 2. A noisy or hard task gets a larger
    s_t, hence a smaller weight; the + s_t / 2 term stops all weights collapsing to zero. At the optimum
    s_t = log(2 L_t). Only tasks present in the ``losses`` dict contribute (one-task batches are fine).
    Add its parameters to the optimizer (no weight decay); they are saved in state_dict like any module.
    """

    def __init__(self, tasks: list[str], init_log_variance: float = 0.0) -> None:
        super().__init__()
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.tensor(float(init_log_variance))) for t in tasks})

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        unknown = sorted(set(losses) - set(self.log_vars))
        if unknown:
            raise KeyError(f"no log-variance for tasks {unknown}; tasks: {list(self.log_vars)}")
        return sum(torch.exp(-self.log_vars[t]) * loss + 0.5 * self.log_vars[t] for t, loss in losses.items())

    def log_variances(self) -> dict[str, float]:
        return {t: float(s.detach()) for t, s in self.log_vars.items()}

    def weights(self) -> dict[str, float]:
        """The effective loss weight exp(-s_t) of each task, for logging."""
        return {t: math.exp(-float(s.detach())) for t, s in self.log_vars.items()}


LOSS_WEIGHTINGS = ("fixed", "inverse_size", "uncertainty")


class TaskLoss(nn.Module):
    """The loss of one training step (one task's batch), with every weighting option applied.

        L_t = cross-entropy of the batch; with class weights c: sum_i c[y_i] CE_i / sum_i c[y_i] (PyTorch's rule)
        fixed:         loss = a_t * L_t                          a_t: the task's loss_weight (1 by default)
        inverse_size:  loss = a_t * w_t * L_t                    w_t = (1 / n_t) / mean_k (1 / n_k)
        uncertainty:   loss = exp(-s_t) * a_t * L_t + s_t / 2    s_t = log sigma_t^2, learned (Kendall et al. 2018)

    The learned s_t are this module's only parameters: train them with the heads, save them with the run.
    """

    def __init__(
        self,
        weighting: str,
        loss_weights: dict[str, float],
        sizes: dict[str, int],
        class_weights: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if weighting not in LOSS_WEIGHTINGS:
            raise ImbalanceError(f"loss_weighting={weighting!r}: choose one of {', '.join(LOSS_WEIGHTINGS)}.")
        self.weighting = weighting
        size_weights = inverse_size_weights(sizes) if weighting == "inverse_size" else {}
        self.static = {t: float(a) * size_weights.get(t, 1.0) for t, a in loss_weights.items()}
        self.class_weights = dict(class_weights or {})
        self.uncertainty = UncertaintyWeighting(list(loss_weights)) if weighting == "uncertainty" else None

    def forward(self, task: str, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the task's plain or class-weighted cross-entropy, the weighted loss to minimise)."""
        weight = self.class_weights.get(task)
        ce = nn.functional.cross_entropy(logits, labels, weight=None if weight is None else weight.to(logits.device))
        scaled = self.static[task] * ce
        total = self.uncertainty({task: scaled}) if self.uncertainty is not None else scaled
        return ce, total

    def weights(self) -> dict[str, float]:
        """Each task's current multiplier of its cross-entropy: a_t * w_t, or a_t * exp(-s_t)."""
        learned = self.uncertainty.weights() if self.uncertainty is not None else {}
        return {t: a * learned.get(t, 1.0) for t, a in self.static.items()}

    def log_variances(self) -> dict[str, float] | None:
        return self.uncertainty.log_variances() if self.uncertainty is not None else None

    def load_log_variances(self, values: dict[str, float]) -> None:
        with torch.no_grad():
            for t, v in values.items():
                self.uncertainty.log_vars[t].fill_(float(v))

    def records(self, position: dict) -> list[dict]:
        """``loss_weights`` metrics records, one per task (with its log-variance when learned)."""
        s = self.log_variances() or {}
        return [
            {"kind": "loss_weights", **position, "task": t, "weight": w, **({"log_variance": s[t]} if t in s else {})}
            for t, w in self.weights().items()
        ]


# -- class imbalance inside a task ------------------------------------------------------------------
def class_weights(counts: list[int], method: str = "effective", beta: float = 0.999) -> torch.Tensor:
    """Per-class cross-entropy weights, summing to the number of classes present (absent classes get 0).

    "inverse": w_c ∝ 1 / n_c. "effective" (Cui et al. 2019, "Class-balanced loss based on effective number
    of samples"): w_c ∝ (1 - beta) / (1 - beta^n_c); beta -> 0 gives equal weights, beta -> 1 gives inverse
    frequency, so beta softens the inverse weights, which over-correct when a class has a handful of examples.
    """
    n = np.asarray(counts, dtype=np.float64)
    if method not in ("inverse", "effective") or not 0 <= beta < 1:
        raise ImbalanceError(
            f"class weights method={method!r}, beta={beta}: method is inverse or effective, beta in [0, 1)."
        )
    if n.ndim != 1 or n.size == 0 or (n < 0).any() or not (n > 0).any():
        raise ImbalanceError(f"class counts {list(counts)} must be non-negative with at least one class present.")
    present = n > 0
    raw = np.zeros_like(n)
    raw[present] = 1.0 / n[present] if method == "inverse" else (1.0 - beta) / (1.0 - beta ** n[present])
    return torch.tensor(raw * present.sum() / raw.sum(), dtype=torch.float32)


def class_balanced_indices(labels, n: int, rng: np.random.Generator) -> np.ndarray:
    """n example indices with every present class drawn equally often (n // C each, the rest spread at random).

    Within a class examples are taken in reshuffled full passes, so a rare class is repeated (with
    replacement across passes) while a common class is drawn without replacement.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if classes.size == 0:
        raise ImbalanceError("class_balanced_indices needs at least one label.")
    per_class = np.full(classes.size, n // classes.size)
    per_class[rng.permutation(classes.size)[: n % classes.size]] += 1
    picked = []
    for cls, k in zip(classes, per_class):
        members = np.flatnonzero(labels == cls)
        passes = [rng.permutation(members) for _ in range(-(-k // members.size))]
        picked.append(np.concatenate(passes)[:k] if passes else members[:0])
    out = np.concatenate(picked)
    return out[rng.permutation(out.size)]


def balanced_accuracy(labels, preds) -> float:
    """Mean per-class recall: the accuracy a rare class cannot hide in (sklearn's balanced_accuracy_score)."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels, preds))


# -- scenario builder: make one class rare in a training split --------------------------------------
def _check_ratio(keep: dict[str, float], label_names: list[str] | None) -> None:
    for name, frac in keep.items():
        if label_names is not None and name not in label_names:
            raise ClassRatioError(f"class {name!r} is not a label of this task; the classes are {label_names}.")
        if not config.MIN_CLASS_RATIO <= frac <= 1:  # the bound the parser and TaskConfig use (NaN fails too)
            raise ClassRatioError(
                f"class {name!r}: keep fraction {frac} must be between {config.MIN_CLASS_RATIO:g} and 1, "
                f"e.g. {name}=0.1."
            )


def parse_class_ratio(spec: str) -> dict[str, float]:
    """Parse "negative=0.1,positive=1" -> {"negative": 0.1, "positive": 1.0}; empty means keep all.
    ``core.config.parse_class_ratio`` (no torch) is the parser; its ConfigError is a ClassRatioError here."""
    try:
        return config.parse_class_ratio(spec)
    except ConfigError as exc:
        raise ClassRatioError(str(exc)) from None


def subsample_class(labels: list[int], label_names: list[str], keep: dict[str, float], seed: int) -> np.ndarray:
    """Sorted indices of a TRAINING split after keeping only ``keep[c]`` of each named class c.

    Class c keeps max(1, round(f * n_c)) of its n_c examples (at least one, so it stays learnable and
    class weights stay finite), chosen with default_rng(seed); other classes are untouched. Never apply
    this to validation/test: their class mix is what the metrics are measured on.
    """
    _check_ratio(keep, list(label_names))
    labels_arr = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    mask = np.ones(labels_arr.size, dtype=bool)
    for c, name in enumerate(label_names):  # label order, not dict order: the same seed picks the same rows
        members = np.flatnonzero(labels_arr == c)
        if name in keep and members.size:
            mask[members] = False
            mask[rng.choice(members, size=max(1, round(keep[name] * members.size)), replace=False)] = True
    return np.flatnonzero(mask)
