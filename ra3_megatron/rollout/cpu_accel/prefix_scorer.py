"""The fast E-step scorer: each shared prefix runs once, all options run batched on top of it.

A group is one prefix and G+1 options (act + G thoughts), each option = middle + target; we
want log p(target token | prefix, middle, earlier target tokens). The naive way runs G+1 full
sequences and the full-vocabulary head at every position. Here, for a batch of groups:

1. the prefixes run once: per layer their K/V, plus the last hidden state of each prefix (it
   predicts the first target token of an empty middle). With a `kv_store.PrefixKVStore`, a
   prefix that extends one scored in an earlier call starts from its stored K/V and runs only
   the new tokens (the E-step walks snippets line by line);
2. every option of every group runs in a second forward: its tokens middle + target[:-1] (the
   last target token is never an input), RoPE positions continuing from its own prefix length,
   attending to its group's prefix K/V;
3. only the hidden states that predict target tokens are gathered, and only those go through the
   head and a log-softmax, in small chunks.

Two implementations of 1-2, same results:
- `packed_llama` (float32 Llama / Mistral / Qwen2 on CPU, the default there): all tokens packed
  without padding, the prefix K/V shared by its options without per-row copies;
- transformers' own forward (every other model): prefixes right-padded [B, P]; options one
  row each [R, M], right-padded, with a cache layer that hands each row its group's prefix
  K/V when attention asks for it (the expanded copy lives for one layer only) and a 2-D mask
  that hides prefix and option padding. Right padding (not left) keeps every query row
  attending to at least one real key, so padded rows never produce NaNs.
On CPU the linear layers run through oneDNN instead of MKL (`onednn.py`: ~2x on AMD CPUs), in
float32 or, with `matmul_dtype="bfloat16"`, as bf16 matmuls with fp32 accumulation (~2x more
for the matmuls).

Groups with an empty prefix fall back to the naive forward. `score_groups_naive` is that naive
forward: full padded sequences, all-position logits, as a plain transformers user would write
it; it is the reference in tests and the benchmark baseline.

    from ra3_megatron.rollout.cpu_accel.prefix_scorer import ScorerConfig, score_groups_prefix_cache
    scores = score_groups_prefix_cache(model, groups, ScorerConfig())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from ra3_megatron.rollout.base import ScoreGroup, check_groups
from ra3_megatron.rollout.cpu_accel.gqa_attention import gqa_attention
from ra3_megatron.rollout.cpu_accel.kv_store import PrefixKVStore
from ra3_megatron.rollout.cpu_accel.onednn import onednn_linears
from ra3_megatron.rollout.cpu_accel.packed_llama import KV, PackedDecoder, Segments, packable

Scores = list[list[list[float]]]


@dataclass(frozen=True, kw_only=True)
class ScorerConfig:
    # Bound on option rows x (prefix + option length) per batch of groups: attention and K/V
    # memory grow with it; 32k keeps a SmolLM2-135M batch under ~1 GB.
    max_batch_tokens: int = 32768
    head_chunk: int = 128  # scored positions per head + log-softmax chunk ([chunk, vocab] floats)
    onednn: bool = True  # CPU: linear layers through oneDNN, ~2x MKL on AMD (see onednn.py)
    # CPU: "bfloat16" runs the float32 model's linear layers as bf16 matmuls with fp32
    # accumulation (~1.6x; on SmolLM2-135M a token's log-prob moves by 0.03 on average, 0.3 at
    # most, a 40-token horizon's sum by 0.2, 0.6 at most); "float32" is exact up to summation order.
    matmul_dtype: str = "float32"
    # Llama-family float32 models on CPU run through packed_llama (no padding, no per-row prefix
    # copies); False forces the transformers forward (the path for every other model).
    packed: bool = True

    def __post_init__(self) -> None:
        if self.matmul_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"ScorerConfig.matmul_dtype must be float32 or bfloat16, not {self.matmul_dtype!r}"
            )


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
    """log p(targets[i] | hidden[i]) for [N, H] hidden states, computing the head in chunks.

    Small chunks keep each [chunk, vocab] logits block in cache for the log-softmax (and out of
    fresh page-faulted allocations); the fused log_softmax is faster than logsumexp's passes.
    """
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    out = []
    for start in range(0, hidden.shape[0], chunk):
        logits = head(hidden[start : start + chunk]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        tgt = targets[start : start + chunk, None]
        out.append(torch.log_softmax(logits, -1).gather(1, tgt)[:, 0])
    return torch.cat(out) if out else hidden.new_zeros(0)


def _targets(groups: list[ScoreGroup], row_start: list[int], tail: int) -> tuple[list[int], list[int]]:
    """Where each target token's predicting hidden state lies, and the token.

    Option row r's local token i is hidden state row_start[r] + i; the first target token after
    an empty middle is predicted by its prefix's last state, stacked at tail + group index.
    """
    src, tgt, r = [], [], 0
    for b, g in enumerate(groups):
        for o in g.options:
            for j, t in enumerate(o.target):
                i = len(o.middle) - 1 + j
                src.append(row_start[r] + i if i >= 0 else tail + b)
                tgt.append(t)
            r += 1
    return src, tgt


def _unflatten(groups: list[ScoreGroup], flat: list[float]) -> Scores:
    scores, k = [], 0
    for g in groups:
        per = []
        for o in g.options:
            per.append(flat[k : k + len(o.target)])
            k += len(o.target)
        scores.append(per)
    return scores


def _check_model(model) -> None:
    layer_types = getattr(model.config.get_text_config(decoder=True), "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        raise ValueError(
            f"prefix-cache scorer: only full-attention models are supported, not {set(layer_types)}"
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


def _store_hits(store: PrefixKVStore | None, groups: Sequence[ScoreGroup]) -> list:
    """Per group, the stored entry sharing the most leading tokens with its prefix (n, K/V, key):
    an earlier, shorter prefix of the same walk, or a longer pass over the snippet (the E-step's
    `<act>` chain, a probe) that already holds all of it."""
    return [store.longest_common(g.prefix) if store is not None else None for g in groups]


def _keep(store: PrefixKVStore, group: ScoreGroup, hit, cached: int, wanted: bool = True) -> bool:
    """Whether the prefix's K/V should go into the store; counts the reuse. Not when unwanted or
    when a stored sequence already holds the whole prefix; a stored prefix of it is replaced
    (the new entry holds all of it)."""
    if hit is not None:
        store.hits += 1
        store.reused_tokens += cached
    if not wanted or hit is None:
        return wanted
    n, _, key = hit
    if n >= len(group.prefix) and len(key) > len(group.prefix):
        return False
    if len(key) == n:
        store.discard(key)
    return True


def prefix_pass(model, groups: list[ScoreGroup], store: PrefixKVStore | None, keep: bool = True):
    """Run the prefixes (only their tokens past a stored prefix, when a store has one; `keep`:
    store the new K/V too, for prefixes that later calls extend).

    Returns per-layer (K, V) [B, h, C + N, d] (stored part, right-padded to C, then the new part,
    right-padded to N), its mask [B, C + N], the prefix lengths [B] and last hidden states [B, H].
    """
    base, dev = model.base_model, model.device
    B = len(groups)
    hits = _store_hits(store, groups)
    # At least one token per prefix runs here: its hidden state predicts an empty middle's target.
    cached = [min(h[0], len(g.prefix) - 1) if h else 0 for h, g in zip(hits, groups)]
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
    with gqa_attention(model):
        out = base(
            input_ids=ids, attention_mask=mask.long(), position_ids=pos, past_key_values=cache, use_cache=True
        )
    last = out.last_hidden_state[torch.arange(B, device=dev), torch.tensor(fresh, device=dev) - 1]
    kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    if store is not None:
        for b, (g, h, c) in enumerate(zip(groups, hits, cached)):
            idx = torch.cat([torch.arange(c, device=dev), C + torch.arange(fresh[b], device=dev)])
            if _keep(store, g, h, c, keep):
                store.put(g.prefix, [(k[b].index_select(1, idx), v[b].index_select(1, idx)) for k, v in kv])
    lens = torch.tensor([len(g.prefix) for g in groups], device=dev)
    return kv, mask, lens, last


def _score_batch(model, groups: list[ScoreGroup], cfg: ScorerConfig, store: PrefixKVStore | None) -> Scores:
    base, dev = model.base_model, model.device
    prefix_kv, pmask, lens, prefix_last = prefix_pass(model, groups, store)

    rows = [(b, o) for b, g in enumerate(groups) for o in g.options]
    feeds = [list(o.middle) + list(o.target[:-1]) for _, o in rows]
    R, M = len(rows), max((len(f) for f in feeds), default=0)
    row_group = torch.tensor([b for b, _ in rows], dtype=torch.long, device=dev)
    src, tgt = _targets(groups, [r * M for r in range(R)], R * M)
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
    return _unflatten(groups, flat)


def _group_prefix_kv(
    kv: list[KV], hits: list, cached: list[int], fresh: list[int], starts: list[int]
) -> list[list[KV]]:
    """Per layer, per group: the whole prefix's (K, V) [kv_heads, length, head_dim], compact."""
    out = []
    for li, (k, v) in enumerate(kv):
        per = []
        for h, c, n, a in zip(hits, cached, fresh, starts):
            kf, vf = k[a : a + n].transpose(0, 1), v[a : a + n].transpose(0, 1)
            if c:
                hk, hv = h[1][li]
                kf, vf = torch.cat([hk[:, :c], kf], dim=1), torch.cat([hv[:, :c], vf], dim=1)
            per.append((kf.contiguous(), vf.contiguous()))
        out.append(per)
    return out


