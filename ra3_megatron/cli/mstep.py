"""`ra3 mstep`: the M-step (latent-aware NTP) on Megatron-Core, launched with torchrun.

    torchrun --nproc-per-node 2 -m ra3_megatron.cli.main mstep --model HF_DIR --data PREFIX \\
        --out RUN_DIR --tp 2 --pp 1 --steps 100 --micro-batch-size 2 --global-batch-size 8 \\
        --seq-length 256 --lr 3e-4 --latent-weight 1.0 [key=value ...]

Every MStepConfig field is a flag (`--micro-batch-size`) and also a `key=value` override
(`micro_batch_size=2`); overrides win. Booleans: `--distributed-optimizer` / `--no-distributed-optimizer`,
`bf16=true`. Optional fields take `none`. A plain `python -m ra3_megatron.cli.main mstep` runs on one rank.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from typing import Any

from ra3_megatron import overrides
from ra3_megatron.errors import ConfigError
from ra3_megatron.megatron.trainer import MStepConfig

_REQUIRED = ("model", "data", "out")


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(scalar type, optional?) of a field annotation such as `int | None`."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # `from __future__ import annotations`
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return annotation, False


def parse_value(name: str, text: str, annotation: Any) -> Any:
    """Parse a flag / override value by the field's annotation (which may be a string here)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # `from __future__ import annotations`
    return overrides.parse_value(name, text, annotation)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(MStepConfig):
        flag = "--" + f.name.replace("_", "-")
        typ, optional = _base_type(f.type)
        default = None if f.default is dataclasses.MISSING else f.default
        helptext = f"(default: {default})" if f.name not in _REQUIRED else "(required)"
        if typ is bool and not optional:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            parser.add_argument(
                flag, dest=f.name, default=None, metavar=typ.__name__.upper(),
                type=lambda s, f=f: parse_value(f.name, s, f.type), help=helptext,
            )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="MStepConfig field overrides")


def config_from_args(args: argparse.Namespace) -> MStepConfig:
    fields = {f.name: f for f in dataclasses.fields(MStepConfig)}
    values = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}
    for item in getattr(args, "overrides", None) or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ConfigError(f"bad override {item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        values[key] = parse_value(key, text, fields[key].type)
    missing = [f"--{n}" for n in _REQUIRED if n not in values]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}")
    return MStepConfig(**values)


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
