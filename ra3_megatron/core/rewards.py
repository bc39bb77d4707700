"""E-step gain / reward / advantage math (pure numpy; shapes in the docstrings).

For one position t with G sampled thoughts, under the fixed scorer pi:
    l(z)      = log pi(a_t .. a_{t+tau-1} | prefix, z)     summed over the horizon's tokens
    Gain(z)   = l(z) - l(act)                              ("sum"), or divided by the horizon's
                                                           token count ("mean", the default)
    r(z)      = Gain(z) - c for a thought, r(act) = 0; a failed thought (empty, over-long) has
                no gain and gets r = -c
The option with the highest reward is kept (`<act>`, index 0, wins ties). The group
{act, z_1..z_G} then gets group-relative advantages for the RL step on q.

    >>> choose_option(option_rewards([0.10, 0.02], penalty=0.05))
    1
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = ["gain", "thought_reward", "option_rewards", "choose_option", "group_advantages"]

ArrayLike = float | Sequence[float] | np.ndarray


def _out(x: np.ndarray) -> float | np.ndarray:
    return float(x) if x.ndim == 0 else x


def gain(
    logp_with: ArrayLike,
    logp_without: ArrayLike,
    n_tokens: ArrayLike | None,
    norm: Literal["mean", "sum"] = "mean",
) -> float | np.ndarray:
    """Gain of thoughts over `<act>`; inputs broadcast (e.g. logp_with (G,), logp_without ()).

    logp_*: summed log-likelihood of the same horizon tokens with / without the thought;
    n_tokens: the horizon's token count (> 0), used by norm="mean", ignored by "sum".
    Returns a float for scalar inputs, else an array of the broadcast shape.
    """
    diff = np.asarray(logp_with, dtype=np.float64) - np.asarray(logp_without, dtype=np.float64)
    if norm == "sum":
        return _out(diff)
    if norm != "mean":
        raise ValueError(f"norm must be 'mean' or 'sum', got {norm!r}")
    if n_tokens is None:
        raise ValueError("norm='mean' needs n_tokens")
    n = np.asarray(n_tokens, dtype=np.float64)
    if np.any(~(n > 0)):
        raise ValueError(f"n_tokens must be positive for norm='mean', got {n_tokens!r}")
    return _out(diff / n)


def _check_penalty(penalty: float) -> float:
    if not math.isfinite(penalty) or penalty < 0:
        raise ValueError(f"penalty c must be a finite number >= 0, got {penalty!r}")
    return float(penalty)


def thought_reward(gain: float | None | ArrayLike, penalty: float) -> float | np.ndarray:
    """r(z) = Gain(z) - c; a failed thought (gain None, or NaN in an array) gets -c."""
    c = _check_penalty(penalty)
    if gain is None:
        return -c
    g = np.asarray(gain, dtype=np.float64)
    return _out(np.where(np.isnan(g), -c, g - c))


def option_rewards(gains: Sequence[float | None], penalty: float) -> np.ndarray:
    """Rewards of one position's group, shape (G + 1,): index 0 is `<act>` (0), then the G thoughts."""
    c = _check_penalty(penalty)
    thoughts = [-c if g is None or math.isnan(g) else float(g) - c for g in gains]
    return np.asarray([0.0, *thoughts], dtype=np.float64)


def choose_option(rewards: Sequence[float] | np.ndarray) -> int:
    """Index of the best option; ties go to the lowest index, so `<act>` (index 0) wins ties."""
    values = [float(r) for r in np.asarray(rewards, dtype=np.float64).reshape(-1)]
    if not values:
        raise ValueError("choose_option needs at least one reward (index 0 is <act>)")
    if any(math.isnan(v) for v in values):
        raise ValueError(f"rewards contain NaN: {values}")
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def group_advantages(
    rewards: ArrayLike, method: Literal["rloo", "grpo"] = "rloo", eps: float = 1e-6
) -> np.ndarray:
    """Group-relative advantages over the last axis: rewards (..., G) -> advantages (..., G).

    rloo: A_i = r_i - mean_{j != i} r_j (leave-one-out baseline; 0 for a group of one).
    grpo: A_i = (r_i - mean r) / (std r + eps) with the population std (ddof=0).
          (verl's GRPO uses the sample std, ddof=1.)
    A group of one or of equal rewards gives exactly 0 with either method.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim == 0 or r.shape[-1] == 0:
        raise ValueError(f"rewards must have a non-empty last (group) axis, got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite")
    g = r.shape[-1]
    centered = r - r.mean(axis=-1, keepdims=True)
    if method == "rloo":
        adv = centered * (g / (g - 1)) if g > 1 else np.zeros_like(r)  # r_i - (sum - r_i)/(G-1)
    elif method == "grpo":
        adv = centered / (r.std(axis=-1, keepdims=True) + eps)
    else:
        raise ValueError(f"method must be 'rloo' or 'grpo', got {method!r}")
    # a group of equal rewards carries no signal: exactly 0, not rounding noise / eps
    same = r.max(axis=-1, keepdims=True) == r.min(axis=-1, keepdims=True)
    return np.where(same, 0.0, adv)
