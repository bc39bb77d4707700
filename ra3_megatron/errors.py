"""Errors the user can act on. The CLI prints them as one line (no traceback) and exits 2."""

from __future__ import annotations

import os


class RA3Error(Exception):
    """Base class for problems with the user's input or setup."""


class InputError(RA3Error):
    """Bad input data: names the file, the line (1-based, when known) and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str, line: int | None = None):
        self.path = os.fspath(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class ConfigError(RA3Error):
    """An invalid or unsupported configuration (e.g. FP8 without Transformer Engine)."""
