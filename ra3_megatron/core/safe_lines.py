"""Where a thought (one comment line) can be inserted without changing a Python program.

A comment line is invisible to Python only where the tokenizer is between lines: the physical
line above the insertion point must end with a NEWLINE or NL token. That excludes
- lines inside a multi-line string (a `#` line there would become part of the string),
- lines after a backslash continuation (the comment would end the joined line early),
- lines inside a multi-line f-/t-string on Python >= 3.12, whose replacement fields emit NL,
and allows lines inside brackets, where Python ignores comment lines. A few header lines are
excluded too: the first line of a text with a BOM or a `#!` line, and every line up to a PEP 263
coding declaration (a thought above it would push it past line 2).

Lines are physical lines as in `lines.split_lines` ("\\n"-terminated); Python also breaks lines at
a lone "\\r", which is mapped here. Text that does not tokenize (another language, a chunk cut
mid-statement) falls back to all non-blank lines after the point where tokenizing failed, except
after an unterminated string, where every later line is unsafe.

    >>> sorted(safe_thought_lines("x = 1\\ns = '''\\nin string\\n'''\\ny = 2\\n"))
    [0, 1, 4]
"""

from __future__ import annotations

import io
import re
import tokenize

from ra3_megatron.core.lines import is_blank, split_lines

__all__ = ["safe_thought_lines"]

_PY_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_CODING = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*[-\w.]+")
_LINE_ENDS = (tokenize.NEWLINE, tokenize.NL)
# f-strings (3.12+) and t-strings (3.14+) are token sequences; their inner lines are string lines.
_STRING_START = {getattr(tokenize, n) for n in ("FSTRING_START", "TSTRING_START") if hasattr(tokenize, n)}
_STRING_END = {getattr(tokenize, n) for n in ("FSTRING_END", "TSTRING_END") if hasattr(tokenize, n)}


def _header_lines(lines: list[str]) -> set[int]:
    """Lines a thought may not precede: BOM / shebang first line, lines up to a coding cookie."""
    unsafe: set[int] = set()
    if lines and (lines[0].startswith("\ufeff") or lines[0].startswith("#!")):
        unsafe.add(0)
    for i, line in enumerate(lines[:2]):
        if _CODING.match(line):
            unsafe.update(range(i + 1))
        elif not is_blank(line) and not line.lstrip().startswith("#"):
            break  # PEP 263: the cookie on line 2 counts only after a comment or blank line 1
    return unsafe


def _tokenize_rows(text: str) -> tuple[set[int], set[int], int | None, bool]:
    """(rows ending in NEWLINE/NL, rows inside an f-string, row where tokenizing failed, string error)."""
    clean: set[int] = set()
    in_string: set[int] = set()
    starts: list[int] = []
    source = _PY_LINE_BREAK.sub("\n", text.removeprefix("\ufeff"))
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in _LINE_ENDS:
                clean.add(tok.start[0])
            elif tok.type in _STRING_START:
                starts.append(tok.start[0])
            elif tok.type in _STRING_END and starts:
                in_string.update(range(starts.pop() + 1, tok.end[0] + 1))
    except (tokenize.TokenError, SyntaxError) as exc:
        if isinstance(exc, SyntaxError):
            row = exc.lineno or 1
        else:
            position = exc.args[1] if len(exc.args) > 1 else None
            row = position[0] if isinstance(position, tuple) else 1
        message = str(exc.args[0] if exc.args else exc)
        return clean, in_string, row, "multi-line string" in message or "triple-quoted" in message
    return clean, in_string, None, False


def safe_thought_lines(text: str, *, python: bool = True) -> set[int]:
    """0-based physical line numbers before which a thought comment keeps the program unchanged.

    python=False (or text that does not tokenize, from the failure on): all non-blank lines.
    """
    lines = split_lines(text)
    nonblank = {i for i, line in enumerate(lines) if not is_blank(line)}
    if not python:
        return nonblank
    clean, in_string, error_row, string_error = _tokenize_rows(text)
    safe = set()
    row = 1  # Python's 1-based row at the start of each of our lines
    for i, line in enumerate(lines):
        if i in nonblank:
            if error_row is not None and row - 1 >= error_row:
                ok = not string_error  # past the failure: fall back, except inside an open string
            else:
                ok = (i == 0 or row - 1 in clean) and row not in in_string
            if ok:
                safe.add(i)
        row += len(_PY_LINE_BREAK.findall(line))
    return safe - _header_lines(lines)
