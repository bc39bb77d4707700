"""The command-line side of `rl.layout` and `rollout.settings`: the flags of an RL phase's trainer
layout (--trainer, --rl-ranks, --tp, --pp) and of the rollout engines (--backend, --rollout-tp, ...),
generated from their dataclasses."""

from __future__ import annotations

import argparse

from ra3_megatron.cli.config_args import add_config_arguments, config_from_args
from ra3_megatron.rl.layout import RLLayout
from ra3_megatron.rollout.settings import EngineSettings


def add_rl_job_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser.add_argument_group("RL trainer and the job's ranks"), RLLayout, prefix="rl")


def rl_layout_from_args(args: argparse.Namespace) -> RLLayout:
    return config_from_args(args, RLLayout, prefix="rl")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser.add_argument_group("rollout engines"), EngineSettings, prefix="engine")


def engine_settings_from_args(args: argparse.Namespace) -> EngineSettings:
    return config_from_args(args, EngineSettings, prefix="engine")
