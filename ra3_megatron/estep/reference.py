"""The E-step search in the paper's order, one position at a time: the reference the fast search
(`estep.search`) is held equal to.

For each candidate line, left to right: q's probability of "#" after the text so far decides
(G draws); when some draws think, q samples that many thoughts; pi scores `<act>` and each
distinct thought on the next tau lines; the best option (ties: `<act>`) joins the text. No
lookahead windows, no decision probes read from a shared pass, no `<act>` chain: every score is
its own request. Same scoring, rewards and randomness as the fast search (`think_count`, and
sampling seeds keyed by line), so with the same seed both make the same decisions.
"""

from __future__ import annotations

import math

from ra3_megatron.core.latent import InfusedSnippet, Thought
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.pieces import Codec, after_thought, think_marker, thought_middle
from ra3_megatron.estep.requests import SampleRequest, ScoreRequest
from ra3_megatron.estep.search import (
    Horizon,
    SearchResult,
    draft_rollout,
    finish_rollout,
    sample_prompt,
    search_positions,
    think_count,
)
from ra3_megatron.rollout.base import ScoreGroup, ScoreOption


def reference_steps(snippet_id: str, text: str, codec: Codec, cfg: EStepConfig, *, phase: str = "infuse"):
    """The search of one snippet, one position at a time (a generator, like `search_steps`)."""
    pieces, chosen, stats = search_positions(snippet_id, text, cfg, phase)
    piece_ids = [codec.encode(p.text) for p in pieces]
    prefix = list(piece_ids[0])
    thoughts, groups = [], []
    for k in range(1, len(pieces)):
        piece = pieces[k]
        if piece.line in chosen:
            marker = codec.encode(think_marker(piece))
            d = codec.decision_index(marker)
            stats.positions += 1
            n_think = cfg.samples
            if cfg.decision == "sample":
                lp = yield ScoreRequest("q", ScoreGroup((*prefix, *marker[:d]), (ScoreOption((), marker[d:]),)))
                p_think = max(math.exp(min(0.0, float(sum(lp[0][0])))), cfg.think_floor)
                stats.think_prob_sum += p_think
                n_think = think_count(cfg, snippet_id, phase, piece.line, p_think)
            if n_think:
                prompt = (*prefix, *sample_prompt(marker, codec, cfg))
                completions = yield SampleRequest(prompt, n_think, piece.line)
                horizon = Horizon.of(k, pieces, piece_ids, codec, cfg)
                draft = draft_rollout(tuple(prefix), piece, piece_ids[k], horizon, (marker, d), completions, codec, cfg, None)
                if draft.request is not None:
                    draft.scores = yield draft.request
                group = finish_rollout(draft, cfg, stats)
                groups.append(group)
                best = group.options[group.chosen]
                if best.kind == "think":
                    thoughts.append(Thought(line=piece.line, text=best.text, gain=best.gain))
                    middle = codec.encode(thought_middle(best.text, piece))
                    stats.add_chosen(best, len(middle) - d)
                    prefix.extend(middle)
                    prefix.extend(codec.encode(after_thought(piece)))
                    continue
        prefix.extend(piece_ids[k])
    return SearchResult(infused=InfusedSnippet(id=snippet_id, text=text, thoughts=tuple(thoughts)),
                        groups=groups, stats=stats)


def reference_searches(jobs, *, sampler, scorer, cfg: EStepConfig, phase: str = "infuse") -> list[SearchResult]:
    """`reference_steps` over (snippet id, text) jobs, served like the fast searches."""
    from ra3_megatron.estep.batch import serve

    codec = Codec(sampler.tokenizer)
    gens = [reference_steps(sid, text, codec, cfg, phase=phase) for sid, text in jobs]
    return serve(gens, [sid for sid, _ in jobs], sampler=sampler, scorer=scorer, cfg=cfg, phase=phase)
