"""`SourceDoc`, the unit every reader yields, and the checks that turn bad text into counted skips."""

from __future__ import annotations

from dataclasses import dataclass

from ra3_megatron.data.skips import EMPTY, LINE_TOO_LONG, SkipReport


@dataclass(frozen=True)
class SourceDoc:
    """One document: `id` unique within the input, `origin` the file it came from (the held-out
    split keeps all documents of one origin together), `thoughts` a tuple of
    `ra3_megatron.core.latent.Thought` for E-step records (None for plain code)."""

    id: str
    text: str
    origin: str
    thoughts: tuple | None = None

    @property
    def num_lines(self) -> int:
        return count_lines(self.text)


def count_lines(text: str) -> int:
    """Physical lines: newlines, plus one for a last line without one."""
    return text.count("\n") + (0 if text.endswith("\n") or not text else 1)


def check_text(text: str, where: str, report: SkipReport, max_line_chars: int) -> bool:
    """False (and the skip counted) when the text is empty/whitespace or has a line over `max_line_chars`."""
    if not text.strip():
        report.add(EMPTY, where)
        return False
    if len(text) > max_line_chars:  # only then can a line be too long
        lengths = [len(line) for line in text.split("\n")]
        longest = max(lengths)
        if longest > max_line_chars:
            number = lengths.index(longest) + 1
            report.add(LINE_TOO_LONG, f"{where}:{number}", f"{longest:,} characters (limit {max_line_chars:,})")
            return False
    return True
