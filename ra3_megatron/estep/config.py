"""The E-step's configuration: one keyword-only dataclass, every (ours) choice a field.

    from ra3_megatron.estep.config import EStepConfig
    cfg = EStepConfig(penalty=0.05, samples=4, horizon=4)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ra3_megatron.errors import ConfigError


@dataclass(kw_only=True)
class EStepConfig:
    # --- search (per snippet, left to right) ---
    penalty: float = 0.05  # c: a thought must raise the horizon's per-token log-lik by more than c
    samples: int = 4  # G: decisions (and thoughts) sampled from q per position (ours)
    horizon: int = 4  # tau: lines scored after the position (ours)
    max_latent_tokens: int = 32  # a sample without a newline within this many tokens fails (ours)
    # q writes a thought after the whitespace before the line and "#"; True adds the space of the
    # spec's "{indent}# " prompt.
    # Off by default: byte-level BPE merges that space into the next word (" word"), so a prompt
    # ending in a lone space asks for a tokenization the model never saw in training. (ours)
    prompt_space: bool = False
    temperature: float = 1.0
    gain_norm: Literal["mean", "sum"] = "mean"  # per horizon token (ours) or summed
    # Where the horizon's scored tokens start. "content": at line t's first non-space token; its
    # newline + indentation tokens are unscored context for every option. "line": at that newline
    # (the original scoring), which pays `<act>` for predicting the indentation while a thought,
    # a comment line with the same indentation, has already shown it: a content-free bonus that
    # let a fixed sentence pass c = 0.05 at 12% of positions on SmolLM2 (docs/RA3_METHOD.md). (ours)
    score_from: Literal["content", "line"] = "content"
    position_fraction: float = 1.0  # share of candidate positions visited (random, seeded)
    python: bool = True  # only lines where a comment keeps the Python program unchanged
    # Positions before a line that is already a comment: there `<act>`'s decision token is "#" as
    # well, so q's think/act decision cannot tell the options apart and a thought would stack on
    # the author's comment. "skip" leaves them out (counted in stats.comment_positions). (ours)
    comment_lines: Literal["skip", "allow"] = "skip"
    # "sample": q first samples the decision token ("#" vs code) G times and only the think
    # decisions are rolled out (the paper's <think>/<act> as the policy's first token; rollouts
    # happen only for thoughts). "force": G thoughts at every position (every position is a
    # full rollout). (ours)
    decision: Literal["sample", "force"] = "sample"
    think_floor: float = 0.0  # lower bound on q's think probability when sampling decisions (ours)
    probe: bool = True  # read all decisions of a snippet from one pass (until a thought is inserted)
    chain: bool = True  # read <act>'s horizon scores from one pass of pi, likewise (search.py)
    # Rollouts sampled and scored together per snippet, as if no thought were chosen in between;
    # a chosen thought drops (and later redoes) the window's later ones. 1: strictly one at a
    # time. Larger windows mean fewer, fuller engine calls. (ours)
    lookahead: int = 8
    advantage: Literal["rloo", "grpo"] = "rloo"
    # --- RL on q ---
    rl_steps: int = 2
    rl_snippets: int = 8  # snippets searched per RL step (their groups are the step's batch)
    lr: float = 1e-5
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    micro_batch: int = 16  # RL examples per forward/backward
    end_token_in_loss: bool = True  # a thought's loss also covers the sampled token that ended it (its newline)
    max_rl_tokens: int = 2048  # RL examples longer than this lose the start of their prefix
    # How the step's examples become trainer rows: "tree": examples sharing a prefix in one row,
    # the prefix computed once (`rl.tree_rows`; trainers that can, else "fold"); "fold": an
    # example that begins another rides in its row; "plain": one row per example. (ours)
    rl_rows: Literal["tree", "fold", "plain"] = "tree"
    # A tree row takes branches while it stays within this many tokens (its attention costs grow
    # with the square; 1024 was fastest for the tiny model on CPU among 512..2048). (ours)
    rl_tree_tokens: int = 1024
    # The PPO ratio's old log-probs: "engine" asks q's rollout engine when it computes the
    # trainer's log-probs exactly (`trainer_exact_logprobs`: the transformers backends in float32,
    # same weights, synced after every step; hf-cpu's prefix store already holds the prefixes,
    # so only the options run), else the trainer; "trainer": always a trainer forward pass. (ours)
    old_logprobs: Literal["engine", "trainer"] = "engine"
    # How q's new weights reach its rollout engine after each RL step (`rl.sync`): "memory"
    # (named tensors, no disk), "folder" (an HF checkpoint dir written and read), "auto": memory
    # where the engine declares it can take tensors (vLLM in process, transformers), else folder.
    weight_sync: Literal["auto", "memory", "folder"] = "auto"
    # --- plumbing ---
    batch_snippets: int = 16  # snippets searched in lockstep: one engine call serves all of them
    max_snippet_tokens: int = 1024  # documents are chunked to this budget (`chunk_snippets`)
    shard_size: int = 1000  # records per output shard
    seed: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.penalty) or self.penalty < 0:
            raise ConfigError(f"penalty c must be a finite number >= 0, got {self.penalty}")
        for name in ("samples", "horizon", "max_latent_tokens", "batch_snippets", "shard_size", "lookahead",
                     "micro_batch", "max_snippet_tokens", "max_rl_tokens", "rl_tree_tokens"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("rl_steps", "rl_snippets"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.position_fraction <= 1.0:
            raise ConfigError(f"position_fraction must be in (0, 1], got {self.position_fraction}")
        if not 0.0 <= self.think_floor <= 1.0:
            raise ConfigError(f"think_floor must be in [0, 1], got {self.think_floor}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        choices = {"gain_norm": ("mean", "sum"), "decision": ("sample", "force"),
                   "advantage": ("rloo", "grpo"), "old_logprobs": ("engine", "trainer"),
                   "rl_rows": ("tree", "fold", "plain"), "weight_sync": ("auto", "memory", "folder"),
                   "comment_lines": ("skip", "allow"), "score_from": ("content", "line")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
