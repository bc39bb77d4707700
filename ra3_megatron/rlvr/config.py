"""GRPO RLVR configuration: one keyword-only dataclass, every choice a field.

    from ra3_megatron.rlvr.config import GRPOConfig
    cfg = GRPOConfig(steps=100, prompts_per_step=8, samples=8, lr=1e-6)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ra3_megatron.errors import ConfigError


@dataclass(kw_only=True)
class GRPOConfig:
    # --- rollouts ---
    steps: int = 100  # policy updates (one rollout batch each)
    prompts_per_step: int = 8  # problems per step
    samples: int = 8  # G: completions per problem (one group)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 384  # per completion
    # --- objective ---
    advantage: Literal["grpo", "rloo"] = "grpo"  # std-normalized group advantage, or leave-one-out
    clip_eps: float = 0.2
    kl_coef: float = 0.0  # > 0: k3 KL to the initial policy (needs a reference engine)
    # Where the PPO ratio's denominator comes from. "trainer": a no-grad forward pass of the
    # trainer's model on the batch (same numerics as the update: the ratio starts at exactly 1).
    # "rollout": the sampling engine's own log-probs (off-policy correction for engine/trainer
    # mismatch, e.g. vLLM bf16 vs Megatron fp32; no extra forward pass).
    old_logprobs: Literal["trainer", "rollout"] = "trainer"
    drop_zero_advantage: bool = True  # groups with equal rewards carry no signal: leave them out
    # How each update's weights reach the rollout engine (`rl.sync`): "memory" (named tensors),
    # "folder" (the engine reads the step's checkpoint export), "auto": memory where it can.
    weight_sync: Literal["auto", "memory", "folder"] = "auto"
    # --- optimizer / batches ---
    lr: float = 1e-6
    micro_batch: int = 8  # rows per forward/backward
    rows_per_update: int = 0  # rows per optimizer step; 0: the whole step's batch is one update
    max_seq_tokens: int = 2048  # prompt + completion; longer rows lose the start of the prompt
    # --- held-out evaluation ---
    eval_every: int = 10  # greedy pass@1 on the held-out problems every N steps (and at 0 and the end); 0: never
    eval_limit: int = 0  # first N held-out problems only (0: all)
    eval_max_tokens: int = 0  # 0: max_tokens
    # --- plumbing ---
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "samples", "max_tokens", "micro_batch", "max_seq_tokens"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("rows_per_update", "eval_every", "eval_limit", "eval_max_tokens"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.samples < 2:
            raise ConfigError(f"samples (G) must be >= 2: a group of one has no relative advantage, got {self.samples}")
        if self.weight_sync not in ("auto", "memory", "folder"):
            raise ConfigError(f"weight_sync must be auto, memory or folder, got {self.weight_sync!r}")
        if self.max_seq_tokens < self.max_tokens + 1:
            raise ConfigError(f"max_seq_tokens {self.max_seq_tokens} must exceed max_tokens {self.max_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("clip_eps", "kl_coef", "lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v}")
        for name, allowed in {"advantage": ("grpo", "rloo"), "old_logprobs": ("trainer", "rollout")}.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def eval_tokens(self) -> int:
        return self.eval_max_tokens or self.max_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
