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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="a .py file or directory of them, .jsonl/.json, "
                        ".parquet, a saved HF dataset dir, or an E-step output dir (manifest.json)")
    parser.add_argument("--tokenizer", required=True, help="HF tokenizer dir, tokenizer.json, `tiny` or `smollm2`")
    parser.add_argument("--output", required=True, help="output prefix (PREFIX.bin / PREFIX.idx ...)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="snippet token budget; 0 = no chunking")
    parser.add_argument("--holdout", type=float, default=0.0,
                        help="fraction of files held out (PREFIX_train / PREFIX_valid); 0 = one PREFIX")
    parser.add_argument("--no-dedup", action="store_true", help="keep exact duplicate snippets")
    parser.add_argument("--workers", type=int, default=1, help="worker processes for chunking + tokenizing")
    parser.add_argument("--skip-bad-lines", action="store_true",
                        help="count bad jsonl lines / records as skips instead of stopping with an error")
    parser.add_argument("--limit", type=int, default=None, help="read at most N documents")
    parser.add_argument("--text-field", default="auto", help="record field with the code (auto: text, content, code)")
    parser.add_argument("--max-line-chars", type=int, default=20_000,
                        help="skip documents with a longer line (minified / generated data)")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="skip files with a path component matching GLOB (repeatable), e.g. --exclude test")
    parser.add_argument("--eos-token", default=None, help="end-of-document token (default: the tokenizer's eos)")
    parser.add_argument("--write-snippets", action="store_true", help="also write PREFIX.snippets.jsonl")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ra3_megatron.data.prepare import PrepareConfig, format_summary, prepare
    from ra3_megatron.errors import ConfigError

    if args.max_tokens < 0:
        raise ConfigError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    if not 0.0 <= args.holdout < 1.0:
        raise ConfigError(f"--holdout must be in [0, 1), got {args.holdout}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    cfg = PrepareConfig(
        input=args.input, tokenizer=args.tokenizer, output=args.output, max_tokens=args.max_tokens,
        holdout=args.holdout, dedup=not args.no_dedup, workers=args.workers, skip_bad_lines=args.skip_bad_lines,
        limit=args.limit, text_field=args.text_field, max_line_chars=args.max_line_chars,
        exclude=tuple(args.exclude), eos_token=args.eos_token, write_snippets=args.write_snippets,
        progress=not args.no_progress,
    )
    summary = prepare(cfg)
    print(format_summary(summary))
    print(f"summary: {args.output}.summary.json")
    return 0