def _score_batch_packed(
    dec: PackedDecoder, groups: list[ScoreGroup], cfg: ScorerConfig, store: PrefixKVStore | None
) -> Scores:
    """`_score_batch` through the packed decoder (see packed_llama): same inputs, same results."""
    dev = dec.model.device
    # 1. Each prefix's tokens past what the store holds of it (at least one token each) form a
    # segment whose context is the stored K/V.
    hits = _store_hits(store, groups)
    cached = [min(h[0], len(g.prefix) - 1) if h else 0 for h, g in zip(hits, groups)]
    fresh = [len(g.prefix) - c for g, c in zip(groups, cached)]
    starts = [sum(fresh[:b]) for b in range(len(groups))]
    with_ctx = [b for b, c in enumerate(cached) if c]
    stored = [
        [(hits[b][1][li][0][:, : cached[b]], hits[b][1][li][1][:, : cached[b]]) for b in with_ctx]
        for li in range(len(dec.base.layers))
    ]
    seg = Segments(
        lengths=fresh, contexts=[with_ctx.index(b) if cached[b] else -1 for b in range(len(groups))]
    )
    ids = torch.tensor([t for g, c in zip(groups, cached) for t in g.prefix[c:]], device=dev)
    pos = torch.tensor([p for g, c in zip(groups, cached) for p in range(c, len(g.prefix))], device=dev)
    x, kv = dec.forward(ids, pos, seg, stored)
    prefix_last = x.index_select(0, torch.tensor([a + n - 1 for a, n in zip(starts, fresh)], device=dev))
    prefix_kv = _group_prefix_kv(kv, hits, cached, fresh, starts)
    del x, kv
    if store is not None:
        for b, (g, h, c) in enumerate(zip(groups, hits, cached)):
            if _keep(store, g, h, c):
                store.put(g.prefix, [layer[b] for layer in prefix_kv])

    # 2. Each option (middle + target[:-1]) is a segment whose context is its group's prefix.
    feeds = [(b, list(o.middle) + list(o.target[:-1])) for b, g in enumerate(groups) for o in g.options]
    row_start, T = [], 0
    for _, f in feeds:
        row_start.append(T)
        T += len(f)
    src, tgt = _targets(groups, row_start, T)
    hidden = prefix_last
    if T:
        ids = torch.tensor([t for _, f in feeds for t in f], device=dev)
        pos = torch.tensor([len(groups[b].prefix) + i for b, f in feeds for i in range(len(f))], device=dev)
        seg = Segments(lengths=[len(f) for _, f in feeds if f], contexts=[b for b, f in feeds if f])
        x, _ = dec.forward(ids, pos, seg, prefix_kv)
        hidden = torch.cat([x, prefix_last])
    hidden = dec.final_norm(hidden.index_select(0, torch.tensor(src, dtype=torch.long, device=dev)))
    targets = torch.tensor(tgt, dtype=torch.long, device=dev)
    return _unflatten(groups, _head_logprobs(dec.model, hidden, targets, cfg.head_chunk).tolist())


