"""Reading held-out code with and without thoughts (`estep.thinking`): the code tokens counted are
the text's own tokens in every mode, a reading with thoughts scores exactly the tokenization of the
rendered text, and a model that thinks writes its own thoughts at the candidate lines."""

from __future__ import annotations

import math

import pytest

from ra3_megatron.core.latent import InfusedSnippet, Thought
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.thinking import candidate_lines, read_snippets, think_summary
from ra3_megatron.rollout.base import EngineCapabilities, RolloutEngineBase, ScoreGroup, ScoreOption
from ra3_megatron.rollout.fake import FakeEngine

pytestmark = pytest.mark.unit


class Recorder(RolloutEngineBase):
    """A fake engine that keeps the scored sequences; `think=True` answers every shared-sequence
    decision probe with log q("#") = 0, so the model thinks wherever it is asked."""

    def __init__(self, engine, think: bool = False):
        self.engine, self.tokenizer, self.scored = engine, engine.tokenizer, []
        if think:
            self.capabilities = EngineCapabilities(probe_in_one_pass=True)
            self.token_logprobs_at = lambda ids, positions, tokens: [0.0] * len(positions)

    def score_groups(self, groups):
        for g in groups:
            for o in g.options:
                self.scored.append((*g.prefix, *o.middle, *o.target))
        return self.engine.score_groups(groups)

    def generate(self, prompts, config):
        return self.engine.generate(prompts, config)


def _texts(n: int = 12, chars: int = 3000) -> list[str]:
    from ra3_megatron.models.tiny import stdlib_files

    return [p.read_text(encoding="utf-8")[:chars] for p in stdlib_files(n)]


@pytest.fixture(scope="module")
def fake(tiny_tokenizer_dir):
    return FakeEngine(tokenizer=str(tiny_tokenizer_dir), corpus=tuple(_texts(6)))


def test_given_thoughts_score_the_rendered_texts_tokens_and_count_the_plain_code(fake):
    cfg = EStepConfig()
    whole = fake.tokenizer.encode
    texts = _texts()
    jobs = [(f"s{k}", t) for k, t in enumerate(texts)]
    given = {f"s{k}": {line: f"step {n}" for n, line in enumerate(candidate_lines(t, cfg)) if n % 3 == 0}
             for k, t in enumerate(texts)}
    rec = Recorder(fake)
    plain = read_snippets(jobs, rec, cfg, mode="plain")
    with_thoughts = read_snippets(jobs, rec, cfg, mode="given", given=given)
    rendered = {tuple(whole(InfusedSnippet(id=sid, text=t, thoughts=tuple(
        Thought(line=a, text=b) for a, b in given[sid].items())).render(), add_special_tokens=False))
        for sid, t in jobs}
    assert rendered <= set(rec.scored)  # each reading scored exactly the rendered text's ids
    for (sid, text), p, g in zip(jobs, plain, with_thoughts):
        assert p[0].tokens == g[0].tokens == len(whole(text, add_special_tokens=False)) - 1
        assert g[0].thoughts == len(given[sid])
        if given[sid]:
            assert g[0].nll != pytest.approx(p[0].nll)


def test_plain_reading_is_the_texts_log_likelihood(fake):
    text = _texts(1)[0]
    ids = fake.tokenizer.encode(text, add_special_tokens=False)
    ref = fake.score_groups([ScoreGroup(tuple(ids[:1]), (ScoreOption((), tuple(ids[1:])),))])[0][0]
    got = read_snippets([("a", text)], fake, EStepConfig(), mode="plain")[0][0]
    assert got.nll == pytest.approx(-sum(ref), rel=1e-9)
    assert got.ce == pytest.approx(-sum(ref) / (len(ids) - 1))


def test_a_thinking_model_writes_its_own_thoughts_and_the_same_code_is_counted(fake):
    cfg = EStepConfig(seed=3)
    jobs = [(f"s{k}", t) for k, t in enumerate(_texts(4))]
    plain = read_snippets(jobs, fake, cfg, mode="plain")
    runs = [read_snippets(jobs, Recorder(fake, think=True), cfg, mode="think", samples=2) for _ in range(2)]
    assert [[r.nll for r in rs] for rs in runs[0]] == [[r.nll for r in rs] for rs in runs[1]]  # seeded
    think = runs[0]
    summary = think_summary(think)
    assert summary["positions"] == 2 * sum(len(candidate_lines(t, cfg)) for _, t in jobs)
    # q("#") = 1 everywhere: every decision thinks; a sample without a newline in budget is no thought
    assert summary["mean_q_think"] == 1.0
    assert summary["think_rate"] * summary["positions"] + summary["failed_samples"] == summary["positions"]
    assert summary["think_rate"] > 0.1 and summary["mean_thought_tokens"] > 0
    for p, rs in zip(plain, think):
        assert all(r.tokens == p[0].tokens for r in rs)
        if any(r.thoughts for r in rs):
            assert any(not math.isclose(r.nll, p[0].nll) for r in rs)
    # a model that never thinks reads the code as it is
    never = read_snippets(jobs, Never(fake), cfg, mode="think", samples=1)
    assert think_summary(never)["positions"] > 0
    assert all(r[0].thoughts == 0 and r[0].nll == pytest.approx(p[0].nll, rel=1e-12) for r, p in zip(never, plain))


class Never(Recorder):
    """log q("#") = -inf wherever a decision is asked, probed or scored."""

    def __init__(self, engine):
        super().__init__(engine)
        self.token_logprobs_at = lambda ids, positions, tokens: [-math.inf] * len(positions)

    def score_groups(self, groups):
        out = super().score_groups(groups)
        for g, rows in zip(groups, out):
            o = g.options[0]
            if len(g.options) == 1 and not o.middle and len(o.target) == 1 and "#" in self.tokenizer.decode(list(o.target)):
                rows[0] = [-math.inf] * len(rows[0])
        return out


def test_a_thought_never_drops_a_code_token(fake):
    """Where the plain text has a lone " " token before the code (" ", "und"), the thought's
    middle has " #" instead: that " " is still counted, after the thought."""
    text = "class A:\n    x = 1\n    undoc_header = 2\n    qualname = 3\n"
    assert " " in [fake.tokenizer.decode([i]) for i in fake.tokenizer.encode(text, add_special_tokens=False)]
    cfg = EStepConfig()
    plain = read_snippets([("a", text)], fake, cfg, mode="plain")[0][0]
    given = read_snippets([("a", text)], fake, cfg, mode="given", given={"a": {2: "idea", 3: "more"}})[0][0]
    assert given.thoughts == 2 and given.misaligned == 0
    assert given.tokens == plain.tokens == len(fake.tokenizer.encode(text, add_special_tokens=False)) - 1
