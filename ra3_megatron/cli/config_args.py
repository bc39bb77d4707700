"""The one way every `ra3` command line reaches a typed config: a flag per dataclass field.

    group = parser.add_argument_group("E-step")
    add_config_arguments(group, EStepConfig, prefix="estep")             # --penalty, --rl-steps, ...
    add_config_arguments(group, MStepConfig, prefix="mstep", flag_prefix="mstep.",
                         skip=MSTEP_PATHS)                               # --mstep.steps, --mstep.tp, ...
    cfg = config_from_args(args, EStepConfig, prefix="estep")            # only the flags given override

Values are parsed by the field's annotation (`ra3_megatron.overrides.parse_value`, the same parser
as the `key=value` overrides of recipes and `ra3 mstep`): `bool` fields get `--flag/--no-flag`,
`X | None` takes `none`, `Literal[...]` gets choices, `tuple`/`list` fields are repeatable flags.
A field's `metadata["help"]` is its help text. Flags left unset keep the dataclass's (or a given
base config's) values, so the config class stays the one place where defaults live.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable
from typing import Any

from ra3_megatron.errors import ConfigError
from ra3_megatron.overrides import parse_value, unwrap_optional


def _parser(name: str, annotation: Any):
    def parse(text: str) -> Any:
        try:
            return parse_value(name, text, annotation)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = getattr(unwrap_optional(annotation)[0], "__name__", "value")  # argparse's messages
    return parse


def add_config_arguments(group, cls: type, *, prefix: str, flag_prefix: str = "",
                         skip: Iterable[str] = (), required: Iterable[str] = ()) -> None:
    """One flag per field of dataclass `cls` (but `skip`), stored as `{prefix}_{field}`."""
    hints = typing.get_type_hints(cls)
    skip, required = set(skip), set(required)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        annotation = hints[f.name]
        base, optional = unwrap_optional(annotation)
        flag = "--" + flag_prefix + f.name.replace("_", "-")
        dest = f"{prefix}_{f.name}"
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        helptext = f.metadata.get("help", "")
        helptext = f"{helptext} (required)" if f.name in required else f"{helptext} (default: {default})"
        if base is bool and not optional:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=helptext.strip())
        elif typing.get_origin(base) in (list, tuple):
            (item,) = typing.get_args(base)[:1] or (str,)
            group.add_argument(flag, dest=dest, action="append", type=_parser(f.name, item), default=argparse.SUPPRESS,
                               metavar=getattr(item, "__name__", "X").upper(),
                               help=f"{helptext.strip()}; repeatable")
        else:
            choices = typing.get_args(base) if typing.get_origin(base) is typing.Literal else None
            group.add_argument(flag, dest=dest, type=_parser(f.name, annotation), choices=choices, default=argparse.SUPPRESS,
                               metavar=None if choices else getattr(base, "__name__", "X").upper(),
                               help=helptext.strip())


def config_values(args: argparse.Namespace, cls: type, *, prefix: str) -> dict[str, Any]:
    """The fields whose flags were given, as typed values."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        dest = f"{prefix}_{f.name}"
        if not hasattr(args, dest):  # not given (flags default to SUPPRESS, so `--x none` is a value)
            continue
        value = getattr(args, dest)
        if typing.get_origin(unwrap_optional(hints[f.name])[0]) is tuple:
            value = tuple(value)
        values[f.name] = value
    return values


def config_from_args(args: argparse.Namespace, cls: type, *, prefix: str, base: Any = None):
    """`cls` built from the given flags, over `base` (an instance of `cls`) or the defaults."""
    values = config_values(args, cls, prefix=prefix)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)
