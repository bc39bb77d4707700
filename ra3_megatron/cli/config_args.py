"""One command-line flag per field of a typed config dataclass, and the config back from the flags.

    group = parser.add_argument_group("E-step")
    add_config_arguments(group, EStepConfig, prefix="estep")      # --penalty, --rl-steps, ...
    cfg = config_from_args(args, EStepConfig, prefix="estep")     # only the flags given override

Booleans get `--flag/--no-flag`; `Literal[...]` fields get choices. Values the flags leave unset keep
the dataclass defaults, so the config class stays the one place where defaults live.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any


def _field_type(owner: type, f: dataclasses.Field) -> tuple[Any, tuple | None]:
    ann = typing.get_type_hints(owner)[f.name]
    if typing.get_origin(ann) is typing.Literal:
        return str, typing.get_args(ann)
    return ann, None


def add_config_arguments(group, cls: type, *, prefix: str) -> None:
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        typ, choices = _field_type(cls, f)
        dest = f"{prefix}_{f.name}"
        if typ is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                               help=f"(default: {f.default})")
        else:
            group.add_argument(flag, dest=dest, type=typ, choices=choices, default=None,
                               metavar=None if choices else getattr(typ, "__name__", "X").upper(),
                               help=f"(default: {f.default})")


def config_from_args(args: argparse.Namespace, cls: type, *, prefix: str):
    values = {f.name: getattr(args, f"{prefix}_{f.name}") for f in dataclasses.fields(cls)
              if getattr(args, f"{prefix}_{f.name}", None) is not None}
    return cls(**values)
