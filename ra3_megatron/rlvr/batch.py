"""From one step's rollouts to the policy-gradient batch, and the step's rollout statistics.

P problems x G completions each. Rewards (P, G) become group-relative advantages
(`core.rewards.group_advantages`: "grpo" = (r - mean) / (std + eps), "rloo" = leave-one-out).
Every completion is one row: tokens = prompt ids + the completion's sampled token ids (the stop
token included: the policy sampled it), the loss mask on the completion tokens only, the
completion's advantage on each of them. The layout is the E-step's (`estep.rl.build_batch`):
`tokens`, `labels`, `loss_mask`, `position_ids`, `advantages` of shape [B, s]; with rollout
log-probs also `rollout_logprobs` (0 off the mask).

    >>> import numpy as np
    >>> from ra3_megatron.core.rewards import group_advantages
    >>> group_advantages(np.array([[1.0, 0.0]]), "grpo").round(3).tolist()
    [[1.0, -1.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ra3_megatron.rl.batch import RLExample, build_batch
from ra3_megatron.rollout.base import Completion


@dataclass(frozen=True)
class Row:
    example: RLExample
    logprobs: tuple[float, ...] | None  # the rollout engine's log-prob of each completion token
    problem: int  # index into the step's problems
    sample: int  # index within the group


def rows_from_rollouts(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[Completion]],
    advantages: np.ndarray,
    *,
    max_seq_tokens: int,
    drop_zero_advantage: bool = True,
) -> list[Row]:
    """One row per (problem, completion); groups whose advantages are all 0 are left out when asked.

    prompts[p]: prompt token ids; completions[p][g]; advantages: (P, G).
    A row longer than max_seq_tokens loses the start of its prompt (at least one prompt token stays).
    """
    adv = np.asarray(advantages, dtype=np.float64)
    if adv.shape != (len(prompts), max((len(c) for c in completions), default=0)):
        raise ValueError(f"advantages shape {adv.shape} does not match {len(prompts)} prompts x completions")
    rows = []
    for p, (prompt, group) in enumerate(zip(prompts, completions)):
        if drop_zero_advantage and not np.any(adv[p]):
            continue
        for g, c in enumerate(group):
            if not c.token_ids:
                continue  # nothing was sampled: nothing to train
            ids = c.token_ids[: max_seq_tokens - 1]
            keep = max(1, min(len(prompt), max_seq_tokens - len(ids)))
            tokens = (*prompt[len(prompt) - keep :], *ids)
            lps = tuple(c.logprobs[: len(ids)]) if c.logprobs is not None else None
            rows.append(Row(RLExample(tokens=tokens, loss_from=keep, advantage=float(adv[p, g])), lps, p, g))
    return rows


def batch_from_rows(rows: Sequence[Row], pad_id: int = 0) -> dict[str, Any]:
    """The [B, s] batch of `estep.rl.build_batch`, plus `rollout_logprobs` when every row has them."""
    import torch

    batch = build_batch([r.example for r in rows], pad_id=pad_id)
    if rows and all(r.logprobs is not None for r in rows):
        lp = torch.zeros_like(batch["loss_mask"])
        for i, r in enumerate(rows):
            start = r.example.loss_from - 1  # label j is token j + 1: the first completion token's label
            lp[i, start : start + len(r.logprobs)] = torch.tensor(r.logprobs, dtype=torch.float32)
        batch["rollout_logprobs"] = lp
    return batch


def rollout_stats(rewards: np.ndarray, completions: Sequence[Sequence[Completion]]) -> dict[str, float]:
    """reward_mean / reward_std over all samples; pass_rate: share of problems with a passing sample
    (pass@G); signal_groups: share of groups with unequal rewards (the groups that train);
    response_tokens: mean completion length; truncated: share of completions cut by max_tokens."""
    r = np.asarray(rewards, dtype=np.float64)
    flat = [c for group in completions for c in group]
    lengths = np.array([len(c.token_ids) for c in flat], dtype=np.float64)
    return {
        "reward_mean": float(r.mean()),
        "reward_std": float(r.std()),
        "pass_rate": float(np.mean(r.max(axis=1) > 0)),
        "signal_groups": float(np.mean(r.max(axis=1) > r.min(axis=1))),
        "response_tokens": float(lengths.mean()) if len(lengths) else 0.0,
        "truncated": float(np.mean([c.finish_reason == "length" for c in flat])) if flat else 0.0,
    }


def logprob_gap(batch: dict[str, Any], trainer_logprobs) -> float:
    """Mean |trainer - rollout| log-prob over the loss tokens: the engine/trainer mismatch."""
    if "rollout_logprobs" not in batch:
        return float("nan")
    mask = batch["loss_mask"].bool()
    n = int(mask.sum())
    if n == 0:
        return float("nan")
    return float((trainer_logprobs.float() - batch["rollout_logprobs"]).abs()[mask].sum()) / n
