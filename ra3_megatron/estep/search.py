"""The E-step search over one snippet: left to right over candidate positions, thoughts persist.

At each candidate position (a non-blank line after the first where a comment is safe, or a
seeded random `position_fraction` of them):
1. decision: q's probability of the think marker "#" after the newline and indentation; G
   Bernoulli draws decide how many thoughts to roll out (`decision="force"`: all G);
2. rollout: the thoughts are sampled from q after the prefix, the line's lead whitespace and "#"
   (temperature, stop at a newline, at most `max_latent_tokens`); empty, over-long or multi-line
   samples fail (reward -c);
3. scoring under the fixed pi: l(z) = log pi(next tau pieces | prefix, z) for `<act>` and each
   distinct thought; gain = l(z) - l(act) (per horizon token, or summed); r = gain - c. `<act>`'s
   horizon is the code itself, so with `cfg.chain` its scores for all later positions come from
   one pass of pi over the rest of the snippet (`ChainRequest`, again after each inserted
   thought) instead of one option per rollout: a rollout's scoring then runs only its thoughts;
4. the best option is kept (`<act>` wins ties) and becomes part of the prefix.
Each position with a rollout becomes an RL group {act, z_1..z_k} with group-relative
advantages: the training examples of `estep.rl`.

Rollouts go in lookahead windows (`cfg.lookahead`): the next few rollout positions are sampled
and scored in one `Bundle`, as if no thought were chosen before them; the commit then walks
them left to right and, at a chosen thought, drops the rest of the window (counted in
`stats.discarded`) and plans again from the next line with the thought in the prefix.

The search is a generator: it yields engine requests (`ProbeRequest`, `ChainRequest`,
`ScoreRequest`, `SampleRequest`, or a `Bundle` of them; `estep.requests`) and receives their
answers, so `estep.batch` can serve many snippets with one engine call (`batch.search_snippet`
drives a single one). Randomness comes from generators seeded by (seed, snippet id, phase): the
visited positions from one, each line's decisions from one of its own (`think_count`), so a
snippet's search depends neither on its batch nor on how its windows were planned; tests hold
its decisions equal to the paper-order reference search in `estep.reference`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ra3_megatron.core.latent import InfusedSnippet, Thought, safe_candidate_lines, validate_thought_text
from ra3_megatron.core.lines import is_comment_line, split_lines
from ra3_megatron.core.rewards import choose_option, gain, group_advantages, option_rewards
from ra3_megatron.estep.config import EStepConfig
from ra3_megatron.estep.pieces import Codec, after_thought, cut_pieces, think_marker, thought_middle
from ra3_megatron.estep.requests import Bundle, ChainRequest, ProbeRequest, SampleRequest, ScoreRequest
from ra3_megatron.estep.stats import SearchStats
from ra3_megatron.rollout.base import Completion, ScoreGroup, ScoreOption


@dataclass
class Option:
    """One member of a group: `ids` follow the group's prefix; the loss covers ids[loss_start:]."""

    kind: Literal["act", "think"]
    ids: tuple[int, ...]
    loss_start: int
    reward: float
    gain: float | None = None
    text: str | None = None
    advantage: float = 0.0


@dataclass
class PositionGroup:
    line: int
    prefix: tuple[int, ...]
    options: list[Option]
    chosen: int


@dataclass
class SearchResult:
    infused: InfusedSnippet
    groups: list[PositionGroup] = field(default_factory=list)
    stats: SearchStats = field(default_factory=SearchStats)


