"""Line segmentation of a snippet into RA3 actions (one action = one non-blank line).

RA3 treats each line of expert code as one action a_t. Blank lines carry no intent, so a blank
(whitespace-only) line belongs to the next non-blank line; blank lines at the end of the text
have no next line and are attached to the last action, so the actions tile the text exactly.

Lines end at "\\n" only: a "\\r\\n" ending stays with its line (CRLF files round-trip byte for
byte) and a lone "\\r" inside a line is line content here. The last line may lack an ending.

Example::

    >>> [a.text for a in segment_actions("a = 1\\n\\nb = 2")]
    ['a = 1\\n', '\\nb = 2']
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Action",
    "split_lines",
    "is_blank",
    "line_indent",
    "line_ending",
    "dominant_ending",
    "segment_actions",
    "candidate_lines",
]


def split_lines(text: str) -> list[str]:
    """Physical lines of `text`, each with its own ending ("\\n" or "\\r\\n"); the last may have none.

    `"".join(split_lines(text)) == text` always holds; the empty text has no lines.
    """
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def is_blank(line: str) -> bool:
    """True for a line of whitespace only (spaces, tabs, form feeds, line ending)."""
    return not line.strip()


def is_comment_line(line: str) -> bool:
    """True for a line holding only a comment (`#` after optional indentation)."""
    return line.lstrip(" \t\f").startswith("#")


def line_indent(line: str) -> str:
    """The leading spaces and tabs of a line (form feeds, which only reset Python's column, are dropped)."""
    n = len(line) - len(line.lstrip(" \t\f"))
    return line[:n].replace("\f", "")


def line_ending(line: str) -> str:
    """The line's own ending: "\\r\\n", "\\n" or "" (a last line without newline)."""
    if line.endswith("\r\n"):
        return "\r\n"
    return "\n" if line.endswith("\n") else ""


def dominant_ending(lines: list[str]) -> str:
    """ "\\r\\n" when most line endings of the snippet are CRLF, else "\\n" (also for a text without any)."""
    crlf = sum(1 for line in lines if line.endswith("\r\n"))
    lf = sum(1 for line in lines if line.endswith("\n")) - crlf
    return "\r\n" if crlf > lf else "\n"


@dataclass(frozen=True)
class Action:
    """One action: a non-blank line plus the blank lines before it (and, for the last one, after it).

    index: position among the actions; line: 0-based physical line number of the non-blank line;
    start/end: character offsets of `text` in the snippet; indent: leading whitespace of the line.
    """

    index: int
    line: int
    start: int
    end: int
    text: str
    indent: str

    @property
    def line_start(self) -> int:
        """Character offset of the non-blank line itself (after the blank lines it owns)."""
        offset = self.start
        for piece in split_lines(self.text):
            if not is_blank(piece):
                return offset
            offset += len(piece)
        raise AssertionError("an action always holds a non-blank line")


def segment_actions(text: str) -> list[Action]:
    """Split `text` into actions; `"".join(a.text for a in actions) == text` when any line is non-blank.

    A text of blank lines only (or the empty text) has no action.
    """
    actions: list[Action] = []
    pending_start = 0  # start of the blank lines not yet owned by an action
    offset = 0
    for number, line in enumerate(split_lines(text)):
        end = offset + len(line)
        if not is_blank(line):
            actions.append(
                Action(
                    index=len(actions),
                    line=number,
                    start=pending_start,
                    end=end,
                    text=text[pending_start:end],
                    indent=line_indent(line),
                )
            )
            pending_start = end
        offset = end
    if actions and pending_start < len(text):  # trailing blank lines join the last action
        last = actions[-1]
        actions[-1] = Action(
            index=last.index,
            line=last.line,
            start=last.start,
            end=len(text),
            text=text[last.start :],
            indent=last.indent,
        )
    return actions


def candidate_lines(text: str) -> list[int]:
    """Physical line numbers of the non-blank lines after the first one: where the E-step may think.

    For Python, intersect with `ra3_megatron.core.latent.safe_thought_lines` (lines inside a
    multi-line string or after a backslash continuation cannot take a comment).
    """
    nonblank = [i for i, line in enumerate(split_lines(text)) if not is_blank(line)]
    return nonblank[1:]
