"""The rollout interface shared by the vLLM, transformers and fake backends.

Two operations serve the whole method:
- `generate`: sample n completions per prompt (E-step thoughts, eval, RLVR rollouts);
- `score_groups`: log-probabilities of given target tokens after a shared prefix and a
  per-option middle (E-step: prefix = code so far, middle = the thought line or nothing,
  target = the next tau lines). Grouping tells the engine the prefix is shared, so it can
  compute it once.
Plus the weights: `update_weights` (named tensors straight from a trainer, in memory) and
`load_weights` (an HF safetensors folder), both resetting any prefix cache; and `sleep` /
`wake_up` (free the accelerator while a trainer trains).

What an engine can do beyond that is declared, not probed: `engine.capabilities` (an
`EngineCapabilities`) says whether it takes weights in memory, frees memory when asleep, and
answers the E-step's decision probes and code chains in one pass. Engines subclass
`RolloutEngineBase`, which declares nothing and implements the optional parts as no-ops.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ra3_megatron.errors import InputError


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False  # return the sampled tokens' log-probs


def per_prompt(config: SamplingConfig | Sequence[SamplingConfig], n_prompts: int) -> list[SamplingConfig]:
    """One SamplingConfig per prompt: `generate` takes one for all prompts, or one each (the
    E-step asks each prompt for its own number of thoughts, under its own seed, in one call)."""
    if isinstance(config, SamplingConfig):
        return [config] * n_prompts
    configs = list(config)
    if len(configs) != n_prompts:
        raise ValueError(f"generate: {len(configs)} sampling configs for {n_prompts} prompts")
    return configs


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None = None  # one per token in token_ids, when asked for
    finish_reason: str = "stop"  # "stop" | "length"


@dataclass(frozen=True)
class ScoreOption:
    middle: tuple[int, ...]  # tokens between prefix and target, not scored (a thought, or empty)
    target: tuple[int, ...]  # tokens whose log-probs are returned


@dataclass(frozen=True)
class ScoreGroup:
    prefix: tuple[int, ...]
    options: tuple[ScoreOption, ...] = field(default_factory=tuple)


def check_groups(groups: Sequence[ScoreGroup]) -> None:
    """Refuse a scored target with nothing before it (no token to predict it from)."""
    for gi, g in enumerate(groups):
        for oi, o in enumerate(g.options):
            if o.target and not g.prefix and not o.middle:
                raise ValueError(
                    f"score_groups: group {gi} option {oi} has no context before its target "
                    "(empty prefix and middle); put a BOS token in the prefix"
                )


# (HF parameter name, full tensor) pairs, in any order: what a trainer's `named_weights()` yields
# (Megatron shards already gathered: TP all-gathered, PP broadcast) and `update_weights` takes.
NamedTensors = Iterable[tuple[str, Any]]


@dataclass(frozen=True, kw_only=True)
class EngineCapabilities:
    """What an engine declares it can do beyond `generate` and `score_groups`."""

    # update_weights(named tensors) works: the weights reach the engine in memory, no folder.
    in_memory_weights: bool = False
    # sleep() really frees accelerator memory (vLLM sleep mode on GPUs); otherwise it is a no-op.
    frees_memory_asleep: bool = False
    # token_logprobs_at(ids, positions, tokens): all decision probes of a sequence in one pass
    # (and probe_many(probes): a batch of them, one pass per sequence).
    probe_in_one_pass: bool = False
    # sequence_logprobs(ids, start): the code's own log-probs along a sequence in one pass.
    chain_in_one_pass: bool = False
    # Its log-probs are a float32 trainer's on the same weights (to rounding), so RL may take its
    # PPO old log-probs from the engine instead of a trainer forward pass.
    trainer_exact_logprobs: bool = False


@runtime_checkable
class RolloutEngine(Protocol):
    """What every backend implements. Token ids are the engine tokenizer's."""

    tokenizer: object
    capabilities: EngineCapabilities

    def generate(
        self, prompts: Sequence[str | Sequence[int]], config: SamplingConfig | Sequence[SamplingConfig]
    ) -> list[list[Completion]]:
        """config.n completions for each prompt, in prompt order (one config, or one per prompt)."""
        ...

    def score_groups(self, groups: Sequence[ScoreGroup]) -> list[list[list[float]]]:
        """Per group, per option: the log-prob of each target token (len == len(option.target))."""
        ...

    def load_weights(self, hf_dir: str) -> None:
        """Replace the weights with those of an HF safetensors dir; reset any prefix cache."""
        ...

    def update_weights(self, weights: NamedTensors) -> None:
        """Replace the weights with these HF-named full tensors, in memory; reset any prefix cache
        (only where `capabilities.in_memory_weights`)."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory (KV cache, weights) while a trainer updates the policy; a no-op
        where the engine has nothing to free (CPU, the transformers and fake backends)."""
        ...

    def wake_up(self) -> None:
        """Undo `sleep`; the engine serves requests again."""
        ...

    def close(self) -> None: ...


class RolloutEngineBase:
    """The base of every engine: declares no capability; the optional parts are no-ops or refuse."""

    capabilities = EngineCapabilities()

    def update_weights(self, weights: NamedTensors) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} does not take weights in memory: give it a folder (load_weights)"
        )

    def probe_many(self, probes: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]]) -> list[list[float]]:
        """`token_logprobs_at` for each (ids, positions, tokens); an engine that batches requests
        (vLLM) answers them in one call."""
        return [list(self.token_logprobs_at(ids, pos, tok)) for ids, pos, tok in probes]

    def sleep(self) -> None:  # nothing to free unless an engine says so
        pass

    def wake_up(self) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def engines_asleep(*engines):
    """Each distinct engine sleeps for the block (a trainer's update) and wakes after it, also when
    the block raises. On GPUs this is what lets vLLM and the trainer share a device."""
    distinct = list({id(e): e for e in engines if e is not None}.values())
    for engine in distinct:
        engine.sleep()
    try:
        yield
    finally:
        for engine in distinct:
            engine.wake_up()


_ENGINES: dict[str, str] = {}


def register_engine(name: str, import_path: str) -> None:
    """Register a backend as "module:Class"; it is imported only when created."""
    if name in _ENGINES and _ENGINES[name] != import_path:
        raise ValueError(f"rollout engine {name!r} is already registered as {_ENGINES[name]}")
    _ENGINES[name] = import_path


def check_model_dir(model: str | os.PathLike) -> Path:
    """A local model directory, or an InputError saying so: a missing path must never reach
    `from_pretrained`, which would take it for a hub repo id and try the network."""
    path = Path(model)
    if not path.is_dir():
        raise InputError(path, "model directory not found (a local HF checkpoint dir; models are never downloaded)")
    return path


def create_engine(name: str, **kwargs) -> RolloutEngine:
    if kwargs.get("model") is not None:
        check_model_dir(kwargs["model"])
    if name not in _ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; known: {', '.join(sorted(_ENGINES))}")
    module, _, cls = _ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


register_engine("fake", "ra3_megatron.rollout.fake:FakeEngine")
register_engine("hf", "ra3_megatron.rollout.hf_engine:HFEngine")
register_engine("hf-cpu", "ra3_megatron.rollout.cpu_accel.engine:CPUAccelEngine")
register_engine("vllm", "ra3_megatron.rollout.vllm_engine:VLLMEngine")
