"""Run a recipe: the EM loop with the recipe's engines and trainer layout (`ra3 demo --recipe`,
NeMo-Run's `run_named_recipe`, `recipes/ra3_llama8b.sh`)."""

from __future__ import annotations

from typing import Any

from ra3_megatron.errors import ConfigError
from ra3_megatron.overrides import apply_overrides
from ra3_megatron.recipes.registry import RA3Recipe, get_recipe


def load_recipe(name: str, overrides: list[str] | None = None) -> RA3Recipe:
    """Build recipe `name`, then apply `key=value` overrides (`em.estep.penalty=0.1`, `engines.backend=vllm`,
    `em.mstep.steps=50`, `rl.tp=4`)."""
    return apply_overrides(get_recipe(name)(), list(overrides or []))


def check_launch(recipe: RA3Recipe, world: int) -> None:
    """A recipe meant for a torchrun job of `recipe.ranks` ranks runs only as one."""
    if recipe.ranks > 1 and world != recipe.ranks:
        raise ConfigError(
            f"this recipe runs as one torchrun job of {recipe.ranks} ranks (this is {world}): "
            f"torchrun --nproc-per-node {recipe.ranks} -m ra3_megatron.cli.main demo --recipe NAME ...")
    if world > 1 and recipe.ranks == 1:
        raise ConfigError(f"this recipe runs in one process, but it was started as {world} ranks")


def run_recipe(recipe: RA3Recipe, *, log=print) -> dict[str, Any]:
    """The recipe's EM loop; as one torchrun job when the recipe says so (every phase over its ranks)."""
    import dataclasses

    from ra3_megatron.em.job import run_em_job
    from ra3_megatron.models.warm import resolve_model
    from ra3_megatron.rl.layout import torchrun_world

    check_launch(recipe, torchrun_world())
    em = dataclasses.replace(recipe.em, model=resolve_model(recipe.em.model))
    return run_em_job(em, recipe.engines, recipe.rl, log=log)


def run_named_recipe(name: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Entry point for launchers that pass plain data (NeMo-Run `run.Partial`, Slurm scripts)."""
    return run_recipe(load_recipe(name, overrides))