def score_groups_prefix_cache(
    model, groups: Sequence[ScoreGroup], cfg: ScorerConfig | None = None, store: PrefixKVStore | None = None
) -> Scores:
    """Per group, per option: the target tokens' log-probs (see module docstring).

    With a `store`, prefixes that extend one scored before reuse its K/V (see kv_store).
    """
    cfg = cfg or ScorerConfig()
    _check_model(model)
    check_groups(groups)
    result: list = [None] * len(groups)
    empty = [i for i, g in enumerate(groups) if not g.prefix or not g.options]
    for i, s in zip(empty, score_groups_naive(model, [groups[i] for i in empty])):
        result[i] = s
    # Similar prefix lengths batch together: less padding.
    order = sorted(
        (i for i, g in enumerate(groups) if g.prefix and g.options), key=lambda i: len(groups[i].prefix)
    )
    dtype = getattr(torch, cfg.matmul_dtype)
    dec = PackedDecoder(model, dtype, cfg.onednn) if cfg.packed and packable(model) else None
    with torch.inference_mode(), onednn_linears(model, cfg.onednn, dtype):
        for batch in _batches(groups, order, cfg.max_batch_tokens):
            some = [groups[i] for i in batch]
            got = _score_batch_packed(dec, some, cfg, store) if dec else _score_batch(model, some, cfg, store)
            for i, s in zip(batch, got):
                result[i] = s
    return result


def score_groups_naive(model, groups: Sequence[ScoreGroup], batch_rows: int = 8) -> Scores:
    """Baseline: the reference engine's padded full-sequence forward (`hf_engine.score_padded`)."""
    from ra3_megatron.rollout.hf_engine import score_padded

    check_groups(groups)
    with torch.inference_mode():
        return score_padded(model, groups, batch_rows)


def score_groups_one_by_one(model, groups: Sequence[ScoreGroup]) -> Scores:
    """The plainest truth, for tests: each option's full sequence alone, no padding, no cache."""
    out = []
    with torch.inference_mode():
        for g in groups:
            per = []
            for o in g.options:
                seq = list(g.prefix) + list(o.middle) + list(o.target)
                start = len(g.prefix) + len(o.middle)
                logp = torch.log_softmax(model(input_ids=torch.tensor([seq], device=model.device)).logits[0].float(), -1)
                per.append([logp[start - 1 + j, t].item() for j, t in enumerate(o.target)])
            out.append(per)
    return out
