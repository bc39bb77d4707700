"""Batched KV-cached sampling and decision probes for the transformers backend.

`sample_batched` serves every prompt of a `generate` call in one decode loop:
1. prefill, all prompts in one batch, each only past what the engine's `PrefixKVStore` already
   holds for it (`longest_common`: an E-step thought prompt "prefix + \\n{indent}#" shares its
   prefix with the decision probe's pass over the snippet), so a prompt late in a snippet costs
   a token or two instead of a pass over its prefix. A Llama-family model prefills through
   `PackedDecoder` and writes the decode cache once (`_packed_prefill`); others through
   `prefix_scorer.prefix_pass` (transformers' forward over a padded batch);
2. decode, all rows of all prompts together in that cache (K/V written in place), an attention
   mask over its padding, RoPE positions per row. Finished rows leave the batch. A Llama-family
   model steps through `lean_decode.LeanDecoder` (the same math without transformers' per-call
   work, which dominates a small model's decode step); others through transformers' forward.
Each prompt draws from its own generator, with the same calls as one prompt alone, so a prompt
with a given seed gets the same samples whatever else is in the batch (up to float rounding of
batched kernels, which can flip a near-tie).

`probe_logprobs` is the decision probe: log p(tokens[i] | ids[:positions[i]]) from one pass over
ids (again past what the store holds), whose K/V it stores for the prompts that follow.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from ra3_megatron.rollout.base import Completion, SamplingConfig, ScoreGroup
from ra3_megatron.rollout.common import cut_at_stop
from ra3_megatron.rollout.cpu_accel.gqa_attention import gqa_attention
from ra3_megatron.rollout.cpu_accel.kv_store import KV, PrefixKVStore
from ra3_megatron.rollout.cpu_accel.lean_decode import LeanDecoder
from ra3_megatron.rollout.cpu_accel.packed_llama import PackedDecoder, Segments, packable
from ra3_megatron.rollout.cpu_accel.prefix_scorer import _head_logprobs, prefix_pass
from ra3_megatron.rollout.hf_engine import sample_rows


class _GrowingLayer(DynamicLayer):
    """A decode cache layer with room for `capacity` positions: each step writes its K/V in place
    and attention reads a view, where DynamicLayer concatenates (copies) the whole cache per step,
    which dominated the decode loop of a small model over long prompts."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        b, h, n, d = keys.shape
        self._k = keys.new_empty(b, h, capacity, d)
        self._v = values.new_empty(b, h, capacity, values.shape[-1])
        self._k[:, :, :n], self._v[:, :, :n] = keys, values
        self.n = n
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    @classmethod
    def over(cls, keys: torch.Tensor, values: torch.Tensor, n: int) -> _GrowingLayer:
        """A layer over ready buffers [b, h, capacity, d] whose first n positions are filled."""
        layer = cls.__new__(cls)
        DynamicLayer.__init__(layer)
        layer._k, layer._v, layer.n = keys, values, n
        layer.keys, layer.values = keys[:, :, :n], values[:, :, :n]
        layer.dtype, layer.device, layer.is_initialized = keys.dtype, keys.device, True
        return layer

    def update(self, key_states, value_states, *args, **kwargs):
        s = key_states.shape[-2]
        if self.n + s > self._k.shape[2]:
            raise RuntimeError(f"decode cache full: {self.n} + {s} > {self._k.shape[2]}")
        self._k[:, :, self.n : self.n + s] = key_states
        self._v[:, :, self.n : self.n + s] = value_states
        self.n += s
        self.keys, self.values = self._k[:, :, : self.n], self._v[:, :, : self.n]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k.index_select(0, indices), self._v.index_select(0, indices)
        self.keys, self.values = self._k[:, :, : self.n], self._v[:, :, : self.n]


def _cache(kv: KV) -> DynamicCache:
    cache = DynamicCache()
    for k, v in kv:
        layer = DynamicLayer()
        layer.keys, layer.values = k, v
        layer.dtype, layer.device, layer.is_initialized = k.dtype, k.device, True
        cache.layers.append(layer)
    return cache


