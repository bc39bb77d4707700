"""Snippet chunking: cut a document into pieces of at most `max_tokens` tokens at natural boundaries.

    chunks = chunk_snippets(text, tokenizer=tok, max_tokens=2048)
    assert "".join(chunks) == text

Boundaries, coarse to fine (a finer level is used only inside a piece still over budget):
1. when the text parses as Python: the start of each top-level statement, moved up over its
   decorators and over comment lines directly above it (so a comment stays with its def);
2. when it parses: the start of each statement directly inside a top-level compound statement
   (methods of a class, statements of a function, ...);
   when it does not parse (syntax error, other language): blank lines before an unindented line;
3. the start of every line after a blank line;
4. the start of every line;
5. a single line over budget is split inside the line (decision: split, not skip, so the chunks
   always concatenate back to the document exactly; counted as `hard_splits`). Readers already
   skip documents with absurdly long lines (`line-too-long`).
Pieces are packed greedily, in order, while the running token count stays within the budget.
Every chunk is non-empty and `"".join(chunks) == text` always holds.
"""

from __future__ import annotations

import ast
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ra3_megatron.core.lines import is_blank, split_lines

__all__ = ["ChunkPlan", "boundary_levels", "plan_chunks", "planning_budget", "chunk_snippets", "offset_cost", "refit"]

Cost = Callable[[int, int], int]  # tokens of text[a:b]


@dataclass(frozen=True)
class ChunkPlan:
    chunks: list[str]
    parsed: bool | None  # None: not needed (the text fit); False: split without the AST
    hard_splits: int  # lines split inside the line


def _line_starts(lines: Sequence[str]) -> list[int]:
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line)
    return starts


def _stmt_line(node: ast.AST, lines: Sequence[str], floor: int) -> int:
    """0-based first line of a statement: its decorators and comment lines directly above included."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    while first - 1 > floor and lines[first - 1].lstrip().startswith("#"):
        first -= 1
    return first


def _ast_levels(text: str, lines: Sequence[str]) -> tuple[list[int], list[int]] | None:
    if "\r" in text.replace("\r\n", ""):
        return None  # Python counts a lone CR as a newline, our lines do not: line numbers would disagree
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    top, nested, floor = [], [], -1
    for node in tree.body:
        line = _stmt_line(node, lines, floor)
        top.append(line)
        inner_floor = node.lineno - 1
        children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt | ast.excepthandler)]
        children += [c.pattern for c in getattr(node, "cases", [])]
        for child in sorted(children, key=lambda c: c.lineno):
            inner = _stmt_line(child, lines, inner_floor)
            nested.append(inner)
            inner_floor = getattr(child, "end_lineno", child.lineno) - 1
        floor = getattr(node, "end_lineno", node.lineno) - 1
    return top, nested


def boundary_levels(text: str, *, python: bool = True) -> tuple[list[list[int]], bool]:
    """Sorted candidate boundaries (character offsets, > 0) per level, coarse to fine, and whether the AST was used."""
    lines = split_lines(text)
    starts = _line_starts(lines)
    after_blank = [i for i in range(1, len(lines)) if is_blank(lines[i - 1]) and not is_blank(lines[i])]
    levels_by_line: list[list[int]] = []
    parsed = False
    ast_levels = _ast_levels(text, lines) if python else None
    if ast_levels is not None:
        parsed = True
        levels_by_line += list(ast_levels)
    else:
        levels_by_line.append([i for i in after_blank if lines[i][:1] not in (" ", "\t")])
    levels_by_line += [after_blank, list(range(1, len(lines)))]
    levels = [sorted({starts[i] for i in level if 0 < i < len(lines)}) for level in levels_by_line]
    return levels, parsed


def offset_cost(token_starts: Sequence[int]) -> Cost:
    """A cost function from the start offsets of a whole-document tokenization: tokens starting in [a, b)."""
    starts = sorted(token_starts)
    return lambda a, b: bisect_left(starts, b) - bisect_left(starts, a)


def planning_budget(max_tokens: int) -> int:
    """The budget to plan with from whole-document offsets: a few tokens under `max_tokens`.

    A chunk tokenized on its own differs from its share of the whole-document tokens by at most
    a token or so (measured: -1..+1 over the stdlib), so this slack makes `refit` rare.
    """
    return max(1, max_tokens - min(4, max_tokens // 16))


def plan_chunks(text: str, cost: Cost, max_tokens: int, *, python: bool = True) -> ChunkPlan:
    """Chunks of `text` whose costs are at most `max_tokens` (for an additive cost; see the module doc)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not text:
        return ChunkPlan([], None, 0)
    if cost(0, len(text)) <= max_tokens:
        return ChunkPlan([text], None, 0)
    levels, parsed = boundary_levels(text, python=python)
    spans: list[tuple[int, int]] = []
    hard = 0

    def hard_split(a: int, b: int) -> None:
        nonlocal hard
        hard += 1
        while cost(a, b) > max_tokens:
            lo, hi = a + 1, b - 1  # largest q in (a, b) with cost(a, q) <= max_tokens, at least a + 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if cost(a, mid) <= max_tokens else (lo, mid - 1)
            spans.append((a, lo))
            a = lo
        if a < b:
            spans.append((a, b))

    def pack(a: int, b: int, level: int) -> None:
        if level == len(levels):
            hard_split(a, b)
            return
        bounds = levels[level][bisect_right(levels[level], a) : bisect_left(levels[level], b)]
        if not bounds:
            pack(a, b, level + 1)
            return
        current: list[int] | None = None  # [start, end] of the chunk being filled
        for s, e in zip([a, *bounds], [*bounds, b]):
            if cost(s, e) > max_tokens:
                if current:
                    spans.append((current[0], current[1]))
                    current = None
                pack(s, e, level + 1)
            elif current is not None and cost(current[0], e) <= max_tokens:  # the merged span, not a sum
                current[1] = e
            else:
                if current:
                    spans.append((current[0], current[1]))
                current = [s, e]
        if current:
            spans.append((current[0], current[1]))

    pack(0, len(text), 0)
    return ChunkPlan([text[a:b] for a, b in spans], parsed, hard)


