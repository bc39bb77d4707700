"""The recipe type and registry (names are unique; recipes are imported lazily by module path)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from ra3_megatron.em.loop import EMConfig
from ra3_megatron.errors import ConfigError


@dataclass(kw_only=True)
class RA3Recipe:
    """An RA3 run: the EM loop plus the engines that run it."""

    em: EMConfig
    backend: str = "hf"  # rollout engine for E-step sampling/scoring: vllm | hf | fake
    trainer: str = "auto"  # RL trainer of the E-step: megatron | torch | auto
    threads: int | None = None  # torch threads in the driver process
    # The torchrun job the recipe runs as (`torchrun --nproc-per-node RANKS ... demo --recipe NAME`):
    # every EM phase over its ranks. 1: one process (the M-step may still launch em.nproc ranks).
    ranks: int = 1
    # q's RL trainer (and GRPO's) over the job: tensor / pipeline parallel sizes; DP is the rest.
    rl_tp: int = 1
    rl_pp: int = 1
    # Each rank serves pi (the fixed scorer) and q (the sampler RL trains) with two vLLM engines of
    # this tensor-parallel size; q's weights reach its engine in memory after every RL step.
    rollout_tp: int = 1
    # GPU memory each engine takes at start, as a fraction of the GPU (vLLM's gpu_memory_utilization:
    # its weights plus its KV cache). None: 45% of what is free when it starts (pi's engine then
    # gets more than q's); set it when two large engines must share what the trainer leaves.
    engine_memory_fraction: float | None = None
    description: str = ""
    notes: list[str] = field(default_factory=list)


_RECIPES: dict[str, str] = {}


def register_recipe(name: str, target: str) -> None:
    """`target` is "module:function"; the function takes keyword overrides and returns an RA3Recipe."""
    if name in _RECIPES:
        raise ValueError(f"recipe {name!r} is already registered as {_RECIPES[name]}")
    _RECIPES[name] = target


def recipe_names() -> list[str]:
    return sorted(_RECIPES)


def get_recipe(name: str) -> Callable[..., RA3Recipe]:
    if name not in _RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(recipe_names())}")
    module, _, func = _RECIPES[name].partition(":")
    return getattr(importlib.import_module(module), func)


register_recipe("tiny_cpu", "ra3_megatron.recipes.cpu:tiny_cpu")
register_recipe("smollm2_135m_cpu", "ra3_megatron.recipes.cpu:smollm2_135m_cpu")
register_recipe("llama32_1b_8gpu_h100_bf16", "ra3_megatron.recipes.gpu:llama32_1b_8gpu_h100_bf16")
register_recipe("qwen25_1p5b_8gpu_h100_bf16", "ra3_megatron.recipes.gpu:qwen25_1p5b_8gpu_h100_bf16")
register_recipe("llama31_8b_8gpu_h100_fp8", "ra3_megatron.recipes.gpu:llama31_8b_8gpu_h100_fp8")
