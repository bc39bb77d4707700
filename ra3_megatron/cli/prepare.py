"""`ra3 prepare`: code files / jsonl / parquet / saved HF datasets -> Megatron indexed dataset.

    ra3 prepare --input src/ --tokenizer tiny --output data/code
    ra3 prepare --input estep/iter1 --tokenizer smollm2 --output data/infused --holdout 0.01

Writes PREFIX.bin/.idx (token ids, one EOS after each snippet) and PREFIX_classes.bin/.idx (0 code /
1 latent), or PREFIX_train* / PREFIX_valid* with --holdout, plus PREFIX.summary.json; prints a
progress bar (stderr) and a summary table (stdout). Bad input is an error naming file and line, or
a counted skip listed in the summary.
"""

from __future__ import annotations

import argparse

from ra3_megatron.cli.config_args import add_config_arguments, config_from_args
from ra3_megatron.data.prepare import PREPARE_PATHS, PrepareConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PrepareConfig, prefix="prepare", skip=("batch_docs", "batch_chars"),
                         required=PREPARE_PATHS)


def run(args: argparse.Namespace) -> int:
    from ra3_megatron.data.prepare import format_summary, prepare

    cfg = config_from_args(args, PrepareConfig, prefix="prepare")
    cfg.validate()
    summary = prepare(cfg)
    print(format_summary(summary))
    print(f"summary: {cfg.output}.summary.json")
    return 0