def encode_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, character offsets) without special tokens, from a `tokenizers.Tokenizer` or an HF fast tokenizer."""
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        enc = tokenizer.encode(text, add_special_tokens=False)
        return list(enc.ids), list(enc.offsets)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def chunk_snippets(doc_text: str, *, tokenizer: Any = None, count_tokens: Callable[[str], int] | None = None,
                   max_tokens: int, python: bool = True) -> list[str]:
    """Split `doc_text` into chunks of at most `max_tokens` tokens (tokenized alone, without special tokens).

    Give `tokenizer` (a `tokenizers.Tokenizer` or an HF fast tokenizer: the document is tokenized
    once and the plan uses its offsets, then each chunk is checked) or `count_tokens(text) -> int`.
    """
    if (tokenizer is None) == (count_tokens is None):
        raise ValueError("give exactly one of tokenizer= and count_tokens=")
    if count_tokens is None:
        count_tokens = lambda s: len(encode_offsets(tokenizer, s)[0])  # noqa: E731
        _, offsets = encode_offsets(tokenizer, doc_text)
        plan = plan_chunks(doc_text, offset_cost([s for s, _ in offsets]), planning_budget(max_tokens), python=python)
        return refit(plan.chunks, [count_tokens(c) for c in plan.chunks], count_tokens, max_tokens, python)
    exact: Cost = lambda a, b: count_tokens(doc_text[a:b])  # noqa: E731
    plan = plan_chunks(doc_text, exact, max_tokens, python=python)
    return refit(plan.chunks, [count_tokens(c) for c in plan.chunks], count_tokens, max_tokens, python)


def refit(chunks: list[str], counts: Sequence[int], count_tokens: Callable[[str], int], max_tokens: int,
          python: bool = True) -> list[str]:
    """Re-split, with exact counts, any chunk whose real token count is over budget.

    A plan made from whole-document offsets can be off by a token or two at a boundary (a token
    that merged across it); this makes the budget exact.
    """
    out: list[str] = []
    for chunk, n in zip(chunks, counts):
        if n <= max_tokens:
            out.append(chunk)
            continue
        exact: Cost = lambda a, b, c=chunk: count_tokens(c[a:b])  # noqa: E731
        pieces = plan_chunks(chunk, exact, max_tokens, python=python).chunks
        if pieces == [chunk]:  # one character over budget (max_tokens below a character's byte tokens)
            out.append(chunk)
            continue
        out += refit(pieces, [count_tokens(p) for p in pieces], count_tokens, max_tokens, python)
    return out
