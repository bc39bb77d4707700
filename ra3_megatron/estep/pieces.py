"""How the E-step cuts a snippet into token pieces, and which token is the decision token.

The paper's `<act>` is "\\n" and `<think>` is "\\n#". We follow that literally and cut the text
*before* each newline that precedes a non-blank line, so every piece after the first starts with
"\\n": piece k = "\\n" + line k (+ the blank lines after it, whose newlines stay with it). For

    "def f(x):\\n\\n    y = 1\\n    return y\\n"

the pieces are "def f(x):\\n", "\\n    y = 1", "\\n    return y\\n". A thought before line k is
inserted at the cut as the middle "\\n{indent}# {text}" (the thought line with its own newline
moved to the front, so the CRLF "\\r" stays at its end), and joining pieces and middles gives
`InfusedSnippet.render()` exactly.

Why cut there: pieces, middles and targets are encoded separately and their ids concatenated
(encoding a joined string can merge tokens across a boundary, and then the options of one
position would not share their target ids). Byte-level BPE tokenizers with the GPT-2 / Llama-3
pre-tokenizer never merge across a newline that follows a non-space character, so the
concatenation equals the natural tokenization the M-step trains on; we lose only merges of
trailing spaces / blank lines with the next newline.

The decision token of a piece or middle is its first token whose text holds a non-space
character: after "\\n    " it is the token that starts with "#" (think) or the first code token
(act). Tokenizers that merge the newline with the indentation ("\\n   " + " #") give that shared
whitespace token as context and the decision on the next token; tokenizers that merge
indentation and "#" (or "\\n#") into one token make that merged token the decision token. Either
way the decision token is found by decoding, so both kinds work; the indentation inside a merged
token is the same for both options, so the gradient on it is about "#" versus code.
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


def cut_pieces(text: str) -> list[Piece]:
    """The snippet as pieces; `"".join(p.text for p in pieces) == text`."""
    lines = split_lines(text)
    default = dominant_ending(lines)
    cuts: list[tuple[int, int]] = []  # (char offset of the cut, line)
    offset = 0
    seen_nonblank = False
    for i, line in enumerate(lines):
        if not is_blank(line):
            if seen_nonblank:
                cuts.append((offset - 1, i))  # the "\n" that ends the line above
            seen_nonblank = True
        offset += len(line)
    pieces: list[Piece] = []
    starts = [0] + [c for c, _ in cuts]
    ends = [c for c, _ in cuts] + [len(text)]
    for k, (start, end) in enumerate(zip(starts, ends)):
        if k == 0:
            pieces.append(Piece(line=-1, text=text[start:end], indent="", ending=default))
            continue
        line = cuts[k - 1][1]
        pieces.append(Piece(line=line, text=text[start:end], indent=line_indent(lines[line]),
                            ending=line_ending(lines[line]) or default))
    return pieces


def thought_middle(text: str, piece: Piece) -> str:
    """The inserted text of a thought before `piece`: "\\n{indent}# {text}" (+ "\\r" for CRLF)."""
    rendered = render_thought(text, piece.indent, piece.ending)
    return "\n" + rendered[:-1]


def think_marker(piece: Piece) -> str:
    """What q is prompted with to write a thought: "\\n{indent}#" (the text is sampled after it)."""
    return "\n" + piece.indent + "#"


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
