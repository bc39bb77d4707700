"""Decision probes: log q("#" | text before line t) for many lines t of one sequence at once.

Until a thought is inserted the prefix of every later position is a prefix of the same token
sequence, so all the think/act decisions of a snippet can be read from ONE forward pass over it
(and one more after each inserted thought), instead of one pass over a growing prefix per line.
A probe is (ids, positions, tokens): the log-prob of tokens[i] right after ids[:positions[i]].

Engines answer probes through, in order of preference:
- a `token_logprobs_at(ids, positions, tokens)` method of the engine, when it has one;
- a transformers model at `engine.model` (the transformers backend): one forward, the head
  applied only at the probed positions;
- `score_groups`, one group per position (exact, but a pass over each prefix: the fallback for
  engines whose prefix cache makes that cheap, like vLLM, and for the fake engine).
`chain_logprobs` is the same idea under pi: the log-probs of the code itself along the snippet,
which are the `<act>` option's horizon scores for every position until a thought is inserted.
"""

from __future__ import annotations

from collections.abc import Sequence

from ra3_megatron.rollout.base import ScoreGroup, ScoreOption


def _torch_model(engine):
    model = getattr(engine, "model", None)
    if model is None or not hasattr(model, "get_decoder") or not hasattr(model, "get_output_embeddings"):
        return None
    return model


def probe_logprobs(engine, probes: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]]) -> list[list[float]]:
    """One list of log-probs per probe, in order."""
    method = getattr(engine, "token_logprobs_at", None)
    if method is not None:
        return [list(method(ids, pos, tok)) for ids, pos, tok in probes]
    model = _torch_model(engine)
    if model is not None:
        return [_hf_probe(model, ids, pos, tok) for ids, pos, tok in probes]
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

    Through the engine's `sequence_logprobs(ids, start)` when it has one (the transformers
    backend: one pass, from its prefix store), else one `score_groups` group per request.
    """
    method = getattr(engine, "sequence_logprobs", None)
    if method is not None:
        return [list(method(ids, start)) for ids, start in requests]
    groups = [ScoreGroup(tuple(ids[:start]), (ScoreOption((), tuple(ids[start:])),)) for ids, start in requests]
    return [g[0] for g in engine.score_groups(groups)] if groups else []


def _hf_probe(model, ids: Sequence[int], positions: Sequence[int], tokens: Sequence[int]) -> list[float]:
    import torch

    if not positions:
        return []
    last = max(positions)
    device = next(model.parameters()).device
    with torch.inference_mode():
        x = torch.tensor([list(ids[:last])], device=device)
        hidden = model.get_decoder()(input_ids=x).last_hidden_state[0]
        at = torch.tensor([p - 1 for p in positions], device=device)  # the state that predicts token p
        logits = model.get_output_embeddings()(hidden[at]).float()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(list(tokens), device=device)[:, None])
    return lp[:, 0].tolist()
