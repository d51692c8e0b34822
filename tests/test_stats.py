"""core.stats against numbers worked out by hand, so a wrong formula fails loudly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.stats import (
    Comparison,
    accuracy_standard_error,
    bootstrap_accuracy_difference,
    bootstrap_mean,
    holm,
    mean_interval,
    paired_difference,
    ratio_interval,
    seeds_needed,
    verdict,
)

T_975_DF2 = 4.302652729749464  # Student-t 97.5% quantile, 2 degrees of freedom (printed tables: 4.303)


def test_mean_interval_matches_hand_computed_t_interval():
    iv = mean_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, half-width = 4.3027 * 1 / sqrt(3) = 2.4841
    assert iv.estimate == pytest.approx(2.0)
    assert iv.half_width == pytest.approx(2.48414, abs=1e-5)
    assert (iv.low, iv.high) == pytest.approx((2 - 2.48414, 2 + 2.48414), abs=1e-5)
    assert iv.n == 3 and iv.method == "t over 3 seeds"
    assert iv.contains(0.0) and not iv.contains(4.6)


def test_mean_interval_narrows_with_lower_confidence():
    assert mean_interval([1.0, 2.0, 3.0], confidence=0.90).half_width < mean_interval([1.0, 2.0, 3.0]).half_width


def test_one_seed_gives_no_interval():
    iv = mean_interval([0.8])
    assert iv.estimate == 0.8 and iv.low is None and iv.high is None and iv.half_width is None
    assert iv.method == "1 seed: no interval" and not iv.contains(0.8)


def test_mean_interval_rejects_nan_and_empty():
    with pytest.raises(ValueError):
        mean_interval([])
    with pytest.raises(ValueError):
        mean_interval([0.8, float("nan")])


def test_paired_difference_pairs_by_seed_and_drops_unpaired_seeds():
    treatment = {0: 0.80, 1: 0.82, 2: 0.85, 3: 0.99}  # seed 3 has no reference: ignored
    reference = {0: 0.78, 1: 0.81, 2: 0.82, 9: 0.10}  # seed 9 has no treatment: ignored
    c = paired_difference(treatment, reference)
    # differences 0.02, 0.01, 0.03: mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt 3) = sqrt 12
    assert c.n == 3 and c.scale == "difference"
    assert c.estimate == pytest.approx(0.02)
    assert c.half_width == pytest.approx(T_975_DF2 * 0.01 / math.sqrt(3), rel=1e-6)
    # two-sided p for t with 2 df has a closed form: p = 1 - |t| / sqrt(t^2 + 2) = 1 - sqrt(12 / 14)
    assert c.p_value == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-6)
    assert sorted(c.differences) == pytest.approx([0.01, 0.02, 0.03])
    assert c.method == "paired t over 3 seeds"


def test_paired_difference_with_one_common_seed_has_no_interval_or_p():
    c = paired_difference({0: 0.8, 1: 0.7}, {1: 0.6, 2: 0.5})
    assert c.estimate == pytest.approx(0.1) and c.low is None and c.p_value is None and c.n == 1


def test_paired_difference_with_no_common_seed_raises():
    with pytest.raises(ValueError):
        paired_difference({0: 0.8}, {1: 0.7})


def test_identical_differences_give_zero_width_interval():
    same = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.5, 1: 0.6, 2: 0.7})
    assert (same.low, same.high, same.p_value) == (0.0, 0.0, 1.0)
    shifted = paired_difference({0: 0.6, 1: 0.7, 2: 0.8}, {0: 0.5, 1: 0.6, 2: 0.7})
    assert shifted.low == pytest.approx(0.1) and shifted.high == pytest.approx(0.1) and shifted.p_value == 0.0


def test_holm_textbook_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.06 for the last
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_skips_none_and_caps_at_one():
    out = holm([None, 0.01, 0.04, None])
    assert out[0] is None and out[3] is None
    assert out[1:3] == pytest.approx([0.02, 0.04])  # m = 2, not 4
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def _constructed_pair() -> tuple[np.ndarray, np.ndarray]:
    """1000 test examples: both right on 650, only a on 150, only b on 50, both wrong on 150.
    accuracy a = 0.80, b = 0.70, true difference 0.10."""
    a = np.array([1] * 650 + [1] * 150 + [0] * 50 + [0] * 150)
    b = np.array([1] * 650 + [0] * 150 + [1] * 50 + [0] * 150)
    return a, b


def test_bootstrap_difference_is_deterministic_and_covers_truth():
    a, b = _constructed_pair()
    c1 = bootstrap_accuracy_difference(a, b, seed=3)
    c2 = bootstrap_accuracy_difference(a, b, seed=3)
    assert (c1.low, c1.high) == (c2.low, c2.high)
    assert c1.estimate == pytest.approx(0.10)
    assert c1.contains(0.10) and not c1.contains(0.0)
    # standard error of a paired difference: sqrt((0.15 + 0.05 - 0.1^2) / 1000) = 0.01378; 95% ~ +/- 0.027
    assert c1.half_width == pytest.approx(1.96 * math.sqrt(0.19 / 1000), rel=0.15)
    assert c1.method == "bootstrap over 1000 test examples (1 seed)" and c1.n == 1000
    assert c1.p_value < 1e-6  # McNemar: 150 vs 50 discordant examples
    other = bootstrap_accuracy_difference(a, b, seed=4)
    assert (other.low, other.high) != (c1.low, c1.high) and other.contains(0.10)


def test_bootstrap_difference_of_identical_runs_is_zero():
    a, _ = _constructed_pair()
    c = bootstrap_accuracy_difference(a, a)
    assert (c.estimate, c.low, c.high, c.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_bootstrap_rejects_mismatched_or_non_binary_input():
    with pytest.raises(ValueError):
        bootstrap_accuracy_difference([1, 0, 1], [1, 0])
    with pytest.raises(ValueError):
        bootstrap_accuracy_difference([1, 0, 2], [1, 0, 1])


def test_bootstrap_mean_close_to_binomial_interval():
    a, _ = _constructed_pair()
    iv = bootstrap_mean(a)
    assert iv.estimate == pytest.approx(0.8)
    assert iv.half_width == pytest.approx(1.96 * accuracy_standard_error(0.8, 1000), rel=0.15)
    assert iv.method == "bootstrap over 1000 test examples"


def test_accuracy_standard_error():
    assert accuracy_standard_error(0.9, 100) == pytest.approx(0.03)
    assert accuracy_standard_error(1.0, 50) == 0.0
    with pytest.raises(ValueError):
        accuracy_standard_error(0.5, 0)


def test_ratio_interval_is_t_on_log_ratios():
    reference = {0: 10.0, 1: 20.0, 2: 40.0}
    treatment = {0: 36.0, 1: 80.0, 2: 176.0}  # ratios 3.6, 4.0, 4.4
    c = ratio_interval(treatment, reference)
    logs = np.log([3.6, 4.0, 4.4])
    half = T_975_DF2 * logs.std(ddof=1) / math.sqrt(3)
    assert c.scale == "ratio"
    assert c.estimate == pytest.approx(math.exp(logs.mean()))
    assert (c.low, c.high) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    assert c.low < 3.6 < 4.4 < c.high
    with pytest.raises(ValueError):
        ratio_interval({0: 1.0}, {0: 0.0})


def _diffs(mean: float, spread: float) -> dict[int, float]:
    return {0: mean - spread, 1: mean, 2: mean + spread}


def _zeros() -> dict[int, float]:
    return {0: 0.0, 1: 0.0, 2: 0.0}


def test_verdict_flips_from_better_to_unsettled_as_spread_grows():
    tight = verdict(paired_difference(_diffs(0.03, 0.002), _zeros()), threshold=0.01)
    assert tight.status == "better"  # interval 0.03 +/- 0.005 is entirely above +0.01
    wide = verdict(paired_difference(_diffs(0.03, 0.03), _zeros()), threshold=0.01)
    assert wide.status == "unsettled"  # 0.03 +/- 0.075 reaches below zero
    assert "within noise (unsettled)" in wide.sentence
    assert wide.seeds_needed is not None and wide.seeds_needed > 3
    assert f"About {wide.seeds_needed} seeds would settle it." in wide.sentence


def test_verdict_worse_equivalent_and_real_but_small():
    worse = verdict(paired_difference(_diffs(-0.03, 0.002), _zeros()))
    assert worse.status == "worse" and "loses 3.0 points [2.5, 3.5]" in worse.sentence
    same = verdict(paired_difference(_diffs(0.001, 0.001), _zeros()))
    assert same.status == "equivalent" and same.seeds_needed == 3
    small = verdict(paired_difference(_diffs(0.012, 0.002), _zeros()))  # [0.007, 0.017]: above 0, into the band
    assert small.status == "unsettled" and "real difference" in small.sentence


def test_verdict_sentence_reads_in_points():
    c = Comparison(estimate=-0.008, low=-0.020, high=0.004, n=3, method="paired t over 3 seeds", p_value=0.2)
    v = verdict(c, metric="sentiment accuracy")
    assert v.status == "unsettled"
    assert v.sentence == (
        "freeze_lower k=4 loses 0.8 points [-0.4, 2.0] of sentiment accuracy against full_finetune: "
        "within noise (unsettled)."
    )


def test_verdict_lower_is_better_flips_direction():
    # eval loss rises by 0.05 [0.03, 0.07]: higher loss is worse
    c = Comparison(estimate=0.05, low=0.03, high=0.07, n=4, method="paired t over 4 seeds")
    v = verdict(c, higher_is_better=False, metric="eval loss", unit="")
    assert v.status == "worse"
    assert v.sentence.startswith("freeze_lower k=4 raises eval loss by 0.05 [0.03, 0.07] against full_finetune")


def test_verdict_on_ratio_uses_relative_band():
    fast = ratio_interval({0: 36.0, 1: 80.0, 2: 176.0}, {0: 10.0, 1: 20.0, 2: 40.0})
    v = verdict(fast, threshold=0.05, metric="throughput")
    assert v.status == "better" and "has 3.99x [3.11, 5.12] the throughput" in v.sentence
    assert verdict(fast, threshold=0.05, higher_is_better=False).status == "worse"


def test_one_seed_verdict_is_unsettled():
    v = verdict(paired_difference({0: 0.85}, {0: 0.80}))
    assert v.status == "unsettled" and v.seeds_needed is None
    assert v.sentence == (
        "freeze_lower k=4 gains 5.0 points of accuracy against full_finetune: 1 seed, no interval (unsettled)."
    )


def test_seeds_needed_hand_computed_and_decreasing_with_spread():
    # mean 0.02, threshold 0.01: settles once t_{n-1} * sd / sqrt(n) < 0.01
    assert seeds_needed([0.015, 0.02, 0.025], threshold=0.01) == 4  # sd 0.005: 3.182 * 0.005 / 2 = 0.008
    assert seeds_needed([0.01, 0.02, 0.03], threshold=0.01) == 7  # sd 0.01: needs t_{n-1} < sqrt(n)
    needed = [seeds_needed(list(_diffs(0.02, s).values()), threshold=0.01) for s in (0.02, 0.01, 0.005, 0.001)]
    assert needed == sorted(needed, reverse=True) and needed[0] > needed[1] > needed[2] >= needed[3] == 3


def test_seeds_needed_unreachable_or_undefined():
    assert seeds_needed([0.0, 0.5, 1.0], threshold=0.5) is None  # mean sits exactly on the threshold
    assert seeds_needed([0.02], threshold=0.01) is None  # one difference: no spread to extrapolate from
    assert seeds_needed([0.02, 0.02], threshold=0.01) == 2  # no spread: already settled
    assert seeds_needed([0.01, 0.02, 0.03], threshold=0.01, max_seeds=6) is None


# -- the test-set floor: no accuracy interval narrower than its test set resolves ------------------------
Z_975 = 1.959963984540054


def test_test_set_half_width_is_the_binomial_interval_and_never_zero():
    from core.stats import test_set_half_width

    assert test_set_half_width(0.5, 500) == pytest.approx(Z_975 * 0.5 / math.sqrt(500))  # 4.4 points
    assert test_set_half_width(0.8, 60) == pytest.approx(Z_975 * math.sqrt(0.16 / 60))
    # 60 of 60 right does not prove perfection: p is held half a sentence inside, (59.5/60)
    assert test_set_half_width(1.0, 60) == pytest.approx(Z_975 * math.sqrt(59.5 / 60 * 0.5 / 60 / 60))
    assert test_set_half_width(1.0, 60) > 0 and test_set_half_width(0.0, 60) == pytest.approx(
        test_set_half_width(1.0, 60)
    )
    with pytest.raises(ValueError):
        test_set_half_width(0.5, 0)


def test_difference_half_width_combines_the_two_test_sets():
    from core.stats import difference_half_width, test_set_half_width

    assert difference_half_width((0.6, 100), (0.7, 400)) == pytest.approx(
        math.hypot(test_set_half_width(0.6, 100), test_set_half_width(0.7, 400))
    )
    log = difference_half_width((0.6, 100), (0.7, 400), scale="ratio")
    assert log == pytest.approx(math.hypot(test_set_half_width(0.6, 100) / 0.6, test_set_half_width(0.7, 400) / 0.7))


def test_with_test_floor_widens_a_zero_width_seed_interval():
    from core.stats import with_test_floor

    same = paired_difference({0: 0.633, 1: 0.433}, {0: 0.633, 1: 0.433})
    assert (same.low, same.high) == (0.0, 0.0)
    floored = with_test_floor(same, (0.533, 60), (0.533, 60))
    half = Z_975 * math.sqrt(2 * 0.533 * 0.467 / 60)  # 17.9 points
    assert (floored.low, floored.high) == pytest.approx((-half, half))
    assert floored.widened and floored.n_test == 60 and floored.test_floor == pytest.approx(half)
    assert floored.p_value == 1.0 and "widened to what 60 test examples resolve" in floored.method
    v = verdict(floored, threshold=0.01)
    assert v.status == "unsettled" and v.seeds_needed is None
    assert "within what the test sets resolve (±17.9 points on 60 test sentences)" in v.sentence
    assert "only a larger test set can" in v.sentence
    assert verdict(same, threshold=0.01).status == "equivalent"  # what the seeds alone would have claimed


def test_with_test_floor_keeps_a_wider_seed_interval_and_raises_p():
    from core.stats import with_test_floor

    wide = paired_difference(_diffs(0.03, 0.03), _zeros())
    kept = with_test_floor(wide, (0.83, 100_000), (0.80, 100_000))
    assert (kept.low, kept.high, kept.p_value) == (wide.low, wide.high, wide.p_value) and not kept.widened
    # a shift of 10 points on every seed: p = 0 over seeds, but on 50 sentences z = 0.10 / se is about 1.3
    shifted = paired_difference({0: 0.6, 1: 0.7, 2: 0.8}, {0: 0.5, 1: 0.6, 2: 0.7})
    floored = with_test_floor(shifted, (0.7, 50), (0.6, 50))
    se = math.sqrt(0.21 / 50 + 0.24 / 50)
    assert floored.p_value == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(0.1 / se / math.sqrt(2)))))
    assert floored.low < 0 < floored.high


def test_with_test_floor_clamps_differences_and_floors_ratios_on_the_log_scale():
    from core.stats import with_test_floor

    big = with_test_floor(paired_difference({0: 0.99, 1: 0.98}, {0: 0.01, 1: 0.02}), (0.985, 5), (0.015, 5))
    assert big.high <= 1.0 and big.low >= -1.0
    same = ratio_interval({0: 0.6, 1: 0.4}, {0: 0.6, 1: 0.4})
    floored = with_test_floor(same, (0.5, 100), (0.5, 100))
    log_half = Z_975 * math.sqrt(2 * 0.25 / 100) / 0.5
    assert (floored.low, floored.high) == pytest.approx((math.exp(-log_half), math.exp(log_half)))


def test_accuracy_mean_interval_is_floored_and_clamped():
    from core.stats import accuracy_mean_interval, clamp_interval

    agree = accuracy_mean_interval([0.525, 0.525], 40)
    half = Z_975 * math.sqrt(0.525 * 0.475 / 40)  # 15.5 points
    assert (agree.low, agree.high) == pytest.approx((0.525 - half, 0.525 + half))
    assert "widened" in agree.method
    spread = accuracy_mean_interval([0.633, 0.433], 60)  # t with 1 df: 53.3 ± 127 points
    assert (spread.low, spread.high) == (0.0, 1.0) and spread.method == "t over 2 seeds"
    t = mean_interval([0.90, 0.92, 0.91])
    assert accuracy_mean_interval([0.90, 0.92, 0.91], 100_000) == t  # the seed spread is wider: unchanged
    assert accuracy_mean_interval([0.8], 60).low is None  # one seed: still no interval over seeds
    assert clamp_interval(mean_interval([0.5, 0.7]), 0.0, 1.0).low == 0.0


def test_seeds_needed_never_counts_below_the_floor():
    spread = [0.002, 0.004, 0.003]  # mean 0.3 points, would be "equivalent" within 1 point at once
    assert seeds_needed(spread, 0.01) == 3
    assert seeds_needed(spread, 0.01, floor=0.02) is None  # a 2-point floor never fits in a 1-point band
    far = [0.05, 0.09, 0.01]  # mean 5 points, wide: seeds settle "better" only when the floor allows it
    assert seeds_needed(far, 0.01, floor=0.03) == seeds_needed(far, 0.01)
    assert seeds_needed(far, 0.01, floor=0.045) is None
