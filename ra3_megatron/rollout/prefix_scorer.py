"""The fast E-step scorer: each shared prefix runs once, all options run batched on top of it.

A group is one prefix and G+1 options (act + G thoughts), each option = middle + target; we
want log p(target token | prefix, middle, earlier target tokens). The naive way runs G+1 full
sequences and the full-vocabulary head at every position. Here, for a batch of groups:

1. the prefixes run once, right-padded: per layer K/V [B, kv_heads, P, head_dim], plus the last
   real hidden state of each prefix (it predicts the first target token of an empty middle).
   With a `kv_store.PrefixKVStore`, a prefix that extends one scored in an earlier call starts
   from its stored K/V and runs only the new tokens (the E-step walks snippets line by line);
2. every option of every group is one row [R, M] of a second forward: its tokens middle +
   target[:-1] (the last target token is never an input), right-padded, RoPE positions continuing
   from its own prefix length. A cache layer hands each row its group's prefix K/V, selected per
   layer when attention asks for it (the expanded [R, ..., P, ...] copy lives for one layer only);
   the 2-D attention mask hides prefix padding and option padding;
3. only the hidden states that predict target tokens are gathered, and only those go through the
   head and log-softmax, in chunks.
On CPU the linear layers run through oneDNN instead of MKL (`onednn.py`: ~2x on AMD CPUs).

Right padding (not left) keeps every query row attending to at least one real key, so padded
rows never produce NaNs. Groups with an empty prefix fall back to the naive forward.
`score_groups_naive` is that naive forward: full padded sequences, all-position logits, as a
plain transformers user would write it; it is the reference in tests and the benchmark baseline.

    from ra3_megatron.rollout.prefix_scorer import ScorerConfig, score_groups_prefix_cache
    scores = score_groups_prefix_cache(model, groups, ScorerConfig())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from ra3_megatron.rollout.base import ScoreGroup
from ra3_megatron.rollout.kv_store import PrefixKVStore
from ra3_megatron.rollout.onednn import onednn_linears

Scores = list[list[list[float]]]


@dataclass(frozen=True, kw_only=True)
class ScorerConfig:
    # Bound on option rows x (prefix + option length) per batch of groups: attention and K/V
    # memory grow with it; 32k keeps a SmolLM2-135M batch under ~1 GB.
    max_batch_tokens: int = 32768
    head_chunk: int = 1024  # scored positions per head + log-softmax chunk ([chunk, vocab] floats)
    onednn: bool = True  # CPU: linear layers through oneDNN, ~2x MKL on AMD (see onednn.py)


class _GroupPrefixLayer(DynamicLayer):
    """One layer's prefix K/V [B, h, P, d], handed to option rows by group index on update."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, row_group: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.row_group = keys, values, row_group
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        # Not stored: the option pass is the last forward on this cache.
        keys = torch.cat([self.keys.index_select(0, self.row_group), key_states], dim=-2)
        values = torch.cat([self.values.index_select(0, self.row_group), value_states], dim=-2)
        return keys, values


