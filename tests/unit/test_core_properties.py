"""Property tests of the latent-format invariants over the CPython standard library.

For thoughts placed on `safe_thought_lines`: stripping the rendered thought spans gives the original
bytes, and for files that parse `ast.dump(ast.parse(infused)) == ast.dump(ast.parse(original))`.
Random placements and texts come from hypothesis; a deterministic sweep puts a thought before every
safe line of every 10th stdlib file (LF and CRLF). Files that are not UTF-8 are skipped.
"""

from __future__ import annotations

import ast
import functools
import sysconfig
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ra3_megatron.core.latent import (
    InfusedSnippet,
    Thought,
    render_thought,
    safe_thought_lines,
    strip_spans,
    validate_thought_text,
)
from ra3_megatron.core.lines import dominant_ending, is_blank, line_ending, line_indent, split_lines

pytestmark = pytest.mark.unit

TRICKY = "x = '''\"\"\" \\ {f} # coding: latin-1 \t \u00e9\u4e2d\U0001f600"  # quotes, backslash, non-ASCII


@functools.cache
def stdlib_files() -> tuple[Path, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return tuple(sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts))


@functools.cache
def source(path: Path, crlf: bool) -> str | None:
    try:
        text = path.read_bytes().decode("utf-8")  # bytes as they are: no newline translation
    except (UnicodeDecodeError, OSError):
        return None
    if crlf:
        if "\r" in text:
            return None
        text = text.replace("\n", "\r\n")
    return text


def ast_dump(text: str) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old test files
        try:
            return ast.dump(ast.parse(text))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None


@functools.cache
def original_dump(path: Path, crlf: bool) -> str | None:
    text = source(path, crlf)
    return None if text is None else ast_dump(text)


def check_invariants(path: Path, crlf: bool, snippet: InfusedSnippet) -> None:
    text = snippet.text
    rendered, spans = snippet.render_with_spans()
    assert strip_spans(rendered, spans) == text, path
    lines = split_lines(text)
    assert len(spans) == len(snippet.thoughts)
    for (start, end), t in zip(spans, snippet.thoughts):
        line = lines[t.line]
        expected = render_thought(t.text, line_indent(line), line_ending(line) or dominant_ending(lines))
        assert rendered[start:end] == expected
        assert rendered[end:].startswith(line)  # immediately before its line
    before = original_dump(path, crlf)
    if before is not None:
        assert ast_dump(rendered) == before, f"{path}: AST changed (crlf={crlf})"


thought_texts = st.text(min_size=1, max_size=40).map(validate_thought_text).filter(lambda t: t is not None)


@settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_thoughts_on_stdlib_files(data):
    path = data.draw(st.sampled_from(stdlib_files()), label="file")
    crlf = data.draw(st.booleans(), label="crlf")
    text = source(path, crlf)
    assume(text is not None)
    safe = sorted(safe_thought_lines(text))
    assume(safe)
    chosen = data.draw(st.lists(st.sampled_from(safe), unique=True, min_size=1, max_size=40), label="lines")
    texts = data.draw(st.lists(thought_texts, min_size=len(chosen), max_size=len(chosen)), label="texts")
    snippet = InfusedSnippet(path.name, text, tuple(Thought(n, t) for n, t in zip(chosen, texts)))
    check_invariants(path, crlf, snippet)


def test_sweep_every_safe_line_of_a_stdlib_sample():
    files = stdlib_files()
    assert len(files) > 500, "the CPython standard library was not found"
    checked = parsed = thoughts = 0
    for k, path in enumerate(files[::10]):
        for crlf in (False, True) if k % 2 else (False,):
            text = source(path, crlf)
            if text is None:
                continue
            safe = sorted(safe_thought_lines(text))
            snippet = InfusedSnippet(path.name, text, tuple(Thought(n, f"{TRICKY} {n}") for n in safe))
            check_invariants(path, crlf, snippet)
            checked += 1
            parsed += original_dump(path, crlf) is not None
            thoughts += len(safe)
    assert checked > 150 and parsed > 0.9 * checked and thoughts > 20_000, (checked, parsed, thoughts)


def test_the_ast_check_detects_thoughts_on_unsafe_lines():
    """Teeth: thoughts before the lines left out of the safe set do change real stdlib programs."""
    changed = 0
    for path in stdlib_files()[::40][:25]:
        text = source(path, False)
        if text is None or original_dump(path, False) is None:
            continue
        safe = safe_thought_lines(text)
        unsafe = [i for i, line in enumerate(split_lines(text)) if not is_blank(line) and i not in safe]
        if not unsafe:
            continue
        everywhere = InfusedSnippet(path.name, text, tuple(Thought(i, "z") for i in unsafe))
        changed += ast_dump(everywhere.render()) != original_dump(path, False)
    assert changed >= 5
