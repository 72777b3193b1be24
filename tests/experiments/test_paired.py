import numpy as np
import pytest

from experiments.paired import MIN_PAIRS, compare_distances, compare_pass_rates, compare_times


def test_a_clear_speed_difference_is_reported_with_its_interval():
    rng = np.random.default_rng(1)
    base = rng.uniform(1.0, 1.4, 24)
    pairs = [(a, a * 0.6 + rng.normal(0, 0.01)) for a in base]  # the arm takes 60% of the time
    result = compare_times(pairs, "candidate", "current")
    assert result.significant and result.p_value < 0.001
    assert result.estimate == pytest.approx(-0.40, abs=0.02)
    assert result.low < result.estimate < result.high < 0
    assert result.sentence.startswith("run time: candidate is 40% faster than current (95% CI ")
    assert "n=24" in result.sentence


def test_no_difference_is_not_called_a_difference():
    rng = np.random.default_rng(2)
    pairs = [(a, a + rng.normal(0, 0.05)) for a in rng.uniform(1.0, 1.4, 30)]
    result = compare_times(pairs, "candidate", "current")
    assert not result.significant and result.p_value > 0.05 and result.low < 0 < result.high
    assert "not significantly different" in result.sentence


def test_too_few_pairs_says_so_and_claims_nothing():
    result = compare_times([(1.0, 0.1)] * (MIN_PAIRS - 1), "candidate", "current")
    assert not result.enough and not result.significant and result.p_value is None
    assert result.sentence == f"run time: too few pairs to tell (n={MIN_PAIRS - 1}; need {MIN_PAIRS})."
    assert not compare_pass_rates([(True, False)] * 3, "b", "a").enough


def test_mcnemar_on_paired_pass_fail():
    # 20 pairs: both pass 6, both fail 2, baseline-only 0, arm-only 12 -> exact p = 2 * 0.5**12.
    pairs = [(True, True)] * 6 + [(False, False)] * 2 + [(False, True)] * 12
    result = compare_pass_rates(pairs, "candidate", "current")
    assert result.p_value == pytest.approx(2 * 0.5**12)
    assert result.significant and result.estimate == pytest.approx(0.6)
    assert "higher for candidate, candidate 90% vs current 30%" in result.sentence
    same = compare_pass_rates([(True, True)] * 10 + [(True, False), (False, True)], "candidate", "current")
    assert same.p_value == 1.0 and not same.significant and "not significantly different" in same.sentence


def test_identical_arms_give_a_zero_width_interval():
    pairs = [(0.2, 0.2)] * 10
    result = compare_distances(pairs, "b", "a")
    assert (result.estimate, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
