"""`key=value` overrides for typed dataclass configs (the launcher's command-line contract).

    cfg = apply_overrides(cfg, ["iterations=3", "estep.penalty=0.1", "mstep.steps=50"])

Dotted keys reach nested dataclasses; values are parsed by the field's annotation (int, float,
bool, str, `X | None` with `none`); `list[str]` fields take a comma list, or `+=` to append one.
Unknown keys are an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from ra3_megatron.errors import ConfigError


def field_type(owner: type, name: str) -> Any:
    hints = typing.get_type_hints(owner)
    return hints[name]


def unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner[0], len(inner) < len(typing.get_args(annotation))
    return annotation, False


def parse_value(name: str, text: str, annotation: Any) -> Any:
    """Parse `text` as a value of `annotation` (the type of field `name`, for error messages)."""
    typ, optional = unwrap_optional(annotation)
    if optional and text.lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        allowed = typing.get_args(typ)
        for option in allowed:
            if str(option) == text:
                return option
        raise ConfigError(f"{name}: expected one of {allowed}, got {text!r}")
    if origin in (list, tuple):
        (item,) = typing.get_args(typ)[:1] or (str,)
        items = [parse_value(name, part, item) for part in text.split(",") if part != ""]
        return items if origin is list else tuple(items)
    if typ is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected a boolean, got {text!r}")
    if typ in (int, float, str):
        try:
            return typ(text)
        except ValueError as exc:
            raise ConfigError(f"{name}: expected {typ.__name__}, got {text!r}") from exc
    raise ConfigError(f"{name}: cannot set a field of type {typ} from the command line")


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """A copy of dataclass `cfg` with each `key=value` (or `key+=value` for lists) applied."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"bad override {item!r}: expected KEY=VALUE")
        append = key.endswith("+")
        cfg = _set(cfg, key.rstrip("+").strip().replace("-", "_").split("."), text, append, item)
    return cfg


def _set(obj: Any, path: list[str], text: str, append: bool, item: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise ConfigError(f"bad override {item!r}: {type(obj).__name__} has no fields")
    names = [f.name for f in dataclasses.fields(obj)]
    head = path[0]
    if head not in names:
        raise ConfigError(f"bad override {item!r}: {type(obj).__name__} has no field {head!r} "
                          f"(fields: {', '.join(names)})")
    if len(path) > 1:
        return dataclasses.replace(obj, **{head: _set(getattr(obj, head), path[1:], text, append, item)})
    annotation = field_type(type(obj), head)
    if append:
        base, _ = unwrap_optional(annotation)
        if typing.get_origin(base) not in (list, tuple):
            raise ConfigError(f"bad override {item!r}: += appends to a list field, {head!r} is not one")
        (item_type,) = typing.get_args(base)[:1] or (str,)
        items = [*(getattr(obj, head) or ()), parse_value(head, text, item_type)]
        return dataclasses.replace(obj, **{head: items if typing.get_origin(base) is list else tuple(items)})
    return dataclasses.replace(obj, **{head: parse_value(head, text, annotation)})


def documented(help: str, default: Any = None, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its command-line help (`cli.config_args` prints it in `--help`)."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})
