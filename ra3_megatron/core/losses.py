"""Token-level losses on plain tensors: the M-step's latent-aware CE and the RL policy-gradient loss.

Pure torch math with no distributed imports. Both losses reduce the same way: they return the
SUM over valid tokens and the token COUNT, never a mean. The caller divides once by the global
count (Megatron's `calculate_per_token_loss=True`), which is what makes micro-batching, data
parallel, tensor parallel and pipeline parallel runs agree exactly.

Shapes: `b` = micro-batch size, `s` = sequence length. Per-token tensors are `[b, s]` and aligned
with the labels (position i holds the quantity for predicting label i, i.e. token i + 1).
Statistics are `[sum, count]` pairs (float tensors of shape [2]) so they can be summed across
micro-batches and ranks before dividing.

    >>> import torch
    >>> ce = torch.tensor([[1.0, 2.0, 3.0]])
    >>> out = latent_aware_ce(ce, torch.tensor([[0, 1, 1]]), torch.ones(1, 3), latent_weight=0.5)
    >>> float(out.loss_sum), int(out.num_tokens)   # 1 + 0.5 * (2 + 3), 3 tokens
    (3.5, 3)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch

__all__ = [
    "LossParts",
    "token_cross_entropy",
    "latent_aware_ce",
    "policy_gradient_loss",
    "ratio_of",
]

CODE = 0
LATENT = 1


class LossParts(NamedTuple):
    """A loss reduced as (sum, count) plus reporting statistics.

    loss_sum: scalar float tensor carrying the graph (sum over valid tokens of the per-token loss).
    num_tokens: scalar int64 tensor, the number of valid tokens (denominator of the loss).
    stats: name -> float tensor [2] = [sum, count], detached; mean = sum / count.
    """

    loss_sum: torch.Tensor
    num_tokens: torch.Tensor
    stats: dict[str, torch.Tensor]


def _pair(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.stack([total.detach().float(), count.detach().float()])


def ratio_of(stat: torch.Tensor) -> float:
    """mean of a [sum, count] statistic; nan when the count is 0."""
    total, count = float(stat[0]), float(stat[1])
    return total / count if count > 0 else float("nan")


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token CE in float32. logits [b, s, V], labels [b, s] (int) -> [b, s].

    Equals Megatron's `GPTModel(..., labels=labels)` output (vocab-parallel CE); used by
    the transformers reference path and by the tests.
    """
    import torch

    flat = logits.float().reshape(-1, logits.shape[-1])
    ce = torch.nn.functional.cross_entropy(flat, labels.reshape(-1).long(), reduction="none")
    return ce.view(labels.shape)


def latent_aware_ce(
    token_ce: torch.Tensor,
    token_classes: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    latent_weight: float = 1.0,
) -> LossParts:
    """RA3 M-step loss: sum(code CE) + latent_weight * sum(latent CE), over the token count.

    token_ce: [b, s] float, per-token cross-entropy of the labels (-log p(label)).
    token_classes: [b, s] int, class of each LABEL token: 0 = code, 1 = latent (a thought).
    loss_mask: [b, s] 0/1 (bool, int or float), which label positions count at all.
    latent_weight: lambda_latent; 1.0 is plain NTP on the infused text.

    The count is that of all valid tokens (code + latent), independent of the weight, so
    latent_weight=0 trains on code only while the denominator stays the NTP token count.
    stats: "lm loss" (the weighted loss), "code ce", "latent ce" (unweighted CE per class); the
    counts of the last two are the code and latent token counts.
    """
    import torch

    if token_ce.shape != token_classes.shape or token_ce.shape != loss_mask.shape:
        raise ValueError(
            f"shape mismatch: token_ce {tuple(token_ce.shape)}, token_classes "
            f"{tuple(token_classes.shape)}, loss_mask {tuple(loss_mask.shape)}"
        )
    ce = token_ce.float()
    valid = loss_mask.to(torch.bool)
    is_latent = valid & (token_classes == LATENT)
    is_code = valid & ~is_latent  # any class other than LATENT trains as code
    # where() rather than multiplying: a masked position may hold inf/nan (e.g. a pad label).
    zero = torch.zeros((), dtype=ce.dtype, device=ce.device)
    code_sum = torch.where(is_code, ce, zero).sum()
    latent_sum = torch.where(is_latent, ce, zero).sum()
    n_code = is_code.sum()
    n_latent = is_latent.sum()
    num_tokens = (n_code + n_latent).to(torch.int64)
    loss_sum = code_sum + latent_weight * latent_sum
    stats = {
        "lm loss": _pair(loss_sum, num_tokens),
        "code ce": _pair(code_sum, n_code),
        "latent ce": _pair(latent_sum, n_latent),
    }
    return LossParts(loss_sum, num_tokens, stats)


def policy_gradient_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    kl_coef: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
) -> LossParts:
    """PPO-style clipped surrogate with an optional k3 KL penalty; token-sum + count reduction.

    logprobs: [b, s] float, log pi_theta(label) under the current policy (carries the graph).
    old_logprobs: [b, s], log-probs of the policy that sampled the batch (no graph).
    advantages: [b, s] per token, or [b] per sequence (broadcast over s).
    mask: [b, s] 0/1, which tokens are actions (the decision token and the thought tokens).
    clip_eps: the ratio is clipped to [1 - clip_eps, 1 + clip_eps].
    kl_coef, ref_logprobs: add kl_coef * k3(pi_theta || pi_ref) per token, where
        k3 = exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased for KL(pi_theta || pi_ref)).

    Per token: max(-A * r, -A * clip(r)) + kl_coef * k3, with r = exp(logp - old_logp).
    stats: "pg loss", "kl", "clip frac", "ratio" as [sum, count] pairs over the masked tokens.
    """
    import torch

    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logprobs)
    if not (logprobs.shape == old_logprobs.shape == advantages.shape == mask.shape):
        raise ValueError(
            f"shape mismatch: logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)}, "
            f"advantages {tuple(advantages.shape)}, mask {tuple(mask.shape)}"
        )
    if kl_coef and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs")
    valid = mask.to(torch.bool)
    logp = logprobs.float()
    adv = advantages.float().detach()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    # Masked positions can hold anything (padding): zero their log-ratio before exp.
    log_ratio = torch.where(valid, logp - old_logprobs.float().detach(), zero)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    pg = torch.maximum(unclipped, clipped)
    per_token = pg
    kl = torch.zeros_like(logp)
    if ref_logprobs is not None:
        delta = torch.where(valid, ref_logprobs.float().detach() - logp, zero)
        kl = torch.exp(delta) - delta - 1.0
        if kl_coef:
            per_token = per_token + kl_coef * kl
    loss_sum = torch.where(valid, per_token, zero).sum()
    num_tokens = valid.sum().to(torch.int64)
    was_clipped = (clipped > unclipped) & valid
    stats = {
        "pg loss": _pair(torch.where(valid, pg, zero).sum(), num_tokens),
        "kl": _pair(torch.where(valid, kl, zero).sum(), num_tokens),
        "clip frac": _pair(was_clipped.sum().float(), num_tokens),
        "ratio": _pair(torch.where(valid, ratio, zero).sum(), num_tokens),
    }
    return LossParts(loss_sum, num_tokens, stats)
