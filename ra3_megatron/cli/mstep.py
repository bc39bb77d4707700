"""`ra3 mstep`: the M-step (latent-aware NTP) on Megatron-Core, launched with torchrun.

    torchrun --nproc-per-node 2 -m ra3_megatron.cli.main mstep --model HF_DIR --data PREFIX \\
        --out RUN_DIR --tp 2 --pp 1 --steps 100 --micro-batch-size 2 --global-batch-size 8 \\
        --seq-length 256 --lr 3e-4 --latent-weight 1.0 [key=value ...]

Every MStepConfig field is a flag (`--micro-batch-size`) and also a `key=value` override
(`micro_batch_size=2`); `--config FILE` reads a JSON object of fields first (the EM loop launches
its M-step this way). Later sources win: file, flags, overrides. Booleans:
`--distributed-optimizer` / `--no-distributed-optimizer`, `bf16=true`; optional fields take `none`.
A plain `python -m ra3_megatron.cli.main mstep` runs on one rank.
"""

from __future__ import annotations

import argparse
import os
import sys

from ra3_megatron.cli.config_args import add_config_arguments, config_values
from ra3_megatron.errors import ConfigError
from ra3_megatron.megatron.trainer import MSTEP_PATHS, MStepConfig, load_mstep_config
from ra3_megatron.overrides import apply_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE", help="a JSON object of MStepConfig fields")
    add_config_arguments(parser, MStepConfig, prefix="mstep", required=MSTEP_PATHS)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="MStepConfig field overrides")


def config_from_args(args: argparse.Namespace) -> MStepConfig:
    import dataclasses

    cfg = load_mstep_config(args.config) if args.config else MStepConfig()
    cfg = dataclasses.replace(cfg, **config_values(args, MStepConfig, prefix="mstep"))
    cfg = apply_overrides(cfg, list(args.overrides or []))
    missing = [f"--{name}" for name in MSTEP_PATHS if not getattr(cfg, name)]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}")
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    # One torch thread per rank: several ranks share the CPU cores (2 threads per rank cost 39%).
    if "OMP_NUM_THREADS" not in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        torch.set_num_threads(1)
    from ra3_megatron.megatron.trainer import run_mstep

    try:
        run_mstep(cfg)
    finally:
        if "megatron.core" in sys.modules:  # bad input fails before Megatron is even imported
            from ra3_megatron.megatron.parallel import destroy_distributed

            destroy_distributed()
    return 0
