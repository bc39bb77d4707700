"""Reading held-out code with and without thoughts: the measurements of `ra3 compare`.

Three ways to read a snippet, each a generator of the search's request types (served in
lockstep by `estep.batch.serve`, so vLLM, transformers and the fake engine all answer them):

- "plain": the code teacher-forced, no thoughts. Its code CE is the NTP metric.
- "think": the model thinks by itself, as at inference. At each candidate line its own
  q("#" | text so far) decides (a Bernoulli draw, not an argmax); when it thinks it writes a
  thought (sampled like the E-step's rollouts, at the E-step's temperature) and the code then
  continues, teacher-forced. A sample that is no valid thought (no newline within the token
  budget) is dropped and the code goes on unthought. At temperature 1 (the default) the code's
  NLL given the sampled thoughts, averaged over a few samples, is an upper bound on the marginal
  NLL of the code (Jensen, z drawn from the model's own prior; a loose one, since the code after
  an "act" decision is scored with p(code), which still holds the mass given to "#"). It is what
  a thinking model pays per code token at inference.
- "given": the thoughts of a training record inserted where they are (the training-split CE
  the paper plots).

Only code tokens count, and they are the same tokens in all three modes: the snippet's own
tokens (the tokenizer's ids of its text) minus the first one (it has no context). A thought adds
its "# text" and the newline and indentation that follow it (after which line t's code tokens
come as in the plain text, see `estep.pieces`); those are latent tokens and are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ra3_megatron.core.latent import safe_candidate_lines
from ra3_megatron.core.lines import is_comment_line, split_lines
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.pieces import Codec, after_thought, cut_pieces, think_marker, thought_middle
from ra3_megatron.estep.requests import ChainRequest, SampleRequest, ScoreRequest
from ra3_megatron.estep.search import completion_thought, decision_probe, sample_prompt, snippet_rng
from ra3_megatron.rollout.base import ScoreGroup, ScoreOption

Mode = Literal["plain", "think", "given"]


@dataclass
class Reading:
    """One reading of one snippet. `nll` / `tokens`: the code tokens' NLL (nats) and count."""

    snippet_id: str
    mode: str
    nll: float
    tokens: int
    positions: int = 0  # candidate lines where a decision was drawn (mode "think")
    thoughts: int = 0  # thoughts inserted
    thought_tokens: int = 0  # their "# text" tokens
    think_prob_sum: float = 0.0  # sum of q("#") over the decisions
    failed: int = 0  # decisions to think whose sample was no valid thought (code goes on unthought)
    misaligned: int = 0  # thoughts after which the code's tokens could not be matched to the plain ones

    @property
    def ce(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan


def candidate_lines(text: str, cfg: EStepConfig) -> list[int]:
    """The lines where a thought may go, as the E-step chooses them (comment lines per cfg)."""
    lines = list(safe_candidate_lines(text, python=cfg.python))
    if cfg.comment_lines == "skip":
        physical = split_lines(text)
        lines = [i for i in lines if not is_comment_line(physical[i])]
    return lines


def read_steps(snippet_id: str, text: str, codec: Codec, cfg: EStepConfig, *, mode: Mode,
               given: Mapping[int, str] | None = None, sample: int = 0):
    """The reading of one snippet as a generator of engine requests; returns a `Reading`.

    mode "think" draws its decisions from a generator seeded by (cfg.seed, snippet, sample), and
    its thoughts under the seeds `estep.batch.serve` derives from the generator's id.
    """
    pieces = cut_pieces(text)
    piece_ids = [codec.encode(p.text) for p in pieces]
    ids: list[int] = list(piece_ids[0])
    code: list[int] = list(range(1, len(ids)))  # positions in `ids` of the counted code tokens
    out = Reading(snippet_id=snippet_id, mode=mode, nll=0.0, tokens=0)
    given = dict(given or {})
    if mode == "plain":
        given = {}
    chosen = set(candidate_lines(text, cfg)) if mode == "think" else set()
    rng = snippet_rng(cfg.seed, f"{snippet_id}@{sample}", "read")
    markers: dict[int, tuple[tuple[int, ...], int]] = {}
    for k in range(1, len(pieces)):
        if pieces[k].line in chosen:
            marker = codec.encode(think_marker(pieces[k]))
            markers[k] = (marker, codec.decision_index(marker))
    probed: dict[int, float] = {}  # line -> log q("#"), valid until a thought is inserted
    for k in range(1, len(pieces)):
        piece = pieces[k]
        thought = given.get(piece.line)
        if piece.line in chosen:
            if piece.line not in probed:
                request, lines = decision_probe(ids, pieces, piece_ids, markers, k, chosen)
                if lines:
                    probed.update(zip(lines, (yield request)))
            marker, d = markers[k]
            if piece.line in probed:
                lp = probed[piece.line]
            else:
                scores = yield ScoreRequest("q", ScoreGroup((*ids, *marker[:d]), (ScoreOption((), marker[d:]),)))
                lp = float(sum(scores[0][0]))
            p = math.exp(min(0.0, lp))
            out.positions += 1
            out.think_prob_sum += p
            if rng.random() < p:
                completions = yield SampleRequest((*ids, *sample_prompt(marker, codec, cfg)), 1, piece.line)
                thought = completion_thought(completions[0], cfg.max_latent_tokens)
                out.failed += thought is None
        if thought is None:
            code.extend(range(len(ids), len(ids) + len(piece_ids[k])))
            ids.extend(piece_ids[k])
            continue
        middle = codec.encode(thought_middle(thought, piece))
        d_mid = codec.decision_index(middle)
        cont = codec.encode(after_thought(piece))
        # The plain piece's tokens, split where the "#" goes: its first d_mid (newlines and
        # indentation) are the middle's first d_mid, the rest end the continuation. The rest may
        # start with whitespace of its own (a lone " " before "und" or a digit): it is counted
        # there, so a thought never drops a code token.
        plain, tail = piece_ids[k], len(piece_ids[k]) - d_mid
        if tuple(middle[:d_mid]) == tuple(plain[:d_mid]) and 0 < tail <= len(cont) \
                and tuple(cont[len(cont) - tail:]) == tuple(plain[d_mid:]):
            code.extend(range(len(ids), len(ids) + d_mid))
            code.extend(range(len(ids) + len(middle) + len(cont) - tail, len(ids) + len(middle) + len(cont)))
        else:  # a tokenizer that breaks the split: counted from the continuation's first non-space token
            out.misaligned += 1
            d_cont = codec.decision_index(cont)
            code.extend(range(len(ids), len(ids) + d_mid))
            code.extend(range(len(ids) + len(middle) + d_cont, len(ids) + len(middle) + len(cont)))
        ids.extend(middle)
        ids.extend(cont)
        out.thoughts += 1
        out.thought_tokens += len(middle) - d_mid
        probed.clear()
    if len(ids) > 1:
        lps = yield ChainRequest(tuple(ids), 1)
        out.nll = -float(sum(lps[p - 1] for p in code))
    out.tokens = len(code)
    return out


def read_snippets(snippets, engine, cfg: EStepConfig, *, mode: Mode, samples: int = 1,
                  given: Mapping[str, Mapping[int, str]] | None = None,
                  clock: dict[str, float] | None = None) -> list[list[Reading]]:
    """Per snippet (id, text), its readings (`samples` of them in mode "think", else one), with
    the one engine answering every request (decisions, thoughts and the code's log-probs)."""
    from ra3_megatron.estep.batch import serve

    codec = Codec(engine.tokenizer)
    n = samples if mode == "think" else 1
    jobs, gens = [], []
    for sid, text in snippets:
        for s in range(n):
            jobs.append(f"{sid}@{s}")
            gens.append(read_steps(sid, text, codec, cfg, mode=mode, given=(given or {}).get(sid), sample=s))
    flat = serve(gens, jobs, sampler=engine, scorer=engine, cfg=cfg, phase="read", clock=clock)
    return [flat[i * n : (i + 1) * n] for i in range(len(snippets))]


def think_summary(readings: list[list[Reading]]) -> dict[str, float]:
    """Think rate, mean thought length, mean q("#"), failed share over all readings."""
    flat = [r for rs in readings for r in rs]
    positions = sum(r.positions for r in flat)
    thoughts = sum(r.thoughts for r in flat)
    return {
        "think_rate": thoughts / positions if positions else 0.0,
        "mean_thought_tokens": sum(r.thought_tokens for r in flat) / thoughts if thoughts else 0.0,
        "mean_q_think": sum(r.think_prob_sum for r in flat) / positions if positions else 0.0,
        "failed_samples": sum(r.failed for r in flat),
        "misaligned_thoughts": sum(r.misaligned for r in flat),
        "positions": positions,
    }
