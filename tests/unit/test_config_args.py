"""The one command-line mechanism: a flag per dataclass field, typed by the field's annotation."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from ra3_megatron.cli.config_args import add_config_arguments, config_from_args
from ra3_megatron.errors import ConfigError, InputError

pytestmark = pytest.mark.unit


@dataclass(kw_only=True)
class Example:
    steps: int = 3
    rate: float | None = None
    mode: Literal["a", "b"] = "a"
    fast: bool = True
    tags: tuple[str, ...] = field(default=(), metadata={"help": "a tag"})
    name: str = ""


def _parse(argv, **kw):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Example, prefix="ex", **kw)
    return parser, parser.parse_args(argv)


def test_every_field_is_a_typed_flag_and_unset_flags_keep_the_defaults():
    _, args = _parse(["--steps", "5", "--rate", "none", "--mode", "b", "--no-fast", "--tags", "x", "--tags", "y"])
    assert config_from_args(args, Example, prefix="ex") == Example(steps=5, rate=None, mode="b", fast=False,
                                                                   tags=("x", "y"))
    _, args = _parse(["--rate", "0.5"])
    assert config_from_args(args, Example, prefix="ex") == Example(rate=0.5)
    # over a base config: only the given flags replace its values
    _, args = _parse(["--steps", "9"])
    assert config_from_args(args, Example, prefix="ex", base=Example(name="base", steps=1)) == Example(
        name="base", steps=9)


def test_bad_values_are_argparse_errors_naming_the_field(capsys):
    with pytest.raises(SystemExit):
        _parse(["--steps", "many"])
    assert "argument --steps: steps: expected int, got 'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--mode", "c"])
    assert "mode: expected one of ('a', 'b'), got 'c'" in capsys.readouterr().err


def test_a_flag_prefix_and_skipped_fields():
    parser, args = _parse(["--ex.steps=4"], flag_prefix="ex.", skip=("name",))
    assert config_from_args(args, Example, prefix="ex").steps == 4
    assert "--ex.name" not in parser.format_help() and "a tag" in parser.format_help()


def test_none_given_on_the_command_line_replaces_a_base_value():
    _, args = _parse(["--rate", "none"])
    assert config_from_args(args, Example, prefix="ex", base=Example(rate=0.5)).rate is None
    _, args = _parse([])
    assert config_from_args(args, Example, prefix="ex", base=Example(rate=0.5)).rate == 0.5


def test_mstep_reads_a_config_file_then_flags_then_overrides(tmp_path):
    from ra3_megatron.cli.main import build_parser
    from ra3_megatron.cli.mstep import config_from_args as mstep_config
    from ra3_megatron.megatron.trainer import MStepConfig, save_mstep_config

    path = save_mstep_config(MStepConfig(model="m", data="d", out="o", steps=7, tp=2), tmp_path / "c.json")
    argv = ["mstep", "--config", str(path), "--tp", "1", "lr=0.5"]
    cfg = mstep_config(build_parser(argv).parse_args(argv))
    assert (cfg.model, cfg.steps, cfg.tp, cfg.lr) == ("m", 7, 1, 0.5)
    path = save_mstep_config(MStepConfig(model="m", data="d", out="o", fp8="hybrid"), tmp_path / "c.json")
    argv = ["mstep", "--config", str(path), "--fp8", "none"]
    assert mstep_config(build_parser(argv).parse_args(argv)).fp8 is None

    (tmp_path / "bad.json").write_text(json.dumps({"model": "m", "nosuch": 1}))
    argv = ["mstep", "--config", str(tmp_path / "bad.json")]
    with pytest.raises(InputError, match="bad.json: not an MStepConfig"):
        mstep_config(build_parser(argv).parse_args(argv))
    argv = ["mstep", "--config", str(tmp_path / "missing.json")]
    with pytest.raises(InputError, match="missing.json"):
        mstep_config(build_parser(argv).parse_args(argv))


def test_em_flags_make_one_typed_config():
    from ra3_megatron.cli.em import phase_configs_from_args
    from ra3_megatron.cli.main import build_parser
    from ra3_megatron.cli.rl_job import engine_settings_from_args, rl_layout_from_args

    argv = ["em", "--model", "m", "--input", "i", "--run-dir", "r", "--mstep.steps", "5", "--mstep.bf16", "false",
            "--prepare.max-tokens", "512", "--prepare.exclude", "tests", "--no-prepare.dedup", "--backend", "fake",
            "--memory-fraction", "0.3", "--tp", "2", "--mstep-runner", "inprocess"]
    args = build_parser(argv).parse_args(argv)
    phases = phase_configs_from_args(args, progress=False)
    assert (phases["mstep"].steps, phases["mstep"].bf16, phases["mstep"].model) == (5, False, "")
    assert (phases["prepare"].max_tokens, phases["prepare"].exclude, phases["prepare"].dedup) == (512, ("tests",), False)
    assert phases["mstep_runner"] == "inprocess" and phases["prepare"].progress is False
    engines, layout = engine_settings_from_args(args), rl_layout_from_args(args)
    assert (engines.backend, engines.memory_fraction, layout.tp) == ("fake", 0.3, 2)
    with pytest.raises(ConfigError, match="score-matmul-dtype"):
        argv = ["em", "--model", "m", "--input", "i", "--run-dir", "r", "--backend", "vllm",
                "--score-matmul-dtype", "bfloat16"]
        engine_settings_from_args(build_parser(argv).parse_args(argv))
