"""Run a recipe: the EM loop with the recipe's engines (used by `ra3 em --recipe` and `ra3 demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from ra3_megatron.errors import ConfigError
from ra3_megatron.overrides import apply_overrides
from ra3_megatron.recipes.registry import RA3Recipe, get_recipe


def load_recipe(name: str, overrides: list[str] | None = None) -> RA3Recipe:
    """Build recipe `name`, then apply `key=value` overrides (`em.estep.penalty=0.1`, `backend=vllm`)."""
    return apply_overrides(get_recipe(name)(), list(overrides or []))


def engine_args(recipe: RA3Recipe) -> argparse.Namespace:
    """The namespace the E-step's engine / trainer factories read (`ra3 estep`'s engine flags)."""
    return argparse.Namespace(backend=recipe.backend, trainer=recipe.trainer, threads=recipe.threads,
                              input=recipe.em.input, fake_corpus=None, fake_corpus_docs=2000,
                              fake_alpha=0.001, fake_copy_weight=0.5, rollout_tp=recipe.rollout_tp,
                              engine_memory_fraction=recipe.engine_memory_fraction)


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

    from ra3_megatron.cli.estep import engine_factory, trainer_factory
    from ra3_megatron.cli.rl_job import job_process_group, torchrun_world
    from ra3_megatron.em.loop import run_em
    from ra3_megatron.models.warm import resolve_model
    from ra3_megatron.rl.job import Job

    world = torchrun_world()
    check_launch(recipe, world)
    recipe = dataclasses.replace(recipe, em=dataclasses.replace(recipe.em, model=resolve_model(recipe.em.model)))
    if recipe.threads:
        import torch

        torch.set_num_threads(recipe.threads)
    ns = engine_args(recipe)
    job_wide = world > 1
    make_trainer = trainer_factory(ns, recipe.em.estep, job_wide=job_wide, tp=recipe.rl_tp, pp=recipe.rl_pp,
                                   world=world)
    with job_process_group(job_wide, tp=recipe.rl_tp, pp=recipe.rl_pp, seed=recipe.em.estep.seed):
        return run_em(recipe.em, make_engine=engine_factory(ns), make_trainer=make_trainer, log=log,
                      job=Job.of_default_group())


def run_named_recipe(name: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Entry point for launchers that pass plain data (NeMo-Run `run.Partial`, Slurm scripts)."""
    return run_recipe(load_recipe(name, overrides))
