"""Where an RL phase (q's RL in the E-step, GRPO) runs: which trainer, on which ranks, at what layout.

    layout = RLLayout(trainer="megatron", rl_ranks="auto", tp=2)
    ranks = resolve_rl_ranks(layout, backend="vllm", workers=torchrun_world())   # "all" | "first"
    with job_process_group(ranks == "all", tp=2, pp=1, seed=0):
        trainer = policy_trainer_factory(layout, ...)(model_dir)

"all": every rank of the torchrun job holds a rollout engine and its shard of one data-parallel
Megatron trainer at tp x pp (DP is the rest); the job's process group is created before any
engine (vLLM builds its groups inside it) and torn down after. "first": the first rank alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ra3_megatron.errors import ConfigError
from ra3_megatron.overrides import documented


@dataclass(kw_only=True)
class RLLayout:
    trainer: Literal["auto", "megatron", "torch"] = documented(
        "the RL trainer: megatron (the MegatronEngine) or torch (transformers); auto: megatron, torch with "
        "the fake engine", "auto")
    rl_ranks: Literal["auto", "all", "first"] = documented(
        "who runs RL: all ranks of the torchrun job (one data-parallel trainer, rollouts on every rank) or "
        "the first alone; auto: all under torchrun with the Megatron trainer, else first", "auto")
    tp: int = documented("the Megatron trainer's tensor-parallel size (rl_ranks all)", 1)
    pp: int = documented("the Megatron trainer's pipeline-parallel size (rl_ranks all)", 1)

    def trainer_kind(self, backend: str) -> str:
        return self.trainer if self.trainer != "auto" else ("torch" if backend == "fake" else "megatron")


def torchrun_world() -> int:
    """WORLD_SIZE as torchrun sets it (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_rl_ranks(layout: RLLayout, *, backend: str, workers: int, rl_on: bool = True) -> str:
    """"all" or "first" (see RLLayout.rl_ranks), checked against how the processes were started."""
    trainer = layout.trainer_kind(backend)
    under_torchrun = workers > 1 and torchrun_world() == workers
    choice = layout.rl_ranks
    if choice == "auto":
        choice = "all" if under_torchrun and trainer == "megatron" and rl_on else "first"
    if choice == "all" and workers > 1:
        if not under_torchrun:
            raise ConfigError("--rl-ranks all needs the processes started by torchrun (WORLD_SIZE = the workers)")
        if trainer != "megatron":
            raise ConfigError("--rl-ranks all needs --trainer megatron (the torch trainer runs on one process)")
    if (layout.tp > 1 or layout.pp > 1) and not (choice == "all" and workers > 1):
        raise ConfigError("--tp/--pp shard the trainer over a torchrun job's ranks: they need --rl-ranks all "
                          "under torchrun")
    return choice


def data_parallel_size(*, job_wide: bool, world: int, tp: int, pp: int) -> int:
    """The trainer's data-parallel size: the job's ranks over tp x pp, or 1 on one process."""
    return max(1, world // (tp * pp)) if job_wide else 1


def rows_per_update(rows: int, micro_batch: int, dp: int) -> int:
    """`rows` rounded up to whole micro-batches on every data-parallel rank."""
    unit = micro_batch * dp
    return -(-rows // unit) * unit


@contextlib.contextmanager
def job_process_group(active: bool, *, tp: int, pp: int, seed: int):
    """The torchrun job's default process group (and Megatron's groups at tp x pp) for the block."""
    if not active:
        yield
        return
    from ra3_megatron.megatron.parallel import ParallelConfig, destroy_distributed, init_distributed

    init_distributed(ParallelConfig(tp=tp, pp=pp, seed=seed))
    try:
        yield
    finally:
        destroy_distributed()


def policy_trainer_factory(layout: RLLayout, *, backend: str, lr: float, clip_eps: float, kl_coef: float,
                           micro_batch: int, rows: int, seq_length: int, seed: int, threads: int | None = None,
                           torch_rows_per_update: int | None = None, job_wide: bool = False,
                           world: int = 1) -> Callable[[str], Any]:
    """model dir -> a PolicyTrainer (the E-step's q and GRPO's policy use the same two).

    `rows`: the rows of one optimizer step; the Megatron trainer rounds them up to whole
    micro-batches on every data-parallel rank, so the same steps (and updates) happen at any DP
    that divides them. `job_wide`: one Megatron trainer over all `world` ranks at layout.tp x pp.
    """
    kind = layout.trainer_kind(backend)

    def make(model_dir: str):
        if kind == "torch":
            from ra3_megatron.rl.torch_trainer import TorchPolicyTrainer

            return TorchPolicyTrainer(model_dir, lr=lr, clip_eps=clip_eps, kl_coef=kl_coef, micro_batch=micro_batch,
                                      rows_per_update=torch_rows_per_update, seed=seed, threads=threads)
        from ra3_megatron.rl.megatron_trainer import MegatronPolicyTrainer

        dp = data_parallel_size(job_wide=job_wide, world=world, tp=layout.tp, pp=layout.pp)
        return MegatronPolicyTrainer.from_hf(model_dir, lr=lr, clip_eps=clip_eps, kl_coef=kl_coef,
                                             micro_batch=micro_batch,
                                             rows_per_update=rows_per_update(rows, micro_batch, dp),
                                             seq_length=seq_length, seed=seed, tp=layout.tp, pp=layout.pp,
                                             job_wide=job_wide)

    return make
