"""`ra3 convert`: Hugging Face checkpoints <-> Megatron-Core dist checkpoints.

    ra3 convert hf-to-mcore --hf HF_DIR --out MCORE_DIR [--tp 2 --pp 1] [--dtype auto]
    ra3 convert mcore-to-hf --mcore MCORE_DIR --out HF_DIR

The Megatron checkpoint loads under any TP/PP; --tp/--pp only choose the layout the conversion runs
with (tp*pp ranks: under torchrun already, or relaunched under torchrun). The HF output has
safetensors, config.json and the tokenizer, loadable by transformers and vLLM.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    a = sub.add_parser("hf-to-mcore", help="HF checkpoint dir -> Megatron dist checkpoint dir")
    a.add_argument("--hf", required=True, help="HF checkpoint directory (config.json + safetensors)")
    a.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    a.add_argument("--tp", type=int, default=1, help="tensor-parallel size to convert with")
    a.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to convert with")
    a.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="parameter dtype (auto: the dtype of the HF weights)",
    )
    b = sub.add_parser("mcore-to-hf", help="Megatron dist checkpoint dir -> HF checkpoint dir")
    b.add_argument("--mcore", required=True, help="directory written by `ra3 convert hf-to-mcore`")
    b.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    b.add_argument("--tp", type=int, default=1, help="tensor-parallel size to convert with")
    b.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to convert with")


def _argv(args) -> list[str]:
    if args.direction == "hf-to-mcore":
        return [
            "hf-to-mcore",
            "--hf",
            args.hf,
            "--out",
            args.out,
            "--tp",
            str(args.tp),
            "--pp",
            str(args.pp),
            "--dtype",
            args.dtype,
        ]
    return [
        "mcore-to-hf",
        "--mcore",
        args.mcore,
        "--out",
        args.out,
        "--tp",
        str(args.tp),
        "--pp",
        str(args.pp),
    ]


def run(args) -> int:
    from ra3_megatron.errors import ConfigError
    from ra3_megatron.megatron import convert

    if args.tp < 1 or args.pp < 1:
        raise ConfigError(f"--tp and --pp must be >= 1, got {args.tp} and {args.pp}")
    convert.check_inputs(args.direction, args.hf if args.direction == "hf-to-mcore" else args.mcore, args.out)
    nproc = args.tp * args.pp
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        return convert.relaunch_under_torchrun(nproc, "ra3_megatron.cli.convert", _argv(args))
    if args.direction == "hf-to-mcore":
        convert.hf_to_mcore(args.hf, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype)
    else:
        convert.mcore_to_hf(args.mcore, args.out, tp=args.tp, pp=args.pp)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (tools/convert_checkpoint.py, torchrun workers): same options as `ra3 convert`."""
    from ra3_megatron.cli.main import main as ra3_main

    return ra3_main(["convert", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