def _stored_prefix(store: PrefixKVStore | None, ids: Sequence[int], keep: int):
    """(the store's entry sharing most leading tokens with ids, or None; how many of them to reuse,
    leaving at least `keep` tokens to run). Counts the reuse in the store's statistics."""
    hit = store.longest_common(ids) if store is not None else None
    c = min(hit[0], len(ids) - keep) if hit else 0
    if hit:
        store.hits += 1
        store.reused_tokens += c
    return hit, c


def _forward_with_store(model, ids: Sequence[int], store: PrefixKVStore | None, keep: int = 1,
                        matmul_dtype: torch.dtype = torch.float32):
    """Run `ids` (past the stored part) and return (hidden states of the new tokens [N, H], the
    number of stored tokens used c, per-layer K/V [h, len(ids), d]). At least `keep` tokens run.
    A Llama-family model runs through `PackedDecoder` (no transformers call overhead, its own
    attention over the stored K/V), others through transformers' forward."""
    dev = model.device
    hit, c = _stored_prefix(store, ids, keep)
    if packable(model):
        dec = PackedDecoder(model, matmul_dtype)
        context = [[(k[:, :c], v[:, :c])] for k, v in hit[1]] if c > 0 else []
        seg = Segments(lengths=[len(ids) - c], contexts=[0 if c > 0 else -1])
        x = torch.tensor(list(ids[c:]), device=dev)
        h, new = dec.forward(x, torch.arange(c, len(ids), device=dev), seg, context)
        hidden = dec.final_norm(h)
        kv = [(nk.transpose(0, 1), nv.transpose(0, 1)) for nk, nv in new]  # [h, N, d]
        if c > 0:
            kv = [(torch.cat([k[:, :c], nk], 1), torch.cat([v[:, :c], nv], 1)) for (k, v), (nk, nv) in zip(hit[1], kv)]
    else:
        cache = _cache([(k[None, :, :c], v[None, :, :c]) for k, v in hit[1]]) if c > 0 else DynamicCache()
        x = torch.tensor([list(ids[c:])], device=dev)
        pos = torch.arange(c, len(ids), device=dev)[None, :]
        out = model.get_decoder()(input_ids=x, position_ids=pos, past_key_values=cache, use_cache=True)
        kv = [(layer.keys[0], layer.values[0]) for layer in out.past_key_values.layers]
        hidden = out.last_hidden_state[0]
    if store is not None:
        if hit and hit[0] == len(hit[2]) < len(ids):
            store.discard(hit[2])  # the new entry holds all of it (a chain run further on)
        store.put(tuple(ids), kv)
    return hidden, c, kv


def probe_logprobs(model, ids: Sequence[int], positions: Sequence[int], tokens: Sequence[int],
                   store: PrefixKVStore | None) -> list[float]:
    """log p(tokens[i] | ids[:positions[i]]) for each i, from one pass (see module docstring)."""
    if not positions:
        return []
    dev = model.device
    seq = list(ids[: max(positions)])
    hidden, c, _ = _forward_with_store(model, seq, store, keep=len(seq) - min(positions) + 1)
    at = torch.tensor([p - 1 - c for p in positions], device=dev)  # the state that predicts token p
    return _head_logprobs(model, hidden[at], torch.tensor(list(tokens), device=dev), 256).tolist()


def sequence_logprobs(model, ids: Sequence[int], start: int, store: PrefixKVStore | None,
                      head_chunk: int = 256, matmul_dtype: torch.dtype = torch.float32) -> list[float]:
    """log p(ids[i] | ids[:i]) for i in [start, len(ids)), from one pass (past what the store
    holds); the head runs in chunks of `head_chunk` positions (the scorer's `_head_logprobs`)."""
    if start < 1 or start > len(ids):
        raise ValueError(f"sequence_logprobs: start must be in [1, {len(ids)}], got {start}")
    if start == len(ids):
        return []
    dev = model.device
    hidden, c, _ = _forward_with_store(model, ids[:-1], store, keep=len(ids) - start, matmul_dtype=matmul_dtype)
    tgt = torch.tensor(list(ids[start:]), device=dev)
    return _head_logprobs(model, hidden[start - 1 - c :], tgt, head_chunk).tolist()


