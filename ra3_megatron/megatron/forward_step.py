"""Forward step and loss functions for Megatron-Core's pipeline schedules.

A "loss factory" takes one micro-batch (dict of [b, s] tensors) and returns the schedule's
`loss_func(output_tensor) -> (loss_sum, num_tokens, report)`; `output_tensor` is the model's
per-token cross-entropy of the labels, [b, s] (GPTModel called with `labels=`), computed
vocab-parallel so it is exact under tensor parallelism. The report maps names to [sum, count]
tensors; the engine sums them over micro-batches and data-parallel ranks.

Micro-batch keys: tokens, labels, loss_mask, position_ids (int64 / float [b, s]); optional
attention_mask ([b, 1, s, s] bool, True = masked), token_classes (M-step: 0 code, 1 latent),
advantages, old_logprobs, ref_logprobs (RL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from ra3_megatron.core.losses import latent_aware_ce, policy_gradient_loss

Batch = dict[str, Any]
LossFunc = Callable[[Any], tuple[Any, Any, dict[str, Any]]]
LossFactory = Callable[[Batch], LossFunc]

MODEL_KEYS = ("tokens", "labels", "position_ids", "attention_mask")


def to_device(batch: Batch) -> Batch:
    """Tensors onto this rank's device (a no-op on CPU)."""
    import torch

    if not torch.cuda.is_available():
        return batch
    dev = torch.device("cuda", torch.cuda.current_device())
    return {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def run_model(model, batch: Batch):
    """Per-token CE [b, s] on the last pipeline stage, hidden states elsewhere."""
    import torch

    position_ids = batch.get("position_ids")
    if position_ids is None:
        b, s = batch["tokens"].shape
        position_ids = torch.arange(s, device=batch["tokens"].device).unsqueeze(0).expand(b, s)
    return model(batch["tokens"], position_ids, batch.get("attention_mask"), labels=batch["labels"])


def forward_step(loss_factory: LossFactory, data_iterator: Iterator[Batch], model):
    """Megatron-Core `forward_step_func(data_iterator, model)`; bind the loss with functools.partial."""
    batch = to_device(next(data_iterator))
    return run_model(model, batch), loss_factory(batch)


def make_forward_step(loss_factory: LossFactory):
    return partial(forward_step, loss_factory)


# ---- loss factories -------------------------------------------------------------------------


def latent_ce_from_output(batch: Batch, output_tensor, *, latent_weight: float):
    import torch

    classes = batch.get("token_classes")
    if classes is None:  # plain NTP data: everything is code
        classes = torch.zeros_like(batch["labels"])
    parts = latent_aware_ce(output_tensor, classes, batch["loss_mask"], latent_weight=latent_weight)
    return parts.loss_sum, parts.num_tokens, parts.stats


def latent_ce_loss(latent_weight: float = 1.0) -> LossFactory:
    """M-step: sum(code CE) + latent_weight * sum(latent CE), reported per class."""

    def factory(batch: Batch) -> LossFunc:
        return partial(latent_ce_from_output, batch, latent_weight=latent_weight)

    return factory


def _pg_loss(batch: Batch, output_tensor, *, clip_eps: float, kl_coef: float):
    parts = policy_gradient_loss(
        -output_tensor,  # log pi(label) = -CE(label)
        batch["old_logprobs"],
        batch["advantages"],
        batch["loss_mask"],
        clip_eps=clip_eps,
        kl_coef=kl_coef,
        ref_logprobs=batch.get("ref_logprobs"),
    )
    return parts.loss_sum, parts.num_tokens, parts.stats


def policy_gradient_loss_factory(*, clip_eps: float = 0.2, kl_coef: float = 0.0) -> LossFactory:
    """E-step RL / GRPO: PPO clipped surrogate (+ k3 KL) on the loss_mask tokens."""

    def factory(batch: Batch) -> LossFunc:
        return partial(_pg_loss, batch, clip_eps=clip_eps, kl_coef=kl_coef)

    return factory


def _collect_logprobs(batch: Batch, output_tensor):
    import torch

    logprobs = -output_tensor.detach().float()
    # The schedule wants (loss, num_tokens, report); forward-only runs keep only the report.
    return logprobs.sum() * 0.0, torch.zeros((), dtype=torch.int64), {"logprobs": logprobs}


def logprob_collector(batch: Batch) -> LossFunc:
    """Forward-only 'loss' that hands back log pi(label) per token, [b, s]."""
    return partial(_collect_logprobs, batch)
