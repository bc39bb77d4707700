"""`ra3 em`: the RA3 EM loop, E-step -> prepare -> M-step, for N iterations.

    ra3 em --model HF_DIR --input src/ --run-dir runs/em --iterations 2 \\
           [E-step flags: --penalty 0.05 --samples 4 --horizon 4 --rl-steps 2 --backend hf ...] \\
           [M-step flags: --mstep.steps 200 --mstep.global-batch-size 16 ...] \\
           [prepare flags: --prepare.max-tokens 1024 ...] [--nproc 2]

Every field of the E-step's, the M-step's and prepare's configs is a flag (`ra3 em --help`); they
make one typed `EMConfig`. Run layout and resume rules: see `ra3_megatron.em.loop`. Rerun the same
command to resume an interrupted run at the phase where it stopped; raising --iterations continues
a finished run. `--mstep-runner module:function` (and `--prepare-runner`) plug in another M-step
(tests use a fake one).

As one torchrun job, every phase runs over the job's ranks (RL on q with rollouts on every rank
and one data-parallel trainer at --tp x --pp, the infusion sharded, the M-step in-process at
--mstep.tp x --mstep.pp); rerunning the same command resumes it:

    torchrun --nproc-per-node 8 -m ra3_megatron.cli.main em --model M --input src/ --run-dir runs/em \\
        --backend vllm --mstep.tp 2
"""

from __future__ import annotations

import argparse
import os

from ra3_megatron.cli.config_args import add_config_arguments, config_from_args
from ra3_megatron.cli.estep import add_estep_config_arguments, estep_config_from_args
from ra3_megatron.cli.rl_job import (
    add_engine_arguments,
    add_rl_job_arguments,
    engine_settings_from_args,
    rl_layout_from_args,
)
from ra3_megatron.data.prepare import PREPARE_PATHS, PrepareConfig
from ra3_megatron.megatron.trainer import MSTEP_PATHS, MStepConfig

_PREPARE_SKIP = (*PREPARE_PATHS, "progress", "batch_docs", "batch_chars")


def add_em_phase_arguments(parser: argparse.ArgumentParser, *, iterations: int) -> None:
    """The EM loop's rounds and its prepare / M-step phases (shared with `ra3 compare`)."""
    parser.add_argument("--iterations", type=int, default=iterations, help="EM rounds")
    parser.add_argument("--init", choices=("previous", "base"), default="previous",
                        help="M-step starts from the previous round's model (default) or the base model")
    parser.add_argument("--mstep-runner", default="ra3",
                        help="ra3 (`ra3 mstep` subprocess / torchrun), inprocess, or module:function")
    parser.add_argument("--prepare-runner", default="ra3", help="ra3 (in-process prepare) or module:function")
    parser.add_argument("--nproc", type=int, default=1, help="M-step ranks (torchrun when > 1)")
    add_config_arguments(parser.add_argument_group("M-step (the paths are set each round)"), MStepConfig,
                         prefix="mstep", flag_prefix="mstep.", skip=MSTEP_PATHS)
    add_config_arguments(parser.add_argument_group("prepare (the paths are set each round)"), PrepareConfig,
                         prefix="prepare", flag_prefix="prepare.", skip=_PREPARE_SKIP)


def phase_configs_from_args(args: argparse.Namespace, *, progress: bool) -> dict:
    """EMConfig's (and CompareConfig's) prepare / M-step fields from the flags."""
    return {"prepare": config_from_args(args, PrepareConfig, prefix="prepare", base=PrepareConfig(progress=progress)),
            "mstep": config_from_args(args, MStepConfig, prefix="mstep"),
            "prepare_runner": args.prepare_runner, "mstep_runner": args.mstep_runner, "nproc": args.nproc,
            "iterations": args.iterations, "init": args.init}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF checkpoint dir of the starting model")
    parser.add_argument("--input", required=True, help="the corpus (anything `ra3 prepare` reads)")
    parser.add_argument("--run-dir", required=True, help="run directory (resumed when it exists)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_em_phase_arguments(parser, iterations=2)
    add_engine_arguments(parser)
    add_rl_job_arguments(parser)
    add_estep_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ra3_megatron.em.job import run_em_job
    from ra3_megatron.em.loop import EMConfig

    cfg = EMConfig(model=args.model, input=args.input, run_dir=args.run_dir, estep=estep_config_from_args(args),
                   **phase_configs_from_args(args, progress=not args.no_progress))
    state = run_em_job(cfg, engine_settings_from_args(args), rl_layout_from_args(args),
                       progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:  # the first rank reports
        return 0
    print(f"EM: {len(state['completed'])} phases done; models: "
          + ", ".join(f"{k} {v}" for k, v in state["models"].items()))
    print(f"  report: {args.run_dir}/report.md")
    return 0