def _packed_prefill(model, prompts: Sequence[list[int]], first_row: list[int], owner: torch.Tensor,
                    max_tokens: int, store: PrefixKVStore | None):
    """The prefill of a Llama-family model: (decode cache layers, valid mask [R, L], prompt
    lengths [P], first logits [P, vocab]); rows first_row[p]:first_row[p + 1] are prompt p's
    (owner [R]: each row's prompt).

    Each prompt runs only its tokens past what the store holds, packed with the others into one
    `PackedDecoder` forward that attends to the stored K/V where it lies. The decode cache
    [R, kv_heads, L + max_tokens, d] is then written once: each row gets its prompt's stored and
    new K/V at positions [0, len), zeros up to L = the longest prompt (masked out), and room
    for the samples. (The padded transformers prefill copied the whole K/V four times: stored
    part into a padded batch, the forward's concatenation, per row, into the decode buffer.)
    """
    dev = model.device
    dec = PackedDecoder(model)
    hits, cached = zip(*(_stored_prefix(store, p, 1) for p in prompts))
    fresh = [len(p) - c for p, c in zip(prompts, cached)]
    with_ctx = [i for i, c in enumerate(cached) if c]
    contexts = [[(hits[i][1][li][0][:, : cached[i]], hits[i][1][li][1][:, : cached[i]]) for i in with_ctx]
                for li in range(len(dec.base.layers))] if with_ctx else []
    ctx_index = {i: j for j, i in enumerate(with_ctx)}
    seg = Segments(lengths=fresh, contexts=[ctx_index.get(i, -1) for i in range(len(prompts))])
    ids = torch.tensor([t for p, c in zip(prompts, cached) for t in p[c:]], device=dev)
    positions = torch.tensor([i for p, c in zip(prompts, cached) for i in range(c, len(p))], device=dev)
    hidden, new = dec.forward(ids, positions, seg, contexts)
    ends = torch.tensor(fresh, device=dev).cumsum(0) - 1
    firsts = model.get_output_embeddings()(dec.final_norm(hidden.index_select(0, ends))).float()
    R, L = first_row[-1], max(len(p) for p in prompts)
    lens = torch.tensor([len(p) for p in prompts], device=dev)
    layers = []
    for li, (nk, nv) in enumerate(new):
        kv_heads, d = nk.shape[1], nk.shape[2]
        bufs = [nk.new_empty(R, kv_heads, L + max_tokens, d) for _ in range(2)]
        start = 0
        for i, p in enumerate(prompts):
            a, b, c, n = first_row[i], first_row[i + 1], cached[i], len(p)
            for buf, part, new_part in zip(bufs, hits[i][1][li] if c else (None, None), (nk, nv)):
                if c:
                    buf[a:b, :, :c] = part[:, :c]
                buf[a:b, :, c:n] = new_part[start : start + fresh[i]].transpose(0, 1)
                buf[a:b, :, n:L] = 0.0  # masked, but garbage there could be NaN, and NaN * 0 is NaN
            start += fresh[i]
        layers.append(_GrowingLayer.over(bufs[0], bufs[1], L))
    mask = (torch.arange(L, device=dev)[None, :] < lens.index_select(0, owner)[:, None]).long()
    return layers, mask, lens, firsts


_STOP_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _may_stop(tokenizer, stops: Sequence[str]) -> list[bool] | None:
    """Per token id: whether its text may end a stop string (it holds a stop string's last
    character, or is part of a multi-byte character). Only after such a token must the decode
    loop re-decode the row to look for a stop. None: no stop strings."""
    ends = {s[-1] for s in stops if s}
    if not ends:
        return None
    tables = _STOP_TABLES.setdefault(tokenizer, {})
    key = tuple(sorted(ends))
    if key not in tables:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
        tables[key] = [any(c in t for c in ends) or "\ufffd" in t for t in texts]
    return tables[key]


