"""The RA3 latent format: thoughts as one-line comments inserted into expert code.

A thought z_t before line t is rendered immediately before that line (after any blank lines it
owns) as `{indent}# {text}{newline}`, where indent is line t's leading whitespace and newline is
line t's own ending (or the snippet's dominant ending for a last line without one), so CRLF files
stay CRLF. An infused snippet is stored structured (original text + thoughts) and rendered on
demand. Invariants (tested over the CPython standard library):
- removing the rendered thought spans gives the original bytes exactly;
- for Python that parses, with thoughts only on `safe_thought_lines`,
  `ast.dump(ast.parse(infused)) == ast.dump(ast.parse(original))`.

Records (jsonl): `{"id": str, "text": str, "thoughts": [{"line": int, "text": str, "gain": float|null}]}`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ra3_megatron.core.lines import dominant_ending, is_blank, line_ending, line_indent, split_lines
from ra3_megatron.core.safe_lines import safe_thought_lines

__all__ = [
    "THOUGHT_MARKER",
    "Thought",
    "InfusedSnippet",
    "render_thought",
    "strip_spans",
    "validate_thought_text",
    "safe_thought_lines",
    "safe_candidate_lines",
]

THOUGHT_MARKER = "# "  # the paper's <think> is "\n#": after a newline (+ indent) "#" starts a thought


def validate_thought_text(text: Any, max_chars: int | None = None) -> str | None:
    """The stripped thought text, or None when it cannot be a thought.

    Rejected: non-strings, empty after strip, longer than `max_chars`, any line break (including
    the ones `str.splitlines` knows: form feed, U+2028, ...), NUL, lone surrogates.
    """
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text or (max_chars is not None and len(text) > max_chars):
        return None
    if len(text.splitlines()) != 1 or "\x00" in text:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def render_thought(text: str, indent: str = "", newline: str = "\n") -> str:
    """One thought line: `{indent}# {text}{newline}`."""
    return f"{indent}{THOUGHT_MARKER}{text}{newline}"


def strip_spans(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """`text` without the given sorted, non-overlapping (start, end) character spans."""
    out, pos = [], 0
    for start, end in spans:
        if not pos <= start <= end <= len(text):
            raise ValueError(
                f"span ({start}, {end}) is out of order or out of bounds (text length {len(text)})"
            )
        out.append(text[pos:start])
        pos = end
    out.append(text[pos:])
    return "".join(out)


@dataclass(frozen=True)
class Thought:
    """A thought before the non-blank physical line `line` (0-based); `gain` as scored by the E-step."""

    line: int
    text: str
    gain: float | None = None


@dataclass(frozen=True)
class InfusedSnippet:
    """Original text plus thoughts (sorted by line on construction; validated, ValueError if bad)."""

    id: str
    text: str
    thoughts: tuple[Thought, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not isinstance(self.text, str):
            raise ValueError(f"snippet {self.id!r}: 'id' and 'text' must be strings")
        lines = split_lines(self.text)
        checked: dict[int, Thought] = {}
        for k, t in enumerate(self.thoughts):
            if not isinstance(t, Thought):
                raise ValueError(f"snippet {self.id!r}, thought #{k}: not a Thought ({type(t).__name__})")
            where = f"snippet {self.id!r}, thought #{k} (line {t.line!r})"
            if isinstance(t.line, bool) or not isinstance(t.line, numbers.Integral):
                raise ValueError(f"{where}: 'line' must be an integer")
            line = int(t.line)  # numpy integers become plain ints (JSON-serializable)
            if not 0 <= line < len(lines) or is_blank(lines[line]):
                raise ValueError(
                    f"{where}: line {line} is not a non-blank line of the text ({len(lines)} lines)"
                )
            if line in checked:
                raise ValueError(f"{where}: more than one thought before line {line}")
            if validate_thought_text(t.text) is None:
                raise ValueError(f"{where}: text must be a non-empty single line (no line breaks, NUL)")
            gain = t.gain
            if gain is not None:
                if isinstance(gain, bool) or not isinstance(gain, numbers.Real) or not math.isfinite(gain):
                    raise ValueError(f"{where}: 'gain' must be a finite number or null")
                gain = float(gain)
            checked[line] = Thought(line, t.text, gain)
        object.__setattr__(self, "thoughts", tuple(checked[n] for n in sorted(checked)))

    def _render(self, upto: int | None = None) -> tuple[str, list[tuple[int, int]]]:
        lines = split_lines(self.text)
        by_line = {t.line: t for t in self.thoughts}
        default_newline = dominant_ending(lines)
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        pos = 0
        for i, line in enumerate(lines):
            if upto is not None and i >= upto and not is_blank(line):
                break  # the insertion point of line `upto` (blank lines before it are kept)
            thought = by_line.get(i)
            if thought is not None:
                rendered = render_thought(
                    thought.text, line_indent(line), line_ending(line) or default_newline
                )
                spans.append((pos, pos + len(rendered)))
                parts.append(rendered)
                pos += len(rendered)
            parts.append(line)
            pos += len(line)
        return "".join(parts), spans

    def render_with_spans(self) -> tuple[str, list[tuple[int, int]]]:
        """`(render(), thought_spans())` in one pass."""
        return self._render()

    def render(self) -> str:
        """The infused text: the original with each thought line inserted."""
        return self._render()[0]

    def thought_spans(self) -> list[tuple[int, int]]:
        """Character spans (start, end) of the rendered thought lines in `render()`, newline included."""
        return self._render()[1]

    def render_upto(self, line: int) -> str:
        """The rendered text before the insertion point of `line`: the E-step's prefix for position `line`.

        Thoughts on earlier lines are included, a thought on `line` itself is not.
        """
        return self._render(upto=line)[0]

    def with_thought(self, thought: Thought) -> InfusedSnippet:
        """A copy with one more thought (validated)."""
        return InfusedSnippet(id=self.id, text=self.text, thoughts=(*self.thoughts, thought))

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "thoughts": [{"line": t.line, "text": t.text, "gain": t.gain} for t in self.thoughts],
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> InfusedSnippet:
        """Parse a jsonl record; ValueError naming the field on a bad one ("gain" may be missing)."""
        if not isinstance(record, Mapping):
            raise ValueError(f"record must be an object, got {type(record).__name__}")
        for key in ("id", "text", "thoughts"):
            if key not in record:
                raise ValueError(f"record is missing {key!r}")
        if not isinstance(record["thoughts"], list):
            raise ValueError(f"snippet {record['id']!r}: 'thoughts' must be a list")
        thoughts = []
        for k, item in enumerate(record["thoughts"]):
            if not isinstance(item, Mapping) or "line" not in item or "text" not in item:
                raise ValueError(f"snippet {record['id']!r}: thought #{k} needs 'line' and 'text'")
            thoughts.append(Thought(line=item["line"], text=item["text"], gain=item.get("gain")))
        return cls(id=record["id"], text=record["text"], thoughts=tuple(thoughts))


def safe_candidate_lines(text: str, *, python: bool = True) -> list[int]:
    """The E-step's candidate positions: non-blank lines after the first that can take a thought."""
    nonblank = [i for i, line in enumerate(split_lines(text)) if not is_blank(line)]
    safe = safe_thought_lines(text, python=python)
    return [i for i in nonblank[1:] if i in safe]
