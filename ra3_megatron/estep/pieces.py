"""How the E-step cuts a snippet into token pieces, and which token is the decision token.

The paper's `<act>` is "\\n" and `<think>` is "\\n#": after the newline (and indentation) that
starts line t, the model's next token either starts the code or starts a comment. We cut the
text right after the last non-space character of each non-blank line, so piece k holds the
whitespace run before line k (the previous line's newline, any blank lines, line k's
indentation: `lead`) and then line k's code. For

    "def f(x):\\n\\n    y = 1\\n    return y\\n"

the pieces are "def f(x):", "\\n\\n    y = 1", "\\n    return y\\n".

Why cut there: the search encodes pieces (and thoughts) separately and concatenates their ids,
and those ids must be the ones the M-step trains on and inference sees, i.e. the tokenizer's
ids for the whole rendered text. Byte-level BPE pre-tokenizers (GPT-2 / SmolLM2 style) never
merge a non-space character with the whitespace after it, so a cut there is a token boundary; a
cut inside a whitespace run (e.g. between the two newlines around a blank line) is not, since
"\\n\\n    " is one pre-token.

A thought before line k is rendered on its own line just above line k, after any blank lines:
the inserted `middle` is `lead + "# " + text` (ending with a non-space character, so again a
token boundary) and line k then continues as `after_thought(piece)`: the thought line's ending,
line k's indentation and its code. Joining head, middles and pieces (or their continuations
after a thought) gives `InfusedSnippet.render()` exactly.

The decision token of a piece or middle is its first token whose text holds a non-space
character: the token that starts with "#" (think) or the first code token (act); the tokens
before it (newline and indentation) are the same for both options of a position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ra3_megatron.core.latent import render_thought
from ra3_megatron.core.lines import dominant_ending, is_blank, line_ending, line_indent, split_lines


@dataclass(frozen=True)
class Piece:
    """Text from the cut before non-blank line `line` up to the next cut; `line` is -1 for the head."""

    line: int
    text: str
    indent: str  # indentation of `line`
    ending: str  # the newline a thought before `line` uses ("\n" or "\r\n")
    lead: str = ""  # the text's leading whitespace: newline(s), blank lines, `indent`


def cut_pieces(text: str) -> list[Piece]:
    """The snippet as pieces; `"".join(p.text for p in pieces) == text`."""
    lines = split_lines(text)
    default = dominant_ending(lines)
    cuts: list[tuple[int, int]] = []  # (char offset of the cut, line)
    offset, code_end = 0, None  # code_end: just after the last non-space character so far
    for i, line in enumerate(lines):
        if not is_blank(line):
            if code_end is not None:
                cuts.append((code_end, i))
            code_end = offset + len(line.rstrip())
        offset += len(line)
    pieces: list[Piece] = []
    starts = [0] + [c for c, _ in cuts]
    ends = [c for c, _ in cuts] + [len(text)]
    for k, (start, end) in enumerate(zip(starts, ends)):
        if k == 0:
            pieces.append(Piece(line=-1, text=text[start:end], indent="", ending=default))
            continue
        line = cuts[k - 1][1]
        body = text[start:end]
        indent = line_indent(lines[line])
        lead = body[: len(body) - len(body.lstrip())]
        pieces.append(Piece(line=line, text=body, indent=indent, ending=line_ending(lines[line]) or default,
                            lead=lead))
    return pieces


def thought_middle(text: str, piece: Piece) -> str:
    """The inserted text of a thought before `piece`: its lead, then "# {text}"."""
    return piece.lead + render_thought(text, "", "")


def after_thought(piece: Piece) -> str:
    """The piece as it continues after a thought: the thought line's ending, the indentation, the code."""
    return piece.ending + piece.indent + piece.text[len(piece.lead) :]


def think_marker(piece: Piece) -> str:
    """What q is prompted with to write a thought: the lead and "#" (the text is sampled after it)."""
    return piece.lead + "#"


class Codec:
    """Encodes pieces without special tokens and finds decision tokens; memoizes small strings."""

    def __init__(self, tokenizer, cache_size: int = 4096):
        self.tokenizer = tokenizer
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cache_size = cache_size

    def encode(self, text: str) -> tuple[int, ...]:
        if not text:
            return ()
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        ids = tuple(int(i) for i in self.tokenizer.encode(text, add_special_tokens=False))
        if len(text) <= 64:  # markers, indents, short lines: the same strings recur
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[text] = ids
        return ids

    def decision_index(self, ids: Sequence[int]) -> int:
        """Index of the first token whose text holds a non-space character (len(ids) if none)."""
        for k in range(len(ids)):
            if self.tokenizer.decode(list(ids[: k + 1])).strip():
                return k
        return len(ids)
