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


class _Round:
    """One round of the serve loop: every pending request, answered by role. pi's calls (its
    scores, the `<act>` chains) and q's (its scores, the decision probes, the thought samples)
    are independent within a round, so either role may go first."""

    def __init__(self, flat: list, *, sampler, scorer, cfg: EStepConfig, phase: str, ids: Sequence[str], lap):
        self.flat, self.sampler, self.scorer, self.cfg, self.phase, self.ids, self.lap = (
            flat, sampler, scorer, cfg, phase, ids, lap)
        self.answers: list[object] = [None] * len(flat)
        self.scores_for: dict[str, list[int]] = {"pi": [], "q": []}
        for f, (_, req) in enumerate(flat):
            if isinstance(req, ScoreRequest):
                self.scores_for["q" if req.engine == "q" and sampler is not scorer else "pi"].append(f)

    def _of(self, kind) -> list[int]:
        return [f for f, (_, req) in enumerate(self.flat) if isinstance(req, kind)]

    def _score(self, engine, idx: list[int]) -> None:
        if idx:
            for f, scores in zip(idx, engine.score_groups([self.flat[f][1].group for f in idx])):
                self.answers[f] = [scores]
        self.lap("score")

    def pi_calls(self) -> bool:
        """pi's work of the round; whether there was any."""
        self._score(self.scorer, self.scores_for["pi"])
        chains = self._of(ChainRequest)
        if chains:
            requests = [(self.flat[f][1].ids, self.flat[f][1].start) for f in chains]
            for f, lps in zip(chains, chain_logprobs(self.scorer, requests)):
                self.answers[f] = lps
        self.lap("chain")
        return bool(self.scores_for["pi"] or chains)

    def q_calls(self) -> bool:
        """q's work of the round; whether there was any."""
        self._score(self.sampler, self.scores_for["q"])
        probes = self._of(ProbeRequest)
        if probes:
            requests = [(self.flat[f][1].ids, self.flat[f][1].positions, self.flat[f][1].tokens) for f in probes]
            for f, lps in zip(probes, probe_logprobs(self.sampler, requests)):
                self.answers[f] = lps
        self.lap("probe")
        samples = self._of(SampleRequest)
        if samples:
            # One call for every prompt of the round, each with its own n and its own seed.
            cfg = self.cfg
            configs = [
                SamplingConfig(n=self.flat[f][1].n, temperature=cfg.temperature, max_tokens=cfg.max_latent_tokens,
                               stop=("\n",), seed=_seed(cfg.seed, self.phase, self.ids[self.flat[f][0]],
                                                        self.flat[f][1].line))
                for f in samples
            ]
            prompts = [list(self.flat[f][1].prompt) for f in samples]
            for f, completions in zip(samples, self.sampler.generate(prompts, configs)):
                self.answers[f] = completions
        self.lap("sample")
        return bool(self.scores_for["q"] or probes or samples)


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
        rnd = _Round(flat, sampler=sampler, scorer=scorer, cfg=cfg, phase=phase, ids=ids, lap=lap)
        lap("search")
        # The role that served last goes first: where pi and q share one engine (weights swapped
        # in, rollout.shared) a round then costs at most one swap. One engine in both roles
        # (no RL) keeps the fixed order.
        order = (("q", rnd.q_calls), ("pi", rnd.pi_calls))
        if last_role != "q" or sampler is scorer:
            order = order[::-1]
        for role, calls in order:
            if calls():
                last_role = role
        by_search: dict[int, list[object]] = {}
        for (i, _), answer in zip(flat, rnd.answers):
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
