"""The fast E-step search (lookahead windows, decision probes from one pass, `<act>` chains,
lockstep batches) makes the same decisions as the paper-order reference search, same seed:
on the fake engine (with thoughts that sometimes win, so windows get replanned) and on the
tiny model."""

from __future__ import annotations

import pytest

from ra3_megatron.estep.batch import run_searches
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.reference import reference_searches
from ra3_megatron.rollout.base import RolloutEngineBase
from ra3_megatron.rollout.fake import FakeEngine

pytestmark = pytest.mark.unit


class SomeThoughtsHelp(RolloutEngineBase):
    """The fake LM, with +0.5 nats per scored token after a thought (a middle holding "#") whose
    ids sum to 0 mod 3: some thoughts win, decided by their content, so chosen thoughts change
    later prefixes."""

    def __init__(self, engine):
        self.engine, self.tokenizer = engine, engine.tokenizer

    def generate(self, prompts, config):
        return self.engine.generate(prompts, config)

    def _helps(self, middle) -> bool:
        return "#" in self.tokenizer.decode(list(middle)) and sum(middle) % 3 == 0

    def score_groups(self, groups):
        out = self.engine.score_groups(groups)
        return [[[x + 0.5 for x in row] if self._helps(o.middle) else row
                 for o, row in zip(g.options, rows)] for g, rows in zip(groups, out)]


def _jobs(n: int = 6, chars: int = 2500):
    from ra3_megatron.models.tiny import stdlib_files

    return [(f"{p.name}#0", p.read_text(encoding="utf-8")[:chars]) for p in stdlib_files(n)]


def _decisions(results):
    return [([(t.line, t.text) for t in r.infused.thoughts],
             [(g.line, g.chosen, [o.text for o in g.options]) for g in r.groups]) for r in results]


@pytest.mark.parametrize("lookahead", [1, 4])
def test_fast_search_decides_like_the_reference_on_the_fake_engine(tiny_tokenizer_dir, lookahead):
    jobs = _jobs()
    engine = SomeThoughtsHelp(FakeEngine(tokenizer=str(tiny_tokenizer_dir), corpus=tuple(t for _, t in jobs)))
    cfg = EStepConfig(penalty=0.1, samples=3, horizon=2, think_floor=0.4, max_latent_tokens=12, lookahead=lookahead,
                      seed=5)
    fast = run_searches(jobs, sampler=engine, scorer=engine, cfg=cfg)
    ref = reference_searches(jobs, sampler=engine, scorer=engine, cfg=cfg)
    assert _decisions(fast) == _decisions(ref)
    thoughts = sum(len(r.infused.thoughts) for r in ref)
    assert thoughts >= 3  # the comparison covers replanned windows, not only "act everywhere"
    if lookahead > 1:
        assert sum(r.stats.discarded for r in fast) > 0  # speculation was undone and redone
    for f, r in zip(fast, ref):
        assert [o.reward for g in f.groups for o in g.options] == pytest.approx(
            [o.reward for g in r.groups for o in g.options], abs=1e-9)


def test_fast_search_decides_like_the_reference_on_the_tiny_model(tiny_model_dir):
    from ra3_megatron.rollout.base import create_engine

    engine = create_engine("hf", model=str(tiny_model_dir))
    try:
        jobs = _jobs(4, 1500)
        cfg = EStepConfig(penalty=0.0, samples=2, horizon=2, think_floor=0.5, max_latent_tokens=8, seed=2)
        fast = run_searches(jobs, sampler=engine, scorer=engine, cfg=cfg)
        ref = reference_searches(jobs, sampler=engine, scorer=engine, cfg=cfg)
    finally:
        engine.close()
    assert _decisions(fast) == _decisions(ref)
    assert sum(len(r.groups) for r in ref) > 5
    for f, r in zip(fast, ref):
        assert [o.reward for g in f.groups for o in g.options] == pytest.approx(
            [o.reward for g in r.groups for o in g.options], abs=1e-4)