def sample_batched(
    model, tokenizer, prompts: Sequence[list[int]], ns: Sequence[int], cfg: SamplingConfig,
    gens: Sequence[torch.Generator], store: PrefixKVStore | None,
) -> list[list[Completion]]:
    """ns[p] completions for prompt p, drawn from gens[p] (cfg.n is ignored; see the module
    docstring)."""
    dev, eos = model.device, tokenizer.eos_token_id
    P = len(prompts)
    # All prompts' prefill in one batch, each from what the store holds of it, into a decode
    # cache of one row per sample. The prompts are not stored: a thought prompt ends in its
    # marker, which no later prompt extends, and a batch of full-length copies would push the
    # probe passes out of the store.
    owner = torch.repeat_interleave(torch.arange(P), torch.tensor(list(ns)))  # row -> its prompt
    first_row = [0, *torch.tensor(list(ns)).cumsum(0).tolist()]
    owner_dev = owner.to(dev)
    cache = DynamicCache()
    if packable(model):
        cache.layers, mask, lens, firsts = _packed_prefill(model, prompts, first_row, owner_dev, cfg.max_tokens,
                                                           store)
    else:  # padded: per layer K/V [P, h, C + N, d] (stored part, then new part), then per row
        kv, pmask, lens, last = prefix_pass(model, [ScoreGroup(tuple(p)) for p in prompts], store, keep=False)
        firsts = model.get_output_embeddings()(last).float()
        cache.layers = [
            _GrowingLayer(k.index_select(0, owner_dev), v.index_select(0, owner_dev), k.shape[2] + cfg.max_tokens)
            for k, v in kv
        ]
        mask = pmask.index_select(0, owner_dev).long()
    pos = lens.index_select(0, owner_dev)
    logits = firsts.index_select(0, owner_dev)
    R = len(owner)
    owner_of = owner.tolist()
    toks: list[list[int]] = [[] for _ in range(R)]
    lps: list[list[float]] = [[] for _ in range(R)]
    texts, done = [""] * R, [False] * R
    # Rows in the batch, in batch order. A finished row stays (its steps are wasted, its draws
    # skipped) until a quarter of the batch has finished: compacting copies the whole cache.
    active = list(range(R))
    may_stop = _may_stop(tokenizer, cfg.stop)
    lean = LeanDecoder(model) if packable(model) else None
    for _ in range(cfg.max_tokens):
        nxt = torch.zeros(len(active), dtype=torch.long, device=dev)
        live = [j for j, r in enumerate(active) if not done[r]]
        nxt[live] = sample_rows(logits[live], cfg, gens, [owner_of[active[j]] for j in live])
        lp = torch.log_softmax(logits, -1).gather(1, nxt[:, None])[:, 0].tolist() if cfg.logprobs else None
        for j, (r, t) in enumerate(zip(active, nxt.tolist())):
            if done[r]:
                continue
            toks[r].append(t)
            if lp is not None:
                lps[r].append(lp[j])
            if may_stop is not None and (t >= len(may_stop) or may_stop[t]):
                _, hit = cut_at_stop(tokenizer.decode(toks[r], skip_special_tokens=True), cfg.stop)
                done[r] = hit
            done[r] = done[r] or t == eos
        keep = [j for j, r in enumerate(active) if not done[r]]
        if not keep:
            break
        if len(active) - len(keep) >= max(1, len(active) // 4):
            sel = torch.tensor(keep, device=dev)
            cache.batch_select_indices(sel)
            nxt, mask, pos = nxt[sel], mask[sel], pos[sel]
            active = [active[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        if lean is not None:
            logits = lean.step(nxt, pos, mask.bool(), cache.layers)
        else:
            with gqa_attention(model):
                out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[:, None],
                            past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1].float()
        pos = pos + 1
    for r in range(R):
        texts[r] = cut_at_stop(tokenizer.decode(toks[r], skip_special_tokens=True), cfg.stop)[0]
    return [
        [
            Completion(
                text=texts[r], token_ids=tuple(toks[r]), logprobs=tuple(lps[r]) if cfg.logprobs else None,
                finish_reason="stop" if done[r] else "length",
            )
            for r in range(first_row[p], first_row[p + 1])
        ]
        for p in range(P)
    ]
