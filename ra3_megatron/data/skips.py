"""Counted, reported skips: every input the data pipeline drops is counted here with its reason.

Reasons (the keys of `SkipReport.counts`):
- `non-utf8`: a file (or jsonl line) that is not valid UTF-8;
- `empty`: a file or record whose text is empty or whitespace only;
- `line-too-long`: a document with a line longer than `max_line_chars` (minified or generated data,
  e.g. a 10 MB one-line file);
- `file-too-large`: a file over `max_file_bytes`;
- `unreadable`: a file that cannot be read (permissions, a dangling symlink);
- `bad-jsonl-line`: a jsonl line that is not a JSON object (e.g. truncated), only with `--skip-bad-lines`
  (without it the line is an InputError naming file and line);
- `bad-record`: a JSON object without a usable text field or with invalid thoughts, only with
  `--skip-bad-lines`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

NON_UTF8 = "non-utf8"
EMPTY = "empty"
LINE_TOO_LONG = "line-too-long"
FILE_TOO_LARGE = "file-too-large"
UNREADABLE = "unreadable"
BAD_JSONL_LINE = "bad-jsonl-line"
BAD_RECORD = "bad-record"

MAX_EXAMPLES = 5  # per reason: enough to find the files, short enough for a summary


@dataclass
class SkipReport:
    """Skips by reason, with the first few `path[:line]: detail` examples of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(f"{where}: {detail}" if detail else where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: SkipReport) -> None:
        for reason, n in other.counts.items():
            self.counts[reason] += n
            shown = self.examples.setdefault(reason, [])
            shown.extend(other.examples.get(reason, [])[: MAX_EXAMPLES - len(shown)])

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(sorted(self.counts.items())), "examples": self.examples}
