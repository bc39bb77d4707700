"""Token classes {code, latent} for the M-step's latent-aware loss, aligned through char offsets.

A token is LATENT when at least half of its characters lie inside a rendered thought span
(ties go to latent: a token such as "\\n#" that merges the previous line's newline with the
thought's "#" carries the paper's <think> decision, so it belongs to the latent). Tokens with an
empty span (special tokens, offsets (0, 0)) are CODE. Offsets are (start, end) character offsets
into the rendered text, as HF fast tokenizers return with `return_offsets_mapping=True`.

    >>> token_classes([(0, 2), (2, 4), (4, 6)], [(2, 5)])
    [0, 1, 1]
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from ra3_megatron.core.latent import InfusedSnippet

__all__ = ["CODE", "LATENT", "token_classes", "encode_with_classes"]

CODE = 0
LATENT = 1


def _merged(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted((int(s), int(e)) for s, e in spans if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def token_classes(offsets: Sequence[Sequence[int]], latent_spans: Sequence[tuple[int, int]]) -> list[int]:
    """Per-token class (CODE or LATENT) from per-token (start, end) offsets and the thought spans."""
    spans = _merged(latent_spans)
    ends = [e for _, e in spans]
    classes = []
    for start, end in offsets:
        start, end = int(start), int(end)
        inside = 0
        k = bisect_right(ends, start)  # first span ending after the token starts
        while k < len(spans) and spans[k][0] < end:
            inside += min(end, spans[k][1]) - max(start, spans[k][0])
            k += 1
        classes.append(LATENT if end > start and 2 * inside >= end - start else CODE)
    return classes


def encode_with_classes(tokenizer: Any, infused: InfusedSnippet) -> tuple[list[int], list[int]]:
    """Tokenize `infused.render()` without special tokens; returns (token ids, token classes).

    `tokenizer` is duck-typed: an HF fast tokenizer (called with `return_offsets_mapping=True`) or
    a `tokenizers.Tokenizer` (its `encode(text)` has `.ids` and `.offsets`).
    """
    text, spans = infused.render_with_spans()
    if callable(tokenizer):
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    else:
        enc = tokenizer.encode(text, add_special_tokens=False)
        ids, offsets = list(enc.ids), list(enc.offsets)
    if len(ids) != len(offsets):
        raise ValueError(f"tokenizer returned {len(ids)} ids but {len(offsets)} offsets")
    return ids, token_classes(offsets, spans)
