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
import time
from collections.abc import Sequence

from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.pieces import Codec
from ra3_megatron.estep.probe import chain_logprobs, probe_logprobs
from ra3_megatron.estep.requests import Bundle, ChainRequest, ProbeRequest, SampleRequest, ScoreRequest
from ra3_megatron.estep.search import SearchResult, search_steps
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
    clock: dict[str, float] | None = None,
) -> list[SearchResult]:
    """Search every (snippet id, text) in `jobs`; q = `sampler`, pi = `scorer` (may be the same engine).

    clock: when given, the seconds spent in each kind of engine call are added to it (keys
    "probe", "chain", "score", "sample"), and the rest, the searches' own work between calls,
    to "search".
    """
    codec = codec or Codec(sampler.tokenizer)
    gens = [search_steps(sid, text, codec, cfg, phase=phase, keep_groups=keep_groups) for sid, text in jobs]
    return serve(gens, [sid for sid, _ in jobs], sampler=sampler, scorer=scorer, cfg=cfg, phase=phase, clock=clock)


class _Laps:
    """Adds the time since the last lap to clock[name] (or nothing without a clock)."""

    def __init__(self, clock: dict[str, float] | None):
        self.clock, self.t = clock, time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.clock is not None:
            now = time.perf_counter()
            self.clock[name] = self.clock.get(name, 0.0) + now - self.t
            self.t = now


def serve(gens, ids: Sequence[str], *, sampler, scorer, cfg: EStepConfig, phase: str,
          clock: dict[str, float] | None = None) -> list:
    """Drive generators that yield the search's request types (`search_steps`, and the held-out
    reader of `estep.thinking`) in lockstep; returns their return values in order. `ids[i]`
    names generator i in its sampling seeds."""
    lap = _Laps(clock)
    results: list[object] = [None] * len(gens)
    done = [False] * len(gens)
    pending: dict[int, object] = {}  # search index -> its request (or Bundle of requests)

    def advance(i: int, answer: object) -> None:
        try:
            pending[i] = gens[i].send(answer)
        except StopIteration as stop:
            pending.pop(i, None)
            results[i], done[i] = stop.value, True

    for i in range(len(gens)):
        advance(i, None)
    last_role = "q" if getattr(sampler, "holds_weights", False) else "pi"  # shared engine: who is resident
    while pending:
        # Every request of the round, bundles flattened: (search index, request), in order.
        flat = [(i, r) for i in sorted(pending)
                for r in (pending[i].requests if isinstance(pending[i], Bundle) else (pending[i],))]
        answers: list[object] = [None] * len(flat)
        scores_for: dict[str, list[int]] = {"pi": [], "q": []}
        for f, (_, req) in enumerate(flat):
            if isinstance(req, ScoreRequest):
                scores_for["q" if req.engine == "q" and sampler is not scorer else "pi"].append(f)
        lap("search")

        def score(engine, idx: list[int]) -> None:
            if idx:
                for f, scores in zip(idx, engine.score_groups([flat[f][1].group for f in idx])):
                    answers[f] = [scores]
            lap("score")

        def pi_calls() -> bool:
            score(scorer, scores_for["pi"])
            chains = [f for f, (_, req) in enumerate(flat) if isinstance(req, ChainRequest)]
            if chains:
                for f, lps in zip(chains, chain_logprobs(scorer, [(flat[f][1].ids, flat[f][1].start) for f in chains])):
                    answers[f] = lps
            lap("chain")
            return bool(scores_for["pi"] or chains)

        def q_calls() -> bool:
            score(sampler, scores_for["q"])
            probes = [f for f, (_, req) in enumerate(flat) if isinstance(req, ProbeRequest)]
            if probes:
                out = probe_logprobs(sampler, [(flat[f][1].ids, flat[f][1].positions, flat[f][1].tokens)
                                               for f in probes])
                for f, lps in zip(probes, out):
                    answers[f] = lps
            lap("probe")
            samples = [f for f, (_, req) in enumerate(flat) if isinstance(req, SampleRequest)]
            if samples:
                # One call for every prompt of the round, each with its own n and its own seed.
                configs = [
                    SamplingConfig(n=flat[f][1].n, temperature=cfg.temperature, max_tokens=cfg.max_latent_tokens,
                                   stop=("\n",), seed=_seed(cfg.seed, phase, ids[flat[f][0]], flat[f][1].line))
                    for f in samples
                ]
                for f, completions in zip(samples, sampler.generate([list(flat[f][1].prompt) for f in samples],
                                                                    configs)):
                    answers[f] = completions
            lap("sample")
            return bool(scores_for["q"] or probes or samples)

        # The role that served last goes first: where pi and q share one engine (weights swapped
        # in, rollout.shared) a round then costs at most one swap. One engine in both roles
        # (no RL) keeps the fixed order.
        for role, calls in ((("q", q_calls), ("pi", pi_calls)) if last_role == "q" and sampler is not scorer else
                            (("pi", pi_calls), ("q", q_calls))):
            if calls():
                last_role = role
        by_search: dict[int, list[object]] = {}
        for (i, _), answer in zip(flat, answers):
            by_search.setdefault(i, []).append(answer)
        for i, got in by_search.items():
            advance(i, tuple(got) if isinstance(pending[i], Bundle) else got[0])
    lap("search")
    return [r for r, finished in zip(results, done) if finished]


def search_snippet(snippet_id: str, text: str, *, sampler, scorer, cfg: EStepConfig, phase: str = "infuse",
                   keep_groups: bool = True) -> SearchResult:
    """Search one snippet with the given engines (q samples and decides, pi scores)."""
    return run_searches([(snippet_id, text)], sampler=sampler, scorer=scorer, cfg=cfg, phase=phase,
                        keep_groups=keep_groups)[0]
