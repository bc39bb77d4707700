"""Decision probes: log q("#" | text before line t) for many lines t of one sequence at once.

Until a thought is inserted the prefix of every later position is a prefix of the same token
sequence, so all the think/act decisions of a snippet can be read from ONE forward pass over it
(and one more after each inserted thought), instead of one pass over a growing prefix per line.
A probe is (ids, positions, tokens): the log-prob of tokens[i] right after ids[:positions[i]].

Engines that declare `capabilities.probe_in_one_pass` answer probes with `probe_many` (one pass
over each sequence: the transformers backend from its logits, vLLM from its prompt log-probs'
top-k); the others with `score_groups`, one group per position (exact, but a pass over each
prefix: cheap on the fake engine).
`chain_logprobs` is the same idea under pi: the log-probs of the code itself along the snippet,
which are the `<act>` option's horizon scores for every position until a thought is inserted
(`sequence_logprobs(ids, start)` where `capabilities.chain_in_one_pass`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ra3_megatron.rollout.base import ScoreGroup, ScoreOption


def probe_logprobs(engine, probes: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]]) -> list[list[float]]:
    """One list of log-probs per probe, in order."""
    if engine.capabilities.probe_in_one_pass:
        return engine.probe_many(probes)
    groups, shape = [], []
    for ids, positions, tokens in probes:
        shape.append(len(positions))
        for p, t in zip(positions, tokens):
            groups.append(ScoreGroup(tuple(ids[:p]), (ScoreOption((), (int(t),)),)))
    flat = [g[0][0] for g in engine.score_groups(groups)] if groups else []
    out, k = [], 0
    for n in shape:
        out.append(flat[k : k + n])
        k += n
    return out


def chain_logprobs(engine, requests: Sequence[tuple[Sequence[int], int]]) -> list[list[float]]:
    """For each (ids, start): log p(ids[i] | ids[:i]) for i in [start, len(ids)).

    Through the engine's `sequence_logprobs(ids, start)` when it declares `chain_in_one_pass` (one
    pass; `hf-cpu` from its prefix store), else one `score_groups` group per request.
    """
    if engine.capabilities.chain_in_one_pass:
        return [list(engine.sequence_logprobs(ids, start)) for ids, start in requests]
    groups = [ScoreGroup(tuple(ids[:start]), (ScoreOption((), tuple(ids[start:])),)) for ids, start in requests]
    return [g[0] for g in engine.score_groups(groups)] if groups else []
