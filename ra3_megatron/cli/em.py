"""`ra3 em`: the RA3 EM loop, E-step -> `ra3 prepare` -> M-step, for N iterations.

    ra3 em --model HF_DIR --input src/ --run-dir runs/em --iterations 2 \\
           [E-step flags: --penalty 0.05 --samples 4 --horizon 4 --rl-steps 2 --backend hf ...] \\
           [--mstep-arg steps=200 --mstep-arg global_batch_size=16 ...] [--nproc 2]

Run layout and resume rules: see `ra3_megatron.em.loop`. Rerun the same command to resume an
interrupted run at the phase where it stopped; raising --iterations continues a finished run.
`--mstep module:function` (and `--prepare`) plug in another M-step (tests use a fake one).

As one torchrun job, every phase runs over the job's ranks (RL on q with rollouts on every rank
and one data-parallel trainer at --tp x --pp, the infusion sharded, the M-step in-process at the
layout its --mstep-arg tp=/pp= give); rerunning the same command resumes it:

    torchrun --nproc-per-node 8 -m ra3_megatron.cli.main em --model M --input src/ --run-dir runs/em \
        --backend vllm --mstep-arg tp=2
"""

from __future__ import annotations

import argparse
import os

from ra3_megatron.cli.estep import (
    add_engine_arguments,
    add_estep_config_arguments,
    engine_factory,
    estep_config_from_args,
    trainer_factory,
    trainer_kind,
)
from ra3_megatron.cli.rl_job import add_rl_job_arguments, job_process_group, resolve_rl_ranks, torchrun_world
from ra3_megatron.errors import ConfigError


def add_em_phase_arguments(parser: argparse.ArgumentParser, *, iterations: int) -> None:
    """The EM loop's rounds and its prepare / M-step phases (shared with `ra3 compare`)."""
    parser.add_argument("--iterations", type=int, default=iterations, help="EM rounds")
    parser.add_argument("--init", choices=("previous", "base"), default="previous",
                        help="M-step starts from the previous round's model (default) or the base model")
    parser.add_argument("--mstep", default="ra3", help="ra3 (subprocess / torchrun), inprocess, or module:function")
    parser.add_argument("--prepare", default="ra3", help="ra3 (in-process `ra3 prepare`) or module:function")
    parser.add_argument("--mstep-arg", action="append", default=[], metavar="ARG",
                        help="passed to `ra3 mstep` (e.g. steps=200, --tp=2); repeatable")
    parser.add_argument("--prepare-arg", action="append", default=[], metavar="ARG",
                        help="passed to `ra3 prepare` (e.g. --max-tokens=1024); repeatable")
    parser.add_argument("--nproc", type=int, default=1, help="M-step ranks (torchrun when > 1)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF checkpoint dir of the starting model")
    parser.add_argument("--input", required=True, help="the corpus (anything `ra3 prepare` reads)")
    parser.add_argument("--run-dir", required=True, help="run directory (resumed when it exists)")
    add_em_phase_arguments(parser, iterations=2)
    parser.add_argument("--no-progress", action="store_true", help="no E-step progress bars")
    add_engine_arguments(parser)
    add_rl_job_arguments(parser, what="RL on q")
    add_estep_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ra3_megatron.em.loop import EMConfig, run_em

    estep = estep_config_from_args(args)
    cfg = EMConfig(model=args.model, input=args.input, run_dir=args.run_dir, iterations=args.iterations,
                   init=args.init, prepare=args.prepare, mstep=args.mstep, prepare_args=list(args.prepare_arg),
                   mstep_args=list(args.mstep_arg), nproc=args.nproc, estep=estep)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    world = torchrun_world()
    if world > 1:  # one torchrun job: every phase over its ranks
        if resolve_rl_ranks(args, trainer=trainer_kind(args), workers=world, rl_on=True) != "all":
            raise ConfigError("under torchrun `ra3 em` runs every phase over the job's ranks: it needs the "
                              "Megatron trainer (--trainer megatron, --rl-ranks auto or all)")
        if args.nproc != 1:
            raise ConfigError("under torchrun the M-step runs over the job's ranks: leave --nproc at 1")
    else:
        resolve_rl_ranks(args, trainer=trainer_kind(args), workers=1)  # --tp/--pp need a job
    make_trainer = trainer_factory(args, estep, job_wide=world > 1, tp=args.tp, pp=args.pp, world=world)
    with job_process_group(world > 1, tp=args.tp, pp=args.pp, seed=estep.seed):
        from ra3_megatron.rl.job import Job

        state = run_em(cfg, make_engine=engine_factory(args), make_trainer=make_trainer,
                       progress=not args.no_progress, job=Job.of_default_group())
    if int(os.environ.get("RANK", "0")) != 0:  # the first rank reports
        return 0
    print(f"EM: {len(state['completed'])} phases done; models: "
          + ", ".join(f"{k} {v}" for k, v in state["models"].items()))
    print(f"  report: {args.run_dir}/report.md")
    return 0
