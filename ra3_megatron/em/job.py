"""The EM loop as a user launches it: in one process, or as one torchrun job over all its ranks.

    run_em_job(EMConfig(...), EngineSettings(backend="vllm"), RLLayout(tp=2))

`ra3 em` and the recipes (`ra3 demo --recipe`, NeMo-Run, `recipes/ra3_llama8b.sh`) both come here
with their typed configs. Under torchrun (WORLD_SIZE > 1) every phase runs over the job's ranks:
q's RL as one data-parallel Megatron trainer at layout.tp x layout.pp with a rollout engine on
every rank, the infusion sharded, the M-step in-process at em.mstep's tp x pp.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ra3_megatron.em.loop import EMConfig, run_em
from ra3_megatron.errors import ConfigError
from ra3_megatron.estep.rl import q_trainer_factory
from ra3_megatron.rl.job import Job
from ra3_megatron.rl.layout import RLLayout, job_process_group, resolve_rl_ranks, torchrun_world
from ra3_megatron.rollout.settings import EngineSettings, engine_factory


def run_em_job(cfg: EMConfig, engines: EngineSettings, layout: RLLayout, *, progress: bool = True,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run or resume the EM loop in this process or over the torchrun job it belongs to."""
    if not progress:  # no progress bars anywhere, the prepare phase's included
        cfg = dataclasses.replace(cfg, prepare=dataclasses.replace(cfg.prepare, progress=False))
    world = torchrun_world()
    if world > 1:
        if resolve_rl_ranks(layout, backend=engines.backend, workers=world) != "all":
            raise ConfigError("under torchrun `ra3 em` runs every phase over the job's ranks: it needs the "
                              "Megatron trainer (--trainer megatron, --rl-ranks auto or all)")
        if cfg.nproc != 1:
            raise ConfigError("under torchrun the M-step runs over the job's ranks: leave --nproc at 1")
    else:
        resolve_rl_ranks(layout, backend=engines.backend, workers=1)  # --tp/--pp need a job
    if engines.threads:
        import torch

        torch.set_num_threads(engines.threads)
    make_trainer = q_trainer_factory(cfg.estep, layout, engines, job_wide=world > 1, world=world)
    with job_process_group(world > 1, tp=layout.tp, pp=layout.pp, seed=cfg.estep.seed):
        return run_em(cfg, make_engine=engine_factory(engines, corpus=cfg.input), make_trainer=make_trainer,
                      progress=progress, log=log, job=Job.of_default_group())
