"""Tree rows: many RL examples that share a prefix trained in one row, the prefix computed once.

An RL step's examples are the options of the E-step's groups: a group's options all follow one
prefix (the snippet so far), and a walk's later prefixes extend its earlier ones. `fold_prefixes`
already merges examples that begin other examples; the rest still repeat their shared prefix:
every unchosen thought carries the whole snippet before it, which is most of an RL step's tokens.

A tree row lays one example out as the trunk and appends the others as branches. A branch that
shares p tokens with the trunk holds only tokens[p-1:]: the first is a copy of the last shared
token (same token, same position, so the same K/V) whose label is the branch's own next token.
The branch attends to the trunk's first p-1 tokens and to itself, causally, and its tokens sit
at their positions in their own example (the position ids restart at p-1). Every loss token then
sees exactly the context it has in its own example, so the log-probs and the loss (a token sum)
are those of the separate rows, on a fraction of the tokens.

The trainer must honour an explicit attention mask and per-token RoPE positions: Megatron-Core's
local attention does (`MegatronPolicyTrainer.supports_tree_rows`); Transformer Engine's causal
kernels ignore the mask, so there the E-step keeps linear rows.

Layout per row: tokens, labels, loss_mask, advantages, position_ids [s] and attention_mask
[s, s] (True = masked), plus `where`: for each (example, token index) loss event, the row
position that scores it, so log-probs computed on linear rows can be moved over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ra3_megatron.rl.batch import RLExample
from ra3_megatron.rollout.common import common_length

MIN_SHARED = 16  # a branch must share at least this many tokens with its trunk to be worth it


@dataclass
class TreeRow:
    trunk: int  # index of the trunk example
    branches: list[tuple[int, int]] = field(default_factory=list)  # (example index, shared tokens p)
    length: int = 0  # tokens in the row


def plan_trees(examples: Sequence[RLExample], max_tokens: int, min_shared: int = MIN_SHARED) -> list[TreeRow]:
    """Group examples into trees, longest first: each example joins the trunk it shares the most
    leading tokens with (at least `min_shared`, branch point no later than its first loss token)
    while the row stays within `max_tokens`; otherwise it becomes a trunk itself."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].tokens))
    rows: list[TreeRow] = []
    for i in order:
        e = examples[i]
        first_loss = min(start for start, _, _ in e.spans())
        best, best_p = None, 0
        for row in rows:
            p = min(common_length(examples[row.trunk].tokens, e.tokens), first_loss)
            if p > best_p and row.length + len(e.tokens) - p + 1 <= max_tokens:
                best, best_p = row, p
        if best is not None and best_p >= min_shared:
            best.branches.append((i, best_p))
            best.length += len(e.tokens) - best_p + 1
        else:
            rows.append(TreeRow(trunk=i, length=len(e.tokens)))
    return rows


def build_tree_batch(examples: Sequence[RLExample], rows: Sequence[TreeRow], pad_id: int = 0, multiple: int = 16):
    """The [B, s] batch of the planned rows (see the module doc); `where[(i, t)] = (row, pos)`
    for every loss token t of example i."""
    import torch

    s = -(-max(r.length for r in rows) // multiple) * multiple
    b = len(rows)
    tokens = torch.full((b, s), pad_id, dtype=torch.long)
    labels = torch.full((b, s), pad_id, dtype=torch.long)
    mask = torch.zeros((b, s), dtype=torch.float32)
    adv = torch.zeros((b, s), dtype=torch.float32)
    position_ids = torch.zeros((b, s), dtype=torch.long)
    # Padding attends to itself only (a fully masked softmax row would be NaN in some kernels).
    allowed = torch.eye(s, dtype=torch.bool).unsqueeze(0).repeat(b, 1, 1)
    where: dict[tuple[int, int], tuple[int, int]] = {}
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    for r, row in enumerate(rows):
        trunk = examples[row.trunk].tokens
        segments = [(row.trunk, 0, 0)]  # (example, first token index in the example, row offset)
        offset = len(trunk)
        for i, p in row.branches:
            segments.append((i, p - 1, offset))
            offset += len(examples[i].tokens) - p + 1
        for i, first, at in segments:
            ex = examples[i].tokens
            n = len(ex) - first  # tokens of this segment in the row
            tokens[r, at : at + n] = torch.tensor(ex[first:])
            labels[r, at : at + n - 1] = torch.tensor(ex[first + 1 :])
            position_ids[r, at : at + n] = torch.arange(first, first + n)
            allowed[r, at : at + n, at : at + n] = causal[:n, :n]
            if first:  # a branch: the trunk's tokens before the shared one it copies
                allowed[r, at : at + n, :first] = True
            for start, end, a in examples[i].spans():
                # token t (start <= t < end) is scored at the position holding token t - 1
                lo, hi = at + start - 1 - first, at + end - 1 - first
                mask[r, lo:hi] = 1.0
                adv[r, lo:hi] = a
                for t in range(start, end):
                    where[(i, t)] = (r, at + t - 1 - first)
    return {"tokens": tokens, "labels": labels, "loss_mask": mask, "advantages": adv,
            "position_ids": position_ids, "attention_mask": ~allowed.unsqueeze(1)}, where


def linear_positions(examples: Sequence[RLExample]) -> dict[tuple[int, int], tuple[int, int]]:
    """`where` for `rl.build_batch(examples)`: example i is row i, token t is scored at t - 1."""
    return {(i, t): (i, t - 1) for i, e in enumerate(examples) for start, end, _ in e.spans()
            for t in range(start, end)}


def move(values, src_where: dict, dst_where: dict, shape):
    """Per-position values (e.g. old log-probs) from one layout of the same examples to another."""
    import torch

    out = torch.zeros(shape, dtype=values.dtype)
    keys = list(dst_where)
    src = torch.tensor([src_where[k] for k in keys], dtype=torch.long)
    dst = torch.tensor([dst_where[k] for k in keys], dtype=torch.long)
    out[dst[:, 0], dst[:, 1]] = values[src[:, 0], src[:, 1]]
    return out
