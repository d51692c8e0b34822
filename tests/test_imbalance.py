"""Task samplers, repeat cap, curriculum, loss weights and class balancing do what they promise."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import batching
from core.imbalance import (
    ClassRatioError,
    ImbalanceError,
    UncertaintyWeighting,
    balanced_accuracy,
    cap_task_batches,
    class_balanced_indices,
    class_weights,
    curriculum_task_order,
    curriculum_weights,
    draw_tasks,
    epoch_batches,
    epoch_task_order,
    inverse_size_weights,
    parse_class_ratio,
    split_budget,
    subsample_class,
    task_probabilities,
)

SIZES = {"topic": 9000, "sentiment": 300}
DRAWS = 20_000


def rates(order: list[str]) -> dict[str, float]:
    counts = Counter(order)
    return {t: counts[t] / len(order) for t in counts}


@pytest.mark.parametrize("sampling", ["proportional", "round_robin", "temperature"])
def test_existing_samplings_match_batching(sampling):
    assert task_probabilities(SIZES, sampling, 2.0) == pytest.approx(batching.task_probabilities(SIZES, sampling, 2.0))


def test_probabilities_promised():
    assert task_probabilities(SIZES, "uniform", 1.0) == {"topic": 0.5, "sentiment": 0.5}
    assert task_probabilities(SIZES, "temperature", 2.0)["topic"] == pytest.approx(
        math.sqrt(9000) / (math.sqrt(9000) + math.sqrt(300))
    )
    assert task_probabilities({**SIZES, "empty": 0}, "uniform") == {"topic": 0.5, "sentiment": 0.5}
    with pytest.raises(ImbalanceError, match="uniform"):
        task_probabilities(SIZES, "sqrt", 1.0)


@pytest.mark.parametrize("sampling", ["proportional", "temperature", "uniform"])
def test_independent_draws_hit_the_promised_rate(sampling):
    probs = task_probabilities(SIZES, sampling, 3.0)
    measured = rates(draw_tasks(probs, DRAWS, np.random.default_rng(7)))
    for task, p in probs.items():
        assert abs(measured.get(task, 0.0) - p) < 0.01


def test_uniform_draws_independently_while_round_robin_alternates():
    rng = np.random.default_rng(0)
    uniform = draw_tasks(task_probabilities(SIZES, "uniform"), DRAWS, rng)
    assert any(a == b for a, b in zip(uniform, uniform[1:]))  # the same task twice in a row happens
    counts = split_budget(DRAWS, task_probabilities(SIZES, "round_robin"))
    robin = epoch_task_order(counts, "round_robin", rng)
    assert robin == ["topic", "sentiment"] * (DRAWS // 2)


@pytest.mark.parametrize("sampling", ["proportional", "temperature", "uniform", "round_robin"])
def test_epoch_order_uses_exact_counts_and_is_seeded(sampling):
    counts = split_budget(DRAWS, task_probabilities(SIZES, sampling, 2.0))
    assert sum(counts.values()) == DRAWS
    order = epoch_task_order(counts, sampling, np.random.default_rng([3, 1]))
    assert Counter(order) == Counter(counts)
    for task, p in task_probabilities(SIZES, sampling, 2.0).items():
        assert abs(rates(order)[task] - p) < 0.01
    assert order == epoch_task_order(counts, sampling, np.random.default_rng([3, 1]))


def test_split_budget_largest_remainder():
    assert split_budget(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert split_budget(7, {"a": 0.5, "b": 0.25, "c": 0.25}) == {"a": 3, "b": 2, "c": 2}  # 3.5, 1.75, 1.75


def test_repeat_cap_moves_budget_to_other_task():
    sizes = {"big": 10_000, "small": 100}
    planned = split_budget(2000, task_probabilities(sizes, "uniform"))  # 1000 batches each
    capped = cap_task_batches(sizes, planned, batch_size=10, max_repeats=3)
    assert capped == {"big": 1970, "small": 30}  # small: 3 passes of 10 batches; the rest goes to big
    assert capped["small"] * 10 / sizes["small"] <= 3


def test_repeat_cap_cascades_and_can_shorten_the_run():
    sizes = {"a": 100, "b": 300, "c": 5000}
    capped = cap_task_batches(sizes, {"a": 400, "b": 400, "c": 400}, batch_size=10, max_repeats=4)
    # a capped at 40; its 360 go to b and c -> 580 each; b capped at 120; c gets the rest.
    assert capped == {"a": 40, "b": 120, "c": 1040}
    short = cap_task_batches({"a": 100, "b": 100}, {"a": 100, "b": 100}, batch_size=10, max_repeats=2)
    assert short == {"a": 20, "b": 20}
    with pytest.raises(ImbalanceError):
        cap_task_batches(sizes, {"a": 1}, batch_size=10, max_repeats=0)


def test_repeat_cap_holds_over_a_whole_run_of_epochs():
    sizes, batch_size, epochs, max_repeats = {"topic": 4000, "sentiment": 64}, 8, 5, 2.5
    per_epoch = batching.steps_per_epoch(sizes, batch_size, "round_robin")
    planned = split_budget(per_epoch * epochs, task_probabilities(sizes, "round_robin"))
    run = cap_task_batches(sizes, planned, batch_size, max_repeats)
    assert sum(run.values()) == per_epoch * epochs
    seen = Counter()
    for epoch in range(epochs):
        seen.update(epoch_task_order(epoch_batches(run, epochs, epoch), "uniform", np.random.default_rng([0, epoch])))
    assert seen == Counter(run)
    assert seen["sentiment"] * batch_size / sizes["sentiment"] <= max_repeats


def test_curriculum_follows_the_linear_formula():
    sizes = {"topic": 9000, "sentiment": 300}
    total = 101  # u = step / 100
    assert curriculum_weights(0, total, sizes) == {"topic": 1.0, "sentiment": 0.0}
    assert curriculum_weights(50, total, sizes) == pytest.approx({"topic": 0.75, "sentiment": 0.25})
    assert curriculum_weights(100, total, sizes) == pytest.approx({"topic": 0.5, "sentiment": 0.5})
    assert curriculum_weights(500, total, sizes) == pytest.approx({"topic": 0.5, "sentiment": 0.5})
    held = dict(sizes=sizes, warm_fraction=0.2)
    assert curriculum_weights(20, total, **held) == {"topic": 1.0, "sentiment": 0.0}
    assert curriculum_weights(60, total, **held) == pytest.approx({"topic": 0.75, "sentiment": 0.25})
    to_limited = curriculum_weights(25, total, sizes, start="proportional", target="limited")
    assert to_limited["sentiment"] == pytest.approx(0.75 * 300 / 9300 + 0.25)
    for step in range(total):
        assert sum(
            curriculum_weights(step, total, sizes, target={"sentiment": 3, "topic": 1}).values()
        ) == pytest.approx(1)
    with pytest.raises(ImbalanceError):
        curriculum_weights(0, total, sizes, start="smallest")


def test_curriculum_draws_follow_the_weights():
    sizes = {"topic": 9000, "sentiment": 300}
    early = curriculum_task_order(0, 50, 100_000, sizes, np.random.default_rng(1))
    assert set(early) == {"topic"}
    late = curriculum_task_order(100_000 - DRAWS, DRAWS, 100_000, sizes, np.random.default_rng(1))
    expected = np.mean([curriculum_weights(s, 100_000, sizes)["sentiment"] for s in range(100_000 - DRAWS, 100_000)])
    assert abs(rates(late)["sentiment"] - expected) < 0.01


def test_inverse_size_weights_mean_one():
    w = inverse_size_weights({"a": 100, "b": 400})
    assert w == pytest.approx({"a": 1.6, "b": 0.4})
    assert np.mean(list(w.values())) == pytest.approx(1.0)


def test_class_weights_by_hand():
    assert class_weights([90, 10], "inverse").tolist() == pytest.approx([0.2, 1.8])
    beta = 0.99
    raw = [(1 - beta) / (1 - beta**90), (1 - beta) / (1 - beta**10)]
    expected = [2 * r / sum(raw) for r in raw]
    assert class_weights([90, 10], "effective", beta=beta).tolist() == pytest.approx(expected, rel=1e-6)
    assert class_weights([5, 0, 5], "inverse").tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ImbalanceError):
        class_weights([3, 4], "effective", beta=1.0)


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.5], [0.1, 1.2], [1.0, -1.0], [0.3, 0.3]])
    labels = torch.tensor([0, 1, 1, 0])
    w = class_weights([90, 10], "inverse")
    log_p = [math.log(math.exp(r[y]) / sum(math.exp(v) for v in r)) for r, y in zip(logits.tolist(), labels.tolist())]
    wy = [w[y].item() for y in labels.tolist()]
    by_hand = -sum(wi * lp for wi, lp in zip(wy, log_p)) / sum(wy)
    assert F.cross_entropy(logits, labels, weight=w).item() == pytest.approx(by_hand, rel=1e-6)


def test_uncertainty_weighting_learns_and_round_trips():
    torch.manual_seed(0)
    uw = UncertaintyWeighting(["topic", "sentiment"])
    losses = {"topic": torch.tensor(2.0), "sentiment": torch.tensor(0.1)}
    total = uw(losses)
    assert total.item() == pytest.approx(2.1)  # exp(0) * L + 0 / 2 at init
    total.backward()
    grads = {t: p.grad.item() for t, p in uw.log_vars.items()}
    assert grads == pytest.approx({"topic": -2.0 + 0.5, "sentiment": -0.1 + 0.5})  # d/ds = -exp(-s) L + 1/2
    opt = torch.optim.Adam(uw.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        uw(losses).backward()
        opt.step()
    s = uw.log_variances()
    assert s["topic"] == pytest.approx(math.log(4.0), abs=0.05)  # optimum log(2L)
    assert s["sentiment"] == pytest.approx(math.log(0.2), abs=0.05)
    assert uw.weights()["sentiment"] > uw.weights()["topic"]
    uw(losses).backward()
    assert uw(losses).item() == pytest.approx(sum(math.exp(-s[t]) * losses[t].item() + s[t] / 2 for t in s), rel=1e-5)
    restored = UncertaintyWeighting(["topic", "sentiment"])
    restored.load_state_dict(uw.state_dict())
    assert sorted(uw.state_dict()) == ["log_vars.sentiment", "log_vars.topic"]
    assert restored.log_variances() == s
    assert uw({"sentiment": torch.tensor(1.0)}).item() == pytest.approx(math.exp(-s["sentiment"]) + s["sentiment"] / 2)


def test_class_balanced_sampler_draws_classes_equally():
    labels = np.array([0] * 950 + [1] * 40 + [2] * 10)
    idx = class_balanced_indices(labels, DRAWS, np.random.default_rng(0))
    assert idx.shape == (DRAWS,)
    for cls in range(3):
        assert abs(np.mean(labels[idx] == cls) - 1 / 3) < 0.01
    rare = np.bincount(idx[labels[idx] == 2], minlength=1000)[990:]
    assert rare.max() - rare.min() <= 1  # repeated in full passes: each rare example about equally often
    assert np.array_equal(idx, class_balanced_indices(labels, DRAWS, np.random.default_rng(0)))


def test_balanced_accuracy_wrapper():
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == pytest.approx(0.5)


def test_subsample_class_keeps_fraction_of_that_class_only():
    names = ["negative", "positive"]
    labels = [0] * 200 + [1] * 300
    labels = [labels[i] for i in np.random.default_rng(5).permutation(500)]
    kept = subsample_class(labels, names, {"negative": 0.1}, seed=3)
    kept_labels = np.asarray(labels)[kept]
    assert (kept_labels == 0).sum() == 20 and (kept_labels == 1).sum() == 300
    assert np.all(np.diff(kept) > 0)
    assert np.array_equal(kept, subsample_class(labels, names, {"negative": 0.1}, seed=3))
    assert not np.array_equal(kept, subsample_class(labels, names, {"negative": 0.1}, seed=4))
    assert len(subsample_class(labels, names, {"negative": 0.001}, seed=3)) == 301  # a class never vanishes


def test_subsample_class_errors_name_the_problem():
    with pytest.raises(ClassRatioError, match=r"'neutral'.*\['negative', 'positive'\]") as err:
        subsample_class([0, 1], ["negative", "positive"], {"neutral": 0.5}, seed=0)
    assert isinstance(err.value, ValueError)
    for bad in (0.0, 0.0005, 1.5, -0.1, float("nan")):  # 0.0005: under MIN_CLASS_RATIO, as the parser says
        with pytest.raises(ClassRatioError, match="negative"):
            subsample_class([0, 1], ["negative", "positive"], {"negative": bad}, seed=0)


def test_parse_class_ratio():
    assert parse_class_ratio("negative=0.1,positive=1") == {"negative": 0.1, "positive": 1.0}
    assert parse_class_ratio(" negative = 0.25 , ") == {"negative": 0.25}
    assert parse_class_ratio("") == {}
    for bad in ("negative", "negative=abc", "=0.1", "negative=0", "negative=0.1,negative=0.2"):
        with pytest.raises(ClassRatioError):
            parse_class_ratio(bad)


# -- the run's schedule (core.batching.Schedule): rates over a whole run, caps, determinism -----------------
def _lengths(sizes: dict[str, int]) -> dict[str, np.ndarray]:
    return {t: np.full(n, 10, dtype=np.int64) for t, n in sizes.items()}


def _run(schedule: batching.Schedule) -> list[tuple[str, list[int]]]:
    return [schedule.batch(step) for step in range(schedule.total_steps)]


def test_uniform_schedule_draws_tasks_equally_over_a_run():
    schedule = batching.Schedule(_lengths({"topic": 4000, "sentiment": 400}), 8, "uniform", seed=1, epochs=8)
    tasks = [t for t, _ in _run(schedule)]
    assert len(tasks) == 8 * (500 + 50)
    assert abs(rates(tasks)["sentiment"] - 0.5) < 0.02
    assert schedule.task_weights(0) == {"topic": 0.5, "sentiment": 0.5}


def test_schedule_batches_are_a_function_of_seed_and_step():
    """Resume: a fresh schedule gives any step's batch again, whatever was asked before."""
    settings = dict(
        lengths=_lengths({"topic": 300, "sentiment": 40}), batch_size=8, seed=3, epochs=3, max_task_repeats=2
    )
    for sampling in ("proportional", "round_robin", "temperature", "uniform", "curriculum"):
        full = _run(batching.Schedule(sampling=sampling, **settings))
        resumed = batching.Schedule(sampling=sampling, **settings)
        assert [resumed.batch(s) for s in range(len(full) - 1, len(full) // 3, -1)] == full[len(full) // 3 + 1 :][::-1]
        assert full != _run(batching.Schedule(sampling=sampling, **{**settings, "seed": 4})), sampling


@pytest.mark.parametrize("sampling", ["uniform", "round_robin", "temperature", "proportional", "curriculum"])
def test_schedule_repeat_cap_holds(sampling):
    sizes, batch_size, max_repeats = {"topic": 2000, "sentiment": 64}, 8, 2.5
    epochs = 6 if sampling in ("proportional", "round_robin") else 2  # enough passes over sentiment to hit the cap
    settings = dict(lengths=_lengths(sizes), batch_size=batch_size, sampling=sampling, seed=0, temperature=5.0)
    schedule = batching.Schedule(epochs=epochs, max_task_repeats=max_repeats, **settings)
    batches = _run(schedule)
    seen = Counter(t for t, _ in batches)
    assert seen["sentiment"] == math.floor(max_repeats * 8)  # 8 batches per pass over sentiment: capped at 20
    assert seen == Counter(schedule.task_batches)
    examples = Counter(i for t, idx in batches if t == "sentiment" for i in idx)
    assert set(examples) == set(range(64)) and max(examples.values()) == math.ceil(max_repeats)  # whole passes
    uncapped = Counter(t for t, _ in _run(batching.Schedule(epochs=epochs, **settings)))
    assert uncapped["sentiment"] > seen["sentiment"]
    if sampling == "proportional":  # six plain epochs pass over topic six times too: both capped, a shorter run
        assert schedule.total_steps == 625 + 20 < sum(uncapped.values())
    else:  # the budget moved to topic: the run kept its length
        assert schedule.total_steps == sum(uncapped.values())


def test_schedule_follows_the_curriculum_formula():
    sizes = {"topic": 800, "sentiment": 80}
    schedule = batching.Schedule(_lengths(sizes), 8, "curriculum", seed=0, epochs=30, curriculum_target="limited")
    total = schedule.total_steps
    for step in (0, total // 3, total - 1):
        assert schedule.task_weights(step) == curriculum_weights(step, total, sizes, target="limited")
    tasks = [t for t, _ in _run(schedule)]
    assert set(tasks[:20]) == {"topic"} and set(tasks[-20:]) == {"sentiment"}
    half = tasks[: total // 2]
    expected = np.mean([curriculum_weights(s, total, sizes, target="limited")["sentiment"] for s in range(total // 2)])
    assert abs(rates(half)["sentiment"] - expected) < 0.02


def test_class_balanced_schedule_draws_classes_equally():
    labels = np.array([0] * 380 + [1] * 20)
    schedule = batching.Schedule(
        _lengths({"sentiment": 400}), 8, "proportional", seed=2, epochs=20, balanced={"sentiment": labels}
    )
    drawn = np.concatenate([idx for _, idx in _run(schedule)])
    assert len(drawn) == 20 * 400  # a balanced pass is as long as a plain one
    assert abs(np.mean(labels[drawn] == 1) - 0.5) < 0.01
    plain = batching.Schedule(_lengths({"sentiment": 400}), 8, "proportional", seed=2, epochs=1)
    assert sorted(i for _, idx in _run(plain) for i in idx) == list(range(400))  # unbalanced: each example once
