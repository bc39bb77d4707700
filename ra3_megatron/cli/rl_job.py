"""The options and set-up that put an RL phase (q's RL in the E-step, GRPO) on every rank of a
torchrun job: one data-parallel Megatron trainer at --tp x --pp over all ranks, a rollout engine
on every rank, the job's process group created before any engine (vLLM builds its own groups
inside it) and torn down after."""

from __future__ import annotations

import argparse
import contextlib
import os

from ra3_megatron.errors import ConfigError


def add_rl_job_arguments(parser: argparse.ArgumentParser, *, what: str) -> None:
    group = parser.add_argument_group("RL over the job's ranks")
    group.add_argument("--rl-ranks", choices=("auto", "all", "first"), default="auto",
                       help=f"who runs {what}: all ranks of the torchrun job (one data-parallel trainer, "
                            "rollouts on every rank) or the first alone; auto: all under torchrun with the "
                            "Megatron trainer, else first")
    group.add_argument("--tp", type=int, default=1, help="the Megatron trainer's tensor-parallel size (--rl-ranks all)")
    group.add_argument("--pp", type=int, default=1, help="the Megatron trainer's pipeline-parallel size (--rl-ranks all)")


def torchrun_world() -> int:
    """WORLD_SIZE as torchrun sets it (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_rl_ranks(args: argparse.Namespace, *, trainer: str, workers: int, rl_on: bool = True) -> str:
    """"all" or "first" (see --rl-ranks), checked against how the processes were started."""
    under_torchrun = workers > 1 and torchrun_world() == workers
    choice = args.rl_ranks
    if choice == "auto":
        choice = "all" if under_torchrun and trainer == "megatron" and rl_on else "first"
    if choice == "all" and workers > 1:
        if not under_torchrun:
            raise ConfigError("--rl-ranks all needs the processes started by torchrun (WORLD_SIZE = the workers)")
        if trainer != "megatron":
            raise ConfigError("--rl-ranks all needs --trainer megatron (the torch trainer runs on one process)")
    if (args.tp > 1 or args.pp > 1) and not (choice == "all" and workers > 1):
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
