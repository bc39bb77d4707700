"""The E-step search logic against a scripted engine whose log-probs and samples are set by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ra3_megatron.errors import ConfigError
from ra3_megatron.estep.batch import search_snippet
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.rollout.base import Completion, RolloutEngineBase, per_prompt

pytestmark = pytest.mark.unit

CODE = "def f(a, b):\n    x = a + b\n    y = x * 2\n\n    z = y - 1\n    return z\n"


class ScriptedEngine(RolloutEngineBase):
    """Target tokens score -1 each, +bonus each when the middle is the thought 'good idea'.

    `p_think` is q's probability of the '#' decision; samples cycle through `samples`.
    """

    def __init__(self, tokenizer, *, bonus=0.5, p_think=1.0, samples=("good idea", "bad idea", "", None)):
        self.tokenizer = tokenizer
        self.bonus, self.p_think, self.samples = bonus, p_think, samples
        self.calls = {"generate": 0, "score": 0, "decision": 0}
        self.prompts: list[str] = []
        self.score_prefixes: list[str] = []

    def generate(self, prompts, config):
        self.calls["generate"] += 1
        out = []
        for p, config in zip(prompts, per_prompt(config, len(prompts))):  # noqa: B020 (one config each)
            self.prompts.append(self.tokenizer.decode(list(p)))
            comps = []
            for i in range(config.n):
                s = self.samples[i % len(self.samples)]
                if s is None:  # an over-long sample: no newline within the budget
                    ids = tuple(self.tokenizer.encode(" word" * config.max_tokens, add_special_tokens=False))
                    comps.append(
                        Completion(
                            text=self.tokenizer.decode(list(ids[: config.max_tokens])),
                            token_ids=ids[: config.max_tokens],
                            finish_reason="length",
                        )
                    )
                else:  # like the real engines: the token that holds the stop "\n" is in token_ids
                    ids = tuple(self.tokenizer.encode(" " + s + "\n", add_special_tokens=False))
                    comps.append(Completion(text=" " + s, token_ids=ids, finish_reason="stop"))
            out.append(comps)
        return out

    def score_groups(self, groups):
        out = []
        for g in groups:
            rows = []
            for o in g.options:
                if len(g.options) == 1 and not o.middle and len(o.target) == 1:  # the decision '#'
                    self.calls["decision"] += 1
                    rows.append([math.log(self.p_think) if self.p_think > 0 else -1e9])
                    continue
                middle = self.tokenizer.decode(list(o.middle))
                extra = self.bonus if middle.strip().endswith("# good idea") else 0.0
                rows.append([-1.0 + extra] * len(o.target))
            self.calls["score"] += 1
            self.score_prefixes.append(self.tokenizer.decode(list(g.prefix)))
            out.append(rows)
        return out

    def load_weights(self, hf_dir):
        pass

    def close(self):
        pass


def _search(engine, **cfg):
    cfg = EStepConfig(**{"decision": "force", "samples": 4, **cfg})
    return search_snippet("f.py#0", CODE, sampler=engine, scorer=engine, cfg=cfg)


def test_thoughts_that_pay_are_chosen_with_gain_above_c(tiny_tokenizer):
    engine = ScriptedEngine(tiny_tokenizer, bonus=0.5)
    r = _search(engine, penalty=0.1)
    assert [t.line for t in r.infused.thoughts] == [1, 2, 4, 5]  # every non-blank line after the first
    assert {t.text for t in r.infused.thoughts} == {"good idea"}
    assert all(t.gain == pytest.approx(0.5) and t.gain > 0.1 for t in r.infused.thoughts)
    assert r.infused.render().count("    # good idea\n") == 4
    s = r.stats
    assert (s.positions, s.rollouts, s.sampled, s.failed, s.chosen) == (4, 4, 16, 8, 4)
    assert s.summary()["rollout_share"] == 1.0
    assert s.summary()["mean_gain"] == pytest.approx(0.5)


def test_a_large_penalty_never_thinks(tiny_tokenizer):
    r = _search(ScriptedEngine(tiny_tokenizer, bonus=0.5), penalty=0.6)
    assert r.infused.thoughts == ()
    assert r.stats.chosen == 0 and r.stats.summary()["think_rate"] == 0.0


def test_thoughts_persist_in_later_prefixes(tiny_tokenizer):
    """The engine's prompt stream, one rollout at a time (a wider lookahead also sends the
    speculative prompts it later drops; test_estep_planted covers what it commits)."""
    engine = ScriptedEngine(tiny_tokenizer, bonus=0.5)
    _search(engine, penalty=0.1, lookahead=1)
    assert "# good idea" not in engine.prompts[0]
    assert engine.prompts[1].endswith("# good idea\n    x = a + b\n    #")
    assert engine.score_prefixes[-1].count("# good idea") == 3


def test_groups_rewards_and_rloo_advantages(tiny_tokenizer):
    r = _search(ScriptedEngine(tiny_tokenizer, bonus=0.5), penalty=0.1)
    g = r.groups[0]
    kinds = [o.kind for o in g.options]
    assert kinds == ["act", "think", "think", "think", "think"]
    rewards = [o.reward for o in g.options]
    assert rewards == pytest.approx([0.0, 0.4, -0.1, -0.1, -0.1])
    adv = np.array([o.advantage for o in g.options])
    assert adv.sum() == pytest.approx(0.0, abs=1e-9)
    assert adv[1] == max(adv) and g.chosen == 1
    # the decision token heads every loss span; a thought's span runs to the newline that ends it
    tok = tiny_tokenizer
    act, good = g.options[0], g.options[1]
    assert tok.decode(list(act.ids[act.loss_start :])).strip() == "x"
    assert tok.decode(list(good.ids[good.loss_start :])).startswith(" # good idea\n")


def test_sampled_decisions_control_rollouts(tiny_tokenizer):
    never = ScriptedEngine(tiny_tokenizer, p_think=0.0)
    r = _search(never, penalty=0.0, decision="sample")
    assert r.stats.rollouts == 0 and never.calls["generate"] == 0 and never.calls["decision"] == 4
    always = ScriptedEngine(tiny_tokenizer, p_think=1.0)
    r = _search(always, penalty=0.0, decision="sample")
    assert r.stats.rollouts == 4 and r.stats.summary()["think_prob"] == pytest.approx(1.0)
    floor = ScriptedEngine(tiny_tokenizer, p_think=0.0)
    r = _search(floor, penalty=0.0, decision="sample", think_floor=1.0)
    assert r.stats.rollouts == 4


def test_position_fraction_is_seeded(tiny_tokenizer):
    def lines(seed):
        r = _search(ScriptedEngine(tiny_tokenizer), penalty=0.1, position_fraction=0.5, seed=seed)
        return tuple(g.line for g in r.groups)

    assert lines(1) == lines(1)
    assert len({lines(s) for s in range(8)}) > 1
    assert all(len(lines(s)) <= 4 for s in range(3))


def test_sum_norm_scales_gain_by_horizon_tokens(tiny_tokenizer):
    r_mean = _search(ScriptedEngine(tiny_tokenizer, bonus=0.5), penalty=0.1, gain_norm="mean")
    r_sum = _search(ScriptedEngine(tiny_tokenizer, bonus=0.5), penalty=0.1, gain_norm="sum")
    assert r_sum.infused.thoughts[0].gain > r_mean.infused.thoughts[0].gain * 3


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        EStepConfig(penalty=-1)
    with pytest.raises(ConfigError):
        EStepConfig(position_fraction=0)
    with pytest.raises(ConfigError):
        EStepConfig(decision="always")


def test_prompt_space_option_ends_the_sampling_prompt_with_the_space(tiny_tokenizer):
    engine = ScriptedEngine(tiny_tokenizer, bonus=0.5)
    r = _search(engine, penalty=0.1, prompt_space=True)
    assert engine.prompts[0].endswith("\n    # ") and len(r.infused.thoughts) == 4
    plain = ScriptedEngine(tiny_tokenizer, bonus=0.5)
    _search(plain, penalty=0.1)
    assert plain.prompts[0].endswith("\n    #")


def test_positions_before_existing_comments_are_left_out_and_counted(tiny_tokenizer):
    code = "def f(a):\n    # add one\n    x = a + 1\n    #: a second comment\n    return x\n"
    cfg = EStepConfig(decision="force", samples=2, penalty=0.1)
    r = search_snippet("c.py#0", code, sampler=ScriptedEngine(tiny_tokenizer), scorer=ScriptedEngine(tiny_tokenizer),
                       cfg=cfg)
    assert [g.line for g in r.groups] == [2, 4]  # never before "# add one" or "#: a second comment"
    assert (r.stats.positions, r.stats.comment_positions) == (2, 2)
    assert r.stats.summary()["comment_position_share"] == pytest.approx(2 / 5)
    allowed = search_snippet("c.py#0", code, sampler=ScriptedEngine(tiny_tokenizer),
                             scorer=ScriptedEngine(tiny_tokenizer),
                             cfg=EStepConfig(decision="force", samples=2, penalty=0.1, comment_lines="allow"))
    assert [g.line for g in allowed.groups] == [1, 2, 3, 4] and allowed.stats.comment_positions == 0


class IndentAwareScorer(ScriptedEngine):
    """A pi that knows only layout: a newline + indentation token is cheap right after a comment
    line (whose indentation it repeats) and dear elsewhere; every other token costs the same,
    whatever any thought says. A thought carries no information here, so it must never pay."""

    def score_groups(self, groups):
        out = []
        for g in groups:
            rows = []
            for o in g.options:
                ids, lps = list(g.prefix + o.middle), []
                for t in o.target:
                    if not self.tokenizer.decode([t]).strip() and "\n" in self.tokenizer.decode([t]):
                        last = self.tokenizer.decode(ids).split("\n")[-1]
                        lps.append(-0.1 if last.lstrip().startswith("#") else -3.0)
                    else:
                        lps.append(-1.0)
                    ids.append(t)
                rows.append(lps)
            out.append(rows)
        return out


@pytest.mark.parametrize("chain", [False, True], ids=["act-scored", "act-from-chain"])
@pytest.mark.parametrize(("score_from", "passes"), [("line", True), ("content", False)])
def test_a_content_free_thought_gains_nothing_when_options_share_the_indentation(tiny_tokenizer, score_from,
                                                                                 passes, chain):
    engine = IndentAwareScorer(tiny_tokenizer, samples=("Handle the remaining cases.",))
    cfg = EStepConfig(decision="force", samples=2, penalty=0.05, score_from=score_from, chain=chain)
    r = search_snippet("f.py#0", CODE, sampler=engine, scorer=engine, cfg=cfg)
    gains = [o.gain for g in r.groups for o in g.options if o.kind == "think"]
    assert gains and all(gain is not None for gain in gains)
    if passes:  # the old scoring: the thought is paid for the indentation it repeats
        assert min(gains) > 0.05 and len(r.infused.thoughts) == 4
    else:
        assert max(abs(gain) for gain in gains) < 1e-9 and r.infused.thoughts == ()


def test_rl_options_hold_the_ids_q_sampled_not_a_re_encoding(tiny_tokenizer):
    """q may write a thought in a tokenization that encoding its text would not give (here one
    token per character); the PPO ratio must be over those ids."""
    tok = tiny_tokenizer

    class CharSampler(ScriptedEngine):
        def generate(self, prompts, config):
            text = " good idea\n"
            ids = tuple(i for ch in text for i in tok.encode(ch, add_special_tokens=False))
            assert ids != tuple(tok.encode(text, add_special_tokens=False))  # really another tokenization
            return [[Completion(text=" good idea", token_ids=ids, finish_reason="stop")] * c.n
                    for c in per_prompt(config, len(prompts))]

    sampler, scorer = CharSampler(tok), ScriptedEngine(tok, bonus=0.5)
    r = search_snippet("f.py#0", CODE, sampler=sampler, scorer=scorer,
                       cfg=EStepConfig(decision="force", samples=2, penalty=0.1))
    char_ids = tuple(i for ch in " good idea\n" for i in tok.encode(ch, add_special_tokens=False))
    thought = r.groups[0].options[1]
    assert thought.kind == "think" and thought.text == "good idea" and thought.gain == pytest.approx(0.5)
    assert thought.ids[-len(char_ids):] == char_ids  # what q sampled, its final newline included
    assert tok.decode(list(thought.ids[: thought.loss_start + 1])).endswith("#")  # the loss starts at "#"
    no_end = search_snippet("f.py#0", CODE, sampler=sampler, scorer=scorer,
                            cfg=EStepConfig(decision="force", samples=2, penalty=0.1, end_token_in_loss=False))
    assert no_end.groups[0].options[1].ids[-len(char_ids) + 1:] == char_ids[:-1]  # without the "\n" token
