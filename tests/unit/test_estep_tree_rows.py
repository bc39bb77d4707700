"""Tree rows: examples sharing a prefix laid out in one row must give every loss token exactly
the context (tokens and positions) it has in its own example, and its advantage."""

from __future__ import annotations

import pytest

from ra3_megatron.estep.rl import examples_from_groups
from ra3_megatron.rl.batch import RLExample, build_batch
from ra3_megatron.rl.tree_rows import build_tree_batch, linear_positions, move, plan_trees

pytestmark = pytest.mark.unit

torch = pytest.importorskip("torch")


def _events_seen_by_the_row(batch):
    """For each loss position: (the tokens it attends to in position order + its label, advantage),
    checking that the attended positions are 0..k (what RoPE and causality need)."""
    events = []
    for r in range(batch["tokens"].shape[0]):
        for j in batch["loss_mask"][r].nonzero().flatten().tolist():
            seen = (~batch["attention_mask"][r, 0, j]).nonzero().flatten().tolist()
            pos = batch["position_ids"][r, seen].tolist()
            assert sorted(pos) == list(range(len(seen))), "a loss token must see positions 0..k once each"
            order = [seen[i] for i in sorted(range(len(seen)), key=lambda i: pos[i])]
            assert order[-1] == j  # the scored position is the last one it sees
            context = (*batch["tokens"][r, order].tolist(), int(batch["labels"][r, j]))
            events.append((context, round(float(batch["advantages"][r, j]), 6)))
    return sorted(events)


def _linear_events(batch):
    events = []
    for r in range(batch["tokens"].shape[0]):
        for j in batch["loss_mask"][r].nonzero().flatten().tolist():
            events.append(((*batch["tokens"][r, : j + 1].tolist(), int(batch["labels"][r, j])),
                           round(float(batch["advantages"][r, j]), 6)))
    return sorted(events)


def _walk_examples(seed):
    from tests.unit.test_estep_rl import _walk

    prefix_groups = _walk(seed, positions=6)
    for g in prefix_groups:  # long shared prefixes, as in real snippets
        g.prefix = tuple(range(100, 130)) + g.prefix
    return examples_from_groups(prefix_groups, max_tokens=1000)


@pytest.mark.parametrize("seed", range(5))
def test_tree_rows_give_each_loss_token_its_own_example_context(seed):
    examples = _walk_examples(seed)
    rows = plan_trees(examples, max_tokens=1000)
    tree, where = build_tree_batch(examples, rows)
    linear = build_batch(examples)
    assert _events_seen_by_the_row(tree) == _linear_events(linear)
    assert len(rows) < len(examples)
    assert sum(r.length for r in rows) < sum(len(e.tokens) for e in examples)


def test_values_move_between_layouts_by_loss_token():
    examples = _walk_examples(0)
    rows = plan_trees(examples, max_tokens=1000)
    tree, where = build_tree_batch(examples, rows)
    linear = build_batch(examples)
    # the label of each loss position, moved from the linear layout, must be the tree's label there
    moved = move(linear["labels"].float(), linear_positions(examples), where, tree["labels"].shape)
    m = tree["loss_mask"] > 0
    assert torch.equal(moved[m].long(), tree["labels"][m])
    assert float(moved[~m].abs().sum()) == 0.0


def test_plan_respects_the_row_budget_and_the_minimum_share():
    trunk = RLExample(tokens=tuple(range(40)), loss_from=39, advantage=1.0)
    twig = RLExample(tokens=(*range(30), 99, 98), loss_from=30, advantage=-1.0)  # shares 30 tokens
    stranger = RLExample(tokens=(7, 7, 7, 7), loss_from=2, advantage=0.5)
    rows = plan_trees([trunk, twig, stranger], max_tokens=100)
    assert [(r.trunk, r.branches) for r in rows] == [(0, [(1, 30)]), (2, [])]
    assert rows[0].length == 40 + 3  # the twig's copy of token 29, then 99 and 98
    assert [(r.trunk, r.branches) for r in plan_trees([trunk, twig], max_tokens=42)] == [(0, []), (1, [])]
    assert len(plan_trees([trunk, twig], max_tokens=100, min_shared=31)) == 2
