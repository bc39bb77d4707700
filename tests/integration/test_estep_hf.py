"""The E-step on the transformers backend (the tiny Llama): the one-pass decision probe equals
per-position scoring, and a search produces valid infused records."""

from __future__ import annotations

import ast

import pytest

from ra3_megatron.estep.batch import search_snippet
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.probe import probe_logprobs
from ra3_megatron.rollout.base import RolloutEngineBase

pytestmark = pytest.mark.integration

CODE = '''import os


def walk(root):
    """Yield file paths."""
    for base, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(base, name)
'''


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir):
    from ra3_megatron.rollout.base import create_engine

    return create_engine("hf", model=str(tiny_model_dir), threads=1)


def test_probe_fast_path_matches_score_groups(hf_engine):
    ids = hf_engine.tokenizer.encode(CODE, add_special_tokens=False)
    positions = [3, 10, len(ids) - 1]
    tokens = [ids[3], 17, 42]

    class ScoreOnly(RolloutEngineBase):  # the same engine declaring no one-pass probe: the fallback path
        tokenizer = hf_engine.tokenizer
        score_groups = staticmethod(hf_engine.score_groups)

    fast = probe_logprobs(hf_engine, [(ids, positions, tokens)])[0]
    slow = probe_logprobs(ScoreOnly(), [(ids, positions, tokens)])[0]
    assert fast == pytest.approx(slow, abs=1e-4)


def test_search_on_the_transformers_backend(hf_engine):
    cfg = EStepConfig(
        penalty=0.0, samples=2, horizon=2, max_latent_tokens=8, decision="sample", think_floor=0.5
    )
    r = search_snippet("walk.py#0", CODE, sampler=hf_engine, scorer=hf_engine, cfg=cfg)
    s = r.stats
    assert s.positions == 6 and 0 < s.rollouts <= s.positions and s.sampled > 0
    snip = r.infused
    assert ast.dump(ast.parse(snip.render())) == ast.dump(ast.parse(CODE))
    for g in r.groups:
        assert g.options[0].kind == "act" and len(g.options) >= 2
        assert abs(sum(o.advantage for o in g.options)) < 1e-9
