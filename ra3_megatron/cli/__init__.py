"""The `ra3` command line: one entry point, subcommands registered lazily (see registry.py)."""
