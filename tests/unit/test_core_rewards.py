"""Gain / reward / option choice / group advantages (RLOO, GRPO) with edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ra3_megatron.core.rewards import choose_option, gain, group_advantages, option_rewards, thought_reward

pytestmark = pytest.mark.unit


def test_gain_sum_and_mean_normalization():
    assert gain(-10.0, -12.0, 4, norm="sum") == pytest.approx(2.0)
    assert gain(-10.0, -12.0, 4, norm="mean") == pytest.approx(0.5)
    assert gain(-10.0, -12.0, None, norm="sum") == pytest.approx(2.0)
    assert isinstance(gain(-1.0, -2.0, 1), float)
    g = gain([-9.0, -13.0, -11.0], -11.0, 8)  # G thoughts against one <act> score
    np.testing.assert_allclose(g, [0.25, -0.25, 0.0])
    np.testing.assert_allclose(gain([[-1.0], [-2.0]], [[-3.0], [-3.0]], [[2], [4]]), [[1.0], [0.25]])


@pytest.mark.parametrize("n_tokens", [0, -1, None, [1, 0]])
def test_gain_mean_needs_positive_token_counts(n_tokens):
    with pytest.raises(ValueError):
        gain([-1.0, -2.0], -3.0, n_tokens, norm="mean")


def test_gain_rejects_unknown_norm():
    with pytest.raises(ValueError, match="norm"):
        gain(-1.0, -2.0, 3, norm="max")


def test_thought_reward_and_failed_thoughts():
    assert thought_reward(0.3, 0.05) == pytest.approx(0.25)
    assert thought_reward(None, 0.05) == pytest.approx(-0.05)
    np.testing.assert_allclose(thought_reward(np.array([0.1, np.nan, -0.2]), 0.1), [0.0, -0.1, -0.3])
    for bad in (-0.01, math.inf, math.nan):
        with pytest.raises(ValueError, match="penalty"):
            thought_reward(0.1, bad)


def test_option_rewards_put_act_first():
    np.testing.assert_allclose(option_rewards([0.2, None, 0.01], penalty=0.05), [0.0, 0.15, -0.05, -0.04])
    np.testing.assert_allclose(option_rewards([], penalty=0.05), [0.0])


def test_choose_option_act_wins_ties():
    assert choose_option([0.0, -0.1, -0.2]) == 0
    assert choose_option([0.0, 0.0, 0.0]) == 0  # a thought must beat <act> strictly
    assert choose_option([0.0, 0.3, 0.3, 0.1]) == 1  # the first of tied thoughts
    assert choose_option(np.array([0.0, 0.1, 0.4])) == 2
    assert choose_option([0.0]) == 0
    with pytest.raises(ValueError):
        choose_option([])
    with pytest.raises(ValueError, match="NaN"):
        choose_option([0.0, float("nan")])


def test_rloo_is_reward_minus_mean_of_the_others():
    r = np.array([0.0, 0.3, -0.1, 0.6])
    expected = [r[i] - np.delete(r, i).mean() for i in range(len(r))]
    np.testing.assert_allclose(group_advantages(r, "rloo"), expected)
    batch = np.array([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(
        group_advantages(batch, "rloo"), [[1 - 4, 2 - 3.5, 6 - 1.5], [0 - 1.5, 0 - 1.5, 3 - 0]]
    )
    assert abs(group_advantages(r, "rloo").sum()) < 1e-12


def test_grpo_uses_population_std():
    r = np.array([1.0, 2.0, 3.0, 6.0])
    np.testing.assert_allclose(group_advantages(r, "grpo", eps=0.0), (r - 3.0) / math.sqrt(3.5))
    a = group_advantages(r, "grpo")
    assert a.mean() == pytest.approx(0.0, abs=1e-12) and a.std() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_group_edge_cases(method):
    np.testing.assert_array_equal(group_advantages([0.7], method), [0.0])
    np.testing.assert_array_equal(group_advantages([0.2, 0.2, 0.2], method), [0.0, 0.0, 0.0])
    assert group_advantages(np.zeros((5, 3)), method).shape == (5, 3)
    with pytest.raises(ValueError):
        group_advantages([], method)
    with pytest.raises(ValueError):
        group_advantages(1.0, method)
    with pytest.raises(ValueError, match="finite"):
        group_advantages([0.0, float("nan")], method)


def test_unknown_advantage_method():
    with pytest.raises(ValueError, match="method"):
        group_advantages([0.0, 1.0], "ppo")
