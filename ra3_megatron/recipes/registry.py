"""The recipe type and registry (names are unique; recipes are imported lazily by module path)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from ra3_megatron.em.loop import EMConfig
from ra3_megatron.errors import ConfigError
from ra3_megatron.rl.layout import RLLayout
from ra3_megatron.rollout.settings import EngineSettings


@dataclass(kw_only=True)
class RA3Recipe:
    """An RA3 run: the EM loop plus the engines and trainers that run it."""

    em: EMConfig
    # Rollout engines for E-step sampling/scoring. On GPUs each rank serves pi (the fixed scorer)
    # and q (the sampler RL trains) with two vLLM engines of `engines.rollout_tp`; q's weights reach
    # its engine in memory after every RL step. `engines.memory_fraction`: the share of the GPU each
    # engine takes at start (vLLM's gpu_memory_utilization: weights plus KV cache); set it when two
    # large engines must share what the trainer leaves.
    engines: EngineSettings = field(default_factory=EngineSettings)
    # q's RL trainer (and GRPO's) over the job: tensor / pipeline parallel sizes; DP is the rest.
    rl: RLLayout = field(default_factory=RLLayout)
    # The torchrun job the recipe runs as (`torchrun --nproc-per-node RANKS ... demo --recipe NAME`):
    # every EM phase over its ranks. 1: one process (the M-step may still launch em.nproc ranks).
    ranks: int = 1
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