def snippet_rng(seed: int, snippet_id: str, phase: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\x00{phase}\x00{snippet_id}".encode()).digest()
    return np.random.default_rng(list(np.frombuffer(digest[:16], dtype=np.uint32)))


def think_count(cfg: EStepConfig, snippet_id: str, phase: str, line: int, p_think: float) -> int:
    """How many of the G decisions at `line` are "think": G uniforms keyed by (seed, phase,
    snippet, line) compared with q's probability. Keyed by the line rather than drawn from one
    stream, the count depends only on p_think, not on how often the search planned the line:
    a window replanned after a chosen thought draws the same uniforms again, so the fast search
    decides as the one-position-at-a-time reference (`estep.reference`) does."""
    u = snippet_rng(cfg.seed, f"{snippet_id}\x00{line}", f"{phase}\x00decide").random(cfg.samples)
    return int((u < p_think).sum())


def completion_thought(c: Completion, max_tokens: int) -> str | None:
    text = c.text.split("\n", 1)[0] if "\n" in c.text else c.text
    if "\n" not in c.text and (c.finish_reason == "length" or len(c.token_ids) > max_tokens):
        return None  # no newline within the budget: an over-long thought
    return validate_thought_text(text)


SearchGen = Generator[ScoreRequest | SampleRequest | ProbeRequest | ChainRequest | Bundle, object, SearchResult]


def decision_probe(prefix, pieces, piece_ids, markers, k, chosen_lines):
    """Decision probes for the candidate positions >= k over prefix + the remaining pieces.

    Only positions whose piece starts with the same tokens as its think marker up to the
    decision token, and whose "#" is one token, can be read from the shared sequence; the others
    are left to a per-position ScoreRequest.
    """
    ids = list(prefix)
    positions, tokens, lines = [], [], []
    for j in range(k, len(pieces)):
        if pieces[j].line in chosen_lines:
            marker, d_marker = markers[j]
            if len(marker) - d_marker == 1 and tuple(piece_ids[j][:d_marker]) == tuple(marker[:d_marker]):
                positions.append(len(ids) + d_marker)
                tokens.append(marker[d_marker])
                lines.append(pieces[j].line)
        ids.extend(piece_ids[j])
    return ProbeRequest(tuple(ids), tuple(positions), tuple(tokens)), lines


def search_positions(snippet_id: str, text: str, cfg: EStepConfig, phase: str):
    """The snippet's pieces, the candidate lines the search visits (safe, comment lines per
    `cfg.comment_lines`, a seeded `position_fraction` of them) and its fresh statistics."""
    pieces = cut_pieces(text)
    rng = snippet_rng(cfg.seed, snippet_id, phase)
    candidates = list(safe_candidate_lines(text, python=cfg.python))
    stats = SearchStats(snippets=1, lines=len(pieces) if text.strip() else 0)
    if cfg.comment_lines == "skip":
        lines = split_lines(text)
        kept = [line for line in candidates if not is_comment_line(lines[line])]
        stats.comment_positions = len(candidates) - len(kept)
        candidates = kept
    if cfg.position_fraction < 1.0:
        candidates = [line for line in candidates if rng.random() < cfg.position_fraction]
    return pieces, set(candidates), stats


@dataclass
class _Walk:
    """What the search of one snippet carries from window to window."""

    snippet_id: str
    phase: str
    cfg: EStepConfig
    codec: Codec
    pieces: list
    piece_ids: list[tuple[int, ...]]
    chosen_lines: set[int]
    markers: dict[int, tuple[tuple[int, ...], int]]  # piece -> (think marker ids, its decision index)
    stats: SearchStats
    keep_groups: bool
    prefix: list[int] = field(default_factory=list)  # the infused text so far, as token ids
    thoughts: list[Thought] = field(default_factory=list)
    groups: list[PositionGroup] = field(default_factory=list)
    probed: dict[int, float] = field(default_factory=dict)  # line -> log q("#"); valid until a thought
    chain: dict = field(default_factory=dict)  # "start", "lps": log pi of the code so far run; same


@dataclass(frozen=True)
class _Planned:
    """A visited position of a window: its piece, G's think draws, q's p("#"), its prefix length."""

    piece: int
    n_think: int
    p_think: float | None
    at: int


def search_steps(
    snippet_id: str, text: str, codec: Codec, cfg: EStepConfig, *, phase: str = "infuse",
    keep_groups: bool = True,
) -> SearchGen:
    """The search of one snippet as a generator of engine requests (see the module docstring):
    windows of (1) decisions, (2) rollouts, (3) a left-to-right commit, until the snippet ends."""
    pieces, chosen_lines, stats = search_positions(snippet_id, text, cfg, phase)
    piece_ids = [codec.encode(p.text) for p in pieces]
    markers = {}
    for k in range(1, len(pieces)):
        if pieces[k].line in chosen_lines:
            marker = codec.encode(think_marker(pieces[k]))
            markers[k] = (marker, codec.decision_index(marker))
    w = _Walk(snippet_id, phase, cfg, codec, pieces, piece_ids, chosen_lines, markers, stats, keep_groups,
              prefix=list(piece_ids[0]))
    k, window = 1, cfg.lookahead
    while k < len(pieces):
        plan, ctx, end = yield from _decide(w, k, window)
        drafts = yield from _roll_out(w, k, plan, ctx)
        k, window = _commit(w, k, end, plan, drafts, window)
    infused = InfusedSnippet(id=snippet_id, text=text, thoughts=tuple(w.thoughts))
    return SearchResult(infused=infused, groups=w.groups, stats=w.stats)


def _decide(w: _Walk, k: int, window: int):
    """1. Decisions for pieces k.. up to the window's last rollout, drawn as if no thought were
    chosen in between (speculation: thoughts are rare). Returns (plan, the context after the
    window's pieces, the index after the window)."""
    cfg, pieces = w.cfg, w.pieces
    plan: list[_Planned] = []
    ctx, j, rollouts = list(w.prefix), k, 0
    while j < len(pieces) and rollouts < window:
        if pieces[j].line in w.chosen_lines:
            marker, d_marker = w.markers[j]
            n_think, p_think = cfg.samples, None
            if cfg.decision == "sample":
                if pieces[j].line not in w.probed and cfg.probe:
                    request, lines = decision_probe(ctx, pieces, w.piece_ids, w.markers, j, w.chosen_lines)
                    if lines:
                        w.probed.update(zip(lines, (yield request)))
                if pieces[j].line in w.probed:
                    lp_think = w.probed[pieces[j].line]
                else:
                    context = (*ctx, *marker[:d_marker])
                    lp = yield ScoreRequest("q", ScoreGroup(context, (ScoreOption((), marker[d_marker:]),)))
                    lp_think = float(sum(lp[0][0]))
                p_think = max(math.exp(min(0.0, lp_think)), cfg.think_floor)
                n_think = think_count(cfg, w.snippet_id, w.phase, pieces[j].line, p_think)
            plan.append(_Planned(j, n_think, p_think, len(ctx)))
            rollouts += n_think > 0
        ctx.extend(w.piece_ids[j])
        j += 1
    return plan, ctx, j


def _roll_out(w: _Walk, k: int, plan: list[_Planned], ctx: list[int]):
    """2. The window's rollouts at once: pi's chain along the code (with `cfg.chain`), one bundle
    of samples from q, then one of pi's scores. Returns the drafts by piece."""
    cfg, todo = w.cfg, [p for p in plan if p.n_think]
    if not todo:
        return {}
    if cfg.chain:
        # pi's pass along the code, only as far as this window's horizons reach; a later
        # window extends it (the engine's prefix store holds what was already run).
        need = max(p.at + sum(len(ids) for ids in w.piece_ids[p.piece : p.piece + cfg.horizon]) for p in todo)
        if not w.chain:
            w.chain.update(start=len(w.prefix), lps=[])
        have = w.chain["start"] + len(w.chain["lps"])
        if need > have:
            ids = (*w.prefix, *(i for piece in w.piece_ids[k:] for i in piece))[:need]
            w.chain["lps"].extend((yield ChainRequest(ids, have)))
    prompts = [(*ctx[: p.at], *sample_prompt(w.markers[p.piece][0], w.codec, cfg)) for p in todo]
    answers = yield Bundle(tuple(SampleRequest(pr, p.n_think, w.pieces[p.piece].line) for pr, p in zip(prompts, todo)))
    drafts = {}
    for p, completions in zip(todo, answers):
        horizon = Horizon.of(p.piece, w.pieces, w.piece_ids, w.codec, cfg)
        act_lps = None
        if cfg.chain:
            at = p.at - w.chain["start"] + len(horizon.act_lead)
            act_lps = w.chain["lps"][at : at + len(horizon.target)]
        drafts[p.piece] = draft_rollout(tuple(ctx[: p.at]), w.pieces[p.piece], w.piece_ids[p.piece], horizon,
                                        w.markers[p.piece], completions, w.codec, cfg, act_lps)
    scoring = [d for d in drafts.values() if d.request is not None]
    if scoring:
        answers = yield Bundle(tuple(d.request for d in scoring))
        for d, scores in zip(scoring, answers):
            d.scores = scores
    return drafts


def _commit(w: _Walk, start: int, end: int, plan: list[_Planned], drafts: dict, window: int) -> tuple[int, int]:
    """3. Commit the window left to right; a chosen thought ends it (the rest was planned without
    it: redone). Returns where the next window starts and its size: halved after a thought,
    doubled back (up to `lookahead`) after a window without one, so a snippet that thinks often
    wastes little."""
    cfg, stats = w.cfg, w.stats
    planned = {p.piece: p for p in plan}
    for i in range(start, end):
        if i in planned:
            p = planned[i]
            stats.positions += 1
            if p.p_think is not None:
                stats.think_prob_sum += p.p_think
            if p.n_think:
                group = finish_rollout(drafts.pop(i), cfg, stats)
                if w.keep_groups:
                    w.groups.append(group)
                best = group.options[group.chosen]
                if best.kind == "think":
                    w.probed.clear()  # later decisions now see the thought in their prefix
                    w.chain.clear()
                    w.thoughts.append(Thought(line=w.pieces[i].line, text=best.text, gain=best.gain))
                    middle = w.codec.encode(thought_middle(best.text, w.pieces[i]))
                    w.prefix.extend(middle)
                    stats.add_chosen(best, len(middle) - w.markers[i][1])  # "# text": marker and text
                    w.prefix.extend(w.codec.encode(after_thought(w.pieces[i])))
                    stats.discarded += len(drafts)  # speculative rollouts after it: redone
                    return i + 1, max(1, min(cfg.lookahead, window * 2) // 4)
        w.prefix.extend(w.piece_ids[i])
    return end, min(cfg.lookahead, window * 2)


def sample_prompt(marker, codec, cfg) -> tuple[int, ...]:
    return (*marker, *codec.encode(" ")) if cfg.prompt_space else tuple(marker)


@dataclass(frozen=True)
class Horizon:
    """What a position's options are scored on: the next `horizon` lines.

    `<act>` continues with piece j as it is (`act_lead`: its newline, blank lines and indentation,
    then the code); a thought continues with `after_thought(piece j)` (`think_lead`: the thought
    line's newline and the indentation, then the same code). With `score_from="content"` both
    leads are unscored context and every option is scored on the same `target` tokens; with
    "line" each option also scores its own lead (`target` / `think_target`).
    """

    act_lead: tuple[int, ...]
    think_lead: tuple[int, ...]
    target: tuple[int, ...]  # the scored tokens of `<act>` (gain is per token of these)
    think_target: tuple[int, ...]

    @classmethod
    def of(cls, j: int, pieces, piece_ids, codec: Codec, cfg: EStepConfig) -> Horizon:
        later = tuple(i for ids in piece_ids[j + 1 : j + cfg.horizon] for i in ids)
        act, cont = tuple(piece_ids[j]), codec.encode(after_thought(pieces[j]))
        if cfg.score_from == "content":
            d_act, d_cont = codec.decision_index(act), codec.decision_index(cont)
            target = (*act[d_act:], *later)
            return cls(act[:d_act], cont[:d_cont], target, target)
        return cls((), (), (*act, *later), (*cont, *later))


@dataclass
class Draft:
    """A rollout between its samples and its commit: options built, thoughts awaiting scores."""

    prefix: tuple[int, ...]
    piece: object
    target: tuple[int, ...]  # `<act>`'s scored tokens (`Horizon.target`)
    options: list[Option]
    middles: dict[str, tuple[int, ...]]
    act_lps: list[float] | None
    request: ScoreRequest | None
    scores: object = None


def draft_rollout(prefix, piece, piece_ids, horizon: Horizon, marker_info, completions, codec, cfg, act_lps) -> Draft:
    """The position's options from q's samples, and the ScoreRequest for its distinct valid
    thoughts (with `<act>` unless its scores come from the chain), scored on `horizon`."""
    marker, d_marker = marker_info
    prompt = sample_prompt(marker, codec, cfg)
    d_act = codec.decision_index(piece_ids)
    act = Option(kind="act", ids=tuple(piece_ids[: d_act + 1]), loss_start=min(d_act, len(piece_ids) - 1),
                 reward=0.0)
    options: list[Option] = [act]
    middles: dict[str, tuple[int, ...]] = {}  # distinct valid thoughts -> their middle ids (scoring)
    for c in completions:
        # RL trains on the ids q sampled (marker, text and the token that ended it), so the PPO
        # ratio is over tokens q produced; pi scores the canonical encoding of the rendered line.
        sampled = (*prompt, *c.token_ids)
        text = completion_thought(c, cfg.max_latent_tokens)
        if text is None:
            options.append(Option(kind="think", ids=sampled, loss_start=d_marker, reward=-cfg.penalty))
            continue
        if not cfg.end_token_in_loss and c.token_ids and "\n" in codec.tokenizer.decode([c.token_ids[-1]]):
            sampled = sampled[:-1]
        if text not in middles:
            middles[text] = codec.encode(thought_middle(text, piece))
        options.append(Option(kind="think", ids=sampled, loss_start=d_marker, reward=0.0, text=text))
    request = None
    if middles:
        h = horizon
        score_options = tuple(ScoreOption((*m, *h.think_lead), h.think_target) for m in middles.values())
        if act_lps is None:
            score_options = (ScoreOption(h.act_lead, h.target), *score_options)
        request = ScoreRequest("pi", ScoreGroup(prefix, score_options))
    return Draft(prefix, piece, horizon.target, options, middles, act_lps, request)


def finish_rollout(d: Draft, cfg: EStepConfig, stats: SearchStats) -> PositionGroup:
    """Gains, rewards and advantages of a committed rollout, and its group."""
    stats.rollouts += 1
    stats.sampled += len(d.options) - 1
    stats.failed += sum(o.kind == "think" and o.text is None for o in d.options)
    gains: dict[str, float] = {}
    if d.middles:
        sums = [float(sum(s)) for s in ([d.act_lps] if d.act_lps is not None else []) + list(d.scores[0])]
        for j, text in enumerate(d.middles):
            gains[text] = float(gain(sums[j + 1], sums[0], len(d.target), cfg.gain_norm))
    raw = [gains.get(o.text) if o.kind == "think" and o.text is not None else None for o in d.options[1:]]
    rewards = option_rewards(raw, cfg.penalty)
    advantages = group_advantages(rewards, cfg.advantage)
    for o, g, r, a in zip(d.options, [None, *raw], rewards, advantages):
        o.gain, o.reward, o.advantage = g, float(r), float(a)
    stats.add_group(d.options)
    return PositionGroup(line=d.piece.line, prefix=d.prefix, options=d.options, chosen=choose_option(rewards))
