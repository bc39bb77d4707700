"""Serve many snippet searches in lockstep: each round gathers the pending requests of all
searches and answers them with one `score_groups` call per engine and one `generate` call (each
prompt with its own number of samples), so the rollout engine sees batches (and shared prefixes)
instead of single calls.

The searches are independent; answers go back in snippet order, so the result for a batch is
deterministic. A rollout's sampling seed is derived from (cfg.seed, phase, snippet id, line):
engines that seed per prompt (all three) then give each snippet the same samples whatever else
is in its batch and however its requests are scheduled, and no two rollouts share a stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.pieces import Codec
from ra3_megatron.estep.probe import chain_logprobs, probe_logprobs
from ra3_megatron.estep.search import (
    ChainRequest,
    ProbeRequest,
    SampleRequest,
    ScoreRequest,
    SearchResult,
    search_steps,
)
from ra3_megatron.rollout.base import SamplingConfig


def _seed(*parts: object) -> int:
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def run_searches(
    jobs: Sequence[tuple[str, str]],
    *,
    sampler,
    scorer,
    cfg: EStepConfig,
    phase: str = "infuse",
    keep_groups: bool = True,
    codec: Codec | None = None,
) -> list[SearchResult]:
    """Search every (snippet id, text) in `jobs`; q = `sampler`, pi = `scorer` (may be the same engine)."""
    codec = codec or Codec(sampler.tokenizer)
    gens = [search_steps(sid, text, codec, cfg, phase=phase, keep_groups=keep_groups) for sid, text in jobs]
    results: list[SearchResult | None] = [None] * len(gens)
    pending: dict[int, ScoreRequest | SampleRequest] = {}

    def advance(i: int, answer: object) -> None:
        try:
            pending[i] = gens[i].send(answer)
        except StopIteration as stop:
            pending.pop(i, None)
            results[i] = stop.value

    for i in range(len(gens)):
        advance(i, None)
    while pending:
        answers: dict[int, object] = {}
        order = sorted(pending)
        by_engine: dict[int, tuple[object, list[int]]] = {}
        for i in order:
            req = pending[i]
            if isinstance(req, ScoreRequest):
                engine = sampler if req.engine == "q" else scorer
                by_engine.setdefault(id(engine), (engine, []))[1].append(i)
        for engine, idx in by_engine.values():
            out = engine.score_groups([pending[i].group for i in idx])
            for i, scores in zip(idx, out):
                answers[i] = [scores]
        chains = [i for i in order if isinstance(pending[i], ChainRequest)]
        if chains:
            out = chain_logprobs(scorer, [(pending[i].ids, pending[i].start) for i in chains])
            for i, lps in zip(chains, out):
                answers[i] = lps
        probes = [i for i in order if isinstance(pending[i], ProbeRequest)]
        if probes:
            out = probe_logprobs(sampler, [(pending[i].ids, pending[i].positions, pending[i].tokens) for i in probes])
            for i, lps in zip(probes, out):
                answers[i] = lps
        idx = [i for i in order if isinstance(pending[i], SampleRequest)]
        if idx:
            # One call for every prompt of the round, each with its own n and its own seed.
            configs = [
                SamplingConfig(n=pending[i].n, temperature=cfg.temperature, max_tokens=cfg.max_latent_tokens,
                               stop=("\n",), seed=_seed(cfg.seed, phase, jobs[i][0], pending[i].line))
                for i in idx
            ]
            out = sampler.generate([list(pending[i].prompt) for i in idx], configs)
            for i, completions in zip(idx, out):
                answers[i] = completions
        for i in order:
            advance(i, answers[i])
    return [r for r in results if r is not None]
