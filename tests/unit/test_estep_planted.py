"""Planted signal: a hidden mode decides two lines of each snippet; the right comment reveals it.

The FakeEngine's bigram model is trained on code where `# mode: alpha` always precedes the alpha
lines and `# mode: beta` the beta lines; the E-step input is the same code without comments, so
before the first mode line nothing in the prefix tells the two apart. A thought naming the mode
makes those lines predictable through the engine's copy head (it repeats pairs of tokens seen in
the context, here ": alpha"). The E-step must place thoughts there, name the right mode, keep
only thoughts whose gain exceeds c, and never think when c is larger than any gain.
"""

from __future__ import annotations

import random

import pytest

from ra3_megatron.estep.batch import run_searches
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.stats import SearchStats
from ra3_megatron.rollout.fake import FakeEngine

pytestmark = pytest.mark.unit

WORDS = {"A": "alpha", "B": "beta"}
FIRST_MODE_LINE = 3  # 0-based line of the first mode-dependent line in the comment-free snippet


def snippet(mode: str, comment: bool) -> str:
    w = WORDS[mode]
    lines = ["def step(state):", "    value = state.load()", "    value = value + 1"]
    if comment:
        lines.append(f"    # mode: {w}")
    lines += [
        f"    value: {w} = run(value)",
        f"    other: {w} = run(value)",
        "    state.save(value, other)",
        "    return value",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def planted(tiny_tokenizer_dir):
    rng = random.Random(0)
    train = [snippet(rng.choice("AB"), comment=True) for _ in range(100)]
    modes = [rng.choice("AB") for _ in range(24)]
    jobs = [(f"s{k}", snippet(m, comment=False)) for k, m in enumerate(modes)]
    engine = FakeEngine(corpus=train, tokenizer=str(tiny_tokenizer_dir), alpha=0.001, copy_weight=0.5)
    return engine, modes, jobs


def _run(planted, **cfg):
    engine, modes, jobs = planted
    cfg = EStepConfig(**{"samples": 4, "horizon": 2, "decision": "force", "max_latent_tokens": 16, **cfg})
    results = run_searches(jobs, sampler=engine, scorer=engine, cfg=cfg)
    total = SearchStats()
    for r in results:
        total.merge(r.stats)
    return modes, results, total


def test_thoughts_go_where_the_mode_is_hidden_and_name_it(planted):
    modes, results, total = _run(planted, penalty=0.05)
    thoughts = [(m, t) for m, r in zip(modes, results) for t in r.infused.thoughts]
    # Where it pays: the first mode line, or the line before it (whose horizon covers it). Each
    # snippet samples its own thoughts (G = 4 from a weak q), so about a third of the snippets
    # find the intent and a few other lines win by chance; across seeds 0-5 the intent lines
    # held 50-71% of the thoughts, and all but one of those named the right mode.
    at_intent = [(m, t) for m, t in thoughts if FIRST_MODE_LINE - 1 <= t.line <= FIRST_MODE_LINE]
    assert len(at_intent) >= len(modes) // 5, "the E-step should find the planted intent in many snippets"
    assert len(at_intent) > 0.5 * len(thoughts), [(t.line, t.text) for _, t in thoughts]
    right = sum(WORDS[m] in t.text for m, t in at_intent)
    assert right >= 0.9 * len(at_intent), [t.text for _, t in at_intent]
    assert all(t.gain > 0.05 for _, t in thoughts)
    s = total.summary()
    assert s["mean_gain"] > 0.05 and 0 < s["think_rate"] < 0.3
    # what the sampled thoughts look like on average: most do not pay
    assert s["sample_reward"] < 0


def test_a_large_penalty_never_thinks(planted):
    _, results, total = _run(planted, penalty=0.5)
    assert all(r.infused.thoughts == () for r in results)
    assert total.chosen == 0 and total.rollouts == total.positions > 0


def test_sampled_decisions_with_a_floor_find_it_too(planted):
    modes, results, total = _run(planted, penalty=0.05, decision="sample", think_floor=0.5, samples=6)
    thoughts = [(m, t) for m, r in zip(modes, results) for t in r.infused.thoughts]
    assert len(thoughts) >= len(modes) // 5  # 6-9 of 24 over seeds 0-5
    assert sum(WORDS[m] in t.text for m, t in thoughts) >= 0.8 * len(thoughts)
    # q decided "act" in part of the draws: fewer thoughts were sampled than the forced G per position
    assert 0 < total.sampled < 0.8 * 6 * total.positions


def test_one_pass_decision_probes_equal_per_position_scoring(planted):
    """Without inserted thoughts every decision comes from the same pass: same q("#") as scoring each."""
    _, _, fast = _run(planted, penalty=5.0, decision="sample")
    _, _, slow = _run(planted, penalty=5.0, decision="sample", probe=False)
    assert fast.positions == slow.positions > 0
    assert fast.think_prob_sum == pytest.approx(slow.think_prob_sum, rel=1e-9)
    assert fast.rollouts == slow.rollouts


def test_act_scores_from_one_chain_pass_equal_scoring_act_per_rollout(planted):
    """`<act>`'s horizon scores read from one pass over the snippet (again after each inserted
    thought) give the same search as scoring `<act>` beside the thoughts at every rollout."""
    modes, fast, f_stats = _run(planted, penalty=0.05)
    _, slow, s_stats = _run(planted, penalty=0.05, chain=False)
    assert f_stats.chosen == s_stats.chosen > 0
    for a, b in zip(fast, slow):
        assert [(t.line, t.text) for t in a.infused.thoughts] == [(t.line, t.text) for t in b.infused.thoughts]
        assert [t.gain for t in a.infused.thoughts] == pytest.approx([t.gain for t in b.infused.thoughts], abs=1e-9)
        assert [len(g.options) for g in a.groups] == [len(g.options) for g in b.groups]
        assert [o.reward for g in a.groups for o in g.options] == pytest.approx(
            [o.reward for g in b.groups for o in g.options], abs=1e-9)


def _prefix_ids(codec, text, thoughts, line):
    """The token ids before `line` with the chosen thoughts inserted: the tokenizer's ids for the
    rendered text up to the previous line's last non-space character (where the search cuts)."""
    from ra3_megatron.core.latent import InfusedSnippet

    rendered = InfusedSnippet(id="s", text=text, thoughts=tuple(thoughts)).render_upto(line)
    return tuple(codec.tokenizer.encode(rendered.rstrip(), add_special_tokens=False))


@pytest.mark.parametrize("lookahead", [1, 3, 8])
def test_speculative_windows_commit_only_rollouts_that_saw_every_earlier_thought(planted, lookahead):
    """A window's rollouts are sampled as if no thought came before them; a chosen thought must
    drop the rest, so every committed group's prefix holds all thoughts chosen before its line."""
    from ra3_megatron.estep.pieces import Codec

    engine, _, jobs = planted
    _, results, total = _run(planted, penalty=0.01, lookahead=lookahead, decision="sample", think_floor=0.3)
    codec = Codec(engine.tokenizer)
    assert total.chosen > 5
    assert (total.discarded > 0) == (lookahead > 1)
    for (_, text), r in zip(jobs, results):
        earlier = [t for t in r.infused.thoughts]
        for g in r.groups:
            assert g.prefix == _prefix_ids(codec, text, [t for t in earlier if t.line < g.line], g.line)


def test_without_chosen_thoughts_a_window_equals_one_rollout_at_a_time(planted):
    """No thought chosen (large c): nothing is dropped and the windowed search is the sequential
    one exactly (samples are seeded by snippet and line, not by schedule)."""
    _, wide, w_stats = _run(planted, penalty=5.0, lookahead=8, decision="sample", think_floor=0.3)
    _, one, o_stats = _run(planted, penalty=5.0, lookahead=1, decision="sample", think_floor=0.3)
    assert w_stats.discarded == 0 and w_stats.rollouts == o_stats.rollouts > 10
    assert w_stats.to_dict() == pytest.approx(o_stats.to_dict())
    for a, b in zip(wide, one):
        assert [(g.line, [o.ids for o in g.options], [o.reward for o in g.options]) for g in a.groups] == \
            [(g.line, [o.ids for o in g.options], [o.reward for o in g.options]) for g in b.groups]