def _head_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) for [N, H] hidden states, computing the head in chunks."""
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    out = []
    for start in range(0, hidden.shape[0], chunk):
        logits = head(hidden[start : start + chunk]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        tgt = targets[start : start + chunk, None]
        out.append(logits.gather(1, tgt)[:, 0] - torch.logsumexp(logits, dim=-1))
    return torch.cat(out) if out else hidden.new_zeros(0)


def _check_model(model) -> None:
    layer_types = getattr(model.config.get_text_config(decoder=True), "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        raise ValueError(
            f"prefix-cache scorer: only full-attention models are supported, not {set(layer_types)}"
        )


def _check(groups: Sequence[ScoreGroup]) -> None:
    for gi, g in enumerate(groups):
        for oi, o in enumerate(g.options):
            if o.target and not g.prefix and not o.middle:
                raise ValueError(
                    f"score_groups: group {gi} option {oi} has no context before its target "
                    "(empty prefix and middle); put a BOS token in the prefix"
                )


def _batches(groups: Sequence[ScoreGroup], order: list[int], budget: int) -> list[list[int]]:
    batches: list[list[int]] = []
    cur: list[int] = []
    rows = p_max = m_max = 0
    for gi in order:
        g = groups[gi]
        m = max((len(o.middle) + len(o.target) - 1 for o in g.options), default=0)
        n_rows, new_p, new_m = rows + len(g.options), max(p_max, len(g.prefix)), max(m_max, m)
        if cur and n_rows * (new_p + new_m) > budget:
            batches.append(cur)
            cur, n_rows, new_p, new_m = [], len(g.options), len(g.prefix), m
        cur.append(gi)
        rows, p_max, m_max = n_rows, new_p, new_m
    if cur:
        batches.append(cur)
    return batches


def _prefix_pass(model, groups: list[ScoreGroup], store: PrefixKVStore | None):
    """Run the prefixes (only their tokens past a stored prefix, when a store has one).

    Returns per-layer (K, V) [B, h, C + N, d] (stored part, right-padded to C, then the new part,
    right-padded to N), its mask [B, C + N], the prefix lengths [B] and last hidden states [B, H].
    """
    base, dev = model.base_model, model.device
    B = len(groups)
    hits = [store.lookup(g.prefix) if store is not None else None for g in groups]
    # At least one token per prefix runs here: its hidden state predicts an empty middle's target.
    cached = [min(len(h[0]), len(g.prefix) - 1) if h else 0 for h, g in zip(hits, groups)]
    fresh = [len(g.prefix) - c for g, c in zip(groups, cached)]
    C, N = max(cached), max(fresh)
    ids = torch.zeros(B, N, dtype=torch.long, device=dev)
    for b, (g, c) in enumerate(zip(groups, cached)):
        ids[b, : fresh[b]] = torch.tensor(g.prefix[c:], device=dev)
    cmask = torch.arange(C, device=dev)[None, :] < torch.tensor(cached, device=dev)[:, None]
    nmask = torch.arange(N, device=dev)[None, :] < torch.tensor(fresh, device=dev)[:, None]
    cache = DynamicCache()
    n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    for li in range(n_layers):
        layer = DynamicLayer()
        if C > 0:
            k0, v0 = next(kv for h in hits if h for kv in [h[1][li]])
            layer.keys = k0.new_zeros(B, k0.shape[0], C, k0.shape[2])
            layer.values = v0.new_zeros(B, v0.shape[0], C, v0.shape[2])
            for b, (h, c) in enumerate(zip(hits, cached)):
                if c:
                    layer.keys[b, :, :c] = h[1][li][0][:, :c]
                    layer.values[b, :, :c] = h[1][li][1][:, :c]
            layer.dtype, layer.device, layer.is_initialized = k0.dtype, k0.device, True
        cache.layers.append(layer)
    pos = torch.tensor(cached, device=dev)[:, None] + torch.arange(N, device=dev)[None, :]
    mask = torch.cat([cmask, nmask], dim=1)
    out = base(
        input_ids=ids, attention_mask=mask.long(), position_ids=pos, past_key_values=cache, use_cache=True
    )
    last = out.last_hidden_state[torch.arange(B, device=dev), torch.tensor(fresh, device=dev) - 1]
    kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    if store is not None:
        for b, (g, h, c) in enumerate(zip(groups, hits, cached)):
            idx = torch.cat([torch.arange(c, device=dev), C + torch.arange(fresh[b], device=dev)])
            if h:
                store.hits += 1
                store.reused_tokens += c
                store.discard(h[0])  # the longer prefix holds all of it
            store.put(g.prefix, [(k[b].index_select(1, idx), v[b].index_select(1, idx)) for k, v in kv])
    lens = torch.tensor([len(g.prefix) for g in groups], device=dev)
    return kv, mask, lens, last


def _score_batch(model, groups: list[ScoreGroup], cfg: ScorerConfig, store: PrefixKVStore | None) -> Scores:
    base, dev = model.base_model, model.device
    prefix_kv, pmask, lens, prefix_last = _prefix_pass(model, groups, store)

    rows = [(b, o) for b, g in enumerate(groups) for o in g.options]
    feeds = [list(o.middle) + list(o.target[:-1]) for _, o in rows]
    R, M = len(rows), max((len(f) for f in feeds), default=0)
    row_group = torch.tensor([b for b, _ in rows], dtype=torch.long, device=dev)
    # Where each target token's predicting hidden state lies: option row r, local index i
    # (flat r * M + i), or, for the first target token after an empty middle, the prefix's
    # last state (flat R * M + b).
    src, tgt = [], []
    for r, (b, o) in enumerate(rows):
        for j, t in enumerate(o.target):
            i = len(o.middle) - 1 + j
            src.append(r * M + i if i >= 0 else R * M + b)
            tgt.append(t)
    if M > 0:
        opt = torch.zeros(R, M, dtype=torch.long, device=dev)
        omask = torch.zeros(R, M, dtype=torch.bool, device=dev)
        for r, f in enumerate(feeds):
            opt[r, : len(f)] = torch.tensor(f, dtype=torch.long, device=dev)
            omask[r, : len(f)] = True
        cache = DynamicCache()
        cache.layers = [_GroupPrefixLayer(k, v, row_group) for k, v in prefix_kv]
        mask = torch.cat([pmask.index_select(0, row_group), omask], dim=1).long()
        pos = lens.index_select(0, row_group)[:, None] + torch.arange(M, device=dev)[None, :]
        hidden = base(
            input_ids=opt, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True
        ).last_hidden_state.reshape(R * M, -1)
        hidden = torch.cat([hidden, prefix_last])
    else:
        hidden = prefix_last
    flat = _head_logprobs(
        model,
        hidden.index_select(0, torch.tensor(src, dtype=torch.long, device=dev)),
        torch.tensor(tgt, dtype=torch.long, device=dev),
        cfg.head_chunk,
    ).tolist()
    scores, k = [], 0
    for g in groups:
        per = []
        for o in g.options:
            per.append(flat[k : k + len(o.target)])
            k += len(o.target)
        scores.append(per)
    return scores


def score_groups_prefix_cache(
    model, groups: Sequence[ScoreGroup], cfg: ScorerConfig | None = None, store: PrefixKVStore | None = None
) -> Scores:
    """Per group, per option: the target tokens' log-probs (see module docstring).

    With a `store`, prefixes that extend one scored before reuse its K/V (see kv_store).
    """
    cfg = cfg or ScorerConfig()
    _check_model(model)
    _check(groups)
    result: list = [None] * len(groups)
    empty = [i for i, g in enumerate(groups) if not g.prefix or not g.options]
    for i, s in zip(empty, score_groups_naive(model, [groups[i] for i in empty])):
        result[i] = s
    # Similar prefix lengths batch together: less padding.
    order = sorted(
        (i for i, g in enumerate(groups) if g.prefix and g.options), key=lambda i: len(groups[i].prefix)
    )
    with torch.inference_mode(), onednn_linears(model, cfg.onednn):
        for batch in _batches(groups, order, cfg.max_batch_tokens):
            for i, s in zip(batch, _score_batch(model, [groups[i] for i in batch], cfg, store)):
                result[i] = s
    return result


def score_groups_naive(model, groups: Sequence[ScoreGroup], batch_rows: int = 8) -> Scores:
    """Reference / baseline: one forward per batch of full padded sequences, logits everywhere."""
    _check(groups)
    seqs = [
        (list(g.prefix) + list(o.middle) + list(o.target), len(g.prefix) + len(o.middle), len(o.target))
        for g in groups
        for o in g.options
    ]
    flat: list[list[float]] = []
    dev = model.device
    with torch.inference_mode():
        for start in range(0, len(seqs), batch_rows):
            chunk = seqs[start : start + batch_rows]
            L = max(len(s) for s, _, _ in chunk)
            ids = torch.zeros(len(chunk), L, dtype=torch.long, device=dev)
            mask = torch.zeros(len(chunk), L, dtype=torch.long, device=dev)
            for r, (s, _, _) in enumerate(chunk):
                ids[r, : len(s)] = torch.tensor(s, device=dev)
                mask[r, : len(s)] = 1
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for r, (_, first, n) in enumerate(chunk):
                pos = torch.arange(first - 1, first - 1 + n, device=dev)
                flat.append(logp[r, pos, ids[r, pos + 1]].tolist())
    scores, k = [], 0
    for g in groups:
        scores.append(flat[k : k + len(g.options)])
        k += len(g.options)
    return scores
