"""`ra3` entry point: `ra3 SUBCOMMAND [options]`; `ra3 SUBCOMMAND --help` for each."""

from __future__ import annotations

import argparse
import sys

from ra3_megatron import __version__
from ra3_megatron.cli.registry import subcommands
from ra3_megatron.errors import RA3Error


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ra3", description="RA3 mid-training for Megatron-Core.")
    parser.add_argument("--version", action="version", version=f"ra3_megatron {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, cmd in subcommands().items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if name == chosen:  # only the chosen subcommand's module is imported
            module = cmd.load()
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args._run(args) or 0)
    except RA3Error as exc:
        print(f"ra3 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ra3 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
